"""Backbones. Importing this package registers every model in ``registry.MODELS``.

Registered names: resnet8/20/32/44/56/74/110, cifar_resnet (any depth) and resnet29 (CIFAR
ResNets), resnet10/18/34/50/101/152 and resnext101_32x4d (torchvision ResNets with an ImageNet or
CIFAR stem), resnext29_2x64d/32x4d (CIFAR ResNeXt), preact_resnet18_cskd, lenet5,
densenet121/161, densenet_bc (CS-KD's CIFAR DenseNet-BC), mobilenet_v2, efficientnet_b0/b1/b2/b7,
kt_resnet50 and vgg16 (the knowledge-transfer code's heads), and the prefix ``timm:<name>`` (any
timm model; ``MODELS.register_prefix``). ``softlabels list models`` (or ``MODELS.entries()``)
lists them with their descriptions. ``complexity.model_complexity`` counts parameters and FLOPs.
"""
from __future__ import annotations

import os
from typing import Optional

from ..errors import ConfigError
from ..registry import MODELS
from . import cifar_resnet, densenet_bc, kt, lenet, preact, resnet, resnext, timm_backbone, tv  # noqa: F401  (registration)
from .base import Classifier, ModelOutput
from .weights import load_weights

__all__ = ["Classifier", "ModelOutput", "build_model", "load_weights", "MODELS"]


def build_model(
    name: str,
    num_classes: int,
    in_channels: int,
    options: Optional[dict] = None,
    weights: Optional[str] = None,
) -> Classifier:
    """Build registered model ``name`` (or ``timm:<timm name>``, a registered prefix) with user
    ``options`` (validated against its signature, errors name ``model.options.<key>``), then load
    ``weights`` (a file path) if given."""
    if not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1:
        raise ConfigError(f"model: num_classes must be a positive integer, got {num_classes!r}")
    if not isinstance(in_channels, int) or isinstance(in_channels, bool) or in_channels < 1:
        raise ConfigError(f"model: in_channels must be a positive integer, got {in_channels!r}")
    model = MODELS.build(
        name, options, where="model.options", num_classes=num_classes, in_channels=in_channels
    )
    if weights:
        load_weights(model, os.fspath(weights), name=name)
    return model
