"""Adapter for torchvision classification models whose body is one ``features`` Sequential.

:class:`FeaturesClassifier` takes that Sequential, the indices (inclusive) of the modules after
which a stage map is taken, global average pooling, optional dropout before the head, and
``self.head = nn.Linear(embedding_dim, num_classes)``. The ``features`` module keeps its
torchvision name, so a torchvision state dict loads after renaming the classifier
(``classifier.1.* → head.*`` for MobileNetV2/EfficientNet, ``classifier.* → head.*`` for
DenseNet; see :mod:`.weights`).

Stage maps are taken at the end of each resolution level, just before the next halving
(ImageNet stem; strides relative to the input):

- DenseNet-121/161: after ``denseblock1`` (/4), ``denseblock2`` (/8), ``denseblock3`` (/16) and
  after ``norm5`` + ReLU (/32), i.e. the dense-block outputs before each transition; the last map
  is exactly what is pooled. Channels 256/512/1024/1024 (121) and 384/768/2112/2208 (161).
- MobileNetV2: after ``features[1]`` (/2, 16 ch at width 1), ``features[3]`` (/4, 24),
  ``features[6]`` (/8, 32), ``features[13]`` (/16, 96) and ``features[18]`` (the final 1×1 conv,
  /32, 1280): five stages.
- EfficientNet-B0/B1/B2/B7: after ``features[1]`` (/2), ``features[2]`` (/4), ``features[3]``
  (/8), ``features[5]`` (/16) and ``features[8]`` (final 1×1 conv, /32): five stages
  (B0: 16/24/40/112/1280; B2: 16/24/48/120/1408; B7: 32/48/80/224/2560).

``stem="cifar"`` (downsampling by 8 instead of 32, for 32×32-size input):

- MobileNetV2, as FocusNet: stride 1 in the first convolution ``features[0][0]`` and in the
  first stride-2 convolution after it, the 3×3 depthwise conv of the first 24-channel block,
  ``features[2].conv[1][0]`` (FocusNet's "first and fourth convolutional layers"; the paper
  states the result downsamples by 8, which fixes which strided conv is meant).
- EfficientNet, the same idea: stride 1 in ``features[0][0]`` and in the depthwise conv of the
  first 24-channel block, ``features[2][0].block[1][0]``.
- DenseNet: ``features.conv0`` becomes a 3×3 stride-1 conv (padding 1) and ``features.pool0``
  is removed (an Identity), as in the CIFAR DenseNet-BC of Huang et al.
Neither change adds or reshapes parameters except DenseNet's conv0, so MobileNetV2 and
EfficientNet ImageNet weights still load into the cifar-stem models.

``in_channels != 3`` replaces the first convolution by a freshly initialised one.
"""
from __future__ import annotations

from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import MODELS
from .base import Classifier, ModelOutput, _tv_models, register_variant


class FeaturesClassifier(Classifier):
    """Generic adapter: ``features`` Sequential → stage maps, global average pool, head.

    stage_ends:  indices into ``features`` (inclusive, increasing, the last one = the last
                 module) after which the running tensor is a stage map.
    final_relu:  apply ReLU to the output of ``features`` before pooling (DenseNet ends in a BN).
    dropout:     dropout on the embedding before the head (torchvision's classifier dropout);
                 the returned embedding is the un-dropped one.
    head:        the torchvision model's own Linear classifier, to keep its initialisation.
    """

    def __init__(
        self,
        features: nn.Sequential,
        stage_ends: Sequence[int],
        num_classes: int,
        in_channels: int,
        final_relu: bool = False,
        dropout: float = 0.0,
        head: nn.Linear | None = None,
        probe_size: int = 32,
    ):
        super().__init__()
        ends = [int(i) for i in stage_ends]
        if not ends or ends != sorted(set(ends)) or ends[-1] != len(features) - 1 or ends[0] < 0:
            raise ValueError(f"stage_ends must increase and end at {len(features) - 1}, got {ends}")
        self.features = features
        self.stage_ends = tuple(ends)
        self._is_end = tuple(i in ends for i in range(len(features)))
        self.final_relu = final_relu
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        # channels of each stage: one tiny forward in eval mode (no statistics are updated)
        was_training = self.training
        self.eval()
        with torch.no_grad():
            maps = self._stage_maps(torch.zeros(1, in_channels, probe_size, probe_size))
        self.train(was_training)
        self.stage_channels = tuple(int(m.shape[1]) for m in maps)
        self.embedding_dim = self.stage_channels[-1]
        if head is None or head.in_features != self.embedding_dim or head.out_features != num_classes:
            head = nn.Linear(self.embedding_dim, num_classes)
        self.head = head

    def _stage_maps(self, x: torch.Tensor):
        maps = []
        last = len(self.features) - 1
        for i, module in enumerate(self.features):
            x = module(x)
            if i == last and self.final_relu:
                x = F.relu(x)
            if self._is_end[i]:
                maps.append(x)
        return maps

    def forward_features(self, x: torch.Tensor):
        maps = self._stage_maps(x)
        embedding = torch.flatten(F.adaptive_avg_pool2d(maps[-1], 1), 1)
        return maps, embedding

    def forward(self, x: torch.Tensor, return_features: bool = False) -> ModelOutput:
        stages, embedding = self.forward_features(x)
        logits = self.head(self.dropout(embedding))
        return ModelOutput(logits, embedding, list(stages) if return_features else None)


def _new_conv(old: nn.Conv2d, in_channels: int, fan_mode: str = "fan_out", **overrides) -> nn.Conv2d:
    """A fresh Conv2d like ``old`` with another input width / kernel / stride / padding."""
    cfg = dict(
        kernel_size=old.kernel_size,
        stride=old.stride,
        padding=old.padding,
        dilation=old.dilation,
        groups=old.groups,
        bias=old.bias is not None,
    )
    cfg.update(overrides)
    conv = nn.Conv2d(in_channels, old.out_channels, **cfg)
    nn.init.kaiming_normal_(conv.weight, mode=fan_mode, nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


# --------------------------------------------------------------------------------- DenseNet

_DENSENET_ENDS = ("denseblock1", "denseblock2", "denseblock3", "norm5")


def _densenet(
    num_classes: int,
    in_channels: int = 3,
    stem: Literal["imagenet", "cifar"] = "imagenet",
    drop_rate: float = 0.0,
    memory_efficient: bool = False,
    *,
    arch: str,
) -> FeaturesClassifier:
    """torchvision's DenseNet ``arch``; the options of every registered DenseNet."""
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    net = getattr(_tv_models(), arch)(
        weights=None, num_classes=num_classes, drop_rate=drop_rate, memory_efficient=memory_efficient
    )
    feats = net.features
    if stem == "cifar":
        feats.conv0 = _new_conv(feats.conv0, in_channels, "fan_in", kernel_size=3, stride=1, padding=1)
        feats.pool0 = nn.Identity()
    elif in_channels != 3:
        feats.conv0 = _new_conv(feats.conv0, in_channels, "fan_in")
    names = [n for n, _ in feats.named_children()]
    ends = [names.index(n) for n in _DENSENET_ENDS]
    return FeaturesClassifier(
        feats, ends, num_classes, in_channels, final_relu=True, head=net.classifier
    )


_DENSE_STEM = "stem 'imagenet' or 'cifar' (3×3/1 conv0, no pool0)"
_DENSE_DOC = "drop_rate: torchvision's dropout after each dense layer; memory_efficient: checkpointing."

densenet121 = register_variant(
    "densenet121", f"DenseNet-121 (Huang et al. 2017, torchvision), 4 stages, {_DENSE_STEM}",
    _densenet, _DENSE_DOC, arch="densenet121")
densenet161 = register_variant(
    "densenet161", f"DenseNet-161 (Huang et al. 2017, torchvision), 4 stages, {_DENSE_STEM}",
    _densenet, _DENSE_DOC, arch="densenet161")


# ------------------------------------------------------------------- MobileNetV2, EfficientNet


def _strided_stem_classifier(net: nn.Module, ends: Sequence[int], num_classes: int, in_channels: int,
                             stem: str, dropout: float, second_conv) -> FeaturesClassifier:
    """The FeaturesClassifier of a torchvision MobileNetV2/EfficientNet ``net`` (head: its
    ``classifier[1]``): a fresh first convolution for ``in_channels != 3``; ``stem="cifar"``:
    stride 1 in the first convolution and in ``second_conv(features)`` (the depthwise conv of
    the first 24-channel block)."""
    feats = net.features
    first = feats[0][0]
    if in_channels != 3:
        first = feats[0][0] = _new_conv(first, in_channels)
    if stem == "cifar":
        first.stride = (1, 1)
        second_conv(feats).stride = (1, 1)
    return FeaturesClassifier(feats, ends, num_classes, in_channels, dropout=dropout, head=net.classifier[1])


_MOBILENET_ENDS = (1, 3, 6, 13, 18)


@MODELS.register(
    "mobilenet_v2",
    "MobileNetV2 (Sandler et al. 2018, torchvision), 5 stages; stem 'cifar' = stride 1 in the "
    "first conv and the first 24-ch block (FocusNet)",
)
def mobilenet_v2(
    num_classes: int,
    in_channels: int = 3,
    width_mult: float = 1.0,
    stem: Literal["imagenet", "cifar"] = "imagenet",
    dropout: float = 0.2,
) -> FeaturesClassifier:
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    net = _tv_models().mobilenet_v2(
        weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout
    )
    return _strided_stem_classifier(net, _MOBILENET_ENDS, num_classes, in_channels, stem, dropout,
                                    lambda feats: feats[2].conv[1][0])


_EFFICIENTNET_ENDS = (1, 2, 3, 5, 8)


def _efficientnet(
    num_classes: int,
    in_channels: int = 3,
    stem: Literal["imagenet", "cifar"] = "imagenet",
    dropout: float = 0.2,
    stochastic_depth: float = 0.2,
    *,
    arch: str,
) -> FeaturesClassifier:
    """torchvision's EfficientNet ``arch``; the options of every registered EfficientNet."""
    if stem not in ("imagenet", "cifar"):
        raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
    net = getattr(_tv_models(), arch)(
        weights=None, num_classes=num_classes, dropout=dropout, stochastic_depth_prob=stochastic_depth
    )
    return _strided_stem_classifier(net, _EFFICIENTNET_ENDS, num_classes, in_channels, stem, dropout,
                                    lambda feats: feats[2][0].block[1][0])


_EFF = "(Tan & Le 2019, torchvision), 5 stages; stem 'cifar' = stride 1 in the first conv and the first 24-ch block"

efficientnet_b0 = register_variant("efficientnet_b0", f"EfficientNet-B0 {_EFF}", _efficientnet,
                                   arch="efficientnet_b0", dropout=0.2)
efficientnet_b1 = register_variant("efficientnet_b1", f"EfficientNet-B1 {_EFF}", _efficientnet,
                                   arch="efficientnet_b1", dropout=0.2)
efficientnet_b2 = register_variant("efficientnet_b2", f"EfficientNet-B2 {_EFF}", _efficientnet,
                                   arch="efficientnet_b2", dropout=0.3)
efficientnet_b7 = register_variant(
    "efficientnet_b7", f"EfficientNet-B7 (OLS Table VI) {_EFF}", _efficientnet,
    "torchvision's B7 defaults (dropout 0.5); 66,347,960 parameters for 1000 classes (the\n"
    "number torchvision documents for its ImageNet weights); 600×600 is its native input size.",
    arch="efficientnet_b7", dropout=0.5)
