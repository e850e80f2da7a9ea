"""Multi-seed result tables from finished run directories.

A run directory is anything holding a ``final.json`` written by the engine::

    {"run": {"method": "ols", "label": "ols", "seed": 0, "dataset": "digits", "model": "resnet8"},
     "selection": "val top1_error (lowest)",
     "last": {"epoch": 29, "val": {...metrics...}, "test": {...metrics...}},
     "best": {"epoch": 25, "val": {...}, "test": {...}}}

Runs are grouped by ``run.label`` (``folder_labels`` relabels runs of several folders whose
labels collide, ``<folder>/<label>``) and each metric is reported as ``mean ± std`` over seeds, the
way the papers print their tables. ``std`` is the *sample* standard deviation (ddof = 1, as
``statistics.stdev``); a group with a single seed gets ``std = 0``.

A run the engine stopped as collapsed (``final.json`` has ``"collapsed": {"epoch", "reason",
"split"}``, engine/collapse.py) is never averaged: it is listed in ``Row.collapsed`` and the
table's seeds column says ``2 + 1 collapsed``; a label whose seeds all collapsed shows
``collapsed`` in its metric cells.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

from ..errors import ConfigError, SoftlabelsError
from ..evaluate.metrics import METRIC_INFO

__all__ = [
    "DEFAULT_METRICS",
    "REL_ERR_COLUMN",
    "Row",
    "TABLE_FORMATS",
    "aggregate",
    "find_runs",
    "folder_labels",
    "format_table",
    "read_final",
    "relative_error_reduction",
    "write_summary",
    "write_table",
]

DEFAULT_METRICS = ("top1_error", "top5_error", "nll", "ece")
REL_ERR_COLUMN = "rel. err. red. (%)"
FINAL_NAME = "final.json"
ENSEMBLE_NAME = "ensemble.json"  # an ensemble evaluation's result (study/pipeline): its "test" block
_WHICH = ("best", "last")
_DECIMALS = {"nll": 3, "count": 0}  # everything else: 2 decimals


@dataclass
class Row:
    """One line of a table: all seeds of one ``run.label``."""

    label: str
    method: str
    dataset: Optional[str]
    model: Optional[str]
    which: str  # "best" or "last"
    split: str  # "test", "val", ...
    seeds: List[Any]
    mean: Dict[str, float]
    std: Dict[str, float]
    runs: List[str] = field(default_factory=list)  # run directories, in seed order found
    selection: Optional[str] = None  # how "best" was chosen (from the first run)
    collapsed: List[Any] = field(default_factory=list)  # seeds stopped as collapsed (not averaged)

    @property
    def n_seeds(self) -> int:
        """The seeds in ``mean``/``std`` (collapsed seeds excluded)."""
        return len(self.seeds)

    def seeds_cell(self) -> str:
        return str(self.n_seeds) + (f" + {len(self.collapsed)} collapsed" if self.collapsed else "")


# --------------------------------------------------------------------------- finding runs


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(path))]


def read_final(path: Union[str, Path]) -> Dict[str, Any]:
    """Load and check one ``final.json`` (a file path or its run directory).

    Raises :class:`SoftlabelsError` naming the file when it cannot be read, is not valid JSON,
    or lacks ``run.seed`` and ``run.label`` (``run.method`` stands in for a missing label).
    """
    path = Path(path)
    if path.is_dir():
        path = result_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise SoftlabelsError(f"{path}: cannot read: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise SoftlabelsError(f"{path}: not UTF-8 text (byte {e.start}); not a final.json the "
                              f"engine wrote") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise SoftlabelsError(
            f"{path}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
        ) from None
    if not isinstance(data, dict):
        raise SoftlabelsError(f"{path}: expected a JSON object at the top level")
    run = data.get("run")
    if not isinstance(run, dict):
        raise SoftlabelsError(f"{path}: missing the 'run' object")
    if "seed" not in run:
        raise SoftlabelsError(f"{path}: missing key 'run.seed'")
    label = run.get("label", run.get("method"))
    if not isinstance(label, str) or not label:
        raise SoftlabelsError(f"{path}: missing key 'run.label' (and no 'run.method' to use)")
    return data


def result_file(run_dir: Path) -> Path:
    """A run directory's result: its ``final.json``, or the ``ensemble.json`` of an ensemble
    evaluation (a folder with neither gives the ``final.json`` path, for the error)."""
    final = run_dir / FINAL_NAME
    if not final.is_file() and (run_dir / ENSEMBLE_NAME).is_file():
        return run_dir / ENSEMBLE_NAME
    return final


def find_runs(paths: Iterable[Union[str, Path]], ensembles: bool = False) -> List[Path]:
    """Run directories under ``paths``, in the order given.

    Each path is a run directory (it holds ``final.json``; a path to a ``final.json`` also
    works) or a folder searched recursively for ``final.json`` files (natural sort order, so
    ``seed2`` comes before ``seed10``). With ``ensembles``, folders holding the
    ``ensemble.json`` of a study's or pipeline's ensemble evaluation count too (``report`` lists
    them; ``eval`` has no model to load there). A run reached twice is listed once. A path that
    does not exist or holds no run, and a result file that is not valid JSON or lacks the
    ``run`` keys, raise :class:`SoftlabelsError` naming it.
    """
    names = (FINAL_NAME, ENSEMBLE_NAME) if ensembles else (FINAL_NAME,)
    found: List[Path] = []
    seen = set()
    for given in paths:
        path = Path(given)
        if not path.exists():
            raise SoftlabelsError(f"{given}: no such file or directory")
        if path.is_file():
            if path.name not in names:
                raise SoftlabelsError(
                    f"{given}: not a run directory (expected a folder holding {FINAL_NAME})"
                )
            files = [path]
        elif any((path / n).is_file() for n in names):
            files = [result_file(path)]
        else:
            files = sorted((f for n in names for f in path.rglob(n) if f.is_file()
                            and (n == FINAL_NAME or not (f.parent / FINAL_NAME).is_file())),
                           key=_natural_key)
        if not files:
            raise SoftlabelsError(f"{given}: no runs found (no {FINAL_NAME} in it or below it)")
        for f in files:
            read_final(f)
            key = f.parent.resolve()
            if key not in seen:
                seen.add(key)
                found.append(f.parent)
    return found


def folder_labels(paths: Sequence[Union[str, Path]]) -> Dict[str, str]:
    """Row labels for reporting several folders side by side: run directory → label.

    A run keeps its ``run.label`` unless runs with that label are found under more than one of
    ``paths``; then each of them is labelled ``<folder>/<label>``, ``<folder>`` being the given
    path's name (the path as given when two names are equal). So ``report cmpA cmpB`` shows
    ``cmpA/ce`` and ``cmpB/ce`` instead of mixing their seeds. Pass the result to
    ``aggregate(labels=...)``.
    """
    owner: Dict[str, tuple] = {}  # run directory → (index of the first path reaching it, label)
    seen = set()
    for i, given in enumerate(paths):
        for d in find_runs([given], ensembles=True):
            if d.resolve() not in seen:
                seen.add(d.resolve())
                owner[str(d)] = (i, _label_of(read_final(d)))
    names = [Path(given).name or str(given) for given in paths]
    shown = [n if names.count(n) == 1 else str(Path(g)) for n, g in zip(names, paths)]
    homes: Dict[str, set] = {}
    for i, label in owner.values():
        homes.setdefault(label, set()).add(i)
    return {key: f"{shown[i]}/{label}" if len(homes[label]) > 1 else label
            for key, (i, label) in owner.items()}


def _label_of(data: Dict[str, Any]) -> str:
    return data["run"].get("label", data["run"].get("method"))


# --------------------------------------------------------------------------- aggregation


def _mean_std(values: Sequence[float]):
    n = len(values)
    if n == 0:  # every seed collapsed
        return float("nan"), float("nan")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, 0.0
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))


def _metric_value(data: Dict[str, Any], file: Path, which: str, split: str, metric: str) -> float:
    node: Any = data
    trail = []
    for key in (which, split, metric) if which is not None else (split, metric):
        trail.append(key)
        if not isinstance(node, dict) or key not in node:
            raise SoftlabelsError(f"{file}: missing key '{'.'.join(trail)}'")
        node = node[key]
    if node is None:  # the engine writes null for a non-finite number
        return float("nan")
    if isinstance(node, bool) or not isinstance(node, (int, float)):
        raise SoftlabelsError(f"{file}: '{'.'.join(trail)}' is not a number: {node!r}")
    return float(node)


def aggregate(
    run_dirs: Iterable[Union[str, Path]],
    which: str = "best",
    split: str = "test",
    metrics: Sequence[str] = DEFAULT_METRICS,
    labels: Optional[Dict[str, str]] = None,
) -> List[Row]:
    """Group runs by ``run.label`` (first-seen order) and average each metric over seeds.

    ``labels`` (run directory as ``str`` → label, e.g. from ``folder_labels``) replaces
    ``run.label`` for the runs it names.

    ``which`` picks the ``best`` (model selection on val) or ``last`` epoch's numbers and
    ``split`` the split inside it. ``std`` is the sample standard deviation (ddof = 1); a
    single seed gives ``std = 0``. A ``null`` metric value counts as NaN. A collapsed run
    (``final.json`` key ``collapsed``) is left out of ``mean``/``std`` and its seed listed in
    ``Row.collapsed`` (its metrics need not be present). Runs of one label that
    disagree on dataset or model, or repeat a seed, raise :class:`SoftlabelsError`, since
    averaging them would silently mix different experiments.
    """
    if which not in _WHICH:
        raise ConfigError(f"which must be one of {', '.join(_WHICH)}, got {which!r}")
    metrics = list(metrics)
    if not metrics:
        raise ConfigError("no metrics to aggregate")
    groups: Dict[str, Dict[str, Any]] = {}
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        file = run_dir if run_dir.name in (FINAL_NAME, ENSEMBLE_NAME) and run_dir.is_file() else result_file(run_dir)
        data = read_final(file)
        run = data["run"]
        label = (labels or {}).get(str(file.parent), _label_of(data))
        collapsed = bool(data.get("collapsed"))
        if file.name == ENSEMBLE_NAME:  # evaluated on the test split only, from its members' checkpoints
            if split not in data:
                continue  # no row for a split the ensemble was not evaluated on
            values = {m: _metric_value(data, file, None, split, m) for m in metrics}
        else:
            values = {} if collapsed else {m: _metric_value(data, file, which, split, m) for m in metrics}
        g = groups.get(label)
        if g is None:
            g = groups[label] = {
                "method": str(run.get("method", label)),
                "dataset": run.get("dataset"),
                "model": run.get("model"),
                "selection": data.get("selection"),
                "first": file.parent,
                "seeds": [],
                "collapsed": [],
                "runs": [],
                "values": {m: [] for m in metrics},
            }
        else:
            for key in ("dataset", "model"):
                if run.get(key) != g[key]:
                    raise SoftlabelsError(
                        f"runs labelled {label!r} mix {key}s {g[key]!r} ({g['first']}) and "
                        f"{run.get(key)!r} ({file.parent}); aggregate them separately"
                    )
            if run["seed"] in g["seeds"] + g["collapsed"]:
                other = g["runs"][(g["seeds"] + g["collapsed"]).index(run["seed"])]
                raise SoftlabelsError(
                    f"runs labelled {label!r} repeat seed {run['seed']!r}: {other} and "
                    f"{file.parent}; report these folders separately or give the runs "
                    f"distinct labels (`softlabels report` without --merge labels them by folder)"
                )
        g["collapsed" if collapsed else "seeds"].append(run["seed"])
        g["runs"].append(str(file.parent))
        for m in values:
            g["values"][m].append(values[m])

    rows = []
    for label, g in groups.items():
        stats = {m: _mean_std(v) for m, v in g["values"].items()}
        rows.append(
            Row(
                label=label,
                method=g["method"],
                dataset=g["dataset"],
                model=g["model"],
                which=which,
                split=split,
                seeds=g["seeds"],
                mean={m: s[0] for m, s in stats.items()},
                std={m: s[1] for m, s in stats.items()},
                runs=g["runs"],
                selection=g["selection"],
                collapsed=g["collapsed"],
            )
        )
    return rows


# --------------------------------------------------------------------------- formatting


def _display_name(metric: str) -> str:
    return METRIC_INFO.get(metric, (metric, True))[0]


def _cell(metric: str, mean: float, std: float, collapsed: bool = False) -> str:
    if collapsed:
        return "collapsed"
    d = _DECIMALS.get(metric, 2)
    return f"{mean:.{d}f} ± {std:.{d}f}"


def relative_error_reduction(err_baseline: float, err_method: float) -> Optional[float]:
    """``(err_baseline − err_method) / err_baseline · 100``; None when the baseline error is 0."""
    if err_baseline == 0:
        return None
    return (err_baseline - err_method) / err_baseline * 100.0


def format_table(
    rows: Sequence[Row],
    metrics: Optional[Sequence[str]] = None,
    baseline: Optional[str] = None,
    fmt: str = "text",
) -> str:
    """A paper-style table: ``method | seeds | metric ... [| rel. err. red. (%)]``.

    Cells are ``mean ± std`` with 2 decimals (NLL: 3). ``metrics`` defaults to those of the
    first row. With ``baseline`` (a row label) an extra column gives the relative top-1 error
    reduction ``(err_baseline − err_method) / err_baseline · 100`` (as CS-KD reports it), blank
    on the baseline's own row and ``n/a`` when the baseline error is 0. Collapsed seeds are
    counted in the seeds column (``2 + 1 collapsed``), never in the cells. ``fmt`` is one of
    :data:`TABLE_FORMATS`: ``"text"`` (space-aligned columns), ``"markdown"`` (a GitHub table),
    ``"csv"`` (RFC 4180, the same cells), ``"latex"`` (a ``tabular``; ``±`` as ``$\\pm$``) or
    ``"html"`` (a ``<table>`` element); every format has the same header and cells.
    """
    if fmt not in TABLE_FORMATS:
        raise ConfigError(f"table format must be one of {', '.join(TABLE_FORMATS)}, got {fmt!r}")
    rows = list(rows)
    if metrics is None:
        metrics = list(rows[0].mean) if rows else list(DEFAULT_METRICS)
    metrics = list(metrics)
    for row in rows:
        missing = [m for m in metrics if m not in row.mean]
        if missing:
            raise ConfigError(
                f"method {row.label!r} has no aggregated {', '.join(missing)}; "
                f"aggregate with these metrics first"
            )

    base_err = None
    if baseline is not None:
        labels = [r.label for r in rows]
        if baseline not in labels:
            raise ConfigError(
                f"baseline {baseline!r} is not among the methods: {', '.join(labels) or '(none)'}"
            )
        base_row = rows[labels.index(baseline)]
        if "top1_error" not in base_row.mean:
            raise ConfigError("the relative error reduction needs top1_error to be aggregated")
        base_err = base_row.mean["top1_error"]

    header = ["method", "seeds"] + [_display_name(m) for m in metrics]
    if baseline is not None:
        header.append(REL_ERR_COLUMN)
    body = []
    for row in rows:
        dead = row.n_seeds == 0 and bool(row.collapsed)
        cells = [row.label, row.seeds_cell()]
        cells += [_cell(m, row.mean[m], row.std[m], dead) for m in metrics]
        if baseline is not None:
            if row.label == baseline:
                cells.append("")
            else:
                if "top1_error" not in row.mean:
                    raise ConfigError(
                        "the relative error reduction needs top1_error to be aggregated"
                    )
                red = relative_error_reduction(base_err, row.mean["top1_error"])
                cells.append("n/a" if red is None or dead else f"{red:.2f}")
        body.append(cells)

    if fmt in _RENDERERS:
        return _RENDERERS[fmt](header, body)

    if fmt == "markdown":
        def md(cells):
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        align = ["---"] + ["---:"] * (len(header) - 1)
        return "\n".join([md(header), "| " + " | ".join(align) + " |"] + [md(c) for c in body]) + "\n"

    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells):
        parts = [cells[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return "  ".join(parts).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule] + [line(c) for c in body]) + "\n"


def _render_csv(header: List[str], body: List[List[str]]) -> str:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(body)
    return buf.getvalue()


_LATEX_SPECIAL = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#",
                  "_": r"\_", "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}",
                  "±": r"$\pm$", "−": "-"}


def latex_escape(text: str) -> str:
    """``text`` for a LaTeX table cell: the special characters escaped, ``±`` as ``$\\pm$``."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)


def _render_latex(header: List[str], body: List[List[str]]) -> str:
    def line(cells):
        return " & ".join(latex_escape(c) for c in cells) + r" \\"

    spec = "l" + "r" * (len(header) - 1)
    out = [r"\begin{tabular}{" + spec + "}", r"\hline", line(header), r"\hline"]
    out += [line(c) for c in body]
    out += [r"\hline", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def _render_html(header: List[str], body: List[List[str]]) -> str:
    import html

    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in header) + "</tr>"]
    for cells in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(out) + "</table>"


_RENDERERS = {"csv": _render_csv, "latex": _render_latex, "html": _render_html}
TABLE_FORMATS = ("text", "markdown", "csv", "latex", "html")


def write_table(text: str, path: Union[str, Path], what: str = "table") -> Path:
    """Write a formatted table to ``path`` (parents created, replaced atomically); an unwritable
    path raises :class:`SoftlabelsError` naming it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        raise SoftlabelsError(f"{path}: cannot write the {what}: {e.strerror or e}") from None
    return path


# --------------------------------------------------------------------------- summary


def _finite_or_none(x: float) -> Optional[float]:
    return x if math.isfinite(x) else None


def write_summary(rows: Sequence[Row], path_json: Union[str, Path]) -> Path:
    """Write the aggregated numbers as JSON (non-finite numbers become ``null``).

    Shape: ``{"rows": [{"label", "method", "dataset", "model", "which", "split", "selection",
    "n_seeds", "seeds", "collapsed_seeds", "runs", "metrics": {name: {"mean", "std"}}}]}``
    (``seeds``/``n_seeds``: the averaged seeds; ``collapsed_seeds``: those left out). Parent folders are
    created; the file is replaced atomically.
    """
    path = Path(path_json)
    out = {
        "rows": [
            {
                "label": r.label,
                "method": r.method,
                "dataset": r.dataset,
                "model": r.model,
                "which": r.which,
                "split": r.split,
                "selection": r.selection,
                "n_seeds": r.n_seeds,
                "seeds": list(r.seeds),
                "collapsed_seeds": list(r.collapsed),
                "runs": list(r.runs),
                "metrics": {
                    m: {"mean": _finite_or_none(r.mean[m]), "std": _finite_or_none(r.std[m])}
                    for m in r.mean
                },
            }
            for r in rows
        ]
    }
    return write_table(json.dumps(out, indent=2, allow_nan=False) + "\n", path, "summary")
