"""Figures for the analyses of :mod:`softlabels.evaluate.predictions`.

Every ``plot_*`` function returns a new :class:`matplotlib.figure.Figure` built with the object
API (``Figure`` + the Agg canvas), never through ``pyplot``: figures are not registered with
pyplot's figure manager, so nothing has to be closed and nothing the caller has open is
touched; a figure is freed when the last reference to it goes. Render with
:func:`figure_to_png_bytes` or :func:`figure_to_data_uri` (for self-contained HTML), or
``fig.savefig(path)``.

Number of axes per figure (tests rely on it): reliability diagrams one per method, confidence
histogram 1, confusion matrix 2 (matrix and colour bar), ground-truth boxes 1, top-k bars one
per sample (per method × sample for a mapping), misclassified histograms 2 (predicted class,
ground-truth class).
"""
from __future__ import annotations

import base64
import io
import math
import sys
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import matplotlib

# The non-interactive backend for headless use. If pyplot is already imported, the caller has
# chosen a backend; switching it would close all of their open figures, and the figures here
# do not use pyplot at all, so it is left alone.
if "matplotlib.pyplot" not in sys.modules:
    matplotlib.use("Agg")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

__all__ = [
    "figure_to_data_uri",
    "figure_to_png_bytes",
    "plot_confidence_histogram",
    "plot_confusion_matrix",
    "plot_learning_curves",
    "plot_bars_with_reference",
    "plot_misclassified_histograms",
    "plot_reliability",
    "plot_soft_label_matrix",
    "plot_topk_bars",
    "plot_true_class_boxes",
]

_GOOD = "tab:green"
_BAD = "tab:red"
_OTHER = "tab:gray"
_CELL_TEXT_MAX_CLASSES = 20


def _figure(figsize: Tuple[float, float]) -> Figure:
    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _as_numpy(values: Any) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        return values.detach().to(device="cpu", dtype=torch.float64).reshape(-1).numpy()
    return np.asarray(values, dtype=np.float64).reshape(-1)


def _nan(values: Sequence[Optional[float]]) -> np.ndarray:
    return np.array([np.nan if v is None else float(v) for v in values], dtype=np.float64)


def _by_method(obj: Any, is_single) -> Dict[Optional[str], Any]:
    """A single result becomes ``{None: result}``; a mapping of results is kept (in order)."""
    if is_single(obj):
        return {None: obj}
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError("expected one result or a non-empty mapping {method: result}")
    for name, value in obj.items():
        if not is_single(value):
            raise ValueError(f"the result for {name!r} does not look like the expected analysis")
    return {str(k): v for k, v in obj.items()}


# ---------------------------------------------------------------------------------------------


def plot_reliability(rel: Mapping, title: Optional[str] = None) -> Figure:
    """Reliability diagram(s) (CS-KD Fig. 5) from :func:`predictions.reliability`.

    ``rel`` is one result, or a mapping ``{method: result}`` drawn side by side (one axes per
    method). Bars show the accuracy per confidence bin, the hatched part the gap to the bin's
    mean confidence, and the dashed diagonal perfect calibration; empty bins are left blank.
    """
    results = _by_method(rel, lambda r: isinstance(r, Mapping) and "bin_accuracy" in r)
    fig = _figure((4.0 * len(results), 4.0))
    axes = fig.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, r) in zip(axes, results.items()):
        lower = np.asarray(r["bin_lower"], dtype=np.float64)
        width = np.asarray(r["bin_upper"], dtype=np.float64) - lower
        acc = _nan(r["bin_accuracy"])
        conf = _nan(r["bin_confidence"])
        ok = ~np.isnan(acc)
        ax.bar(lower[ok], acc[ok], width=width[ok], align="edge", color="tab:blue",
               edgecolor="black", linewidth=0.5, label="Outputs")
        ax.bar(lower[ok], conf[ok] - acc[ok], bottom=acc[ok], width=width[ok], align="edge",
               color=_BAD, alpha=0.3, edgecolor=_BAD, hatch="//", linewidth=0.5, label="Gap")
        ax.plot([0, 1], [0, 1], linestyle="--", color="black", linewidth=1, label="Optimal")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_aspect("equal")
        ax.set_xlabel("Confidence")
        ax.set_ylabel("Accuracy")
        ece = r.get("ece")
        if ece is not None:
            ax.text(0.97, 0.03, f"ECE = {ece:.2f}%", transform=ax.transAxes, ha="right",
                    va="bottom", bbox=dict(boxstyle="round", facecolor="white", alpha=0.8))
        if name is not None:
            ax.set_title(name)
        ax.legend(loc="upper left", fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def plot_confidence_histogram(hist: Mapping, title: Optional[str] = None) -> Figure:
    """Stacked histogram of the max-softmax confidence from :func:`predictions.confidence_histogram`:
    correct predictions at the bottom, wrong ones on top. One axes."""
    edges = np.asarray(hist["edges"], dtype=np.float64)
    right = np.asarray(hist["correct"], dtype=np.float64)
    wrong = np.asarray(hist["wrong"], dtype=np.float64)
    if len(edges) != len(right) + 1 or len(right) != len(wrong):
        raise ValueError("hist needs len(edges) == len(correct) + 1 == len(wrong) + 1")
    fig = _figure((5.0, 3.5))
    ax = fig.subplots()
    width = np.diff(edges)
    ax.bar(edges[:-1], right, width=width, align="edge", color=_GOOD, edgecolor="black",
           linewidth=0.5, label=f"correct ({int(right.sum())})")
    ax.bar(edges[:-1], wrong, width=width, bottom=right, align="edge", color=_BAD,
           edgecolor="black", linewidth=0.5, label=f"wrong ({int(wrong.sum())})")
    ax.set_xlim(edges[0], edges[-1])
    ax.set_xlabel("Confidence (max softmax probability)")
    ax.set_ylabel("Samples")
    ax.legend(loc="upper left", fontsize="small")
    if title:
        ax.set_title(title)
    return fig


def plot_confusion_matrix(
    cm: Any,
    class_names: Optional[Sequence[str]] = None,
    normalize: bool = True,
    title: Optional[str] = None,
    max_tick_labels: int = 50,
    *,
    xlabel: str = "Predicted class",
    cbar_label: Optional[str] = None,
    cell_format: Optional[str] = None,
) -> Figure:
    """Confusion matrix (rows: true class, columns: predicted class) as a heat map.

    ``cm`` is a K×K tensor / array / nested list of counts (e.g. :func:`metrics.confusion_matrix`).
    ``normalize`` divides each row by its total (per-class recall on the diagonal; rows without
    samples stay 0). Cell values are written only up to 20 classes; above ``max_tick_labels``
    classes only every n-th tick is labelled. Two axes: the matrix and its colour bar.
    ``xlabel``, ``cbar_label`` and ``cell_format`` (e.g. ``"{:.2f}"``) serve other K×K
    matrices drawn the same way (:func:`plot_soft_label_matrix`).
    """
    m = cm.detach().cpu().numpy() if isinstance(cm, torch.Tensor) else np.asarray(cm)
    m = m.astype(np.float64)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"cm must be a non-empty K×K matrix, got shape {m.shape}")
    k = m.shape[0]
    if class_names is not None:
        class_names = [str(c) for c in class_names]
        if len(class_names) != k:
            raise ValueError(f"class_names has {len(class_names)} names for {k} classes")
    if normalize:
        rows = m.sum(axis=1, keepdims=True)
        m = np.divide(m, rows, out=np.zeros_like(m), where=rows > 0)
    side = min(12.0, max(4.5, 2.5 + 0.35 * k))
    fig = _figure((side + 1.0, side))
    ax = fig.subplots()
    vmax = 1.0 if normalize else max(float(m.max()), 1.0)
    im = ax.imshow(m, cmap="Blues", vmin=0.0, vmax=vmax, interpolation="nearest")
    if cbar_label is None:
        cbar_label = "fraction of the true class" if normalize else "samples"
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label=cbar_label)
    step = 1 if k <= max_tick_labels else int(math.ceil(k / max_tick_labels))
    ticks = np.arange(0, k, step)
    labels = [class_names[i] if class_names else str(i) for i in ticks]
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    fontsize = "medium" if k <= _CELL_TEXT_MAX_CLASSES else "x-small"
    ax.set_xticklabels(labels, rotation=90 if (class_names or k > 20) else 0, fontsize=fontsize)
    ax.set_yticklabels(labels, fontsize=fontsize)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("True class")
    if k <= _CELL_TEXT_MAX_CLASSES:
        for i in range(k):
            for j in range(k):
                v = m[i, j]
                if cell_format is not None:
                    text = cell_format.format(v)
                else:
                    text = f"{v:.2f}" if normalize else f"{int(round(v))}"
                ax.text(j, i, text, ha="center", va="center", fontsize="small",
                        color="white" if v > 0.5 * vmax else "black")
    if title:
        ax.set_title(title)
    return fig


def plot_true_class_boxes(
    values_by_method: Mapping[str, Any],
    title: Optional[str] = None,
    ylabel: str = "Probability of the ground-truth class",
    whis: Union[float, Tuple[float, float]] = (0, 100),
) -> Figure:
    """Box plots of the ground-truth probability, one box per method (JGL Fig. 4). One axes.

    ``values_by_method`` maps a method name to its N values (e.g.
    :func:`predictions.true_class_probability`). Quartiles are those of
    :func:`predictions.box_stats` (linear interpolation); whiskers span min to max by default
    (``whis=1.5`` gives Tukey whiskers with outliers as points). Triangles mark the means.
    """
    if not isinstance(values_by_method, Mapping) or not values_by_method:
        raise ValueError("values_by_method must be a non-empty mapping {method: values}")
    names = [str(k) for k in values_by_method]
    data = [_as_numpy(v) for v in values_by_method.values()]
    for name, d in zip(names, data):
        if d.size == 0:
            raise ValueError(f"no values for method {name!r}")
    fig = _figure((max(4.0, 1.2 * len(data) + 1.5), 4.0))
    ax = fig.subplots()
    positions = list(range(1, len(data) + 1))
    ax.boxplot(data, positions=positions, whis=whis, showmeans=True, widths=0.6,
               flierprops=dict(marker=".", markersize=2, alpha=0.5))
    ax.set_xticks(positions)
    ax.set_xticklabels(names, rotation=30 if len(names) > 4 else 0)
    ax.set_ylabel(ylabel)
    if all(np.nanmin(d) >= 0 and np.nanmax(d) <= 1 for d in data):
        ax.set_ylim(-0.02, 1.02)
    ax.grid(axis="y", alpha=0.3)
    if title:
        ax.set_title(title)
    return fig


def _draw_topk(ax, entry: Mapping, heading: Optional[str]) -> None:
    top = entry["top"]
    classes = [int(c) for c, _ in top]
    probs = [float(p) for _, p in top]
    names = entry.get("top_names") or [str(c) for c in classes]
    label = int(entry["label"])
    colors = []
    for rank, c in enumerate(classes):
        if c == label:
            colors.append(_GOOD)
        elif rank == 0:
            colors.append(_BAD)
        else:
            colors.append(_OTHER)
    y = np.arange(len(classes))
    ax.barh(y, probs, color=colors, edgecolor="black", linewidth=0.5)
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize="small")
    ax.invert_yaxis()
    ax.set_xlim(0, 1.18)
    ax.set_xlabel("softmax score")
    for yi, p in zip(y, probs):
        ax.text(p + 0.02, yi, f"{p:.2f}", va="center", fontsize="x-small")
    label_name = entry.get("label_name", str(label))
    verdict = "correct" if classes and classes[0] == label else "wrong"
    head = f"#{entry['index']}  true: {label_name} ({verdict})"
    if label not in classes and entry.get("label_probability") is not None:
        head += f"\ntrue-class score {float(entry['label_probability']):.3f}"
    ax.set_title(head if heading is None else f"{heading}\n{head}", fontsize="small")


def plot_topk_bars(
    topk_entries: Union[Sequence[Mapping], Mapping[str, Sequence[Mapping]]],
    title: Optional[str] = None,
    ncols: Optional[int] = None,
) -> Figure:
    """Top-k softmax scores of samples (CS-KD Fig. 1b, JGL Fig. 6), one axes per sample.

    ``topk_entries`` is the list from :func:`predictions.topk_predictions` (laid out in a grid of
    ``ncols`` columns, default up to 4), or a mapping ``{method: entries}`` with the same samples
    in the same order: one row per method, one column per sample. The ground-truth bar is green,
    a wrong top-1 bar red, the rest grey.
    """
    if isinstance(topk_entries, Mapping):
        if not topk_entries:
            raise ValueError("topk_entries is empty")
        lists = {str(k): list(v) for k, v in topk_entries.items()}
        n = len(next(iter(lists.values())))
        if n == 0 or any(len(v) != n for v in lists.values()):
            raise ValueError("every method needs the same, non-zero number of entries")
        fig = _figure((3.4 * n, 2.6 * len(lists)))
        grid = fig.subplots(len(lists), n, squeeze=False)
        for r, (method, entries) in enumerate(lists.items()):
            for c, entry in enumerate(entries):
                _draw_topk(grid[r][c], entry, method)
    else:
        entries = list(topk_entries)
        if not entries:
            raise ValueError("topk_entries is empty")
        n = len(entries)
        cols = min(n, 4) if ncols is None else max(1, min(int(ncols), n))
        rows = int(math.ceil(n / cols))
        fig = _figure((3.4 * cols, 2.6 * rows))
        grid = fig.subplots(rows, cols, squeeze=False).reshape(-1)
        for ax, entry in zip(grid, entries):
            _draw_topk(ax, entry, None)
        for ax in grid[n:]:
            fig.delaxes(ax)
    if title:
        fig.suptitle(title)
    return fig


def plot_misclassified_histograms(
    results_by_method: Mapping,
    bins: int = 30,
    title: Optional[str] = None,
) -> Figure:
    """Histograms of log-probabilities on misclassified samples (CS-KD Fig. 2).

    ``results_by_method`` maps a method name to :func:`predictions.misclassified_log_probs`
    (a single result is also accepted). Two axes: (a) the predicted class (top-1 score) and
    (b) the ground-truth class; methods are overlaid on shared bin edges.
    """
    results = _by_method(
        results_by_method,
        lambda r: isinstance(r, Mapping) and "predicted" in r and "true" in r
        and not isinstance(r["predicted"], Mapping),
    )
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    fig = _figure((9.0, 3.6))
    axes = fig.subplots(1, 2, squeeze=False)[0]
    panels = (("predicted", "(a) predicted class"), ("true", "(b) ground-truth class"))
    for ax, (key, heading) in zip(axes, panels):
        series = {name: _as_numpy(r[key]) for name, r in results.items()}
        series = {name: v[np.isfinite(v)] for name, v in series.items()}
        pooled = np.concatenate([v for v in series.values()]) if series else np.zeros(0)
        if pooled.size == 0:
            ax.text(0.5, 0.5, "no misclassified samples", ha="center", va="center",
                    transform=ax.transAxes)
        else:
            lo, hi = float(pooled.min()), float(min(pooled.max(), 0.0))
            if hi - lo < 1e-9:
                lo, hi = lo - 0.5, hi + 0.5
            edges = np.linspace(lo, hi, bins + 1)
            for name, v in series.items():
                label = name if name is not None else None
                if label is not None:
                    label = f"{label} ({v.size})"
                ax.hist(v, bins=edges, alpha=0.5, histtype="stepfilled", edgecolor="black",
                        linewidth=0.5, label=label)
            if any(name is not None for name in series):
                ax.legend(fontsize="small")
        ax.set_title(heading)
        ax.set_xlabel("log-probability")
        ax.set_ylabel("Samples")
    if title:
        fig.suptitle(title)
    return fig


def plot_soft_label_matrix(matrix: Any, class_names: Optional[Sequence[str]] = None,
                           title: Optional[str] = None) -> Figure:
    """The OLS soft-label matrix (OLS Fig. 1) as a heat map: row ``c`` is the soft label that
    samples of class ``c`` are trained towards (each row sums to 1). Two axes."""
    m = matrix.detach().cpu().double().numpy() if isinstance(matrix, torch.Tensor) else np.asarray(matrix)
    return plot_confusion_matrix(m, class_names, normalize=False, title=title, xlabel="Soft-label class",
                                 cbar_label="probability", cell_format="{:.2f}")


# (record key, metric key, y-axis, line style); the error and loss panels of the learning curves
_CURVES = (
    ("train", "top1_error", 0, "-"), ("val", "top1_error", 0, "--"), ("test", "top1_error", 0, ":"),
    ("train", "loss", 1, "-"), ("val", "nll", 1, "--"), ("test", "nll", 1, ":"),
)


def learning_curve_series(histories: Sequence[Sequence[Mapping]]) -> Dict[str, Dict[str, list]]:
    """Per-epoch mean, min, max and std over seeds of the curves of one method.

    ``histories`` holds one list of ``metrics.jsonl`` records per seed. Returns
    ``{"<split> <metric>": {"epoch", "mean", "min", "max", "std", "n"}}`` for every split and
    metric of the learning curves that some record has (train loss and error, val/test error
    and NLL); an epoch counts the seeds that recorded it (``std`` is the sample std, 0 for one).
    """
    out: Dict[str, Dict[str, list]] = {}
    for split, key, _, _ in _CURVES:
        per_epoch: Dict[int, list] = {}
        for records in histories:
            for rec in records:
                v = (rec.get(split) or {}).get(key) if isinstance(rec, Mapping) else None
                if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
                    per_epoch.setdefault(int(rec["epoch"]), []).append(float(v))
        if not per_epoch:
            continue
        epochs = sorted(per_epoch)
        vals = [np.asarray(per_epoch[e]) for e in epochs]
        out[f"{split} {key}"] = {
            "epoch": epochs,
            "mean": [float(v.mean()) for v in vals],
            "min": [float(v.min()) for v in vals],
            "max": [float(v.max()) for v in vals],
            "std": [float(v.std(ddof=1)) if v.size > 1 else 0.0 for v in vals],
            "n": [int(v.size) for v in vals],
        }
    return out


def plot_learning_curves(histories_by_method: Mapping[str, Sequence[Sequence[Mapping]]],
                         band: str = "minmax", title: Optional[str] = None) -> Figure:
    """Learning curves: top-1 error (left) and loss (right) per epoch, one colour per method,
    solid train, dashed validation, dotted test (the loss panel shows the training loss and the
    val/test NLL). Lines are the mean over seeds, the band spans ``minmax`` (min to max over
    seeds) or ``std`` (± one sample std). ``histories_by_method`` maps a method to one list of
    ``metrics.jsonl`` records per seed. Two axes."""
    if band not in ("minmax", "std"):
        raise ValueError(f"band must be 'minmax' or 'std', got {band!r}")
    if not isinstance(histories_by_method, Mapping) or not histories_by_method:
        raise ValueError("histories_by_method must be a non-empty mapping {method: [records per seed]}")
    fig = _figure((11.0, 4.0))
    axes = fig.subplots(1, 2, squeeze=False)[0]
    colours = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
    for n, (method, histories) in enumerate(histories_by_method.items()):
        colour = colours[n % len(colours)]
        series = learning_curve_series(histories)
        for split, key, panel, style in _CURVES:
            cur = series.get(f"{split} {key}")
            if cur is None:
                continue
            x = np.asarray(cur["epoch"])
            mean = np.asarray(cur["mean"])
            if band == "minmax":
                lo, hi = np.asarray(cur["min"]), np.asarray(cur["max"])
            else:
                lo, hi = mean - np.asarray(cur["std"]), mean + np.asarray(cur["std"])
            ax = axes[panel]
            ax.plot(x, mean, linestyle=style, color=colour, marker="." if x.size < 20 else None,
                    label=f"{method} {split} (n={max(cur['n'])})")
            if max(cur["n"]) > 1:
                ax.fill_between(x, lo, hi, color=colour, alpha=0.15, linewidth=0)
    from matplotlib.ticker import MaxNLocator

    for ax, ylabel in zip(axes, ("top-1 error (%)", "loss (train) / NLL (val, test)")):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="x-small", ncol=2)
    axes[0].set_title("Top-1 error")
    axes[1].set_title("Loss")
    if title:
        fig.suptitle(title)
    return fig


# ---------------------------------------------------------------------------------------------


def plot_bars_with_reference(panels: Mapping[str, Sequence[Tuple[str, Optional[float], Optional[float],
                                                                   Optional[float]]]],
                             ylabel: str, title: Optional[str] = None) -> Figure:
    """Bars with error bars and a reference value marked (a study's table: ours vs the paper).

    ``panels`` maps a panel title (a table column) to bars ``(label, mean, std, reference)``;
    a missing mean leaves the slot empty, a missing reference draws no marker. One axes per
    panel, side by side; the reference is a black horizontal tick over its bar.
    """
    if not panels:
        raise ValueError("plot_bars_with_reference needs at least one panel")
    width = max(len(b) for b in panels.values())
    longest = max((len(str(b[0])) for bars in panels.values() for b in bars), default=10)
    fig = _figure((max(4.0, 0.45 * width + 1.5) * len(panels), 3.5 + 0.065 * longest))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (name, bars) in zip(axes, panels.items()):
        x = np.arange(len(bars))
        mean = _nan([b[1] for b in bars])
        std = np.nan_to_num(_nan([b[2] for b in bars]))
        ref = _nan([b[3] for b in bars])
        ok = ~np.isnan(mean)
        ax.bar(x[ok], mean[ok], yerr=std[ok], color="tab:blue", alpha=0.8, capsize=3,
               edgecolor="black", linewidth=0.5, label="ours (mean ± std)")
        has_ref = ~np.isnan(ref)
        if has_ref.any():
            ax.scatter(x[has_ref], ref[has_ref], marker="_", s=400, linewidths=2.5, color="black",
                       zorder=3, label="paper")
        ax.set_xticks(x)
        ax.set_xticklabels([b[0] for b in bars], rotation=60, ha="right", fontsize="small")
        ax.set_ylabel(ylabel)
        ax.set_title(name)
        ax.legend(loc="best", fontsize="small")
    if title:
        fig.suptitle(title, fontsize="medium")
    return fig


def figure_to_png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure rendered as PNG bytes (starting with ``b"\\x89PNG"``). The figure stays open."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    return buf.getvalue()


def figure_to_data_uri(fig: Figure, dpi: int = 100) -> str:
    """``"data:image/png;base64,…"`` for an ``<img src=…>`` in self-contained HTML."""
    return "data:image/png;base64," + base64.b64encode(figure_to_png_bytes(fig, dpi)).decode("ascii")
