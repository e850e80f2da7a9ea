"""``kt_resnet50`` and ``vgg16``: ResNet-50 and VGG-16 with the head of the knowledge-transfer
FGVC authors' code (Zhang et al., "Knowledge Transfer Based Fine-Grained Visual Classification",
ICME 2021; github.com/PRIS-CV/knowledge-transfer-based-FGVC, ``model.py`` / ``utils.py``).

``vgg16`` (KT Table 1's VGG16 rows) is the authors' ``model_bn_vgg16``: torchvision's
**VGG-16 with BatchNorm** (``vgg16_bn``) convolutional part, i.e. its ``features`` (13 conv +
BN + ReLU, 5 max-pools; the ImageNet classifier is dropped), global max pooling of the last map
(their ``MaxPool2d(14)`` at 448×448) and the head ``BN1d(512) → Linear(512, 4096) → BN1d(4096)
→ ELU → Linear(4096, K)`` (``feature_size`` 4096 for VGG, 512 for ResNet-50). Parameters:
14,723,136 in ``features`` (torchvision's vgg16_bn, 138,365,992 in all, less its classifier)
plus 2,110,464 in the neck and 4096·K + K in the head. Stage maps: the outputs of the five
max-pools (64/128/256/512/512 channels, strides 2…32); the last one is the map the OR loss
reads. ``trunk_weights`` loads a torchvision vgg16_bn file into ``features`` (its classifier is
skipped with the head warning). No split-last-stage protocol: ``one`` refuses this model.

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
from .base import Classifier
from .resnet import TorchvisionResNet
from .weights import load_weights

_TRUNK = ("conv1", "bn1", "layer1", "layer2", "layer3", "layer4")


class _TrunkView(nn.Module):
    """The trunk modules ``names`` of a model (shared, not copied) under their torchvision
    names, plus a stand-in ``head`` whose tensors have other shapes than a torchvision
    classifier's, so that the file's classifier is recognised as a head and skipped."""

    def __init__(self, model: nn.Module, names=_TRUNK, head: Optional[nn.Module] = None):
        super().__init__()
        for name in names:
            setattr(self, name, getattr(model, name))
        self.head = head if head is not None else nn.Linear(model.trunk_channels, 1)


class KTResNet50(TorchvisionResNet):
    """ResNet-50 trunk, global max pooling, BN–Linear–BN–ELU neck and a linear head."""

    head_modules = ("neck", "head")  # the authors train these at 10x the trunk's rate
    fresh_modules = ("neck",)  # not in ImageNet files: model.weights=resnet50.pth keeps it fresh

    def __init__(self, num_classes: int, in_channels: int = 3, stem: str = "imagenet",
                 hidden: int = 512):
        super().__init__("resnet50", num_classes, in_channels, stem)
        self.trunk_channels = self.head.in_features  # 2048
        self.neck = kt_neck(self.trunk_channels, hidden)
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


# --------------------------------------------------------------------------------- VGG-16

def kt_neck(channels: int, hidden: int) -> nn.Sequential:
    """The KT code's neck: BN1d → Linear(channels, hidden) → BN1d → ELU."""
    return nn.Sequential(nn.BatchNorm1d(channels), nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ELU())


class KTVGG16(Classifier):
    """torchvision vgg16_bn ``features``, global max pooling, the KT neck and a linear head."""

    head_modules = ("neck", "head")
    fresh_modules = ("neck",)
    trunk_channels = 512

    def __init__(self, num_classes: int, in_channels: int = 3, hidden: int = 4096):
        super().__init__()
        from torchvision.models.vgg import cfgs, make_layers

        # torchvision's vgg16_bn ``features`` (configuration "D" with BatchNorm), built without
        # its 120M-parameter classifier, initialised as torchvision's VGG initialises them
        features = make_layers(cfgs["D"], batch_norm=True)
        if in_channels != 3:
            features[0] = nn.Conv2d(in_channels, features[0].out_channels, 3, padding=1)
        for m in features.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.features = features
        self._pool_ends = tuple(i for i, m in enumerate(features) if isinstance(m, nn.MaxPool2d))
        self.stage_channels = (64, 128, 256, 512, 512)
        self.neck = kt_neck(self.trunk_channels, hidden)
        self.embedding_dim = hidden
        self.head = nn.Linear(hidden, num_classes)

    def forward_features(self, x: torch.Tensor):
        maps = []
        for i, module in enumerate(self.features):
            x = module(x)
            if i in self._pool_ends:
                maps.append(x)
        embedding = self.neck(torch.flatten(F.adaptive_max_pool2d(maps[-1], 1), 1))
        return maps, embedding

    def load_trunk_weights(self, path, name: str = "vgg16 trunk") -> "KTVGG16":
        """Load a torchvision vgg16_bn state dict (e.g. ImageNet) into ``features`` only."""
        stand_in = nn.Sequential(*[nn.Linear(1, 1) if i in (0, 3, 6) else nn.Identity() for i in range(7)])
        load_weights(_TrunkView(self, ("features",), stand_in), path, name=name)
        return self


@MODELS.register(
    "vgg16",
    "VGG-16 as the knowledge-transfer FGVC code uses it: torchvision vgg16_bn features, global max "
    "pooling, BN-Linear(4096)-BN-ELU-Linear head (KT Table 1)",
)
def vgg16(num_classes: int, in_channels: int = 3, trunk_weights: Optional[str] = None) -> KTVGG16:
    """trunk_weights: a torchvision vgg16_bn weights file (.pth/.safetensors) loaded into
    ``features`` only; the neck and head stay freshly initialised."""
    model = KTVGG16(num_classes, in_channels)
    if trunk_weights:
        model.load_trunk_weights(trunk_weights)
    return model
