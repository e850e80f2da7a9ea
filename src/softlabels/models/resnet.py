"""ImageNet-style ResNets (He et al. 2016) and ResNeXt-101 32×4d (Xie et al. 2017), built with
torchvision's own constructors: ResNet-10/18/34/50/101/152 and ResNeXt-101 32×4d.

ResNet-10 (CS-KD's Table 4 student; their ``resnet10``) is torchvision's ``ResNet`` class with
one basic block per stage (``BasicBlock, [1, 1, 1, 1]``): 5,418,792 parameters for 1000
classes. ResNeXt-101 32×4d (CS-KD Table 5), which torchvision does not ship, is its ``ResNet``
class with bottleneck blocks ``[3, 4, 23, 3]``, ``groups=32``, ``width_per_group=4``
(44,177,704 parameters for 1000 classes, as timm's ``resnext101_32x4d``).

The torchvision model's modules are adopted under their torchvision names (``conv1``, ``bn1``,
``layer1`` … ``layer4``); only ``fc`` is renamed ``head``. A torchvision ImageNet state dict
therefore loads after one renaming, ``fc.* → head.*`` (done by :mod:`.weights`).

``stem="cifar"`` is the small-image stem used by FocusNet and joint guided learning for CIFAR,
TinyImageNet and ImageNet-Dogs at 32×32/64×64: ``conv1`` becomes a 3×3, stride-1, padding-1
convolution with 64 channels and the max-pool is removed (the network then downsamples by 8).
ImageNet ``conv1`` weights do not fit that stem, so loading ImageNet weights into it is refused.

Stage maps: the outputs of ``layer1`` … ``layer4``; embedding: global average pool + flatten
(512 channels for ResNet-10/18/34, 2048 for the bottleneck models).
"""
from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from .base import Classifier, _tv_models, register_variant


def _resnet10(**kwargs):
    from torchvision.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, [1, 1, 1, 1], **kwargs)


def _resnext101_32x4d(**kwargs):
    from torchvision.models.resnet import Bottleneck, ResNet

    return ResNet(Bottleneck, [3, 4, 23, 3], groups=32, width_per_group=4, **kwargs)


# architectures torchvision has no constructor for, built from its ResNet class
_EXTRA_ARCHS = {"resnet10": _resnet10, "resnext101_32x4d": _resnext101_32x4d}


class TorchvisionResNet(Classifier):
    def __init__(self, arch: str, num_classes: int, in_channels: int = 3, stem: str = "imagenet"):
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if arch in _EXTRA_ARCHS:
            net = _EXTRA_ARCHS[arch](num_classes=num_classes)
        else:
            net = getattr(_tv_models(), arch)(weights=None, num_classes=num_classes)
        if stem == "cifar":
            conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        elif in_channels != 3:
            conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        else:
            conv1 = net.conv1
        if conv1 is not net.conv1:  # same initialisation torchvision gives its convolutions
            nn.init.kaiming_normal_(conv1.weight, mode="fan_out", nonlinearity="relu")
        self.conv1 = conv1
        self.bn1 = net.bn1
        self.relu = net.relu
        self.maxpool = nn.Identity() if stem == "cifar" else net.maxpool
        self.layer1 = net.layer1
        self.layer2 = net.layer2
        self.layer3 = net.layer3
        self.layer4 = net.layer4
        self.stage_channels = tuple(
            _block_out_channels(layer[-1]) for layer in (self.layer1, self.layer2, self.layer3, self.layer4)
        )
        self.embedding_dim = net.fc.in_features
        self.head = net.fc  # nn.Linear(embedding_dim, num_classes), torchvision's init

    # split-last-stage protocol (see Classifier): trunk = stem + layer1 … layer3
    branch_modules = ("layer4", "head")

    def forward_trunk(self, x: torch.Tensor):
        """Stage maps of ``layer1`` … ``layer3`` (the last stage's input is the third)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        s1 = self.layer1(x)
        s2 = self.layer2(s1)
        return [s1, s2, self.layer3(s2)]

    def forward_last(self, h: torch.Tensor, modules=None):
        """(``layer4`` map, global-average-pooled embedding) from the ``layer3`` map, with this
        model's ``layer4`` or ``modules["layer4"]``."""
        layer4 = self.layer4 if modules is None else modules["layer4"]
        s4 = layer4(h)
        return s4, torch.flatten(nn.functional.adaptive_avg_pool2d(s4, 1), 1)

    @staticmethod
    def initialise(module: nn.Module) -> nn.Module:
        """torchvision's ResNet initialisation: convolutions Kaiming-normal (fan_out, ReLU),
        BatchNorm/GroupNorm 1/0; other layers (linear, BatchNorm1d) PyTorch's default; running
        statistics reset."""
        for m in module.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                if isinstance(m, nn.BatchNorm2d):
                    m.reset_running_stats()
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif hasattr(m, "reset_parameters"):
                m.reset_parameters()
        return module


def _block_out_channels(block: nn.Module) -> int:
    last_bn = block.bn3 if hasattr(block, "bn3") else block.bn2
    return last_bn.num_features


_STEM = "stem 'imagenet' (7×7/2 conv + max-pool) or 'cifar' (3×3/1 conv, no max-pool)"


def _resnet(
    num_classes: int, in_channels: int = 3, stem: Literal["imagenet", "cifar"] = "imagenet", *, arch: str
) -> TorchvisionResNet:
    """The options of every registered torchvision ResNet (``arch``)."""
    return TorchvisionResNet(arch, num_classes, in_channels, stem)


_REF = "He et al. 2016, torchvision"
resnet18 = register_variant("resnet18", f"ResNet-18 ({_REF}), {_STEM}", _resnet, arch="resnet18")
resnet34 = register_variant("resnet34", f"ResNet-34 ({_REF}), {_STEM}", _resnet, arch="resnet34")
resnet50 = register_variant("resnet50", f"ResNet-50 ({_REF}, bottleneck blocks), {_STEM}", _resnet,
                            arch="resnet50")
resnet10 = register_variant(
    "resnet10", f"ResNet-10 (CS-KD's student: torchvision ResNet, 1 basic block per stage), {_STEM}",
    _resnet, arch="resnet10")
resnet101 = register_variant("resnet101", f"ResNet-101 ({_REF}, bottleneck blocks), {_STEM}", _resnet,
                             arch="resnet101")
resnet152 = register_variant(
    "resnet152", f"ResNet-152 ({_REF}, bottleneck blocks; the CD teacher), {_STEM}", _resnet,
    arch="resnet152")
resnext101_32x4d = register_variant(
    "resnext101_32x4d",
    f"ResNeXt-101 32x4d (Xie et al. 2017; torchvision ResNet class, groups 32, width 4), {_STEM}",
    _resnet, arch="resnext101_32x4d")
