"""Be Your Own Teacher (Zhang, Song, Gao, Chen, Bao, Ma, "Be Your Own Teacher: Improve the
Performance of Convolutional Neural Networks via Self Distillation", ICCV 2019, §3).

The backbone is divided at its stages. Every stage but the last gets a training-only
auxiliary classifier: a bottleneck that brings the stage map to the deepest stage's channels and
resolution, global average pooling and a fully connected layer. The deepest classifier (the
model's own head) teaches the shallow ones; the model is evaluated with the deepest one only,
so the auxiliary classifiers live in the method, not in the model.

For each shallow classifier i, with logits z_i and bottleneck output F_i:

  (1−α)·CE(z_i, y) + α·T²·KL(softmax(z_C/T) ‖ softmax(z_i/T)) + λ·‖F_i − F_C‖²₂

(loss sources 1–3 of §3.2; z_C and the deepest stage map F_C are constants), plus CE(z_C, y)
for the deepest classifier, whose KD and hint terms are zero.

Bottleneck (built from ``model.stage_channels``): for stage i of L, L−1−i downsampling units,
unit j taking stage_channels[j] → stage_channels[j+1] channels at stride 2, each a separable
convolution pair: depthwise 3×3 (stride 2) → pointwise 1×1 → BN → ReLU → depthwise 3×3 →
pointwise 1×1 → BN → ReLU, as in the authors' released ResNet code. A 3×3 stride-2 padding-1
convolution maps n to ceil(n/2), exactly as the stride-2 convolutions between ResNet stages do,
so F_i has the deepest map's shape for any input size.

Variant ``official`` (the first author's released code, ArchipLab-LinfengZhang/
pytorch-self-distillation-final, train.py): the KD term is the soft cross-entropy
−Σ softmax(z_C/T)·log softmax(z_i/T) without T² (the paper form's T² makes it 9× larger at
T = 3), and the hint is ‖A_i(GAP(F_i)) − GAP(F_C)‖₂, the unsquared L2 distance over the whole
batch between a linear adaptation A_i of the pooled bottleneck feature and the deepest pooled
feature, left out for the shallowest classifier.
"""
from __future__ import annotations

from typing import Annotated, Dict, List, Literal, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, MissingInputError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, need_features, need_setup
from .functional import cross_entropy, label_terms, soft_cross_entropy, tempered_kl, upcast

BYOT_REFERENCE = ("Zhang, Song, Gao, Chen, Bao, Ma, Be Your Own Teacher: Improve the Performance of "
                  "Convolutional Neural Networks via Self Distillation, ICCV 2019")

# The authors' released code's defaults (temperature 3, loss_coefficient 0.3,
# feature_loss_coefficient 0.03); see docs/methods.md for the confidence in each.
DEFAULT_TEMPERATURE, DEFAULT_ALPHA, DEFAULT_LAMBDA = 3.0, 0.3, 0.03

SUPPORTED = ("the CIFAR ResNets (resnet8 ... resnet110, resnet29, cifar_resnet), resnet10/18/34/50/101/152, "
             "resnext101_32x4d, resnext29_*, densenet_bc, kt_resnet50, vgg16, preact_resnet18_cskd")


# ---------------------------------------------------------------------------- modules
def _sep_conv_down(c_in: int, c_out: int) -> nn.Sequential:
    """One bottleneck unit: two separable 3×3 convolutions, the first with stride 2."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_in, 1, bias=False),
        nn.BatchNorm2d(c_in),
        nn.ReLU(),
        nn.Conv2d(c_in, c_in, 3, stride=1, padding=1, groups=c_in, bias=False),
        nn.Conv2d(c_in, c_out, 1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(),
    )


class AuxiliaryClassifier(nn.Module):
    """Bottleneck (stage i → deepest stage's shape), global average pooling, linear classifier.

    ``forward(stage_map)`` returns ``(F_i, logits)``."""

    def __init__(self, stage_channels: Sequence[int], stage: int, num_classes: int):
        super().__init__()
        ch = [int(c) for c in stage_channels]
        self.bottleneck = nn.Sequential(*[_sep_conv_down(ch[j], ch[j + 1]) for j in range(stage, len(ch) - 1)])
        self.fc = nn.Linear(ch[-1], num_classes)
        for m in self.bottleneck.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor):
        feature = self.bottleneck(x)
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(feature, 1), 1))
        return feature, logits


def make_byot_heads(stage_channels: Sequence[int], num_classes: int) -> nn.ModuleList:
    """One auxiliary classifier per stage but the last (shallow → deep)."""
    if len(stage_channels) < 2:
        raise ValueError(f"make_byot_heads: needs at least 2 stages, got {len(stage_channels)}")
    return nn.ModuleList(AuxiliaryClassifier(stage_channels, i, num_classes)
                         for i in range(len(stage_channels) - 1))


# ---------------------------------------------------------------------------- plain functions
def byot_hint(feature: torch.Tensor, deep_feature: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    """‖F_i − F_C‖²₂ per sample, averaged over the batch (``sum``: the paper's squared L2 norm over
    channels and positions; ``mean``: the mean squared difference per element). F_C is a
    constant."""
    if feature.shape != deep_feature.shape:
        raise ValueError(f"byot_hint: the bottleneck output is {tuple(feature.shape)} but the deepest stage map "
                         f"is {tuple(deep_feature.shape)}; they must have the same shape")
    feature = upcast(feature)
    sq = (feature - upcast(deep_feature.detach()).to(feature.dtype)).pow(2).flatten(1)
    if reduction == "sum":
        return sq.sum(dim=1).mean()
    if reduction == "mean":
        return sq.mean()
    raise ValueError(f"byot_hint: reduction must be 'sum' or 'mean', got {reduction!r}")


def byot_classifier_loss(logits: torch.Tensor, deep_logits: torch.Tensor, labels: torch.Tensor,
                         feature: Optional[torch.Tensor] = None, deep_feature: Optional[torch.Tensor] = None,
                         temperature: float = DEFAULT_TEMPERATURE, alpha: float = DEFAULT_ALPHA,
                         lam: float = DEFAULT_LAMBDA, t_squared: bool = True,
                         hint_reduction: str = "sum") -> Dict[str, torch.Tensor]:
    """The weighted terms of one shallow classifier: ``ce`` = (1−α)·CE(z_i, y), ``kl`` =
    α·T²·KL(softmax(z_C/T) ‖ softmax(z_i/T)) (without T² when ``t_squared`` is false) and
    ``hint`` = λ·‖F_i − F_C‖² (only when both feature maps are given). The deepest classifier's
    logits and map are constants."""
    kl = tempered_kl(logits, deep_logits, temperature, t_squared=t_squared)   # §3.2 loss source 2
    terms = {"ce": (1 - alpha) * cross_entropy(logits, labels), "kl": alpha * kl}  # loss source 1
    if feature is not None and deep_feature is not None:
        terms["hint"] = lam * byot_hint(feature, deep_feature, hint_reduction)
    return terms


def byot_loss(shallow_logits: Sequence[torch.Tensor], deep_logits: torch.Tensor, labels: torch.Tensor,
              shallow_features: Optional[Sequence[torch.Tensor]] = None,
              deep_feature: Optional[torch.Tensor] = None, temperature: float = DEFAULT_TEMPERATURE,
              alpha: float = DEFAULT_ALPHA, lam: float = DEFAULT_LAMBDA, t_squared: bool = True,
              hint_reduction: str = "sum") -> Dict[str, torch.Tensor]:
    """The whole BYOT objective as named, weighted terms: ``ce`` = CE(z_C, y) of the deepest
    classifier, and ``aux_ce``, ``kl``, ``hint`` summed over the shallow classifiers
    (:func:`byot_classifier_loss`; ``hint`` only when feature maps are given). Their sum is the
    loss."""
    shallow_logits = list(shallow_logits)
    if shallow_features is not None and len(shallow_features) != len(shallow_logits):
        raise ValueError(f"byot_loss: {len(shallow_logits)} shallow classifiers but "
                         f"{len(shallow_features)} bottleneck outputs")
    out = {"ce": cross_entropy(deep_logits, labels)}
    sums: Dict[str, torch.Tensor] = {}
    for i, z in enumerate(shallow_logits):
        f = None if shallow_features is None else shallow_features[i]
        for k, v in byot_classifier_loss(z, deep_logits, labels, f, deep_feature, temperature, alpha, lam,
                                         t_squared, hint_reduction).items():
            sums[k] = v if k not in sums else sums[k] + v
    if "ce" in sums:
        out["aux_ce"] = sums.pop("ce")
    out.update(sums)
    return out


def byot_official_loss(shallow_logits: Sequence[torch.Tensor], deep_logits: torch.Tensor, labels: torch.Tensor,
                       adapted: Optional[Sequence[Optional[torch.Tensor]]] = None,
                       deep_pooled: Optional[torch.Tensor] = None, temperature: float = DEFAULT_TEMPERATURE,
                       alpha: float = DEFAULT_ALPHA, lam: float = DEFAULT_LAMBDA) -> Dict[str, torch.Tensor]:
    """The first author's released code's objective (variant ``official``) as named terms:
    ``ce`` = CE(z_C, y); ``aux_ce`` = Σ_i (1−α)·CE(z_i, y); ``kl`` = Σ_i α·(−Σ_k
    softmax(z_C/T)_k·log softmax(z_i/T)_k), batch mean, no T²; ``hint`` = Σ_i λ·‖a_i − f_C‖₂
    over the given adapted pooled features ``adapted`` (None entries skipped: the shallowest
    classifier has none) against the deepest pooled feature ``deep_pooled`` (a constant)."""
    out = {"ce": cross_entropy(deep_logits, labels)}
    target = torch.softmax(upcast(deep_logits.detach()) / temperature, dim=1)
    out["aux_ce"] = sum((1 - alpha) * cross_entropy(z, labels) for z in shallow_logits)
    out["kl"] = sum(alpha * soft_cross_entropy(upcast(z) / temperature, target) for z in shallow_logits)
    if adapted is not None and deep_pooled is not None:
        hints = [torch.linalg.vector_norm(upcast(a) - upcast(deep_pooled.detach()).to(upcast(a).dtype))
                 for a in adapted if a is not None]
        if hints:
            out["hint"] = lam * sum(hints)
    return out


# ---------------------------------------------------------------------------- method
def _supported(model) -> bool:
    from ..models.cifar_resnet import CifarResNet
    from ..models.densenet_bc import DenseNetBC
    from ..models.kt import KTVGG16
    from ..models.preact import CSKDPreActResNet18
    from ..models.resnet import TorchvisionResNet
    from ..models.resnext import CifarResNeXt

    # families whose stage maps halve from one stage to the next
    return isinstance(model, (CifarResNet, TorchvisionResNet, CSKDPreActResNet18, CifarResNeXt, DenseNetBC, KTVGG16))


@METHODS.register("byot", "Be Your Own Teacher: auxiliary classifiers on the shallow stages distilled from the deepest",
                  reference=BYOT_REFERENCE)
class BeYourOwnTeacher(Method):
    """Self distillation from the deepest classifier into auxiliary classifiers on the shallow
    stages (created in ``setup`` from ``model.stage_channels``; optimised and checkpointed with
    the method, never part of the model).

    Options: ``temperature`` T (3), ``alpha`` α (0.3), ``lam`` λ (0.03): the authors' released
    code's defaults. ``variant`` paper (default: the equations of §3.2, KL with T², squared
    L2 hint on the bottleneck maps) | official (the released code: soft CE without T², unsquared
    L2 hint on linearly adapted pooled features, none for the shallowest classifier; module
    docstring). Paper variant only: ``t_squared`` (true) multiplies the KL by T²;
    ``hint_reduction`` sum | mean (sum: the paper's squared L2 norm per sample). Logged terms:
    ``ce`` (deepest), ``aux_ce``, ``kl``, ``hint`` (summed over the shallow classifiers; a term
    whose weight is 0 is left out).
    """

    requires = Requires(features=True)

    def __init__(self, num_classes: int, temperature: Annotated[float, Range(0.0, low_open=True)] = DEFAULT_TEMPERATURE,
                 alpha: Annotated[float, Range(0.0, 1.0)] = DEFAULT_ALPHA,
                 lam: Annotated[float, Range(0.0)] = DEFAULT_LAMBDA, t_squared: bool = True,
                 hint_reduction: Literal["sum", "mean"] = "sum",
                 variant: Literal["paper", "official"] = "paper"):
        super().__init__(num_classes)
        self.temperature, self.alpha, self.lam = temperature, alpha, lam
        self.t_squared, self.hint_reduction, self.variant = t_squared, hint_reduction, variant
        self.aux: Optional[nn.ModuleList] = None
        self.adapters: Optional[nn.ModuleList] = None

    def setup(self, model, teachers=()) -> None:
        channels = tuple(int(c) for c in getattr(model, "stage_channels", ()))
        if not _supported(model) or len(channels) < 2:
            raise ConfigError(
                f"model.name: byot builds its auxiliary classifiers for the stage maps of the ResNet "
                f"families ({SUPPORTED}), not for a {type(model).__name__}")
        self.aux = make_byot_heads(channels, self.num_classes)
        if self.variant == "official":  # one linear adaptation per shallow classifier but the shallowest
            self.adapters = nn.ModuleList(nn.Linear(channels[-1], channels[-1]) for _ in channels[2:])
        # a rebuilt model may already live on an accelerator; the heads follow it
        p = next(model.parameters(), None)
        if p is not None:
            self.aux.to(p.device)
            if self.adapters is not None:
                self.adapters.to(p.device)

    def auxiliary_outputs(self, features: Sequence[torch.Tensor]):
        """(bottleneck outputs, logits) of the auxiliary classifiers on the shallow stage maps."""
        aux = need_setup(self.aux, "byot", "the auxiliary classifiers")
        if features is None or len(features) != len(aux) + 1:
            got = "none" if features is None else len(features)
            raise MissingInputError(f"method byot: expected {len(aux) + 1} stage feature maps "
                                    f"(forward with return_features=True), got {got}")
        feats: List[torch.Tensor] = []
        logits: List[torch.Tensor] = []
        for head, x in zip(self.aux, features[:-1]):
            f, z = head(x)
            feats.append(f)
            logits.append(z)
        return feats, logits

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        features = need_features(out, "byot")
        feats, logits = self.auxiliary_outputs(features)
        use_hint = self.lam > 0
        if self.variant == "official":
            adapters = need_setup(self.adapters, "byot", "the official variant's adaptation layers")
            pooled = [torch.flatten(F.adaptive_avg_pool2d(f, 1), 1) for f in feats]
            # shallow → deep: the shallowest classifier (index 0) gets no hint
            adapted = [None] + [a(p) for a, p in zip(adapters, pooled[1:])] if use_hint else None
            deep = torch.flatten(F.adaptive_avg_pool2d(features[-1], 1), 1)
            terms = label_terms(lambda y: byot_official_loss(logits, out.logits, y, adapted, deep, self.temperature,
                                                             self.alpha, self.lam), batch)
        else:
            terms = label_terms(lambda y: byot_loss(logits, out.logits, y, feats if use_hint else None,
                                                    features[-1] if use_hint else None, self.temperature,
                                                    self.alpha, self.lam, self.t_squared, self.hint_reduction), batch)
        if self.alpha >= 1.0:
            terms.pop("aux_ce", None)
        if self.alpha <= 0.0:
            terms.pop("kl", None)
        return terms
