"""Joint guided learning (Zhao et al., "Improving Image Classification Through Joint Guided
Learning", IEEE TIM 2022, §III, Eq. 1–10, Alg. 1) and the Label Refinery it builds on
(Bagherinezhad et al., "Label Refinery", 2018).

A teacher N₁ is first trained with CE. An equal student N₂ then learns from the teacher's
predictions on the same augmented crop, P¹ = softmax(N₁(f(x))), computed online (Eq. 1):

  label_refinery  mean_i −Σ_k P¹_ik log p_ik: every crop, hard labels unused.
  glr             the same, restricted to crops the teacher classifies correctly and normalised
                  by their count (guided label refinery, Eq. 3–6).
  cd              channel distillation (Eq. 7–9): per stage, the channel means (GAP) of the
                  student's feature maps regress onto the teacher's; added to hard-label CE,
                  since a student trained on L_cd alone never trains its classifier.
  glr_cd          Eq. 10: (1−λ)·L_g + λ·L_cd. Alg. 1 step 3 minimises this total alone; hard
                  labels enter only through the GLR mask, so no CE term is added.

Variant ``official_cd`` (cd, glr_cd) follows the channel-distillation code of Zhou et al. 2020,
the closest published code (the JGL authors released none): a 1×1 conv → BN → ReLU adapter on
every student stage, "guided KD" in place of GLR, hard-label CE, the "early decay teacher"
epoch schedule of the loss weights, and the teacher in train mode. See docs/methods.md.
"""
from __future__ import annotations

from typing import Annotated, Dict, List, Literal, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, TeacherMode, need_features, need_setup, need_teacher
from .functional import cross_entropy, label_terms, masked_mean, soft_cross_entropy, tempered_kl, upcast

JGL_REFERENCE = "Zhao et al., Improving Image Classification Through Joint Guided Learning, IEEE TIM 2022"
LR_REFERENCE = "Bagherinezhad et al., Label Refinery: Improving ImageNet Classification through Label Progression, 2018"

# The paper's λ (Fig. 3, §IV-A3): best value per dataset and backbone.
PAPER_LAMBDA = {
    ("cifar100", "resnet50"): 0.9, ("cifar100", "resnet18"): 0.8,
    ("tinyimagenet", "resnet50"): 0.9, ("tinyimagenet", "resnet18"): 0.5,
    ("cub", "resnet50"): 0.2, ("cub", "resnet18"): 0.3,
    ("dogs", "resnet50"): 0.4, ("dogs", "resnet18"): 0.1,
}
DEFAULT_LAMBDA = PAPER_LAMBDA[("cifar100", "resnet18")]


# ---------------------------------------------------------------------------- plain functions
def label_refinery_loss(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """mean_i −Σ_k P¹_ik · log softmax(z)_ik with P¹ = softmax(teacher) (Eq. 1; no gradient
    through the teacher)."""
    target = torch.softmax(upcast(teacher_logits.detach()), dim=1)
    return soft_cross_entropy(logits, target)  # Eq. 1


def teacher_correct(teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """I(C¹_i, Y_i) of Eq. 2–3 as a 0/1 float vector: the teacher's top class is the label."""
    return (teacher_logits.detach().argmax(dim=1) == labels).to(upcast(teacher_logits).dtype)


def glr_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Guided label refinery (Eq. 3–6): Σ_i I_i·(−Σ_k P¹_ik log p_ik) / Σ_i I_i.

    Only crops the teacher classifies correctly contribute; the loss is normalised by their
    count (Eq. 3). The cross-entropy form of Eq. 6 differs from Eq. 3's KL by the teacher's
    entropy, a constant, so the gradient is the same. With no correct crop the result is a zero
    that still carries the graph (gradient zeros), never NaN. A 0/1 weight instead of boolean
    indexing and a clamped denominator keep it free of host synchronisation.
    """
    target = torch.softmax(upcast(teacher_logits.detach()), dim=1)
    per_sample = soft_cross_entropy(logits, target, reduction="none")
    return masked_mean(per_sample, teacher_correct(teacher_logits, labels))  # Eq. 3


def guided_kd_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
                   temperature: float = 1.0) -> torch.Tensor:
    """Channel-distillation code's "guided KD" (official_cd): Σ_i I_i·KL(softmax(b_i/T) ‖
    softmax(z_i/T))·T² / #correct, a summed KL over teacher-correct rows (0 when none)."""
    per_sample = tempered_kl(logits, teacher_logits, temperature, reduction="none")
    return masked_mean(per_sample, teacher_correct(teacher_logits, labels))


def channel_distillation_loss(student_features: Sequence[torch.Tensor],
                              teacher_features: Sequence[torch.Tensor],
                              adapters: Optional[Sequence[nn.Module]] = None) -> torch.Tensor:
    """Channel distillation (Eq. 7–9): Σ_l Σ_i Σ_c (ZS_l,ic − ZT_l,ic)² / (N·C_l), where
    ZS, ZT are the global-average-pooled stage maps (channel statistics) of student and teacher.

    ``adapters`` (one module per stage, official_cd) map each student map to the teacher's
    channel count before pooling. Without them, stage counts and channel counts must match.
    Spatial sizes may differ: pooling removes them. No gradient reaches the teacher.
    """
    student_features, teacher_features = list(student_features), list(teacher_features)
    if len(student_features) != len(teacher_features):
        raise ValueError(
            f"channel_distillation_loss: the student has {len(student_features)} stage maps and "
            f"the teacher {len(teacher_features)}; channel distillation pairs stages one to one")
    if adapters is not None and len(adapters) != len(student_features):
        raise ValueError(f"channel_distillation_loss: {len(adapters)} adapters for "
                         f"{len(student_features)} stages")
    total = None
    for level, (s, t) in enumerate(zip(student_features, teacher_features)):
        if adapters is not None:
            s = adapters[level](s)
        if s.shape[1] != t.shape[1]:
            raise ValueError(
                f"channel_distillation_loss: stage {level + 1} has {s.shape[1]} student channels "
                f"and {t.shape[1]} teacher channels; use equal backbones or per-stage adapters "
                f"(variant official_cd)")
        zs = upcast(s).mean(dim=(2, 3))                       # Eq. 8
        zt = upcast(t.detach()).mean(dim=(2, 3)).to(zs.dtype)  # Eq. 7
        term = (zs - zt).pow(2).mean()                        # Σ_i Σ_c (·)² / (N·C_l), Eq. 9
        total = term if total is None else total + term
    if total is None:
        raise ValueError("channel_distillation_loss: no stage feature maps given")
    return total


#: The channel-distillation code's "early decay teacher" (cifar_config.py / imagenet_config.py
#: and utils/util.py of zhouzaida/channel-distillation): base weights of CE, guided KD and CD,
#: the CD decay factor, the warm-up (CE and KD off while E <= warm-up) and the CD steps.
OFFICIAL_CD_SCHEDULES = {
    "cifar": {"ce": 1.0, "kd": 0.1, "cd": 6.0, "factor": 0.9, "warmup": 60, "milestones": (60, 160)},
    "imagenet": {"ce": 1.0, "kd": 1.0, "cd": 6.0, "factor": 0.9, "warmup": 30, "period": 30},
}


def official_cd_weights(epoch: int, schedule: str = "cifar", warmup_epochs: Optional[int] = None,
                        milestones: Optional[Sequence[int]] = None) -> Tuple[float, float, float]:
    """(CE, KD, CD) weights of the channel-distillation code's schedule at the **1-based**
    ``epoch`` E (METHODS.md §4).

    cifar:    CE 0 and KD 0 for E <= 60, then CE 1 and KD 0.1; CD 6·0.9^k with k the number of
              milestones (60, 160) that E has reached (6, 5.4, 4.86).
    imagenet: CE and KD 0 for E <= 30, then 1 (their decay factor is 1 in the authors' config);
              CD 6·0.9^⌊E/30⌋.
    ``warmup_epochs`` replaces the warm-up (and, for imagenet, the period P of ⌊E/P⌋);
    ``milestones`` replaces cifar's CD steps — for runs much shorter than the authors' 200 / 100
    epochs."""
    if schedule not in OFFICIAL_CD_SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(OFFICIAL_CD_SCHEDULES)}, got {schedule!r}")
    s = OFFICIAL_CD_SCHEDULES[schedule]
    warm = s["warmup"] if warmup_epochs is None else int(warmup_epochs)
    on = epoch > warm
    if schedule == "cifar":
        k = sum(epoch >= m for m in (s["milestones"] if milestones is None else milestones))
    else:
        k = epoch // max(warm, 1) if warmup_epochs is not None else epoch // s["period"]
    return (s["ce"] if on else 0.0, s["kd"] if on else 0.0, s["cd"] * s["factor"] ** k)


def make_cd_adapters(student_channels: Sequence[int], teacher_channels: Sequence[int]) -> nn.ModuleList:
    """One conv1×1 → BN → ReLU per stage, student channels → teacher channels (official_cd;
    built even where the counts already match)."""
    return nn.ModuleList(
        nn.Sequential(nn.Conv2d(int(cs), int(ct), kernel_size=1, bias=False),
                      nn.BatchNorm2d(int(ct)), nn.ReLU())
        for cs, ct in zip(student_channels, teacher_channels)
    )


# ---------------------------------------------------------------------------- methods
@METHODS.register("label_refinery", "Label Refinery: CE against the teacher's softmax on the same crop",
                  reference=LR_REFERENCE)
class LabelRefinery(Method):
    """The student is trained on the teacher's predicted distribution of each crop; hard labels
    are not used. Option ``teacher_mode``: eval (default, the paper) | train (the authors' code,
    hessamb/label-refinery, runs the refining model in train mode). Logged term: ``refinery``."""

    requires = Requires(teachers=1)

    def __init__(self, num_classes: int, teacher_mode: TeacherMode = "eval"):
        super().__init__(num_classes)
        self.requires = Requires(teachers=1, teacher_mode=teacher_mode)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        (teacher,) = need_teacher(teachers, "label_refinery")
        return {"refinery": label_refinery_loss(out.logits, teacher.logits)}


@METHODS.register("glr", "guided label refinery: teacher soft labels on teacher-correct crops only",
                  reference=JGL_REFERENCE)
class GuidedLabelRefinery(Method):
    """Eq. 3–6. Option ``teacher_mode`` eval (default) | train. Logged term: ``glr``."""

    requires = Requires(teachers=1)

    def __init__(self, num_classes: int, teacher_mode: TeacherMode = "eval"):
        super().__init__(num_classes)
        self.requires = Requires(teachers=1, teacher_mode=teacher_mode)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        (teacher,) = need_teacher(teachers, "glr")
        return {"glr": label_terms(lambda y: glr_loss(out.logits, teacher.logits, y), batch)}


Lambda = Annotated[float, Range(0.0, 1.0)]
Weight = Optional[Annotated[float, Range(0.0)]]
Variant = Literal["paper", "official_cd"]
Schedule = Literal["cifar", "imagenet"]
Epochs = Optional[Annotated[int, Range(0)]]


class _ChannelDistillationBase(Method):
    """Shared machinery of ``cd`` and ``glr_cd``: options, adapters, the epoch buffer.

    ``_class_term`` names the classification term that Eq. 10's (1−λ) weights ("ce" for cd,
    "glr" for glr_cd).
    """

    requires = Requires(teachers=1, features=True)
    _name = ""
    _class_term = ""

    def __init__(self, num_classes: int, lam: float, class_weight: Optional[float],
                 cd_weight: Optional[float], variant: str, schedule: str, warmup_epochs: Optional[int],
                 milestones: Optional[List[int]], teacher_mode: Optional[str]):
        super().__init__(num_classes)
        if milestones is not None and any(isinstance(m, bool) or not isinstance(m, int) or m < 1
                                          for m in milestones):
            raise ConfigError(f"method.options.milestones: expected a list of epochs >= 1, got {milestones!r}")
        self.lam = lam
        self.variant = variant
        self.schedule = schedule
        self.warmup_epochs = warmup_epochs
        self.milestones = None if milestones is None else tuple(milestones)
        # official_cd: the authors' code runs the teacher in train mode (BatchNorm on batch statistics)
        mode = teacher_mode or ("train" if variant == "official_cd" else "eval")
        self.requires = Requires(teachers=1, features=True, teacher_mode=mode)
        self.class_weight = 1.0 - lam if class_weight is None else class_weight   # Eq. 10: 1−λ
        self.cd_weight = lam if cd_weight is None else cd_weight                  # Eq. 10: λ
        self.adapters: Optional[nn.ModuleList] = None
        # The epoch, for official_cd's schedule: a buffer so it is checkpointed; ``_epoch`` is a
        # host copy so the loss never reads the device.
        self.register_buffer("epoch", torch.zeros((), dtype=torch.long))
        self._epoch = 0

    def setup(self, model, teachers=()) -> None:
        if not teachers:
            raise ConfigError(f"method.name: {self._name} needs a teacher model")
        s_ch = tuple(int(c) for c in getattr(model, "stage_channels", ()))
        t_ch = tuple(int(c) for c in getattr(teachers[0], "stage_channels", ()))
        if not s_ch or len(s_ch) != len(t_ch):
            raise ConfigError(
                f"model.name: {self._name} pairs backbone stages one to one, but the student has "
                f"{len(s_ch)} stages and the teacher {len(t_ch)}")
        if self.variant == "official_cd":
            self.adapters = make_cd_adapters(s_ch, t_ch)
        elif s_ch != t_ch:
            raise ConfigError(
                f"method.options.variant: {self._name} (paper) needs equal stage channels, but the "
                f"student has {'/'.join(map(str, s_ch))} and the teacher {'/'.join(map(str, t_ch))}; "
                f"use variant official_cd, which adds 1x1 adapters")

    def on_epoch_start(self, epoch: int) -> None:
        """``epoch`` is the trainer's 0-based index; the schedule reads 1-based E = epoch + 1."""
        self._epoch = int(epoch)
        self.epoch.fill_(int(epoch))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + "epoch"
        if key in state_dict:
            self._epoch = int(state_dict[key])

    def weights(self) -> dict:
        """The current weights of the logged terms."""
        if self.variant == "official_cd":
            ce_w, kd_w, cd_w = official_cd_weights(self._epoch + 1, self.schedule, self.warmup_epochs,
                                                   self.milestones)
            return self._official_weights(ce_w, kd_w, cd_w)
        return {self._class_term: self.class_weight, "cd": self.cd_weight}

    def _cd(self, out: ModelOutput, teacher: ModelOutput) -> torch.Tensor:
        student, teach = need_features(out, self._name), need_features(teacher, self._name)
        if self.variant == "official_cd":
            need_setup(self.adapters, self._name, "the official_cd adapters")
        return channel_distillation_loss(student, teach, self.adapters)


@METHODS.register("cd", "channel distillation: CE plus GAP channel statistics matched to the teacher's, per stage",
                  reference=JGL_REFERENCE)
class ChannelDistillation(_ChannelDistillationBase):
    """L = (1−λ)·CE + λ·L_cd (Eq. 7–9 with Eq. 10's weighting; GLR replaced by hard-label CE,
    the paper defines no CD-only objective).

    Options:
    lam:           λ (default 0.8, the paper's CIFAR-100 / ResNet-18 value for glr_cd).
    ce_weight:     overrides 1−λ.
    cd_weight:     overrides λ.
    variant:       paper | official_cd (adapters, the authors' schedule of the CE and CD weights,
                   teacher in train mode; lam and the weights are then ignored).
    schedule, warmup_epochs, milestones: official_cd's schedule (see ``official_cd_weights``):
                   cifar (default) | imagenet; null = the authors' 60 / 30 and (60, 160).
    teacher_mode:  eval | train; null = the variant's (paper eval, official_cd train).
    Logged terms: ``ce``, ``cd``.
    """

    _name = "cd"
    _class_term = "ce"

    def __init__(self, num_classes: int, lam: Lambda = DEFAULT_LAMBDA, ce_weight: Weight = None,
                 cd_weight: Weight = None, variant: Variant = "paper", schedule: Schedule = "cifar",
                 warmup_epochs: Epochs = None, milestones: Optional[List[int]] = None,
                 teacher_mode: Optional[TeacherMode] = None):
        super().__init__(num_classes, lam, ce_weight, cd_weight, variant, schedule, warmup_epochs, milestones,
                         teacher_mode)

    @staticmethod
    def _official_weights(ce_w, kd_w, cd_w):
        return {"ce": ce_w, "cd": cd_w}

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        (teacher,) = need_teacher(teachers, "cd")
        w = self.weights()
        return {"ce": w["ce"] * label_terms(lambda y: cross_entropy(out.logits, y), batch),   # Eq. 10 with CE for L_g: (1−λ)·CE
                "cd": w["cd"] * self._cd(out, teacher)}                # Eq. 10: λ·L_cd


@METHODS.register("glr_cd", "joint guided learning: (1-lam)*guided label refinery + lam*channel distillation",
                  reference=JGL_REFERENCE)
class JointGuidedLearning(_ChannelDistillationBase):
    """L = (1−λ)·L_g + λ·L_cd (Eq. 10, Alg. 1 step 3); no hard-label CE (Alg. 1 minimises this
    total only).

    Options:
    lam:           λ of Eq. 10 (default 0.8: CIFAR-100 / ResNet-18 in the paper).
    glr_weight:    overrides 1−λ.
    cd_weight:     overrides λ.
    variant:       paper | official_cd: adapters, L = w_ce·CE + w_kd·guided KD + w_cd·L_cd with
                   the authors' schedule (CIFAR: w_ce = w_kd = 0 for E <= 60, then 1 and 0.1;
                   w_cd = 6, 5.4 from E = 60, 4.86 from E = 160), teacher in train mode (lam and
                   the weights are then ignored).
    schedule, warmup_epochs, milestones, teacher_mode: as for ``cd``.
    Logged terms: ``glr``, ``cd`` (paper); ``ce``, ``kd``, ``cd`` (official_cd).
    """

    _name = "glr_cd"
    _class_term = "glr"

    def __init__(self, num_classes: int, lam: Lambda = DEFAULT_LAMBDA, glr_weight: Weight = None,
                 cd_weight: Weight = None, variant: Variant = "paper", schedule: Schedule = "cifar",
                 warmup_epochs: Epochs = None, milestones: Optional[List[int]] = None,
                 teacher_mode: Optional[TeacherMode] = None):
        super().__init__(num_classes, lam, glr_weight, cd_weight, variant, schedule, warmup_epochs, milestones,
                         teacher_mode)

    @staticmethod
    def _official_weights(ce_w, kd_w, cd_w):
        return {"ce": ce_w, "kd": kd_w, "cd": cd_w}

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        (teacher,) = need_teacher(teachers, "glr_cd")
        w = self.weights()
        cd = w["cd"] * self._cd(out, teacher)                                        # Eq. 10: λ·L_cd
        if self.variant == "official_cd":
            return {"ce": w["ce"] * label_terms(lambda y: cross_entropy(out.logits, y), batch),
                    "kd": w["kd"] * label_terms(lambda y: guided_kd_loss(out.logits, teacher.logits, y), batch),
                    "cd": cd}
        return {"glr": w["glr"] * label_terms(lambda y: glr_loss(out.logits, teacher.logits, y), batch), "cd": cd}  # Eq. 10: (1−λ)·L_g
