"""The PreAct ResNet-18 that CS-KD (Yun et al. 2020) trains on CIFAR, TinyImageNet and the
fine-grained sets (their ``CIFAR_ResNet18``), with its quirks kept (METHODS.md §2):

- stem: conv3×3(64) → BN → ReLU, no max-pool;
- each block computes ``o = relu(bn1(x))`` and applies the shortcut to ``o``: the identity
  residual adds ``relu(bn1(x))`` (not ``x``), the projection is a bias-free 1×1 strided conv on
  ``o`` (no BN); then ``conv1(o) → relu(bn2) → conv2`` and the sum;
- 4 stages of 2 blocks, 64/128/256/512 channels, strides 1/2/2/2;
- **no** final BN + ReLU before global average pooling; linear head with bias.

Module names follow the reference model (``conv1``, ``bn1``, ``layerL.i.{bn1,conv1,bn2,conv2}``,
``layerL.i.shortcut.0``), so its checkpoints load after ``linear.* → head.*``. All
convolutions are bias-free; initialisation is PyTorch's default, as in the reference code.
The reference pools with ``avg_pool2d(4)``, equal to global average pooling for 32×32 input;
global pooling is used here so other input sizes work too.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import Classifier


class CSKDPreActBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        o = F.relu(self.bn1(x))
        residual = self.shortcut(o)  # the quirk: shortcut of the activated input
        out = self.conv1(o)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + residual


class CSKDPreActResNet18(Classifier):
    def __init__(self, num_classes: int, in_channels: int = 3):
        super().__init__()
        widths = (64, 128, 256, 512)
        self.conv1 = nn.Conv2d(in_channels, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        prev = 64
        layers = []
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers.append(
                nn.Sequential(CSKDPreActBlock(prev, width, stride), CSKDPreActBlock(width, width, 1))
            )
            prev = width
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.stage_channels = widths
        self.embedding_dim = widths[-1]
        self.head = nn.Linear(self.embedding_dim, num_classes)

    # split-last-stage protocol (see Classifier): trunk = stem + layer1 … layer3
    branch_modules = ("layer4", "head")

    def forward_trunk(self, x: torch.Tensor):
        """Stage maps of ``layer1`` … ``layer3`` (the last stage's input is the third)."""
        x = F.relu(self.bn1(self.conv1(x)))
        s1 = self.layer1(x)
        s2 = self.layer2(s1)
        return [s1, s2, self.layer3(s2)]

    def forward_last(self, h: torch.Tensor, modules=None):
        """(``layer4`` map, global-average-pooled embedding) from the ``layer3`` map, with this
        model's ``layer4`` or ``modules["layer4"]``. No final BN + ReLU before the pooling: a
        quirk of the reference code, kept."""
        layer4 = self.layer4 if modules is None else modules["layer4"]
        s4 = layer4(h)
        return s4, torch.flatten(F.adaptive_avg_pool2d(s4, 1), 1)

    @staticmethod
    def initialise(module: nn.Module) -> nn.Module:
        """This model's initialisation, PyTorch's defaults (as the reference code): every layer's
        ``reset_parameters`` (BatchNorm running statistics included)."""
        for m in module.modules():
            if hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return module


@MODELS.register(
    "preact_resnet18_cskd",
    "PreAct ResNet-18 of CS-KD (Yun et al. 2020, CIFAR_ResNet18): 3×3 stem, shortcut on "
    "relu(bn1(x)), no final BN-ReLU, 64/128/256/512",
)
def preact_resnet18_cskd(num_classes: int, in_channels: int = 3) -> CSKDPreActResNet18:
    return CSKDPreActResNet18(num_classes, in_channels)
