"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition", §4.2).

A 3×3 stem convolution with 16 channels, then three stages of n = (depth − 2) / 6 basic blocks
with 16, 32 and 64 channels and strides 1, 2, 2, then global average pooling and the linear head.

Shortcuts where the shape changes (the first block of stages 2 and 3):

- ``"B"`` (default): a 1×1 strided convolution followed by BatchNorm (projection).
- ``"A"``: parameter-free: the input is subsampled with stride 2 and zero channels are appended,
  which is the variant the paper uses for its CIFAR-10 results (0.27M parameters for ResNet-20).

Initialisation: convolutions Kaiming-normal (fan_out, ReLU), BatchNorm weight 1 / bias 0, the
linear head PyTorch's default.

Registered: ``cifar_resnet`` (option ``depth``, any 6n + 2 ≥ 8, or 9n + 2 with
``bottleneck: true``), and the fixed depths ``resnet8/20/32/44/56/74/110`` (OLS Table XI uses
ResNet-74) and ``resnet29``.

``resnet29`` is OLS's "ResNet-29" (Tables VIII, XII, Fig. 7; CIFAR-10). The OLS authors' CIFAR
code (github.com/zhangchbin/OnlineLabelSmoothing, ``cifar/models/resnet.py`` with
``cifar/scripts/train_cifar_all_methods.py``) builds ``--net_type resnet --depth D`` as this CIFAR
ResNet with **bottleneck** blocks by default (``--no-bottleneck`` switches them off), with
n = (D − 2) / 9 blocks per stage; D = 29 therefore gives 3 bottleneck blocks per stage: 1×1 →
3×3 (stride on the 3×3) → 1×1 convolutions with 16/32/64 inner channels expanded ×4 to
64/128/256 outputs, projection shortcuts (1×1 conv + BN) wherever the shape changes (also the
first block of stage 1, 16 → 64 channels), global average pooling, a 256-wide linear head.
(The paper names the depth only; the script and model file are where the block type comes
from.) 313,114 parameters for 10 classes.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..registry import MODELS
from .base import Classifier, register_variant


class PadShortcut(nn.Module):
    """Option A shortcut: stride-``s`` subsampling, then zero channels appended up to ``out``."""

    def __init__(self, out_channels: int, stride: int):
        super().__init__()
        self.out_channels = out_channels
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        extra = self.out_channels - x.shape[1]
        if extra > 0:
            x = F.pad(x, (0, 0, 0, 0, 0, extra))
        return x


def make_shortcut(in_channels: int, out_channels: int, stride: int, shortcut: str) -> nn.Module:
    """A block's shortcut: the identity where the shape is kept, else option A
    (:class:`PadShortcut`) or B (1×1 strided convolution + BatchNorm)."""
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    if shortcut == "A":
        return PadShortcut(out_channels, stride)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.downsample = make_shortcut(in_channels, out_channels, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class BottleneckBlock(nn.Module):
    """conv1×1 → BN → ReLU → conv3×3 (stride) → BN → ReLU → conv1×1 (×4 channels) → BN, plus
    the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int, shortcut: str):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.downsample = make_shortcut(in_channels, out_channels, stride, shortcut)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.downsample(x))


def check_depth(depth: int, bottleneck: bool) -> int:
    """Blocks per stage n of a CIFAR ResNet of ``depth`` (6n + 2, or 9n + 2 with bottlenecks)."""
    per_block = 9 if bottleneck else 6
    if isinstance(depth, bool) or not isinstance(depth, int) or (depth - 2) % per_block or depth < per_block + 2:
        kind = "9n+2 (bottleneck blocks)" if bottleneck else "6n+2 (basic blocks)"
        raise ConfigError(f"model.options.depth: a CIFAR ResNet's depth must be {kind} with n >= 1, "
                          f"got {depth!r}")
    return (depth - 2) // per_block


class ThreeStages:
    """The split-last-stage protocol (see Classifier) of the CIFAR families built as ``conv1`` →
    ``bn1`` → ReLU → ``layer1`` … ``layer3`` → global average pooling (CIFAR ResNets, the OLS
    ResNeXts): trunk = stem + layer1 + layer2, branch = layer3 + head."""

    branch_modules = ("layer3", "head")

    def forward_trunk(self, x: torch.Tensor):
        """Stage maps of ``layer1`` and ``layer2`` (the last stage's input is the second)."""
        x = F.relu(self.bn1(self.conv1(x)))
        s1 = self.layer1(x)
        return [s1, self.layer2(s1)]

    def forward_last(self, h: torch.Tensor, modules=None):
        """(``layer3`` map, global-average-pooled embedding) from the ``layer2`` map, with this
        model's ``layer3`` or ``modules["layer3"]``."""
        layer3 = self.layer3 if modules is None else modules["layer3"]
        s3 = layer3(h)
        return s3, torch.flatten(F.adaptive_avg_pool2d(s3, 1), 1)


class CifarResNet(ThreeStages, Classifier):
    """He et al. 2016 CIFAR ResNet of depth 6n + 2 (basic blocks) or 9n + 2 (bottlenecks)."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, shortcut: str = "B",
                 bottleneck: bool = False):
        super().__init__()
        n = check_depth(depth, bottleneck)
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        planes = (16, 32, 64)
        block = BottleneckBlock if bottleneck else BasicBlock
        expansion = BottleneckBlock.expansion if bottleneck else 1
        widths = tuple(p * expansion for p in planes)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        prev = 16
        stages = []
        for i, width in enumerate(planes):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(prev, width, stride, shortcut))
                prev = width * expansion
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.stage_channels = widths
        self.embedding_dim = widths[-1]
        self.head = nn.Linear(self.embedding_dim, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @staticmethod
    def initialise(module: nn.Module) -> nn.Module:
        """This family's initialisation: convolutions Kaiming-normal (fan_out, ReLU), BatchNorm
        1/0, linear layers PyTorch's default; running statistics reset."""
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                m.reset_parameters()
        return module


def _fixed_depth(num_classes: int, in_channels: int = 3, shortcut: Literal["B", "A"] = "B", *,
                 depth: int) -> CifarResNet:
    """The options of the fixed-depth CIFAR ResNets ``resnet<depth>``."""
    return CifarResNet(depth, num_classes, in_channels, shortcut)


for _depth in (8, 20, 32, 44, 56, 74, 110):
    _n = (_depth - 2) // 6
    register_variant(
        f"resnet{_depth}",
        f"CIFAR ResNet-{_depth} (He et al. 2016), 3 stages 16/32/64, {_n} block{'s' * (_n > 1)} each",
        _fixed_depth, depth=_depth)


@MODELS.register("cifar_resnet", "CIFAR ResNet of any depth (He et al. 2016): depth 6n+2 with basic blocks, "
                                 "or 9n+2 with bottleneck: true")
def cifar_resnet(num_classes: int, in_channels: int = 3, depth: int = 20,
                 shortcut: Literal["B", "A"] = "B", bottleneck: bool = False) -> CifarResNet:
    """depth: 6n+2 (basic blocks) or 9n+2 (bottleneck blocks); shortcut: B projection or A
    zero-padding; bottleneck: 1×1-3×3-1×1 blocks with ×4 expansion."""
    return CifarResNet(depth, num_classes, in_channels, shortcut, bottleneck)


@MODELS.register("resnet29", "OLS's ResNet-29: CIFAR ResNet with 3 bottleneck blocks per stage, "
                             "16/32/64 planes x4 = 64/128/256 channels (OLS authors' cifar/models/resnet.py)")
def resnet29(num_classes: int, in_channels: int = 3) -> CifarResNet:
    return CifarResNet(29, num_classes, in_channels, "B", bottleneck=True)
