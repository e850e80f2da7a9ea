"""FRSKD: feature refinement via self-knowledge distillation (Ji, Shin, Hwang, Park, Moon,
"Refine Myself by Teaching Myself: Feature Refinement via Self-Knowledge Distillation",
CVPR 2021, §3).

An auxiliary *self-teacher* network, trained together with the classifier (the student), reads
the student's stage feature maps F_1 … F_n (shallow → deep), aggregates them along a top-down
and a bottom-up path (BiFPN-like) and produces refined maps T_1 … T_n plus its own prediction.
The student learns from both, which are treated as constants in the distillation terms:

  L = CE(z, y) + CE(t, y) + α·T²·KL(softmax(t/T) ‖ softmax(z/T)) + β·Σ_l AT(F_l, T_l)

with z the student's logits, t the self-teacher's, and AT the attention-transfer distance
(Zagoruyko & Komodakis, ICLR 2017) between the L2-normalised, channel-pooled spatial attention
maps. The self-teacher lives in the method (trained, checkpointed in ``checkpoints/last``); the
model, its checkpoints and evaluation are the student alone.

``loss="focus"`` is FocusNet's "OurLoss+FRSKD" (Zhang, Sheng, Shen, Pattern Recognition 2022,
Table 7): the KD term is replaced by the focus-picking loss with the self-teacher's (detached)
logits as the baseline. The focus-picking loss brings its own classification term L_cls (a
re-weighted CE), so it also replaces the student's CE: L = L_focus(z; t) + CE(t, y) + β·ΣAT.

Self-teacher architecture (docs/methods.md): lateral 1×1 conv + BN to a common width d; one
BiFPN layer with fast normalised fusion; depthwise-separable 3×3 conv + BN + ReLU nodes;
per-stage 1×1 conv + BN + ReLU back to the student's channel counts (refined maps have the
student's stage shapes); global average pooling + linear classifier on the deepest refined map.
"""
# No ``from __future__ import annotations``: the registry checks option types against the
# constructor's annotations.
from typing import Annotated, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, need_features, need_setup
from .focusnet import focus_picking_loss
from .functional import cross_entropy, label_terms, upcast
from .kd import kd_kl

FRSKD_REFERENCE = ("Ji, Shin, Hwang, Park, Moon, Refine Myself by Teaching Myself: Feature Refinement "
                   "via Self-Knowledge Distillation, CVPR 2021")

FUSION_EPS = 1e-4  # BiFPN's fast normalised fusion (Tan, Pang, Le, EfficientDet, CVPR 2020)


# ---------------------------------------------------------------------------- feature loss
def attention_map(fmap: torch.Tensor) -> torch.Tensor:
    """Spatial attention of a B×C×H×W map as B×(H·W): the channel mean of the squared
    activations, L2-normalised over the positions of each sample (attention transfer, p = 2)."""
    if fmap.dim() != 4:
        raise ValueError(f"attention_map: expected a B×C×H×W feature map, got shape {tuple(fmap.shape)}")
    q = upcast(fmap).pow(2).mean(dim=1).flatten(1)
    return F.normalize(q, p=2.0, dim=1)


def attention_transfer_loss(student_maps: Sequence[torch.Tensor],
                            teacher_maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Σ_l mean_{b,j} (a(F_l)_bj − a(T_l)_bj)², a = ``attention_map``; the teacher's maps are
    constants. Channel counts may differ; each pair must have the same batch and spatial size."""
    student_maps, teacher_maps = list(student_maps), list(teacher_maps)
    if not student_maps or len(student_maps) != len(teacher_maps):
        raise ValueError(f"attention_transfer_loss: {len(student_maps)} student maps and "
                         f"{len(teacher_maps)} teacher maps; they pair one to one (at least one)")
    total = None
    for level, (s, t) in enumerate(zip(student_maps, teacher_maps)):
        if s.shape[0] != t.shape[0] or s.shape[2:] != t.shape[2:]:
            raise ValueError(f"attention_transfer_loss: stage {level + 1} maps differ in batch or "
                             f"spatial size: {tuple(s.shape)} vs {tuple(t.shape)}")
        a_s = attention_map(s)
        a_t = attention_map(t.detach()).to(a_s.dtype)
        term = (a_s - a_t).pow(2).mean()
        total = term if total is None else total + term
    return total


# ---------------------------------------------------------------------------- self-teacher
class SeparableConvBlock(nn.Module):
    """Depthwise 3×3 conv → pointwise 1×1 conv → BN → ReLU (a BiFPN node)."""

    def __init__(self, channels: int):
        super().__init__()
        self.depthwise = nn.Conv2d(channels, channels, 3, 1, 1, groups=channels, bias=False)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=False)
        self.bn = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.pointwise(self.depthwise(x))))


class WeightedFusion(nn.Module):
    """Fast normalised fusion: Σ_k w_k·x_k / (Σ_k w_k + ε), w_k = ReLU(learned weight), init 1."""

    def __init__(self, inputs: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(inputs))

    def forward(self, xs: Sequence[torch.Tensor]) -> torch.Tensor:
        w = F.relu(self.weight)
        w = w / (w.sum() + FUSION_EPS)
        out = None
        for k, x in enumerate(xs):
            term = w[k].to(x.dtype) * x
            out = term if out is None else out + term
        return out


def _resize_up(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Top-down resize: nearest-neighbour upsampling to ``like``'s spatial size."""
    if x.shape[2:] == like.shape[2:]:
        return x
    return F.interpolate(x, size=like.shape[2:], mode="nearest")


def _resize_down(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Bottom-up resize: max pooling to ``like``'s spatial size (2×2/2 for halved maps)."""
    if x.shape[2:] == like.shape[2:]:
        return x
    return F.adaptive_max_pool2d(x, like.shape[2:])


class SelfTeacher(nn.Module):
    """FRSKD's self-teacher over n stage maps of channels ``stage_channels`` (shallow → deep).

    L_i = BN(conv1×1(F_i → d))                                  lateral, common width d
    P_n = L_n;  P_i = node(fuse(L_i, up(P_{i+1})))              top-down, i = n−1 … 1
    T_1 = P_1;  T_i = node(fuse(L_i, P_i, down(T_{i−1})))       bottom-up, i = 2 … n−1
    T_n = node(fuse(L_n, down(T_{n−1})))                        (n = 1: T_1 = node(L_1))
    R_i = ReLU(BN(conv1×1(T_i → C_i)))                          refined maps, the student's shapes
    logits = Linear(GAP(R_n))
    ``forward(features)`` returns ``(refined maps, logits)``.
    """

    def __init__(self, stage_channels: Sequence[int], num_classes: int, width: int):
        super().__init__()
        chans = [int(c) for c in stage_channels]
        if not chans or any(c < 1 for c in chans):
            raise ValueError(f"SelfTeacher: needs at least one stage with channels >= 1, got {chans}")
        n = len(chans)
        self.stage_channels = tuple(chans)
        self.width = int(width)
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)) for c in chans)
        # top-down nodes for levels 0 … n−2 (index = level)
        self.td_fuse = nn.ModuleList(WeightedFusion(2) for _ in range(n - 1))
        self.td_node = nn.ModuleList(SeparableConvBlock(width) for _ in range(n - 1))
        # bottom-up nodes for levels 1 … n−1 (index = level − 1); one node on L_1 when n = 1
        if n == 1:
            self.bu_fuse = nn.ModuleList([WeightedFusion(1)])
        else:
            self.bu_fuse = nn.ModuleList(WeightedFusion(3 if i < n - 1 else 2) for i in range(1, n))
        self.bu_node = nn.ModuleList(SeparableConvBlock(width) for _ in range(max(n - 1, 1)))
        self.out = nn.ModuleList(
            nn.Sequential(nn.Conv2d(width, c, 1, bias=False), nn.BatchNorm2d(c), nn.ReLU()) for c in chans)
        self.fc = nn.Linear(chans[-1], num_classes)

    def forward(self, features: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], torch.Tensor]:
        features = list(features)
        n = len(self.stage_channels)
        if len(features) != n:
            raise ValueError(f"SelfTeacher: built for {n} stages, got {len(features)} feature maps")
        for i, (f, c) in enumerate(zip(features, self.stage_channels)):
            if f.dim() != 4 or f.shape[1] != c:
                raise ValueError(f"SelfTeacher: stage {i + 1} map has shape {tuple(f.shape)}, "
                                 f"expected B×{c}×H×W")
        lat = [conv(f) for conv, f in zip(self.lateral, features)]
        if n == 1:
            bottom_up = [self.bu_node[0](self.bu_fuse[0]([lat[0]]))]
        else:
            top_down: List[Optional[torch.Tensor]] = [None] * n
            top_down[n - 1] = lat[n - 1]
            for i in range(n - 2, -1, -1):
                fused = self.td_fuse[i]([lat[i], _resize_up(top_down[i + 1], lat[i])])
                top_down[i] = self.td_node[i](fused)
            bottom_up = [top_down[0]]
            for i in range(1, n):
                inputs = [lat[i]] + ([top_down[i]] if i < n - 1 else []) \
                    + [_resize_down(bottom_up[i - 1], lat[i])]
                bottom_up.append(self.bu_node[i - 1](self.bu_fuse[i - 1](inputs)))
        refined = [conv(t) for conv, t in zip(self.out, bottom_up)]
        logits = self.fc(torch.flatten(F.adaptive_avg_pool2d(refined[-1], 1), 1))
        return refined, logits


# ---------------------------------------------------------------------------- the loss
def frskd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor,
               features: Sequence[torch.Tensor], refined: Sequence[torch.Tensor], labels: torch.Tensor,
               alpha: float = 2.0, beta: float = 100.0, temperature: float = 4.0,
               loss: str = "kd", focus_alpha: float = 1.0, focus_beta: float = 1.0,
               focus_variant: str = "paper", focus_detach: bool = True) -> Dict[str, torch.Tensor]:
    """The weighted FRSKD terms; their sum is the loss.

    ``logits``/``features``: the student's logits and stage maps; ``teacher_logits``/``refined``:
    the self-teacher's (they get gradient from ``teacher_ce`` only).
    loss="kd":    {"ce": CE(z, y), "teacher_ce": CE(t, y), "kd": α·T²·KL(softmax(t/T) ‖ softmax(z/T)),
                   "feat": β·Σ_l AT(F_l, R_l)}
    loss="focus": {"cls", "att", "ent": the focus-picking loss of z with baseline t (its L_cls takes
                   the place of CE(z, y)), "teacher_ce", "feat"}; α and T are unused.
    """
    if loss not in ("kd", "focus"):
        raise ValueError(f"frskd_loss: loss must be 'kd' or 'focus', got {loss!r}")
    terms: Dict[str, torch.Tensor] = {}
    if loss == "kd":
        terms["ce"] = cross_entropy(logits, labels)
    else:
        terms.update(focus_picking_loss(logits, teacher_logits.detach(), labels, alpha=focus_alpha,
                                        beta=focus_beta, variant=focus_variant, detach=focus_detach))
    terms["teacher_ce"] = cross_entropy(teacher_logits, labels)
    if loss == "kd":
        terms["kd"] = alpha * kd_kl(logits, teacher_logits, temperature)
    terms["feat"] = beta * attention_transfer_loss(features, refined)
    return terms


# ---------------------------------------------------------------------------- the method
Weight = Annotated[float, Range(0.0)]


@METHODS.register("frskd", "FRSKD self-knowledge distillation: a BiFPN-like self-teacher on the stage maps "
                           "teaches logits (KD) and attention maps; loss=focus uses FocusNet's loss instead of KD",
                  reference=FRSKD_REFERENCE)
class FRSKD(Method):
    """Options:
    alpha:         weight of the KD term (2, FRSKD's CIFAR setting).
    beta:          weight of the attention-transfer feature term (100, FRSKD's CIFAR setting).
    temperature:   T of the KD term (4).
    width:         the self-teacher's common channel width d; null = the deepest stage's channels.
    detach_inputs: feed the self-teacher detached stage maps (no gradient from its CE into the
                   student); default false: both are trained jointly through one loss.
    loss:          kd | focus (FocusNet Table 7 "OurLoss+FRSKD": the focus-picking loss with the
                   self-teacher as the baseline replaces CE(student) and the KD term).
    focus_alpha, focus_beta, focus_variant, focus_detach: the focus-picking loss's α, β, variant
                   and d-detach (FocusNet defaults 1, 1, paper; detach true as the authors used
                   for this comparison). Only with loss=focus.
    Logged terms: ``ce``, ``teacher_ce``, ``kd``, ``feat`` (kd); ``cls``, ``att``, ``ent``,
    ``teacher_ce``, ``feat`` (focus).
    """

    requires = Requires(features=True)

    def __init__(self, num_classes: int, alpha: Weight = 2.0, beta: Weight = 100.0,
                 temperature: Annotated[float, Range(0.0, low_open=True)] = 4.0,
                 width: Optional[Annotated[int, Range(1)]] = None, detach_inputs: bool = False,
                 loss: Literal["kd", "focus"] = "kd", focus_alpha: Weight = 1.0, focus_beta: Weight = 1.0,
                 focus_variant: Literal["paper", "official"] = "paper", focus_detach: bool = True):
        super().__init__(num_classes)
        self.alpha, self.beta, self.temperature = alpha, beta, temperature
        self.focus_alpha, self.focus_beta = focus_alpha, focus_beta
        self.width = width
        self.detach_inputs = detach_inputs
        self.loss_kind = loss
        self.focus_variant = focus_variant
        self.focus_detach = focus_detach
        self.self_teacher: Optional[SelfTeacher] = None

    def setup(self, model, teachers=()) -> None:
        chans = tuple(int(c) for c in getattr(model, "stage_channels", ()))
        if not chans:
            raise ConfigError("model.name: frskd builds its self-teacher on the model's stage feature maps, "
                              "but this model declares no stage_channels")
        width = self.width if self.width is not None else chans[-1]
        self.self_teacher = SelfTeacher(chans, self.num_classes, width)

    def teach(self, features: Sequence[torch.Tensor]) -> Tuple[List[torch.Tensor], torch.Tensor]:
        """The self-teacher on the student's stage maps: ``(refined maps, logits)``."""
        teacher = need_setup(self.self_teacher, "frskd", "the self-teacher")
        if self.detach_inputs:
            features = [f.detach() for f in features]
        return teacher(features)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        features = need_features(out, "frskd")
        refined, teacher_logits = self.teach(features)
        return label_terms(lambda y: frskd_loss(
                          out.logits, teacher_logits, features, refined, y,
                          alpha=self.alpha, beta=self.beta, temperature=self.temperature,
                          loss=self.loss_kind, focus_alpha=self.focus_alpha, focus_beta=self.focus_beta,
                          focus_variant=self.focus_variant, focus_detach=self.focus_detach), batch)
