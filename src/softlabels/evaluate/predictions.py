"""Per-sample analyses of a classifier's outputs: the numbers behind the papers' figures.

Every function takes plain tensors, so it works on any model's outputs: ``logits`` (N×K float,
any device; half types are upcast and softmax quantities are computed in float64) and
``labels`` (N integers in ``[0, K)``). Results are JSON-serialisable: Python ints, floats,
bools, strings, lists, tuples and dicts, with NaN written as ``None``. Only
:func:`true_class_probability` returns a tensor (N values are meant for box plots and
:func:`box_stats`, not for JSON).

Conventions shared with :mod:`softlabels.evaluate.metrics`: the prediction is ``argmax`` of the
logits (first index on ties), confidence is the max softmax probability, confidence bins are
``(i/M, (i+1)/M]`` with confidence 0 in the first bin, and ECE is in **percent**. Per-bin
accuracies and confidences are fractions in [0, 1].

Class names never replace class indices: when ``class_names`` is given, ``*_name`` keys are
added next to the integer keys, so the indices stay machine-readable whatever the names are.

What the figures show:

* :func:`reliability`: reliability diagrams (CS-KD Fig. 5);
* :func:`topk_predictions`: top-5 softmax scores of chosen samples (CS-KD Fig. 1b, JGL Fig. 6);
* :func:`misclassified_log_probs`: log-probabilities of the predicted and of the ground-truth
  class on misclassified samples (CS-KD Fig. 2; the paper uses samples misclassified by both
  methods, see :func:`commonly_misclassified`);
* :func:`true_class_probability` and :func:`box_stats`: ground-truth probability box plots
  (JGL Fig. 4);
* :func:`fixed_and_broken`: how many test samples a method fixes relative to a baseline
  (JGL Table VIII reports ``net``, the reduction in wrong samples);
  :func:`fixed_and_broken_samples` names them;
* :func:`most_confident_errors`: the misclassified samples a model is surest of (the samples
  the HTML report shows with Grad-CAM);
* :func:`pool_reliability`: reliability diagrams of several seeds pooled into one.
"""
from __future__ import annotations

import math
import operator
from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .metrics import (
    _CHUNK_ELEMENTS,
    _check_labels,
    confusion_matrix,
    expected_calibration_error,
    reliability_bins,
)

__all__ = [
    "box_stats",
    "commonly_misclassified",
    "confidence_histogram",
    "fixed_and_broken",
    "fixed_and_broken_samples",
    "misclassified_log_probs",
    "most_confident_errors",
    "most_confused_pairs",
    "pool_reliability",
    "reliability",
    "topk_predictions",
    "true_class_probability",
]

ClassNames = Optional[Sequence[str]]


class _PerSample(NamedTuple):
    pred: Tensor  # int64, argmax of the logits
    correct: Tensor  # bool
    confidence: Tensor  # float64, max softmax probability
    logp_pred: Tensor  # float64, log-probability of the predicted class
    logp_true: Tensor  # float64, log-probability of the true class


# ---------------------------------------------------------------------------------------------
# input checks


def _check_inputs(logits: Tensor, labels: Tensor, what: str = "logits") -> Tuple[Tensor, Tensor]:
    logits = torch.as_tensor(logits)
    if logits.dim() != 2:
        raise ValueError(f"{what} must be N×K, got shape {tuple(logits.shape)}")
    if not logits.dtype.is_floating_point:
        raise ValueError(f"{what} must be a floating-point tensor, got {logits.dtype}")
    n, k = int(logits.shape[0]), int(logits.shape[1])
    if k == 0:
        raise ValueError(f"{what} have no classes (K = 0)")
    labels = _check_labels(torch.as_tensor(labels).to(logits.device), n, k)
    logits = logits.detach()
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()
    return logits, labels


def _check_names(class_names: ClassNames, k: int) -> Optional[List[str]]:
    if class_names is None:
        return None
    if isinstance(class_names, str):
        raise ValueError("class_names must be a sequence of names, not a single string")
    names = [str(c) for c in class_names]
    if len(names) != k:
        raise ValueError(f"class_names has {len(names)} names but the logits have {k} classes")
    return names


def _check_bins(bins: int) -> int:
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    return bins


def _check_indices(indices: Union[Sequence[int], Tensor], n: int) -> List[int]:
    if isinstance(indices, Tensor):
        if indices.dtype.is_floating_point or indices.dtype == torch.bool:
            raise ValueError(f"indices must be integers, got a {indices.dtype} tensor")
        indices = indices.reshape(-1).tolist()
    out = []
    for i in indices:
        if isinstance(i, bool):
            raise ValueError(f"indices must be integers, got {i!r}")
        try:
            i = operator.index(i)
        except TypeError:
            raise ValueError(f"indices must be integers, got {i!r}") from None
        if not 0 <= i < n:
            raise ValueError(f"sample index {i} is out of range for {n} samples")
        out.append(i)
    return out


def _check_nonempty(labels: Tensor, what: str) -> None:
    if int(labels.shape[0]) == 0:
        raise ValueError(f"{what} needs at least one sample")


def _none_if_nan(x: float) -> Optional[float]:
    x = float(x)
    return None if math.isnan(x) else x


def _per_sample(logits: Tensor, labels: Tensor) -> _PerSample:
    """Prediction, confidence and log-probabilities, in float64 row chunks of ~8 MiB."""
    n, k = int(logits.shape[0]), int(logits.shape[1])
    chunk = max(1, _CHUNK_ELEMENTS // k)
    preds, confs, lp_pred, lp_true = [], [], [], []
    for start in range(0, n, chunk):
        x = logits[start:start + chunk]
        y = labels[start:start + chunk]
        logp = torch.log_softmax(x.double(), dim=1)
        pred = x.argmax(dim=1)
        preds.append(pred)
        # Same expression as classification_metrics, so ECE and bins agree bit for bit.
        confs.append(logp.max(dim=1).values.exp())
        lp_pred.append(logp.gather(1, pred[:, None]).squeeze(1))
        lp_true.append(logp.gather(1, y[:, None]).squeeze(1))
    if not preds:
        empty = torch.zeros(0, dtype=torch.float64, device=logits.device)
        pred = torch.zeros(0, dtype=torch.long, device=logits.device)
        return _PerSample(pred, pred == labels, empty, empty, empty)
    pred = torch.cat(preds)
    return _PerSample(pred, pred == labels, torch.cat(confs), torch.cat(lp_pred), torch.cat(lp_true))


# ---------------------------------------------------------------------------------------------
# calibration


def reliability(logits: Tensor, labels: Tensor, bins: int = 20) -> Dict[str, Any]:
    """Reliability-diagram data (CS-KD Fig. 5), from :func:`metrics.reliability_bins`.

    Returns ``bins``, ``count`` (N), ``ece`` (percent, identical to
    ``classification_metrics(...)["ece"]`` with ``ece_bins=bins``), ``accuracy`` and
    ``mean_confidence`` over all samples (fractions), and per-bin lists of length ``bins``:
    ``bin_lower`` / ``bin_upper`` (bin ``(lower, upper]``), ``bin_count`` (ints),
    ``bin_accuracy`` and ``bin_confidence`` (means in the bin), and ``bin_gap``
    (``confidence − accuracy``; positive = over-confident). Statistics of empty bins are
    ``None``. Needs N ≥ 1.
    """
    bins = _check_bins(bins)
    logits, labels = _check_inputs(logits, labels)
    _check_nonempty(labels, "reliability")
    out = _per_sample(logits, labels)
    rb = reliability_bins(out.confidence, out.correct, bins)
    n = int(labels.shape[0])
    ece = expected_calibration_error(out.confidence, out.correct, bins)
    acc = rb["accuracy"].tolist()
    conf = rb["confidence"].tolist()
    return {
        "bins": bins,
        "count": n,
        "ece": _none_if_nan(ece),
        "accuracy": float(out.correct.double().mean()),
        "mean_confidence": float(out.confidence.mean()),
        "bin_lower": [float(v) for v in rb["lower"].tolist()],
        "bin_upper": [float(v) for v in rb["upper"].tolist()],
        "bin_count": [int(v) for v in rb["count"].tolist()],
        "bin_accuracy": [_none_if_nan(v) for v in acc],
        "bin_confidence": [_none_if_nan(v) for v in conf],
        "bin_gap": [_none_if_nan(c - a) for a, c in zip(acc, conf)],
    }


def confidence_histogram(logits: Tensor, labels: Tensor, bins: int = 20) -> Dict[str, Any]:
    """Counts of the max-softmax confidence, separately for correct and wrong predictions.

    Bins are those of :func:`reliability` (``(i/M, (i+1)/M]``, confidence 0 in the first bin).
    Returns ``bins``, ``edges`` (``bins + 1`` floats), ``correct`` and ``wrong`` (``bins``
    ints each), ``n_correct`` and ``n_wrong``. Needs N ≥ 1.
    """
    bins = _check_bins(bins)
    logits, labels = _check_inputs(logits, labels)
    _check_nonempty(labels, "confidence_histogram")
    out = _per_sample(logits, labels)
    rb = reliability_bins(out.confidence, out.correct, bins)
    total = [int(v) for v in rb["count"].tolist()]
    # bin accuracy × count is the bin's number of correct samples (an exact integer sum of 0/1
    # divided and multiplied back, so rounding recovers it exactly)
    right = [
        int(round(a * c)) if c else 0 for a, c in zip(rb["accuracy"].tolist(), total)
    ]
    wrong = [c - r for c, r in zip(total, right)]
    return {
        "bins": bins,
        "edges": [float(v) for v in rb["lower"].tolist()] + [float(rb["upper"][-1])],
        "correct": right,
        "wrong": wrong,
        "n_correct": sum(right),
        "n_wrong": sum(wrong),
    }


# ---------------------------------------------------------------------------------------------
# confusions


def most_confused_pairs(
    logits: Tensor, labels: Tensor, top: Optional[int] = 10, class_names: ClassNames = None
) -> List[Dict[str, Any]]:
    """The largest off-diagonal cells of the confusion matrix.

    Each entry is ``{"true": i, "predicted": j, "count": c, "rate": c / n_i}`` where ``n_i`` is
    the number of samples of true class ``i`` (so ``rate`` is the fraction of class ``i``
    predicted as ``j``), plus ``true_name`` / ``predicted_name`` when ``class_names`` is given.
    Only pairs with a non-zero count appear; sorted by count (descending), ties by true class,
    then predicted class. ``top=None`` returns every pair.
    """
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or top < 0):
        raise ValueError(f"top must be a non-negative integer or None, got {top!r}")
    logits, labels = _check_inputs(logits, labels)
    k = int(logits.shape[1])
    names = _check_names(class_names, k)
    pred = _per_sample(logits, labels).pred
    cm = confusion_matrix(pred, labels, k).cpu()
    support = cm.sum(dim=1).tolist()
    off = cm.clone()
    off.fill_diagonal_(0)
    cells = off.nonzero().tolist()  # row-major: already ordered by (true, predicted)
    counts = off[off > 0].tolist() if cells else []
    ranked = sorted(zip(counts, cells), key=lambda item: (-item[0], item[1][0], item[1][1]))
    if top is not None:
        ranked = ranked[:top]
    result = []
    for count, (i, j) in ranked:
        entry: Dict[str, Any] = {
            "true": int(i),
            "predicted": int(j),
            "count": int(count),
            "rate": float(count) / float(support[i]),
        }
        if names is not None:
            entry["true_name"] = names[i]
            entry["predicted_name"] = names[j]
        result.append(entry)
    return result


# ---------------------------------------------------------------------------------------------
# ground-truth probability


def true_class_probability(logits: Tensor, labels: Tensor) -> Tensor:
    """N float64 values: the softmax probability of each sample's true class (JGL Fig. 4).

    On the device of ``logits``.
    """
    logits, labels = _check_inputs(logits, labels)
    return _per_sample(logits, labels).logp_true.exp()


def box_stats(values: Union[Tensor, Sequence[float]]) -> Dict[str, Optional[float]]:
    """``min``, ``q1``, ``median``, ``q3``, ``max``, ``mean`` and ``count`` of ``values``.

    Quartiles use linear interpolation between order statistics (position ``q·(n−1)`` in the
    sorted values): the default of ``numpy.percentile`` and of matplotlib's box plots, and
    ``statistics.quantiles(method="inclusive")``. Empty input gives ``count`` 0 and ``None``
    elsewhere.
    """
    v = torch.as_tensor(values).detach().reshape(-1).to(device="cpu", dtype=torch.float64)
    n = int(v.numel())
    keys = ("min", "q1", "median", "q3", "max", "mean")
    if n == 0:
        out: Dict[str, Optional[float]] = {key: None for key in keys}
        out["count"] = 0
        return out
    s = torch.sort(v).values

    def quantile(q: float) -> float:
        pos = q * (n - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, n - 1)
        frac = pos - lo
        a, b = float(s[lo]), float(s[hi])
        return a if frac == 0 else a + (b - a) * frac

    return {
        "min": float(s[0]),
        "q1": quantile(0.25),
        "median": quantile(0.5),
        "q3": quantile(0.75),
        "max": float(s[-1]),
        "mean": float(v.mean()),
        "count": n,
    }


# ---------------------------------------------------------------------------------------------
# single samples


def topk_predictions(
    logits: Tensor,
    labels: Tensor,
    indices: Union[Sequence[int], Tensor],
    k: int = 5,
    class_names: ClassNames = None,
) -> List[Dict[str, Any]]:
    """Top-``k`` softmax scores of the chosen samples (CS-KD Fig. 1b, JGL Fig. 6).

    One entry per index, in the order given: ``index``, ``label``, ``predicted`` (the argmax),
    ``correct``, ``label_probability`` (softmax of the true class, also when it is not in the
    top k) and ``top``: a list of ``(class, probability)`` tuples, highest first (ties in the
    logits by lower class index, as ``argmax``). ``k`` is capped at K. With ``class_names`` the
    entry also has ``label_name``, ``predicted_name`` and ``top_names`` (names of ``top``).
    """
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    logits, labels = _check_inputs(logits, labels)
    n, num_classes = int(logits.shape[0]), int(logits.shape[1])
    names = _check_names(class_names, num_classes)
    idx = _check_indices(indices, n)
    k = min(k, num_classes)
    if not idx:
        return []
    rows = torch.tensor(idx, dtype=torch.long, device=logits.device)
    x = logits[rows]
    y = labels[rows]
    probs = torch.softmax(x.double(), dim=1)
    # Stable sort of the logits themselves: order (and ties) exactly as argmax sees them.
    order = torch.sort(x, dim=1, descending=True, stable=True).indices[:, :k]
    top_p = probs.gather(1, order)
    label_p = probs.gather(1, y[:, None]).squeeze(1)
    result = []
    for r, i in enumerate(idx):
        classes = [int(c) for c in order[r].tolist()]
        entry: Dict[str, Any] = {
            "index": i,
            "label": int(y[r]),
            "predicted": classes[0],
            "correct": classes[0] == int(y[r]),
            "label_probability": float(label_p[r]),
            "top": [(c, float(p)) for c, p in zip(classes, top_p[r].tolist())],
        }
        if names is not None:
            entry["label_name"] = names[entry["label"]]
            entry["predicted_name"] = names[classes[0]]
            entry["top_names"] = [names[c] for c in classes]
        result.append(entry)
    return result


# ---------------------------------------------------------------------------------------------
# misclassified samples and comparisons with a baseline


def misclassified_log_probs(
    logits: Tensor, labels: Tensor, indices: Optional[Union[Sequence[int], Tensor]] = None
) -> Dict[str, List]:
    """Log-probabilities (natural log) on misclassified samples (CS-KD Fig. 2).

    Returns ``predicted`` (log softmax of the predicted class, i.e. log of the top-1 score),
    ``true`` (log softmax of the ground-truth class) and ``indices`` (the samples, ascending).
    ``indices`` restricts the analysis to those samples (e.g. :func:`commonly_misclassified`,
    as in the paper); of them only the misclassified ones are kept.
    """
    logits, labels = _check_inputs(logits, labels)
    n = int(logits.shape[0])
    out = _per_sample(logits, labels)
    wrong = ~out.correct
    if indices is not None:
        keep = torch.zeros(n, dtype=torch.bool, device=wrong.device)
        chosen = _check_indices(indices, n)
        if chosen:
            keep[torch.tensor(chosen, dtype=torch.long, device=wrong.device)] = True
        wrong = wrong & keep
    rows = wrong.nonzero().squeeze(1)
    return {
        "predicted": [float(v) for v in out.logp_pred[rows].tolist()],
        "true": [float(v) for v in out.logp_true[rows].tolist()],
        "indices": [int(v) for v in rows.tolist()],
    }


def commonly_misclassified(
    logits_list: Union[Sequence[Tensor], Mapping[str, Tensor]], labels: Tensor
) -> List[int]:
    """Indices (ascending) of the samples that every one of the given models misclassifies.

    ``logits_list`` is a sequence of N×K logits, or a mapping whose values are. Pass the result
    as ``indices`` to :func:`misclassified_log_probs` to compare methods on the same samples
    (CS-KD Fig. 2).
    """
    items = list(logits_list.values()) if isinstance(logits_list, Mapping) else list(logits_list)
    if not items:
        raise ValueError("commonly_misclassified needs at least one set of logits")
    wrong = None
    for m, lg in enumerate(items):
        lg, lab = _check_inputs(lg, labels, what=f"logits[{m}]")
        if wrong is not None and lg.shape[0] != wrong.shape[0]:
            raise ValueError(
                f"logits[{m}] has {lg.shape[0]} samples but logits[0] has {wrong.shape[0]}"
            )
        w = (lg.argmax(dim=1) != lab).cpu()
        wrong = w if wrong is None else wrong & w
    return [int(v) for v in wrong.nonzero().squeeze(1).tolist()]


def fixed_and_broken(baseline_logits: Tensor, logits: Tensor, labels: Tensor) -> Dict[str, int]:
    """Sample-level comparison with a baseline (JGL Table VIII).

    ``fixed``: wrong by the baseline, right now; ``broken``: right by the baseline, wrong now;
    ``both_right``, ``both_wrong``; ``net = fixed − broken``, the reduction in the number of
    wrong samples (what Table VIII reports); ``total`` = N. The two logits must have the same
    shape.
    """
    base, labels_b = _check_inputs(baseline_logits, labels, what="baseline_logits")
    new, labels_n = _check_inputs(logits, labels)
    if base.shape != new.shape:
        raise ValueError(
            f"baseline_logits has shape {tuple(base.shape)} but logits has shape {tuple(new.shape)}"
        )
    base_ok = (base.argmax(dim=1) == labels_b).cpu()
    new_ok = (new.argmax(dim=1) == labels_n).cpu()
    fixed = int((~base_ok & new_ok).sum())
    broken = int((base_ok & ~new_ok).sum())
    return {
        "fixed": fixed,
        "broken": broken,
        "both_right": int((base_ok & new_ok).sum()),
        "both_wrong": int((~base_ok & ~new_ok).sum()),
        "net": fixed - broken,
        "total": int(labels_n.shape[0]),
    }


def _rank_desc(values: Tensor, rows: Tensor, k: Optional[int]) -> List[int]:
    """``rows`` ordered by ``values[rows]`` descending (ties by index), the first ``k``."""
    if rows.numel() == 0:
        return []
    order = torch.sort(values[rows], descending=True, stable=True).indices
    chosen = rows[order]
    return [int(v) for v in (chosen if k is None else chosen[:k]).tolist()]


def most_confident_errors(logits: Tensor, labels: Tensor, k: Optional[int] = 8) -> List[int]:
    """Indices of the misclassified samples with the highest confidence (max softmax), highest
    first (ties by index); at most ``k`` (``None``: all)."""
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 0):
        raise ValueError(f"k must be a non-negative integer or None, got {k!r}")
    logits, labels = _check_inputs(logits, labels)
    out = _per_sample(logits, labels)
    return _rank_desc(out.confidence, (~out.correct).nonzero().squeeze(1), k)


def fixed_and_broken_samples(
    baseline_logits: Tensor, logits: Tensor, labels: Tensor, k: Optional[int] = 8
) -> Dict[str, List[int]]:
    """The samples behind :func:`fixed_and_broken`: ``fixed`` (wrong by the baseline, right
    now), ordered by how sure the baseline was of its wrong answer, and ``broken`` (right by the
    baseline, wrong now), ordered by how sure the model is of its wrong answer; at most ``k``
    each (``None``: all)."""
    base, labels_b = _check_inputs(baseline_logits, labels, what="baseline_logits")
    new, labels_n = _check_inputs(logits, labels)
    if base.shape != new.shape:
        raise ValueError(
            f"baseline_logits has shape {tuple(base.shape)} but logits has shape {tuple(new.shape)}"
        )
    b, m = _per_sample(base, labels_b), _per_sample(new, labels_n)
    fixed = (~b.correct & m.correct).nonzero().squeeze(1)
    broken = (b.correct & ~m.correct).nonzero().squeeze(1)
    return {"fixed": _rank_desc(b.confidence, fixed, k), "broken": _rank_desc(m.confidence, broken, k)}


def pool_reliability(results: Sequence[Mapping[str, Any]]) -> Dict[str, Any]:
    """One reliability result (the shape :func:`reliability` returns) from several computed on
    disjoint sample sets with the same bins, e.g. the seeds of one method: bin counts add, bin
    accuracy and confidence are count-weighted means, and ``ece`` is that of the pooled samples
    (percent). Equal to :func:`reliability` of the concatenated logits and labels."""
    results = list(results)
    if not results:
        raise ValueError("pool_reliability needs at least one result")
    bins = results[0]["bins"]
    if any(r["bins"] != bins for r in results):
        raise ValueError("pool_reliability: the results use different numbers of bins")
    count = [sum(int(r["bin_count"][i]) for r in results) for i in range(bins)]

    def pooled(key: str) -> List[Optional[float]]:
        out = []
        for i in range(bins):
            if count[i] == 0:
                out.append(None)
                continue
            out.append(math.fsum(float(r[key][i]) * int(r["bin_count"][i])
                                 for r in results if int(r["bin_count"][i])) / count[i])
        return out

    acc, conf = pooled("bin_accuracy"), pooled("bin_confidence")
    n = sum(int(r["count"]) for r in results)
    gaps = [None if a is None else c - a for a, c in zip(acc, conf)]
    ece = math.fsum(abs(g) * c for g, c in zip(gaps, count) if g is not None) / n * 100.0
    return {
        "bins": bins,
        "count": n,
        "ece": ece,
        "accuracy": math.fsum(float(r["accuracy"]) * int(r["count"]) for r in results) / n,
        "mean_confidence": math.fsum(float(r["mean_confidence"]) * int(r["count"]) for r in results) / n,
        "bin_lower": list(results[0]["bin_lower"]),
        "bin_upper": list(results[0]["bin_upper"]),
        "bin_count": count,
        "bin_accuracy": acc,
        "bin_confidence": conf,
        "bin_gap": gaps,
    }
