"""Agreement with human label distributions on CIFAR-10H (OLS Table XII).

CIFAR-10H (Peterson et al., ICCV 2019) holds, for each of the 10,000 CIFAR-10 *test* images (in
the order of the official test set), the votes of about 50 annotators over the 10 classes. It is
published as ``cifar10h-counts.npy`` (vote counts) and ``cifar10h-probs.npy`` (the counts
normalised per image), both 10000×10 numpy arrays.

OLS §V-E: "we use KL divergence to measure the difference between the predicted probability
distribution of the model and the human uncertainty distribution on CIFAR-10H ... we only
consider the correctly predicted samples by each model". The text does not write the
divergence out, so its direction is not stated; :func:`human_kl` uses
``KL(human ‖ model) = Σ_k h_k (log h_k − log p_k)``, the human distribution as the reference
(the direction in which the human labels play the role of soft targets, as in a soft-label
cross-entropy; it is finite whenever the model's softmax is, while the reverse direction is
infinite on every image where some class got no human vote).
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Tuple, Union

import torch
from torch import Tensor

from ..errors import DataError

__all__ = ["CIFAR10H_SHAPE", "load_cifar10h", "human_kl", "human_labels_kl"]

CIFAR10H_SHAPE = (10000, 10)


def load_cifar10h(path: Union[str, Path], shape: Tuple[int, int] = CIFAR10H_SHAPE) -> Tensor:
    """Read CIFAR-10H counts or probabilities from a ``.npy`` file into a 10000×10 float64 tensor
    (``shape``: the rows × classes expected instead, for a split of another size).

    Accepts ``cifar10h-counts.npy`` or ``cifar10h-probs.npy`` (read with
    ``numpy.load(path, allow_pickle=False)``); values are returned as stored (counts stay
    counts; :func:`human_kl` normalises rows). Raises :class:`~softlabels.errors.DataError`,
    with one line naming the path, when the file is missing or unreadable, is not a plain
    numeric array of shape (10000, 10), or holds a negative / non-finite value or an all-zero row.
    """
    import numpy as np

    p = Path(path)
    if not p.is_file():
        raise DataError(f"CIFAR-10H file {p} not found (expected cifar10h-counts.npy or cifar10h-probs.npy)")
    try:
        arr = np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise DataError(f"CIFAR-10H file {p} is not a readable .npy array ({first[:120]})") from None
    if not isinstance(arr, np.ndarray):  # e.g. an .npz archive
        try:
            arr.close()
        except Exception:  # pragma: no cover - best effort
            pass
        raise DataError(f"CIFAR-10H file {p} is not a single .npy array")
    if arr.dtype.kind not in "iuf":
        raise DataError(f"CIFAR-10H file {p} holds {arr.dtype} values, expected numbers")
    if tuple(arr.shape) != tuple(shape):
        why = "" if tuple(shape) == CIFAR10H_SHAPE else " (one row per sample of the evaluated split, one column per class)"
        raise DataError(f"CIFAR-10H file {p} has shape {tuple(arr.shape)}, expected {tuple(shape)}{why}")
    t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    if not bool(torch.isfinite(t).all()):
        raise DataError(f"CIFAR-10H file {p} contains NaN or infinite values")
    if bool((t < 0).any()):
        raise DataError(f"CIFAR-10H file {p} contains negative values")
    if bool((t.sum(dim=1) <= 0).any()):
        row = int(torch.nonzero(t.sum(dim=1) <= 0)[0])
        raise DataError(f"CIFAR-10H file {p} has an all-zero row (image {row})")
    return t


@torch.no_grad()
def human_kl(logits: Tensor, labels: Tensor, human: Tensor) -> Dict[str, float]:
    """Mean ``KL(human ‖ softmax(logits))`` over the correctly classified samples (OLS Table XII).

    ``logits`` N×K, ``labels`` N (the dataset's labels; a sample counts when
    ``argmax(logits) == label``), ``human`` N×K counts or probabilities in the same sample
    order (rows are normalised to sum to 1). With ``h`` the human distribution and ``p`` the
    model's softmax, ``KL = Σ_k h_k (log h_k − log p_k)`` in nats, terms with ``h_k = 0``
    contributing 0; computed in float64. Returns ``kl_mean`` (NaN when no sample is correct)
    and ``count`` (number of correctly classified samples).
    """
    if logits.dim() != 2 or not logits.dtype.is_floating_point:
        raise ValueError(f"logits must be a float N×K tensor, got {logits.dtype} of shape {tuple(logits.shape)}")
    n, k = int(logits.shape[0]), int(logits.shape[1])
    if labels.dim() != 1 or int(labels.shape[0]) != n:
        raise ValueError(f"labels must be a 1-D tensor of length {n}, got shape {tuple(labels.shape)}")
    human = torch.as_tensor(human)
    if tuple(human.shape) != (n, k):
        raise ValueError(f"human must be {n}×{k} like the logits, got shape {tuple(human.shape)}")
    logits = logits.detach().double()
    h = human.detach().to(device=logits.device, dtype=torch.float64)
    if bool((h < 0).any()) or not bool(torch.isfinite(h).all()):
        raise ValueError("human distributions must be finite and non-negative")
    correct = logits.argmax(dim=1) == labels.to(logits.device).long()
    count = int(correct.sum())
    if count == 0:
        return {"kl_mean": float("nan"), "count": 0}
    h = h[correct]
    total = h.sum(dim=1, keepdim=True)
    if bool((total <= 0).any()):
        raise ValueError("a human distribution row sums to 0")
    h = h / total
    logp = torch.log_softmax(logits[correct], dim=1)
    kl = (torch.xlogy(h, h) - h * logp).sum(dim=1)
    return {"kl_mean": float(kl.mean()), "count": count}


def human_labels_kl(path: Union[str, Path], logits: Tensor, labels: Tensor) -> Dict[str, float]:
    """:func:`human_kl` of a model's N×K ``logits`` against the human labels file ``path``
    (CIFAR-10H counts or probabilities: one row per sample of the evaluated split, in its order,
    one column per class; :func:`load_cifar10h`). The one path of ``softlabels eval --analyses
    human`` and of a study's ``cifar10h_kl``. DataError (one line naming the file) when it is
    missing, unreadable or not N×K."""
    n, k = int(logits.shape[0]), int(logits.shape[1])
    return human_kl(logits, labels, load_cifar10h(path, shape=(n, k)))
