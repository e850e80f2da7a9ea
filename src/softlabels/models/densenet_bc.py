"""``densenet_bc``: DenseNet-BC for 32×32 inputs as the CS-KD authors define it (their
``models/densenet3.py``, ``CIFAR_DenseNet121``; github.com/alinlab/cs-kd; facts read from it,
the code is this project's own). Not torchvision's ImageNet DenseNet with a replaced stem
(that is ``densenet121`` with ``stem: cifar``, which keeps ImageNet's ``norm0`` and
transition layout).

- stem: one 3×3 convolution, 3 → 2k channels (k = ``growth_rate``), padding 1, no BN, no pool;
- dense blocks of bottleneck layers: BN → ReLU → 1×1 conv (4k) → BN → ReLU → 3×3 conv (k),
  the k new channels concatenated **in front of** the layer's input;
- between blocks a transition: BN → ReLU → 1×1 conv to ⌊``reduction``·C⌋ channels → 2×2
  average pooling;
- after the last block BN → ReLU → global average pooling (the reference's ``avg_pool2d(4)``
  at 32×32) → linear head with bias.

``depth`` chooses the blocks: 121 → (6, 12, 24, 16) (CS-KD's model and the default), 169 →
(6, 12, 32, 32), 201 → (6, 12, 48, 32), 161 → (6, 12, 36, 24), 264 → (6, 12, 64, 48) (four
blocks, depth = 2·Σ blocks + 5); any other depth with (depth − 4) divisible by 6 gives Huang et
al.'s three-block CIFAR DenseNet-BC with (depth − 4)/6 layers per block (e.g. depth 100, k 12).
Defaults = CS-KD's: depth 121, growth_rate 32, reduction 0.5: 7,048,548 parameters for 100
classes (counted by hand in the tests).

Module names follow the reference (``conv1``, ``dense1.<i>.{bn1,conv1,bn2,conv2}``,
``trans1.{bn,conv}``, ``bn``; only ``linear`` is ``head``), so its checkpoints load after
``linear.* → head.*`` (done by :mod:`.weights`). Initialisation: PyTorch's defaults, as the
reference.

Stage maps: each dense block's output before its transition and, for the last block, after the
final BN + ReLU (what is pooled): 32/16/8/4 px at 32×32 input with four blocks. Implements the
split-last-stage protocol (ONE): the last stage is the last transition, the last dense block and
the final BN.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import MODELS
from .base import Classifier, reset_initialise

FOUR_BLOCK_DEPTHS = {121: (6, 12, 24, 16), 161: (6, 12, 36, 24), 169: (6, 12, 32, 32),
                     201: (6, 12, 48, 32), 264: (6, 12, 64, 48)}


def dense_blocks(depth: int) -> tuple:
    """The layers per dense block of a DenseNet-BC of ``depth`` (see the module docstring)."""
    if isinstance(depth, bool) or not isinstance(depth, int):
        raise ConfigError(f"model.options.depth: expected an integer, got {depth!r}")
    if depth in FOUR_BLOCK_DEPTHS:
        return FOUR_BLOCK_DEPTHS[depth]
    if depth >= 10 and (depth - 4) % 6 == 0:
        return ((depth - 4) // 6,) * 3
    raise ConfigError(f"model.options.depth: DenseNet-BC depth must be one of "
                      f"{', '.join(map(str, sorted(FOUR_BLOCK_DEPTHS)))} (four blocks) or 6n+4 with "
                      f"n >= 1 (three blocks), got {depth}")


class DenseLayer(nn.Module):
    def __init__(self, in_channels: int, growth_rate: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, 4 * growth_rate, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(4 * growth_rate)
        self.conv2 = nn.Conv2d(4 * growth_rate, growth_rate, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.bn1(x)))
        out = self.conv2(F.relu(self.bn2(out)))
        return torch.cat([out, x], 1)


class Transition(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(self.conv(F.relu(self.bn(x))), 2)


class DenseNetBC(Classifier):
    def __init__(self, num_classes: int, in_channels: int = 3, depth: int = 121, growth_rate: int = 32,
                 reduction: float = 0.5):
        super().__init__()
        blocks: Sequence[int] = dense_blocks(depth)
        if isinstance(growth_rate, bool) or not isinstance(growth_rate, int) or growth_rate < 1:
            raise ConfigError(f"model.options.growth_rate: expected an integer >= 1, got {growth_rate!r}")
        if not 0.0 < reduction <= 1.0:
            raise ConfigError(f"model.options.reduction: expected 0 < reduction <= 1, got {reduction!r}")
        self.num_blocks = len(blocks)
        planes = 2 * growth_rate
        self.conv1 = nn.Conv2d(in_channels, planes, 3, padding=1, bias=False)
        channels = []
        for i, n in enumerate(blocks, 1):
            layers = []
            for _ in range(n):
                layers.append(DenseLayer(planes, growth_rate))
                planes += growth_rate
            setattr(self, f"dense{i}", nn.Sequential(*layers))
            channels.append(planes)
            if i < len(blocks):
                out = int(math.floor(planes * reduction))
                setattr(self, f"trans{i}", Transition(planes, out))
                planes = out
        self.bn = nn.BatchNorm2d(planes)
        self.stage_channels = tuple(channels)
        self.embedding_dim = planes
        self.head = nn.Linear(planes, num_classes)
        n = self.num_blocks
        # split-last-stage protocol (see Classifier): the last stage = last transition, last
        # dense block and the final BN
        self.branch_modules = (f"trans{n - 1}", f"dense{n}", "bn", "head")

    def forward_trunk(self, x: torch.Tensor):
        """Outputs of dense blocks 1 … n−1 (before their transitions)."""
        x = self.conv1(x)
        maps = []
        for i in range(1, self.num_blocks):
            x = getattr(self, f"dense{i}")(x)
            maps.append(x)
            if i < self.num_blocks - 1:
                x = getattr(self, f"trans{i}")(x)
        return maps

    def forward_last(self, h: torch.Tensor, modules=None):
        """(relu(bn(last dense block)), its global average) from dense block n−1's output."""
        n = self.num_blocks
        get = (lambda k: getattr(self, k)) if modules is None else modules.__getitem__
        x = get(f"dense{n}")(get(f"trans{n - 1}")(h))
        x = F.relu(get("bn")(x))
        return x, torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)

    initialise = staticmethod(reset_initialise)  # PyTorch's defaults, as the reference


@MODELS.register("densenet_bc", "DenseNet-BC for 32x32 as CS-KD defines it (their densenet3): 3x3 stem, "
                                "bottleneck layers, compression 0.5; depth 121 (6/12/24/16) and growth 32 "
                                "by default")
def densenet_bc(num_classes: int, in_channels: int = 3, depth: int = 121, growth_rate: int = 32,
                reduction: float = 0.5) -> DenseNetBC:
    """depth: 121/161/169/201/264 (four blocks) or 6n+4 (three blocks); growth_rate: k;
    reduction: the transitions' compression."""
    return DenseNetBC(num_classes, in_channels, depth, growth_rate, reduction)
