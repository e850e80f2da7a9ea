"""CIFAR ResNeXt-29 (Xie et al. 2017) as the OLS authors train it on CIFAR-100 (OLS Table II):
``resnext29_2x64d`` and ``resnext29_32x4d``.

Architecture of the OLS authors' ``cifar/models/resnext.py`` (github.com/zhangchbin/
OnlineLabelSmoothing; facts read from it, the code is this project's own):

- stem: a **1×1** convolution 3 → 64 (no bias) → BN → ReLU, no pooling;
- three stages of 3 blocks, strides 1/2/2; block: 1×1 conv (C_in → G·w) → BN → ReLU → grouped
  3×3 conv (G groups, the stride) → BN → ReLU → 1×1 conv (G·w → 2·G·w) → BN, plus the shortcut
  (identity, or a 1×1 strided conv + BN when the shape changes), then ReLU; the bottleneck width
  w doubles after every stage, so for both models the group width G·w is 128/256/512 and the
  stage outputs are 256/512/1024 channels;
- global average pooling (the reference's ``avg_pool2d(8)`` on 32×32 inputs) and a linear head.

Initialisation: PyTorch's defaults (the reference sets none). Depth 29 = 9 blocks × 3 + stem +
head. Parameters for 100 classes: 9,221,028 (2×64d) and 4,866,468 (32×4d), counted by hand in
the tests. Stage maps: the three stage outputs (32/16/8 at 32×32 input).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .base import Classifier, register_variant, reset_initialise
from .cifar_resnet import ThreeStages


class ResNeXtBlock(nn.Module):
    expansion = 2

    def __init__(self, in_channels: int, cardinality: int, width: int, stride: int):
        super().__init__()
        group = cardinality * width
        out = self.expansion * group
        self.conv1 = nn.Conv2d(in_channels, group, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(group)
        self.conv2 = nn.Conv2d(group, group, 3, stride, 1, groups=cardinality, bias=False)
        self.bn2 = nn.BatchNorm2d(group)
        self.conv3 = nn.Conv2d(group, out, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out)
        if stride != 1 or in_channels != out:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out, 1, stride, bias=False),
                                          nn.BatchNorm2d(out))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x))


class CifarResNeXt(ThreeStages, Classifier):
    def __init__(self, cardinality: int, width: int, num_classes: int, in_channels: int = 3,
                 blocks: Sequence[int] = (3, 3, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 64, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        prev, stages, channels = 64, [], []
        for i, n in enumerate(blocks):
            w = width * 2 ** i
            layer = []
            for j in range(n):
                layer.append(ResNeXtBlock(prev, cardinality, w, 2 if (i > 0 and j == 0) else 1))
                prev = ResNeXtBlock.expansion * cardinality * w
            stages.append(nn.Sequential(*layer))
            channels.append(prev)
        self.layer1, self.layer2, self.layer3 = stages
        self.stage_channels = tuple(channels)
        self.embedding_dim = channels[-1]
        self.head = nn.Linear(self.embedding_dim, num_classes)

    # split-last-stage protocol: ThreeStages (trunk = stem + layer1 + layer2)
    initialise = staticmethod(reset_initialise)  # PyTorch's defaults, as the reference


def _resnext29(num_classes: int, in_channels: int = 3, *, cardinality: int, width: int) -> CifarResNeXt:
    """The options of the registered CIFAR ResNeXt-29s (``cardinality`` x ``width``d)."""
    return CifarResNeXt(cardinality, width, num_classes, in_channels)


_OLS = "(OLS Table II; OLS authors' code): 1x1 stem, 3 stages of 3 blocks, 256/512/1024 channels"
resnext29_2x64d = register_variant("resnext29_2x64d", f"CIFAR ResNeXt-29 2x64d {_OLS}", _resnext29,
                                   cardinality=2, width=64)
resnext29_32x4d = register_variant("resnext29_32x4d", f"CIFAR ResNeXt-29 32x4d {_OLS}", _resnext29,
                                   cardinality=32, width=4)
