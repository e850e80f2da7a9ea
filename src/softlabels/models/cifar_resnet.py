"""CIFAR ResNets of He et al. 2016 ("Deep Residual Learning for Image Recognition", §4.2).

A 3×3 stem convolution with 16 channels, then three stages of n = (depth − 2) / 6 basic blocks
with 16, 32 and 64 channels and strides 1, 2, 2, then global average pooling and the linear head.

Shortcuts where the shape changes (the first block of stages 2 and 3):

- ``"B"`` (default): a 1×1 strided convolution followed by BatchNorm (projection).
- ``"A"``: parameter-free: the input is subsampled with stride 2 and zero channels are appended,
  which is the variant the paper uses for its CIFAR-10 results (0.27M parameters for ResNet-20).

Initialisation: convolutions Kaiming-normal (fan_out, ReLU), BatchNorm weight 1 / bias 0, the
linear head PyTorch's default.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import Classifier


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


class BasicBlock(nn.Module):
    """conv3×3 → BN → ReLU → conv3×3 → BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        if stride == 1 and in_channels == out_channels:
            self.downsample = nn.Identity()
        elif shortcut == "A":
            self.downsample = PadShortcut(out_channels, stride)
        else:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.downsample(x))


class CifarResNet(Classifier):
    """He et al. 2016 CIFAR ResNet of depth 6n + 2."""

    def __init__(self, depth: int, num_classes: int, in_channels: int = 3, shortcut: str = "B"):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        if shortcut not in ("A", "B"):
            raise ValueError(f"shortcut must be 'A' or 'B', got {shortcut!r}")
        n = (depth - 2) // 6
        widths = (16, 32, 64)
        self.conv1 = nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        prev = 16
        stages = []
        for i, width in enumerate(widths):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(prev, width, stride, shortcut))
                prev = width
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

    # split-last-stage protocol (see Classifier): trunk = stem + layer1 + layer2
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


@MODELS.register("resnet8", "CIFAR ResNet-8 (He et al. 2016), 3 stages 16/32/64, 1 block each")
def resnet8(num_classes: int, in_channels: int = 3, shortcut: Literal["B", "A"] = "B") -> CifarResNet:
    return CifarResNet(8, num_classes, in_channels, shortcut)


@MODELS.register("resnet20", "CIFAR ResNet-20 (He et al. 2016), 3 stages 16/32/64, 3 blocks each")
def resnet20(num_classes: int, in_channels: int = 3, shortcut: Literal["B", "A"] = "B") -> CifarResNet:
    return CifarResNet(20, num_classes, in_channels, shortcut)


@MODELS.register("resnet56", "CIFAR ResNet-56 (He et al. 2016), 3 stages 16/32/64, 9 blocks each")
def resnet56(num_classes: int, in_channels: int = 3, shortcut: Literal["B", "A"] = "B") -> CifarResNet:
    return CifarResNet(56, num_classes, in_channels, shortcut)


@MODELS.register("resnet110", "CIFAR ResNet-110 (He et al. 2016), 3 stages 16/32/64, 18 blocks each")
def resnet110(num_classes: int, in_channels: int = 3, shortcut: Literal["B", "A"] = "B") -> CifarResNet:
    return CifarResNet(110, num_classes, in_channels, shortcut)
