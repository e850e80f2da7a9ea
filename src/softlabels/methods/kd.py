"""Knowledge distillation (Hinton, Vinyals, Dean, "Distilling the Knowledge in a Neural
Network", 2015): the student matches the temperature-softened predictions of a frozen teacher.

L = (1−a)·CE(z, y) + a·T²·KL(softmax(b/T) ‖ softmax(z/T)), the T² keeping the soft term's
gradient scale independent of T (Hinton et al. §2).
"""
from __future__ import annotations

from typing import Annotated, Dict, Sequence

import torch

from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method, Requires, TeacherMode, need_teacher
from .functional import cross_entropy, label_terms, tempered_kl


def kd_kl(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """T²·KL(softmax(b/T) ‖ softmax(z/T)), averaged over the batch; the teacher is a constant."""
    return tempered_kl(logits, teacher_logits, temperature)  # Hinton et al. §2: T²·KL


def kd_loss(logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """(1−α)·CE + α·T²·KL(softmax(b/T) ‖ softmax(z/T))."""
    return (1 - alpha) * cross_entropy(logits, labels) + alpha * kd_kl(logits, teacher_logits, temperature)


@METHODS.register("kd", "knowledge distillation from a frozen teacher: (1-a)*CE + a*T^2*KL(teacher || student)",
                  reference="Hinton, Vinyals, Dean, Distilling the Knowledge in a Neural Network, 2015")
class KnowledgeDistillation(Method):
    """Options: ``temperature`` T (default 4) and ``alpha`` a, the weight of the soft term
    (default 0.9). Hinton et al. give no single default; T = 4, a = 0.9 are the settings of the
    widely used CRD distillation benchmark (Tian et al., ICLR 2020). ``teacher_mode`` eval
    (default) | train. Logged terms: ``ce`` (weighted 1−a, left out when a = 1) and ``kl``."""

    requires = Requires(teachers=1)

    def __init__(self, num_classes: int, temperature: Annotated[float, Range(0.0, low_open=True)] = 4.0,
                 alpha: Annotated[float, Range(0.0, 1.0)] = 0.9, teacher_mode: TeacherMode = "eval"):
        super().__init__(num_classes)
        self.temperature, self.alpha = temperature, alpha
        self.requires = Requires(teachers=1, teacher_mode=teacher_mode)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        (teacher,) = need_teacher(teachers, "kd")
        terms = {}
        if self.alpha < 1.0:
            terms["ce"] = (1 - self.alpha) * label_terms(lambda y: cross_entropy(out.logits, y), batch)
        terms["kl"] = self.alpha * kd_kl(out.logits, teacher.logits, self.temperature)
        return terms
