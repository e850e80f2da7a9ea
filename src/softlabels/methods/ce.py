"""Cross-entropy with one-hot labels and label smoothing (Szegedy et al. 2016)."""
from __future__ import annotations

from typing import Annotated, Dict, Sequence

import torch

from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method
from .functional import cross_entropy, label_terms, soft_cross_entropy, upcast  # noqa: F401 (re-exported)


def label_smoothing_loss(logits: torch.Tensor, labels: torch.Tensor, epsilon: float = 0.1) -> torch.Tensor:
    """CE against (1−ε)·Y + ε/K (Szegedy et al. 2016, §7): ``F.cross_entropy`` with
    ``label_smoothing=ε``."""
    return cross_entropy(logits, labels, label_smoothing=epsilon)


@METHODS.register("ce", "cross-entropy with one-hot labels", reference="baseline in all five papers")
class CrossEntropy(Method):
    def __init__(self, num_classes: int):
        super().__init__(num_classes)

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        return {"ce": label_terms(lambda y: cross_entropy(out.logits, y), batch)}


@METHODS.register("ls", "label smoothing: CE against (1-eps)*onehot + eps/K",
                  reference="Szegedy et al., CVPR 2016")
class LabelSmoothing(Method):
    def __init__(self, num_classes: int, epsilon: Annotated[float, Range(0.0, 1.0, high_open=True)] = 0.1):
        super().__init__(num_classes)
        self.epsilon = epsilon

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        return {"ls": label_terms(lambda y: label_smoothing_loss(out.logits, y, self.epsilon), batch)}
