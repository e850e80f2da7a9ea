"""``timm:<name>``: any timm model (github.com/huggingface/pytorch-image-models) as a backbone.

Registered as a name prefix (``MODELS.register_prefix("timm:", ...)``): ``model.name:
timm:convnext_tiny`` builds ``timm.create_model("convnext_tiny", features_only=True, ...)``
and adds this package's head. timm is an optional dependency (``pip install
'softlabels[timm]'``); without it, building such a model stops with one line.

- Stage maps: timm's feature-extraction interface (``features_only=True``): the maps at the
  model's ``feature_info`` reductions (e.g. strides 2/4/8/16/32 for ResNets and
  EfficientNets), all of them or those picked by ``out_indices``; ``stage_channels`` is
  ``feature_info.channels()``.
- Embedding: global average pooling of the deepest map; head ``nn.Linear`` (PyTorch's init).
  timm's feature extractor stops at the last stage, so layers of a timm classifier that come
  after it (e.g. EfficientNet's 1×1 ``conv_head``, ConvNeXt's head norm) are not part of the model.
- Weights: ``pretrained_file`` loads a timm/ImageNet checkpoint of that architecture from a local
  file through timm's own loader (``pretrained_cfg_overlay={"file": ...}``; its classifier is
  dropped, nothing is downloaded); ``model.weights`` loads this package's own checkpoints of the
  wrapped model (keys ``body.*``, ``head.*``), e.g. a teacher trained by a previous run.
- Models timm cannot run as feature extractors (some transformers) stop with timm's reason.
- No split-last-stage protocol: ``one`` refuses these models.
"""
from __future__ import annotations

import os
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..registry import MODELS
from .base import Classifier


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return (text[:197] + "...") if len(text) > 200 else text


def import_timm():
    """The timm module, or a one-line ConfigError saying how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError("model.name: timm:<name> models need the timm package, which is not installed "
                          "(pip install 'softlabels[timm]' or pip install timm)") from None
    return timm


class TimmBackbone(Classifier):
    def __init__(self, name: str, num_classes: int, in_channels: int = 3,
                 pretrained_file: Optional[str] = None, out_indices: Optional[List[int]] = None,
                 drop_path_rate: float = 0.0):
        super().__init__()
        timm = import_timm()
        if name not in timm.list_models():
            raise ConfigError(f"model.name: timm:{name}: timm {timm.__version__} has no model {name!r} "
                              f"(python -c 'import timm; print(timm.list_models())' lists them)")
        kwargs = dict(features_only=True, in_chans=in_channels)
        if out_indices is not None:
            if not out_indices or not all(isinstance(i, int) and not isinstance(i, bool) for i in out_indices):
                raise ConfigError(f"model.options.out_indices: expected a non-empty list of feature level "
                                  f"indices (integers), got {out_indices!r}")
            kwargs["out_indices"] = tuple(out_indices)
        if drop_path_rate:
            kwargs["drop_path_rate"] = float(drop_path_rate)
        if pretrained_file:
            path = os.fspath(os.path.expanduser(pretrained_file))
            if not os.path.isfile(path):
                raise CheckpointError(f"{path}: weights file not found (model.options.pretrained_file)")
            kwargs.update(pretrained=True, pretrained_cfg_overlay={"file": path})
        try:
            self.body = timm.create_model(name, **kwargs)
        except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AssertionError, OSError) as exc:
            cls = CheckpointError if pretrained_file else ConfigError
            raise cls(f"model.name: timm:{name} cannot be built as a feature extractor"
                      f"{' with ' + pretrained_file if pretrained_file else ''} ({type(exc).__name__}: "
                      f"{_one_line(exc)})") from None
        self.timm_name = name
        self.stage_channels = tuple(int(c) for c in self.body.feature_info.channels())
        self.embedding_dim = self.stage_channels[-1]
        self.head = nn.Linear(self.embedding_dim, num_classes)

    def forward_features(self, x: torch.Tensor):
        maps = list(self.body(x))
        return maps, torch.flatten(F.adaptive_avg_pool2d(maps[-1], 1), 1)


def timm_model(name: str, num_classes: int, in_channels: int = 3, pretrained_file: Optional[str] = None,
               out_indices: Optional[List[int]] = None, drop_path_rate: float = 0.0) -> TimmBackbone:
    """pretrained_file: a local timm checkpoint of this architecture; out_indices: which of
    timm's feature levels are the stage maps (default: all); drop_path_rate: timm's stochastic
    depth."""
    return TimmBackbone(name, num_classes, in_channels, pretrained_file, out_indices, drop_path_rate)


MODELS.register_prefix(
    "timm:", timm_model,
    "any timm model as a backbone (timm:<name>, optional dependency): stage maps from timm's "
    "features_only interface, GAP + linear head, weights from a local file",
)
