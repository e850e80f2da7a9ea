"""``kt_resnet50``: ResNet-50 with the head of the knowledge-transfer FGVC authors' code
(Zhang et al., "Knowledge Transfer Based Fine-Grained Visual Classification", ICME 2021).

Trunk: torchvision's ResNet-50 (``conv1``, ``bn1``, ``layer1`` … ``layer4`` under their
torchvision names, built by :class:`.resnet.TorchvisionResNet`, same ``stem`` options).
Pooling: global **max** pooling of the ``layer4`` map. Head, as in the official code::

    BN1d(2048) → Linear(2048, 512) → BN1d(512) → ELU → Linear(512, K)

The first four modules are ``self.neck``; the final Linear is ``self.head``, as for every
backbone. ``embedding`` is the 512-d ELU output, i.e. the input of ``self.head`` (the contract
of :class:`.base.Classifier`: methods that replace the head, e.g. AdaCos, receive what the
classifier sees). Stage maps: the outputs of ``layer1`` … ``layer4``.

ImageNet weights: a torchvision ResNet-50 file has no ``neck`` tensors; the neck is declared in
``fresh_modules``, so ``model.weights=resnet50.pth`` loads the trunk and keeps the neck and head
fresh (with a warning). Alternatively load it into the trunk with
:meth:`KTResNet50.load_trunk_weights` or the ``trunk_weights`` model option: the file goes
through :func:`.weights.load_weights` against a view holding only the trunk modules (so any
missing, unexpected or mis-shaped trunk tensor is still an error); ``fc.*`` is skipped with
the usual head warning and the neck and head keep their fresh initialisation (PyTorch
defaults). ``model.weights`` remains the way to load a whole ``kt_resnet50`` checkpoint.
"""
from __future__ import annotations

from typing import Literal, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .resnet import TorchvisionResNet
from .weights import load_weights

_TRUNK = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


class _TrunkView(nn.Module):
    """The trunk modules of a KTResNet50 (shared, not copied) under torchvision names, plus a
    1-class ``head`` so that a torchvision ``fc`` is recognised as a head and skipped."""

    def __init__(self, model: "KTResNet50"):
        super().__init__()
        for name in _TRUNK:
            setattr(self, name, getattr(model, name))
        self.head = nn.Linear(model.trunk_channels, 1)


class KTResNet50(TorchvisionResNet):
    """ResNet-50 trunk, global max pooling, BN–Linear–BN–ELU neck and a linear head."""

    head_modules = ("neck", "head")  # the authors train these at 10x the trunk's rate
    fresh_modules = ("neck",)  # not in ImageNet files: model.weights=resnet50.pth keeps it fresh

    def __init__(self, num_classes: int, in_channels: int = 3, stem: str = "imagenet",
                 hidden: int = 512):
        super().__init__("resnet50", num_classes, in_channels, stem)
        self.trunk_channels = self.head.in_features  # 2048
        self.neck = nn.Sequential(
            nn.BatchNorm1d(self.trunk_channels),
            nn.Linear(self.trunk_channels, hidden),
            nn.BatchNorm1d(hidden),
            nn.ELU(),
        )
        self.embedding_dim = hidden
        self.head = nn.Linear(hidden, num_classes)

    # split-last-stage protocol (see Classifier): the neck belongs to the classifier on top of
    # layer4, so a duplicated last stage gets its own neck too
    branch_modules = ("layer4", "neck", "head")

    def forward_last(self, h: torch.Tensor, modules=None):
        """(``layer4`` map, embedding = neck(global max pool)) from the ``layer3`` map, with this
        model's ``layer4`` and ``neck`` or ``modules["layer4"]``, ``modules["neck"]``."""
        layer4 = self.layer4 if modules is None else modules["layer4"]
        neck = self.neck if modules is None else modules["neck"]
        s4 = layer4(h)
        return s4, neck(torch.flatten(F.adaptive_max_pool2d(s4, 1), 1))

    def load_trunk_weights(self, path, name: str = "kt_resnet50 trunk") -> "KTResNet50":
        """Load a torchvision ResNet-50 state dict (e.g. ImageNet) into the trunk only."""
        load_weights(_TrunkView(self), path, name=name)
        return self


@MODELS.register(
    "kt_resnet50",
    "ResNet-50 with global max pooling and the BN-Linear(512)-BN-ELU-Linear head of the "
    "knowledge-transfer FGVC code (Zhang et al. 2021); stem 'imagenet' or 'cifar'",
)
def kt_resnet50(
    num_classes: int,
    in_channels: int = 3,
    stem: Literal["imagenet", "cifar"] = "imagenet",
    trunk_weights: Optional[str] = None,
) -> KTResNet50:
    """trunk_weights: a torchvision ResNet-50 weights file (.pth/.safetensors) loaded into the
    trunk only; the neck and head stay freshly initialised."""
    model = KTResNet50(num_classes, in_channels, stem)
    if trunk_weights:
        model.load_trunk_weights(trunk_weights)
    return model
