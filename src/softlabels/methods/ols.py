"""Online Label Smoothing (Zhang et al., "Delving Deep into Label Smoothing", IEEE TIP 2021).

Each class keeps a soft label: the average predicted distribution of the training samples of
that class that the model classified correctly during the previous update period (Alg. 1).
The loss mixes hard-label CE with CE against the class's soft label (Eq. 3–4); the soft labels
are accumulated from correct predictions (Eq. 5) and normalised per class (Eq. 6).

Variants (see docs/methods.md):
  paper           S starts uniform, loss = α·CE + (1−α)·soft, α = 0.5.
  official_cifar  S starts at zeros (epoch 0 trains on 0.5·CE only), weights 0.5 / 0.5.
  official_fgvc   S starts uniform, weights 1 / 1; at an update a class's row is kept when
                  its current max ≥ 0.88, unless the class had no correct sample, in which
                  case it is reset to uniform (the authors' fine-grained script).
"""
from __future__ import annotations

from typing import Annotated, Dict, Literal, Optional, Sequence

import torch
import torch.distributed as dist

from ..models.base import ModelOutput
from ..registry import METHODS, Range
from .base import Batch, Method
from .functional import cross_entropy, dominant_labels, label_terms, soft_cross_entropy


def ols_loss(logits: torch.Tensor, labels: torch.Tensor, soft_label_matrix: torch.Tensor,
             ce_weight: float = 0.5, soft_weight: float = 0.5) -> torch.Tensor:
    """ce_weight·CE(z, y) + soft_weight·mean_i −Σ_k S[y_i]_k log softmax(z)_ik  (Eq. 3–4)."""
    # Eq. 3–4: hard-label CE plus CE against the class's soft label
    return ce_weight * cross_entropy(logits, labels) + soft_weight * soft_cross_entropy(
        logits, soft_label_matrix[labels])


@torch.no_grad()
def ols_accumulate(logits: torch.Tensor, labels: torch.Tensor, accum: torch.Tensor,
                   count: torch.Tensor) -> None:
    """Add the predictions of correctly classified samples to their class rows (Eq. 5).

    Uses index_add_ with a 0/1 weight instead of boolean indexing: repeated classes in one batch
    all count, and nothing forces a host synchronisation.
    """
    probs = torch.softmax(logits.detach().float(), dim=1)
    correct = (probs.argmax(dim=1) == labels).to(probs.dtype)
    accum.index_add_(0, labels, probs * correct[:, None])
    count.index_add_(0, labels, correct)


@torch.no_grad()
def ols_soft_labels(accum: torch.Tensor, count: torch.Tensor,
                    previous: Optional[torch.Tensor] = None,
                    keep_threshold: Optional[float] = None) -> torch.Tensor:
    """New soft-label matrix (Eq. 6): row c = accum[c] / count[c]; uniform 1/K where count[c] == 0.

    With ``keep_threshold`` (official fine-grained code), a class that had correct samples keeps
    its previous row when that row's max is >= the threshold.
    """
    k = accum.shape[1]
    uniform = torch.full_like(accum, 1.0 / k)
    has = count > 0
    new = torch.where(has[:, None], accum / count.clamp_min(1)[:, None], uniform)
    if keep_threshold is not None and previous is not None:
        keep = has & (previous.max(dim=1).values >= keep_threshold)
        new = torch.where(keep[:, None], previous, new)
    return new


_VARIANTS = {
    # variant: (initial matrix, ce weight, soft weight, keep threshold)
    "paper": ("uniform", None, None, None),
    "official_cifar": ("zeros", 0.5, 0.5, None),
    "official_fgvc": ("uniform", 1.0, 1.0, 0.88),
}


@METHODS.register("ols", "online label smoothing: soft labels from the class-average of correct predictions",
                  reference="Zhang et al., Delving Deep into Label Smoothing, IEEE TIP 2021")
class OnlineLabelSmoothing(Method):
    """Options:
    alpha:        weight of hard-label CE; the soft term gets 1−alpha (paper: 0.5). Ignored by
                  the official variants, which fix their own weights.
    variant:      paper | official_cifar | official_fgvc.
    update_every: swap the soft-label matrix every N training steps instead of every epoch
                  (the paper's Fig. 7b ablation). None = once per epoch.
    single:       OLS-Single ablation: a class's soft label is the prediction of one random
                  correctly classified sample of the period instead of the class average.

    With a mixing method (``ols+cutmix``, ``ols+mixup``) both terms use the mixed labels
    (λ·L(z, y) + (1−λ)·L(z, y[π]), the soft term with the rows S[y] and S[y[π]]), and the
    accumulation (Eq. 5) counts a mixed prediction for its dominant label (y where λ ≥ ½, else
    y[π]) when its argmax is that label.
    """

    def __init__(self, num_classes: int, alpha: Annotated[float, Range(0.0, 1.0)] = 0.5,
                 variant: Literal["paper", "official_cifar", "official_fgvc"] = "paper",
                 update_every: Optional[Annotated[int, Range(1)]] = None, single: bool = False):
        super().__init__(num_classes)
        init, ce_w, soft_w, keep = _VARIANTS[variant]
        self.variant = variant
        self.ce_weight = alpha if ce_w is None else ce_w
        self.soft_weight = 1.0 - alpha if soft_w is None else soft_w
        self.keep_threshold = keep
        self.update_every = update_every
        self.single = single
        k = num_classes
        start = torch.zeros(k, k) if init == "zeros" else torch.full((k, k), 1.0 / k)
        self.register_buffer("soft_label_matrix", start)
        self.register_buffer("accum", torch.zeros(k, k))
        self.register_buffer("count", torch.zeros(k))
        # OLS-Single keeps, per class, the random key of the sample currently held (reservoir
        # sampling with one slot: the sample with the largest uniform key wins).
        self.register_buffer("single_key", torch.full((k,), -1.0))
        self.register_buffer("steps", torch.zeros((), dtype=torch.long))

    def loss(self, out: ModelOutput, batch: Batch, teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
        logits = out.logits
        # mixed batches (mixup/cutmix): each term is λ·L(z, y) + (1−λ)·L(z, y[π]), see label_terms
        terms = {"ce": self.ce_weight * label_terms(lambda y: cross_entropy(logits, y), batch)}  # Eq. 3: α·CE
        if self.soft_weight:
            soft = label_terms(lambda y: soft_cross_entropy(logits, self.soft_label_matrix[y]), batch)
            terms["soft"] = self.soft_weight * soft  # Eq. 4: (1−α)·soft
        return terms

    @torch.no_grad()
    def on_step_end(self, out: ModelOutput, batch: Batch) -> None:
        # a mixed sample (mixup/cutmix) counts for its dominant label (the larger share)
        labels = dominant_labels(batch)
        if self.single:
            self._keep_one_random(out.logits, labels)
        else:
            ols_accumulate(out.logits, labels, self.accum, self.count)
        self.steps += 1
        if self.update_every is not None and int(self.steps) % self.update_every == 0:
            self.update_soft_labels()

    def on_epoch_end(self, epoch: int) -> None:
        if self.update_every is None:
            self.update_soft_labels()

    @torch.no_grad()
    def _keep_one_random(self, logits, labels) -> None:
        probs = torch.softmax(logits.detach().float(), dim=1)
        correct = probs.argmax(dim=1) == labels
        key = torch.where(correct, torch.rand(labels.shape, device=labels.device), torch.full_like(probs[:, 0], -1.0))
        best = torch.full_like(self.single_key, -1.0).scatter_reduce(0, labels, key, "amax")
        winner = correct & (key == best[labels]) & (key > self.single_key[labels])
        # Boolean indexing syncs with the host; acceptable for this ablation only.
        idx = labels[winner]
        self.accum[idx] = probs[winner]
        self.count[idx] = 1.0
        self.single_key[idx] = key[winner]

    @torch.no_grad()
    def update_soft_labels(self) -> None:
        """Swap in the new soft-label matrix and reset the accumulators (Eq. 6, Alg. 1)."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            if self.single:  # one random sample per class: take rank 0's choice
                dist.broadcast(self.accum, 0)
                dist.broadcast(self.count, 0)
            else:
                dist.all_reduce(self.accum)
                dist.all_reduce(self.count)
        self.soft_label_matrix.copy_(
            ols_soft_labels(self.accum, self.count, self.soft_label_matrix, self.keep_threshold)
        )
        self.accum.zero_()
        self.count.zero_()
        self.single_key.fill_(-1.0)
