"""Collapse detection: a run whose network has stopped depending on its input.

A collapsed run (e.g. KD or FocusNet at too high a learning rate: the first epoch drives the
network to a constant, usually uniform, output that it never leaves) is stopped after the epoch
where it is detected, with one line naming the method and what to change; ``final.json`` records
``"collapsed": {"epoch": E, "reason": ..., "split": ...}`` and the report tables mark such seeds
instead of averaging them (report/table.py).

Criteria, on the predictions of one evaluated split (the validation split; the test split when
there is none; a verdict stops a dead run and selects nothing). The output must no longer depend
on the input — the mean L1 distance of the samples' predicted distributions from their mean is
below ``MAX_SPREAD`` (1e-3; an untrained LeNet-5 already spreads 8e-3) — and, besides,
  constant prediction  every sample gets the same top class, or
  uniform prediction   the mean predictive entropy is >= 0.99·log K with the top-1 error >= 90 %
                       of the error of always guessing the most frequent class ("chance").
The first condition keeps an honest model of unlearnable data (random labels: at chance with
nearly uniform, yet input-dependent, predictions) from being called collapsed. A split smaller
than ``MIN_SAMPLES_PER_CLASS``·K samples is not judged (too few to tell).
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from ..methods.functional import entropy

ENTROPY_FRACTION = 0.99
CHANCE_FRACTION = 0.9
MIN_SAMPLES_PER_CLASS = 5
MAX_SPREAD = 1e-3


def collapse_reason(logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> Optional[str]:
    """Why the predictions ``logits`` (N×K) on a split with ``labels`` look collapsed, or None."""
    n, k = int(logits.shape[0]), int(num_classes)
    if k < 2 or n < MIN_SAMPLES_PER_CLASS * k:
        return None
    p = torch.softmax(logits.float(), dim=1)
    spread = float((p - p.mean(dim=0, keepdim=True)).abs().sum(dim=1).mean())
    if spread >= MAX_SPREAD:
        return None
    pred = logits.argmax(dim=1)
    error = float((pred != labels).float().mean())
    counts = torch.bincount(labels, minlength=k).float()
    chance = 1.0 - float(counts.max()) / n
    if bool((pred == pred[0]).all()):
        return (f"it predicts class {int(pred[0])} for every sample, whatever the input "
                f"(prediction spread {spread:.1e}; top-1 error {100 * error:.1f} %, chance {100 * chance:.1f} %)")
    h = float(entropy(logits.float()).mean())
    if h >= ENTROPY_FRACTION * math.log(k) and error >= CHANCE_FRACTION * chance:
        return (f"its predictions are uniform whatever the input (mean entropy {h:.3f} of log K = "
                f"{math.log(k):.3f}, prediction spread {spread:.1e}) and its top-1 error "
                f"{100 * error:.1f} % is at chance ({100 * chance:.1f} %)")
    return None


def collapse_message(method: str, epoch: int, reason: str, lr: float) -> str:
    """The one line printed and raised-free when a run is stopped for collapsing."""
    return (f"run collapsed after epoch {epoch}: method {method}: {reason}; training stopped. "
            f"Lower optim.lr (now {lr:g}) or add a warm-up (schedule.warmup_epochs), "
            f"see docs/methods.md (Collapse)")
