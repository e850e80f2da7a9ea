"""The functional core every method and every function in ``softlabels.losses`` is built on.

One dtype rule: every loss computes in at least float32, whatever its input dtype (fp16/bf16
are upcast; float64 stays float64; tensors combined in one loss are brought to one dtype), so a
loss called on bf16 logits outside autocast is as exact as under autocast.

Pieces:
  upcast(x) / upcast(*xs)      at least float32, one common dtype
  cross_entropy(z, y, ε)       F.cross_entropy with integer labels and ``label_smoothing``
  soft_cross_entropy(z, q, ε)  F.cross_entropy with probability targets (timm/torchvision form)
  tempered_kl(z, b, T)         T²·KL(softmax(b/T) ‖ softmax(z/T)), ``detach_target``, ``t_squared``
  target_kl(z, q, T)           T²·KL(q ‖ softmax(z/T)) for a given probability target q
  entropy(z)                   H(softmax(z)) per sample
  masked_mean(v, m)            Σ m·v / max(Σ m, 1): a mean over the selected rows, 0 when none

Mixed labels (mixup, cutmix; the one form is described in ``softlabels.data.base.Batch``):
  record_mix(batch, λ, π)      write the mixing draws into ``batch.extra``
  targets_of(batch)            ((y, 1),) or ((y, λ), (y[π], 1−λ)): the labels and their weights
  label_terms(fn, batch)       Σ_j w_j·fn(y_j): a label-indexed loss on the batch's (mixed) labels
  mix_terms(fn, y, λ, π)       λ·fn(y) + (1−λ)·fn(y[π]), the same without a batch
  dominant_labels(batch)       per sample the label with the larger share (y where λ ≥ ½, else y[π])
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

__all__ = ["upcast", "cross_entropy", "soft_cross_entropy", "tempered_kl", "target_kl", "entropy",
           "masked_mean", "reduce", "record_mix", "targets_of", "label_terms", "mix_terms", "dominant_labels"]


def upcast(*tensors: torch.Tensor) -> Union[torch.Tensor, Sequence[torch.Tensor]]:
    """fp16/bf16 → float32; float32 and float64 pass. With several tensors, all are brought to
    one common dtype (float64 if any is) and returned as a list; with one, the tensor."""
    ts = [t.float() if t.dtype in (torch.float16, torch.bfloat16) else t for t in tensors]
    if len(ts) == 1:
        return ts[0]
    dtype = ts[0].dtype
    for t in ts[1:]:
        if t.is_floating_point():
            dtype = torch.promote_types(dtype, t.dtype)
    return [t.to(dtype) if t.is_floating_point() else t for t in ts]


def reduce(values: torch.Tensor, reduction: str) -> torch.Tensor:
    """``mean`` over the batch, ``sum``, or ``none`` (per-sample values)."""
    if reduction == "mean":
        return values.mean()
    if reduction == "sum":
        return values.sum()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0,
                  reduction: str = "mean") -> torch.Tensor:
    """CE with integer labels against ``(1−ε)·Y + ε/K`` (ε = ``label_smoothing``), in at least
    float32. Log-probabilities may be passed as ``logits`` (log_softmax is idempotent)."""
    return F.cross_entropy(upcast(logits), labels, label_smoothing=label_smoothing, reduction=reduction)


def soft_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0,
                       reduction: str = "mean") -> torch.Tensor:
    """mean_i −Σ_k t_ik · log softmax(z)_ik for a probability target t (B×K), optionally
    smoothed as ``(1−ε)·t + ε/K``; the target gets no gradient unless it carries one."""
    z, t = upcast(logits, target)
    return F.cross_entropy(z, t, label_smoothing=label_smoothing, reduction=reduction)


def target_kl(logits: torch.Tensor, target: torch.Tensor, temperature: float = 1.0, *,
              t_squared: bool = True, reduction: str = "mean") -> torch.Tensor:
    """T²·KL(q ‖ softmax(z/T)) = T²·Σ_k q_k (log q_k − log softmax(z/T)_k) for a given
    probability target q (zeros allowed: 0·log 0 = 0; q need not be normalised), summed over
    classes. ``t_squared=False`` drops the T² factor."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    z, q = upcast(logits, target)
    log_p = F.log_softmax(z / temperature, dim=1)
    kl = (torch.xlogy(q, q) - q * log_p).sum(dim=1)
    if t_squared:
        kl = kl * (temperature * temperature)
    return reduce(kl, reduction)


def tempered_kl(logits: torch.Tensor, target_logits: torch.Tensor, temperature: float = 1.0, *,
                detach_target: bool = True, t_squared: bool = True, reduction: str = "mean") -> torch.Tensor:
    """T²·KL(softmax(b/T) ‖ softmax(z/T)), summed over classes (``reduction`` over the batch):
    the distillation term of KD and of every self-distillation method.

    ``detach_target`` (default): the target b is a constant (no gradient reaches it).
    ``t_squared=False`` drops the T² factor (Hinton et al.'s gradient-scale correction)."""
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    b = target_logits.detach() if detach_target else target_logits
    z, b = upcast(logits, b)
    log_p = F.log_softmax(z / temperature, dim=1)
    log_q = F.log_softmax(b / temperature, dim=1)
    kl = F.kl_div(log_p, log_q, reduction="none", log_target=True).sum(dim=1)
    if t_squared:
        kl = kl * (temperature * temperature)
    return reduce(kl, reduction)


def entropy(logits: torch.Tensor) -> torch.Tensor:
    """Per-sample entropy H(p) = −Σ_k p_k log p_k of p = softmax(logits) (B values)."""
    logp = F.log_softmax(upcast(logits), dim=1)
    return -(logp.exp() * logp).sum(dim=1)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, denominator: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Σ_i m_i·v_i / max(Σ_i m_i, 1): the mean over the selected rows (a 0/1 or boolean mask),
    a zero that keeps the graph when none is selected, never NaN; no host synchronisation."""
    m = mask.to(values.dtype)
    den = m.sum() if denominator is None else denominator
    return (m * values).sum() / den.clamp_min(1.0)


# ------------------------------------------------------------------------------ mixed labels
MIX_LAMBDA, MIX_INDEX = "mix_lambda", "mix_index"
Terms = Union[torch.Tensor, Dict[str, torch.Tensor]]


def record_mix(batch, lam: float, index: torch.Tensor) -> Tuple[float, torch.Tensor]:
    """Write the mixing draws of a method that mixes inputs (mixup, cutmix) into the batch:
    ``batch.extra["mix_lambda"]`` = λ (0-d float32 tensor on the batch's device), the weight of
    ``batch.y``, and ``batch.extra["mix_index"]`` = π (B indices), so that sample i's second
    label is ``batch.y[π_i]`` with weight 1−λ. Returns (λ, π on the device)."""
    dev = batch.x.device
    index = index.to(dev, non_blocking=True)
    batch.extra[MIX_LAMBDA] = torch.full((), float(lam), dtype=torch.float32, device=dev)
    batch.extra[MIX_INDEX] = index
    return lam, index


def targets_of(batch) -> Tuple[Tuple[torch.Tensor, Union[float, torch.Tensor]], ...]:
    """The labels every label-consuming loss term must use, with their weights:
    ``((batch.y, 1.0),)`` for an unmixed batch, ``((y, λ), (y[π], 1−λ))`` for a mixed one."""
    extra = _extra(batch)
    lam = extra.get(MIX_LAMBDA)
    if lam is None:
        return ((batch.y, 1.0),)
    index = extra[MIX_INDEX]
    return ((batch.y, lam), (batch.y[index], 1 - lam))


def _weighted_sum(fn: Callable[[torch.Tensor], Terms], pairs) -> Terms:
    total = None
    for labels, w in pairs:
        value = fn(labels)
        if isinstance(value, dict):
            part = {k: _scale(v, w) for k, v in value.items()}
            total = part if total is None else {k: total[k] + part[k] for k in total}
        else:
            part = _scale(value, w)
            total = part if total is None else total + part
    return total


def _scale(value: torch.Tensor, w) -> torch.Tensor:
    if torch.is_tensor(w):
        return w.to(value.dtype) * value
    return value if w == 1.0 else w * value


def label_terms(fn: Callable[[torch.Tensor], Terms], batch) -> Terms:
    """A label-indexed loss L(z, y) on the batch's labels: ``fn(batch.y)`` for an unmixed batch,
    λ·fn(y) + (1−λ)·fn(y[π]) for a batch mixed by mixup/cutmix (Zhang et al. 2018; Yun et al.
    2019) — for CE exactly CE against the mixed one-hot target. ``fn`` maps labels to a loss
    tensor or to a dict of named terms (each is mixed)."""
    return _weighted_sum(fn, targets_of(batch))


def mix_terms(fn: Callable[[torch.Tensor], Terms], labels: torch.Tensor, lam,
              index: torch.Tensor) -> Terms:
    """λ·fn(labels) + (1−λ)·fn(labels[index]) (``lam`` a float or a 0-d tensor)."""
    return _weighted_sum(fn, ((labels, lam), (labels[index], 1 - lam)))


def dominant_labels(batch) -> torch.Tensor:
    """Per sample the label with the larger weight: ``batch.y`` when unmixed or λ ≥ ½, else
    ``batch.y[π]`` (no host synchronisation)."""
    extra = _extra(batch)
    lam = extra.get(MIX_LAMBDA)
    if lam is None:
        return batch.y
    return torch.where(lam >= 0.5, batch.y, batch.y[extra[MIX_INDEX]])


def _extra(batch) -> dict:
    """``batch.extra`` (any object with ``y`` and, optionally, ``extra`` will do)."""
    return getattr(batch, "extra", None) or {}
