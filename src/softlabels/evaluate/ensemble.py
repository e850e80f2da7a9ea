"""Evaluating an ensemble of independently trained models (e.g. the N members of a
knowledge-transfer ensemble, Zhang et al. ICME 2021, Table 3).

Two ways of combining the members are reported next to each member's own figures:

* ``mean_softmax``: the average of the members' softmax outputs (the paper's "average
  inference results"); its logarithm is used as the logits, so the reported NLL is
  ``−log mean_m p_m(y)`` and top-1 / ECE are those of the averaged probabilities;
* ``sum_logits``: the sum of the members' raw logits (what the authors' code does); its
  softmax is the normalised product of the members' unnormalised probabilities.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import DataError
from .metrics import classification_metrics

__all__ = ["ensemble_predictions", "combine_mean_softmax", "combine_sum_logits", "ensemble_metrics",
           "uniform_snapshot_epochs", "snapshot_checkpoints", "snapshot_metrics"]


def _default_device(models: Sequence[nn.Module]) -> torch.device:
    for p in models[0].parameters():
        return p.device
    return torch.device("cpu")


def ensemble_predictions(models: Sequence[nn.Module], loader, device=None) -> Tuple[List[torch.Tensor], torch.Tensor]:
    """Run every model on every batch of ``loader`` (objects with ``.x`` and ``.y``).

    Returns ``(logits, labels)``: a list with one N×K float32 CPU tensor per model, in the order
    given, and the N labels (CPU, int64). Models are moved to ``device`` (default: the device of
    the first model's parameters) and run in eval mode under ``torch.inference_mode``; each
    model's previous train/eval mode is restored afterwards. One pass over the loader serves
    all members, so they see the same inputs.
    """
    models = list(models)
    if not models:
        raise ValueError("ensemble_predictions needs at least one model")
    device = torch.device(device) if device is not None else _default_device(models)
    modes = [m.training for m in models]
    logits: List[List[torch.Tensor]] = [[] for _ in models]
    labels: List[torch.Tensor] = []
    try:
        for m in models:
            m.to(device).eval()
        with torch.inference_mode():
            for batch in loader:
                x = batch.x.to(device, non_blocking=True)
                for i, m in enumerate(models):
                    logits[i].append(m(x).logits.float().cpu())
                labels.append(batch.y.cpu())
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)
    if not labels:
        raise ValueError("ensemble_predictions: the loader yielded no batches")
    return [torch.cat(z) for z in logits], torch.cat(labels).long()


def combine_mean_softmax(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``log(mean_m softmax(z_m))`` in float64 (log-sum-exp, no underflow): log-probabilities
    of the averaged softmax, usable as logits."""
    stacked = torch.stack([torch.log_softmax(z.double(), dim=1) for z in logits])
    return torch.logsumexp(stacked, dim=0) - math.log(len(logits))


def combine_sum_logits(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """``Σ_m z_m``: the members' raw logits summed (the authors' code)."""
    return torch.stack([z.double() for z in logits]).sum(dim=0)


def ensemble_metrics(models: Sequence[nn.Module], loader, num_classes: Optional[int] = None,
                     device=None, ece_bins: int = 20) -> Dict[str, object]:
    """Metrics of each member and of the two combinations (see the module docstring).

    Returns ``{"members": [metrics of model 1, model 2, …], "mean_softmax": metrics,
    "sum_logits": metrics}``, every metrics dict as :func:`classification_metrics` gives it
    (``top1_error``, ``nll``, ``ece`` … in percent / nats).
    """
    logits, labels = ensemble_predictions(models, loader, device)
    k = num_classes

    def metrics(z):
        return classification_metrics(z, labels, k, ece_bins=ece_bins)

    return {
        "members": [metrics(z) for z in logits],
        "mean_softmax": metrics(combine_mean_softmax(logits)),
        "sum_logits": metrics(combine_sum_logits(logits)),
    }


# ------------------------------------------------------------------------------------ snapshots
def uniform_snapshot_epochs(epochs: int, n: int) -> List[int]:
    """The epochs of ``n`` snapshots taken uniformly over an ``epochs``-epoch schedule (OLS
    Table III: "we select models uniformly from the whole training schedule"): ``k·E/N`` for
    k = 1..N, rounded half up (E/N, 2E/N, …, E). They are ``n`` distinct epochs when
    ``n <= epochs``; fewer otherwise (the distinct ones, at least epoch 1)."""
    if epochs < 1 or n < 1:
        raise ValueError(f"epochs and n must be >= 1, got {epochs} and {n}")
    return sorted({max(1, (2 * k * epochs + n) // (2 * n)) for k in range(1, n + 1)})


def snapshot_checkpoints(run_dir, epochs: Optional[Sequence[int]] = None) -> List[str]:
    """Checkpoint names of a run's snapshots (``checkpoints/epoch<N>``, kept for
    ``train.snapshot_epochs``), in epoch order: all of them, or those of ``epochs``. The run's
    final epoch may come from its ``last`` checkpoint when no ``epoch<N>`` of it was kept.
    DataError naming the first epoch that was not kept."""
    import contextlib

    from ..engine.runs import RunDir
    from ..errors import SoftlabelsError

    rd = RunDir(run_dir)
    kept = {int(n[5:]): n for n in rd.checkpoint_names() if n.startswith("epoch") and n[5:].isdigit()}
    if epochs is None:
        return [kept[e] for e in sorted(kept)]
    last_epoch = None
    with contextlib.suppress(SoftlabelsError):
        last_epoch = rd.results()["last"]["epoch"]
    names = []
    for e in epochs:
        if e in kept:
            names.append(kept[e])
        elif e == last_epoch and "last" in rd.checkpoint_names():
            names.append("last")
        else:
            raise DataError(f"{run_dir}: no snapshot of epoch {e} (kept: {sorted(kept) or 'none'}; "
                            f"train.snapshot_epochs must list it)")
    return names


def snapshot_metrics(run_dir, loader, num_classes: Optional[int] = None, device=None,
                     epochs: Optional[Sequence[int]] = None) -> Dict[str, object]:
    """:func:`ensemble_metrics` of a run's snapshots (:func:`snapshot_checkpoints`: every kept
    one, or those of ``epochs``), plus ``snapshots``: their checkpoint names. The one path of
    ``softlabels eval --analyses snapshots`` (all kept snapshots) and of a study's
    ``snapshot<N>_*`` metrics (the N uniform epochs of :func:`uniform_snapshot_epochs`); the
    ensemble of the paper is ``mean_softmax``."""
    from ..engine.runs import load_model_from_run

    names = snapshot_checkpoints(run_dir, epochs)
    if not names:
        raise DataError(f"{run_dir}: no snapshot checkpoints (train.snapshot_epochs)")
    models = [load_model_from_run(Path(run_dir), n) for n in names]
    return {"snapshots": names, **ensemble_metrics(models, loader, num_classes, device=device)}
