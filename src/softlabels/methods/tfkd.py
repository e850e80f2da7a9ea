"""Teacher-free knowledge distillation (Yuan, Tay, Li, Wang, Feng, "Revisiting Knowledge
Distillation via Label Smoothing Regularization", CVPR 2020, §5).

The paper argues that KD is a learned label smoothing, and proposes two teacher-free variants:

  tfkd_self  Tf-KD_self: the student is first trained normally; that pre-trained copy (same
             architecture) then teaches a fresh student with the KD loss
             L = (1−α)·CE(z, y) + α·T²·KL(softmax(b/T) ‖ softmax(z/T)).
  tfkd_reg   Tf-KD_reg: a manually designed "virtual teacher" with 100 % accuracy,
             p^d(k) = a for the true class, (1−a)/(K−1) elsewhere, softened with temperature T:
             L = (1−α)·CE(z, y) + α·T²·KL(p^d_T ‖ softmax(z/T)).

Variant ``official`` reproduces the authors' released code, whose soft terms differ in scale and
(for tfkd_reg) in form; see docs/methods.md.

Defaults are the authors' CIFAR-100 / ResNet-18 settings (the released configs
``experiments/kd_experiments/resnet18_distill/resnet18_self_teacher/params.json`` and
``experiments/base_experiments/base_resnet18/params.json`` of
github.com/yuanli2333/Teacher-free-Knowledge-Distillation); the paper defers its per-model
values to its supplementary material.
"""
from __future__ import annotations

from typing import Annotated, Dict, Literal, Optional, Sequence

import torch

from ..errors import ConfigError
from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, TeacherMode, need_teacher
from .functional import cross_entropy, label_terms, target_kl, upcast
from .kd import kd_kl

TFKD_REFERENCE = ("Yuan, Tay, Li, Wang, Feng, Revisiting Knowledge Distillation via Label Smoothing "
                  "Regularization, CVPR 2020")

# CIFAR-100 / ResNet-18 settings of the authors' released configs (see the module docstring).
SELF_TEMPERATURE, SELF_ALPHA, SELF_MULTIPLIER = 6.0, 0.95, 50.0
REG_TEMPERATURE, REG_ALPHA, REG_MULTIPLIER = 20.0, 0.1, 100.0
# The virtual teacher's probability of the true class: the released code hard-codes 0.99; the
# paper requires a >= 0.9 so that the virtual teacher is always right and confident.
REG_CORRECT_PROB = 0.99


# ---------------------------------------------------------------------------- plain functions
def virtual_teacher_distribution(labels: torch.Tensor, num_classes: int, correct_prob: float = REG_CORRECT_PROB,
                                 dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Tf-KD_reg's manually designed teacher p^d (B×K): ``a`` on the true class and
    ``(1−a)/(K−1)`` on every other class."""
    if num_classes < 2:
        raise ValueError(f"virtual_teacher_distribution: needs at least 2 classes, got {num_classes}")
    off = (1.0 - correct_prob) / (num_classes - 1)
    dist = torch.full((labels.shape[0], num_classes), off, dtype=dtype, device=labels.device)
    return dist.scatter_(1, labels.long()[:, None], correct_prob)


def soften_distribution(dist: torch.Tensor, temperature: float) -> torch.Tensor:
    """A distribution softened with temperature T as KD softens a teacher: the teacher whose
    logits are ``log p`` gives ``softmax(log p / T) ∝ p^(1/T)``. Zero entries stay zero."""
    return torch.softmax(torch.log(dist) / temperature, dim=1)


def tfkd_reg_kl(logits: torch.Tensor, labels: torch.Tensor, temperature: float = REG_TEMPERATURE,
                correct_prob: float = REG_CORRECT_PROB, variant: str = "paper",
                multiplier: float = REG_MULTIPLIER) -> torch.Tensor:
    """The soft term of Tf-KD_reg, before its weight α (batch mean).

    paper:    T²·KL(p^d_T ‖ softmax(z/T)) with p^d_T = softmax(log p^d / T).
    official: the released code: ``multiplier``·KLDivLoss(log_softmax(z), softmax(p^d / T)) with
              PyTorch's element-wise 'mean' reduction, i.e. (multiplier/K)·KL(softmax(p^d/T) ‖
              softmax(z)): the probabilities themselves are divided by T and the student is not
              softened; no T².
    """
    logits = upcast(logits)
    k = logits.shape[1]
    dist = virtual_teacher_distribution(labels, k, correct_prob, logits.dtype)
    if variant == "paper":
        return target_kl(logits, soften_distribution(dist, temperature), temperature)  # §5: T²·KL(p^d_T ‖ p_T)
    if variant == "official":
        return (multiplier / k) * target_kl(logits, torch.softmax(dist / temperature, dim=1), 1.0)
    raise ValueError(f"tfkd_reg_kl: variant must be 'paper' or 'official', got {variant!r}")


def tfkd_reg_loss(logits: torch.Tensor, labels: torch.Tensor, alpha: float = REG_ALPHA,
                  temperature: float = REG_TEMPERATURE, correct_prob: float = REG_CORRECT_PROB,
                  variant: str = "paper", multiplier: float = REG_MULTIPLIER) -> torch.Tensor:
    """Tf-KD_reg: (1−α)·CE(z, y) + α·(soft term of :func:`tfkd_reg_kl`)."""
    ce = cross_entropy(logits, labels)
    return (1 - alpha) * ce + alpha * tfkd_reg_kl(logits, labels, temperature, correct_prob, variant, multiplier)


def tfkd_self_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = SELF_TEMPERATURE,
                 variant: str = "paper", multiplier: float = SELF_MULTIPLIER) -> torch.Tensor:
    """The soft term of Tf-KD_self, before its weight α: T²·KL(softmax(b/T) ‖ softmax(z/T))
    (``kd_kl``); variant ``official`` scales it by multiplier/K (the released code's
    KLDivLoss averages over the K classes too, then multiplies by ``multiplier``)."""
    kl = kd_kl(logits, teacher_logits, temperature)
    if variant == "paper":
        return kl
    if variant == "official":
        return (multiplier / logits.shape[1]) * kl
    raise ValueError(f"tfkd_self_kl: variant must be 'paper' or 'official', got {variant!r}")


def tfkd_self_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
                   temperature: float = SELF_TEMPERATURE, alpha: float = SELF_ALPHA, variant: str = "paper",
                   multiplier: float = SELF_MULTIPLIER) -> torch.Tensor:
    """Tf-KD_self: (1−α)·CE + α·T²·KL(softmax(b/T) ‖ softmax(z/T)), ``b`` from a pre-trained
    copy of the student; the paper form equals ``kd_loss`` with T = 6, α = 0.95."""
    ce = cross_entropy(logits, labels)
    return (1 - alpha) * ce + alpha * tfkd_self_kl(logits, teacher_logits, temperature, variant, multiplier)


def architecture_mismatch(student, teacher) -> Optional[str]:
    """Why ``teacher`` is not the student's architecture (class, parameter names and shapes), or
    None when they match."""
    if type(student) is not type(teacher):
        return f"the student is a {type(student).__name__} and the teacher a {type(teacher).__name__}"
    s = {n: tuple(p.shape) for n, p in student.named_parameters()}
    t = {n: tuple(p.shape) for n, p in teacher.named_parameters()}
    if s.keys() != t.keys():
        only_t, only_s = sorted(t.keys() - s.keys()), sorted(s.keys() - t.keys())
        example = f"{only_t[0]!r} only in the teacher" if only_t else f"{only_s[0]!r} only in the student"
        return f"the student has {len(s)} parameter tensors and the teacher {len(t)} ({example})"
    for name, shape in s.items():
        if t[name] != shape:
            return (f"parameter {name} is {'x'.join(map(str, shape))} in the student and "
                    f"{'x'.join(map(str, t[name]))} in the teacher")
    return None


# ---------------------------------------------------------------------------- methods
Temperature = Annotated[float, Range(0.0, low_open=True)]
Weight = Annotated[float, Range(0.0, 1.0)]
Multiplier = Annotated[float, Range(0.0)]


@METHODS.register("tfkd_self", "Tf-KD self-training: KD from a pre-trained copy of the student (T=6, a=0.95)",
                  reference=TFKD_REFERENCE)
class TeacherFreeSelfKD(Method):
    """Tf-KD_self: ``kd``'s loss with the teacher a pre-trained model of the student's own
    architecture.

    Options: ``temperature`` T (default 6) and ``alpha`` α (default 0.95): the authors' CIFAR-100
    ResNet-18 self-teacher config. ``same_architecture`` (default true) rejects a teacher of
    another class or other parameter shapes before training. ``variant`` paper | official;
    ``multiplier`` (official only, default 50, the same config) scales the KL by multiplier/K.
    ``teacher_mode`` eval (default; the released code also evaluates the teacher in eval mode) |
    train. Logged terms: ``ce`` (weighted 1−α, left out when α = 1) and ``kl``.
    """

    requires = Requires(teachers=1)

    def __init__(self, num_classes: int, temperature: Temperature = SELF_TEMPERATURE, alpha: Weight = SELF_ALPHA,
                 same_architecture: bool = True, variant: Literal["paper", "official"] = "paper",
                 multiplier: Multiplier = SELF_MULTIPLIER, teacher_mode: TeacherMode = "eval"):
        super().__init__(num_classes)
        self.temperature, self.alpha = temperature, alpha
        self.same_architecture = same_architecture
        self.variant, self.multiplier = variant, multiplier
        self.requires = Requires(teachers=1, teacher_mode=teacher_mode)

    def setup(self, model, teachers=()) -> None:
        if not teachers:
            raise ConfigError("method.name: tfkd_self needs a pre-trained copy of the student as its teacher "
                              "(a pipeline stage, or compare with --teacher ce)")
        if self.same_architecture:
            why = architecture_mismatch(model, teachers[0])
            if why is not None:
                raise ConfigError(
                    f"model.name: tfkd_self distils from a pre-trained copy of the student, but {why}; "
                    f"train the teacher with the student's model, or set "
                    f"method.options.same_architecture=false")

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        (teacher,) = need_teacher(teachers, "tfkd_self")
        terms = {}
        if self.alpha < 1.0:
            terms["ce"] = (1 - self.alpha) * label_terms(lambda y: cross_entropy(out.logits, y), batch)
        terms["kl"] = self.alpha * tfkd_self_kl(out.logits, teacher.logits, self.temperature,
                                                self.variant, self.multiplier)
        return terms


@METHODS.register("tfkd_reg", "Tf-KD with a virtual teacher: a on the true class, (1-a)/(K-1) elsewhere",
                  reference=TFKD_REFERENCE)
class TeacherFreeRegularization(Method):
    """Tf-KD_reg: no teacher model; a manually designed distribution is distilled instead.

    Options: ``alpha`` α (default 0.1), ``temperature`` T (default 20), ``correct_prob`` a
    (default 0.99): the authors' CIFAR-100 ResNet-18 config and the a hard-coded in their loss.
    ``variant`` paper | official (the released code's form), ``multiplier`` (official only,
    default 100). Logged terms: ``ce`` (weighted 1−α, left out when α = 1) and ``kl``.
    """

    def __init__(self, num_classes: int, alpha: Weight = REG_ALPHA, temperature: Temperature = REG_TEMPERATURE,
                 correct_prob: Annotated[float, Range(0.0, 1.0, low_open=True, high_open=True)] = REG_CORRECT_PROB,
                 variant: Literal["paper", "official"] = "paper", multiplier: Multiplier = REG_MULTIPLIER):
        super().__init__(num_classes)
        if num_classes < 2:
            raise ConfigError(f"method.name: tfkd_reg needs at least 2 classes, got {num_classes}")
        self.alpha, self.temperature, self.correct_prob = alpha, temperature, correct_prob
        self.variant, self.multiplier = variant, multiplier

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        terms = {}
        if self.alpha < 1.0:
            terms["ce"] = (1 - self.alpha) * label_terms(lambda y: cross_entropy(out.logits, y), batch)
        terms["kl"] = self.alpha * label_terms(lambda y: tfkd_reg_kl(
            out.logits, y, self.temperature, self.correct_prob, self.variant, self.multiplier), batch)
        return terms
