"""``softlabels report PATHS --html FILE``: one self-contained HTML page, fit for a supplement.

The page holds, in order: the multi-seed summary table; learning curves (mean and band over
seeds, from each run's ``metrics.jsonl``); the methods side by side, every figure pooled over
the seeds of a method (true-class probability boxes, reliability diagrams, confidence
histograms, confusion matrices, log-probabilities on misclassified samples, the noisy-label
fit); the samples each method fixes and breaks relative to the baseline method and the most
confident errors with Grad-CAM; feature-space and robustness tables as mean ± std over seeds;
the OLS soft-label matrices; the config keys that differ between methods; the environment and
commit; the paper-study tables of any study folder given; and every run's own figures. Every
figure has a title and a caption saying what it shows.

Images are embedded as data URIs; the page loads nothing from the network. A small inline
script marks how many images decoded (``data-images`` on <body>), which the tests read through
headless Chromium.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from ..errors import SoftlabelsError
from .table import Row, _mean_std, aggregate, find_runs, format_table

METRICS = ("top1_error", "top5_error", "nll", "ece", "macro_f1")
STUDY_TABLE = "table.json"

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem} h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem} h3{font-size:1.05rem}
table{border-collapse:collapse;margin:.5rem 0 1rem} th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f3f3f3}
figure{display:inline-table;margin:.5rem;vertical-align:top;max-width:100%} figcaption{display:table-caption;caption-side:bottom;font-size:.85rem;color:#555;text-align:left;padding-top:.2rem}
img{max-width:100%;height:auto;border:1px solid #eee} details{margin:.5rem 0} summary{cursor:pointer;font-weight:600}
.note{color:#666;font-size:.9rem} figure.half img{max-width:540px} .ok{color:#1a7f37} .bad{color:#cf222e} code{font-size:.85rem}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


# --------------------------------------------------------------------------- small pieces


def _img(data_uri: str, caption: str, alt: Optional[str] = None, cls: str = "") -> str:
    klass = f' class="{cls}"' if cls else ""
    return (f'<figure{klass}><img src="{data_uri}" alt="{html.escape(alt or caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fig_uri(fig) -> str:
    from ..evaluate.plots import figure_to_data_uri

    return figure_to_data_uri(fig)


def _fig(fig, title: str, caption: str, cls: str = "") -> str:
    """A comparative figure with its title drawn on it and its caption below."""
    fig.suptitle(title, fontsize="medium")
    return _img(_fig_uri(fig), caption, alt=title, cls=cls)


def _read_json(path: Path) -> Optional[Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def _analyses_of(run: Path, which: str, split: str) -> Optional[dict]:
    for name in (f"{which}-{split}", f"best-{split}", f"last-{split}"):
        p = run / "eval" / name / "analyses.json"
        data = _read_json(p) if p.is_file() else None
        if isinstance(data, dict):
            return {"dir": p.parent, **data}
    return None


def _result(an: Optional[dict], name: str) -> Optional[dict]:
    if not an or name not in an or not isinstance(an[name], dict) or "results" not in an[name]:
        return None
    return an[name]["results"]


def _simple_table(header: Sequence[str], body: List[Sequence]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>")
    return "\n".join(out) + "</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return "n/a" if v is None else str(v)


def _seed_rows(values: Dict[str, List[Tuple[Any, Dict[str, float]]]], metrics: Sequence[str]) -> List[Row]:
    """Rows of mean ± std over seeds from ``{method: [(seed, {metric: value})]}``, for
    :func:`format_table` (the formatter of the summary table)."""
    rows = []
    for label, items in values.items():
        stats = {m: _mean_std([float(v[m]) for _, v in items]) for m in metrics}
        rows.append(Row(label=label, method=label, dataset=None, model=None, which="", split="",
                        seeds=[s for s, _ in items], mean={m: st[0] for m, st in stats.items()},
                        std={m: st[1] for m, st in stats.items()}))
    return rows


# --------------------------------------------------------------------------- run-level readers


def _read_config(run: Path) -> Optional[dict]:
    from ..config import load_yaml

    try:
        return load_yaml(str(run / "config.yaml"))
    except SoftlabelsError:
        return None


def _flatten(d: Any, prefix: str = "") -> Dict[str, Any]:
    if not isinstance(d, dict) or not d:
        return {prefix: d} if prefix else {}
    out: Dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


# keys that differ between runs by construction, not between methods' settings
_RUN_KEYS = ("train.seed", "name", "out_dir")


def config_differences(configs: Dict[str, dict]) -> Tuple[List[str], Dict[str, Dict[str, Any]]]:
    """The dotted config keys whose values differ between methods (``{method: config}``, one
    config per method), excluding the seed, the label and the output folder. Returns the keys
    (sorted) and ``{key: {method: value}}`` (a key a method's config lacks shows ``None``)."""
    flat = {m: _flatten(c) for m, c in configs.items()}
    keys = sorted(set().union(*[f.keys() for f in flat.values()])) if flat else []
    diff = {}
    for k in keys:
        if k in _RUN_KEYS:
            continue
        vals = {m: f.get(k) for m, f in flat.items()}
        if len({json.dumps(v, sort_keys=True, default=str) for v in vals.values()}) > 1:
            diff[k] = vals
    return list(diff), diff


_ENV_FIELDS = ("softlabels", "git.commit", "git.dirty", "python", "torch", "torchvision", "numpy", "platform",
               "device", "device_name", "world_size", "threads", "cuda")


def environment_summary(runs: Sequence[Path]) -> List[Tuple[str, str]]:
    """(field, value) of the runs' ``environment.json``; a field whose value differs between
    runs lists each value with the number of runs that had it."""
    envs = [e for e in (_read_json(Path(r) / "environment.json") for r in runs) if isinstance(e, dict)]
    out = []
    for field in _ENV_FIELDS:
        counts: Dict[str, int] = {}
        for e in envs:
            v = _flatten(e).get(field)
            if v is not None:
                counts[str(v)] = counts.get(str(v), 0) + 1
        if counts:
            text = next(iter(counts)) if len(counts) == 1 else "; ".join(f"{v} ({n} runs)" for v, n in counts.items())
            out.append((field, text))
    return out


def soft_label_matrix(run: Path) -> Optional[Any]:
    """The OLS soft-label matrix in a run's last checkpoint (the method-state key, prefixed
    ``method.``, ending in ``soft_label_matrix``), or None when the run has none (not OLS, no
    checkpoint, an unreadable file). Only that tensor is read, never the optimiser state."""
    from safetensors import SafetensorError, safe_open

    files = sorted(Path(run, "checkpoints").glob("last*.safetensors"), key=lambda f: f.stat().st_mtime)
    if not files:
        return None
    try:
        with safe_open(str(files[-1]), framework="pt") as f:
            keys = [k for k in f.keys() if k.startswith("method.") and k.endswith("soft_label_matrix")]
            return f.get_tensor(keys[0]).double() if keys else None
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return None


# --------------------------------------------------------------------------- paper studies


def study_table_path(path: Path) -> Optional[Path]:
    """``PATH/table.json`` when ``PATH`` is a study folder (or the file itself)."""
    path = Path(path)
    p = path if path.is_file() and path.name == STUDY_TABLE else path / STUDY_TABLE
    if not p.is_file():
        return None
    data = _read_json(p)
    return p if isinstance(data, dict) and ("study" in data or "rows" in data) else None


def read_study_table(path: Path) -> dict:
    """A study's ``table.json`` as ``{title, source, columns: [label], rows: [{label, cells:
    {column label: {ours_mean, ours_std, n, paper_mean, paper_std, delta, verdict}}}]}`` (one
    cell per column, the study's main metric; a cell may also hold ``vs_ref``, the paired
    comparison with the study's ``compare_to`` row: {mean_diff, sign, wins, n, p}).

    Reads what ``softlabels study`` writes (``study``, ``columns`` [{key, label}], ``lines``
    and ``cells``: one record per line, column and metric) and that documented shape itself.
    A file that is neither raises :class:`SoftlabelsError` naming it.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise SoftlabelsError(f"{path}: not a study table (unreadable or not a JSON object)")
    if "rows" in data and isinstance(data.get("columns"), list):  # the documented shape
        rows = data["rows"]
        if not all(isinstance(r, dict) and isinstance(r.get("cells"), dict) for r in rows):
            raise SoftlabelsError(f"{path}: every row needs 'label' and a 'cells' mapping")
        return {"title": str(data.get("title", path.parent.name)), "source": str(data.get("source", "")),
                "metric": data.get("metric"), "columns": [str(c) for c in data["columns"]],
                "rows": [{"label": str(r.get("label", "")), "cells": r["cells"]} for r in rows]}
    study, columns, lines, cells = data.get("study"), data.get("columns"), data.get("lines"), data.get("cells")
    if not (isinstance(study, dict) and isinstance(columns, list) and isinstance(lines, list)
            and isinstance(cells, list)):
        raise SoftlabelsError(f"{path}: not a study table (expected 'study', 'columns', 'lines' and 'cells')")
    metric = (study.get("metrics") or [None])[0]
    col_label = {c.get("key"): str(c.get("label", c.get("key"))) for c in columns if isinstance(c, dict)}
    by_line: Dict[Any, Dict[str, dict]] = {}
    for rec in cells:
        if not isinstance(rec, dict) or (metric is not None and rec.get("metric") != metric):
            continue
        by_line.setdefault(rec.get("line"), {})[col_label.get(rec.get("column"), str(rec.get("column")))] = {
            "ours_mean": rec.get("mean"), "ours_std": rec.get("std"), "n": rec.get("n"),
            "paper_mean": rec.get("paper_mean"), "paper_std": rec.get("paper_std"),
            "delta": rec.get("delta"), "verdict": rec.get("verdict"),
            **({"vs_ref": rec["vs_ref"]} if isinstance(rec.get("vs_ref"), dict) else {})}
    rows = [{"label": str(ln.get("label", ln.get("key"))), "cells": by_line.get(ln.get("key"), {})}
            for ln in lines if isinstance(ln, dict)]
    title = str(study.get("title") or study.get("name") or path.parent.name)
    source = " ".join(str(x) for x in (study.get("paper"), study.get("source")) if x and x != "none")
    return {"title": title, "source": source, "metric": metric, "columns": list(col_label.values()), "rows": rows,
            "compare_to": study.get("compare_to")}


def split_study_paths(paths: Sequence[str]) -> Tuple[List[Path], List[Tuple[Path, Path]]]:
    """``paths`` split into run paths and study folders: ``([path], [(folder, table.json)])``."""
    runs, studies = [], []
    for p in map(Path, paths):
        table = study_table_path(p)
        if table is None:
            runs.append(p)
        else:
            studies.append((p, table))
    return runs, studies


def _value(v) -> str:
    """A config value as the YAML file shows it (strings bare, the rest as JSON)."""
    return v if isinstance(v, str) else ("—" if v is None else json.dumps(v, default=str))


def _num(x, d=2) -> str:
    return "—" if not isinstance(x, (int, float)) or isinstance(x, bool) else f"{x:.{d}f}"


def _study_html(table: dict, folder: Path) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in ["method", *table["columns"]])
    out = [f"<h3>{html.escape(table['title'])}</h3>",
           f"<p class='note'>{html.escape(table['source'])}{' · ' if table['source'] else ''}"
           f"{html.escape(str(table.get('metric') or ''))} · each cell: ours mean ± std (seeds) · paper · "
           f"Δ = ours − paper · ✔ when |Δ| ≤ 2·√(σ_paper² + σ_ours²), ✘ otherwise · from "
           f"<code>{html.escape(str(folder))}</code></p>",
           f"<table><tr>{head}</tr>"]
    for row in table["rows"]:
        tds = [f"<td>{html.escape(row['label'])}</td>"]
        for col in table["columns"]:
            c = row["cells"].get(col)
            if not isinstance(c, dict) or c.get("ours_mean") is None and c.get("paper_mean") is None:
                tds.append("<td></td>")
                continue
            parts = []
            if c.get("ours_mean") is not None:
                parts.append(f"{_num(c['ours_mean'])} ± {_num(c.get('ours_std'))} ({c.get('n', '?')})")
            else:
                parts.append("missing")
            if c.get("paper_mean") is not None:
                paper = _num(c["paper_mean"]) + (f" ± {_num(c['paper_std'])}" if c.get("paper_std") is not None else "")
                parts.append(f"paper {paper}")
            if c.get("delta") is not None:
                parts.append(f"Δ {c['delta']:+.2f}")
            ref = c.get("vs_ref")
            if isinstance(ref, dict) and isinstance(ref.get("mean_diff"), (int, float)):
                p = f", p = {ref['p']:.3f}" if isinstance(ref.get("p"), (int, float)) else ""
                parts.append(f"vs {table.get('compare_to') or 'reference'}: {ref['mean_diff']:+.2f} "
                             f"({ref.get('sign', '')}, {ref.get('wins', '?')}/{ref.get('n', '?')} seeds{p})")
            text = html.escape(" · ".join(parts))
            verdict = c.get("verdict")
            if verdict:
                cls = "ok" if verdict == "✔" else "bad"
                text += f" <span class='{cls}'>{html.escape(str(verdict))}</span>"
            tds.append(f"<td>{text}</td>")
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</table>")
    png = folder / "table.png"
    if png.is_file():
        out.append(_img(_png_uri(png), f"{table['title']}: ours (bars, mean ± std over seeds) against the "
                                       f"published value (marker), per column"))
    return "\n".join(out)


# --------------------------------------------------------------------------- sections


def _pooled_figures(analyses: Dict[str, List[Tuple[Path, Optional[dict]]]]) -> List[str]:
    """The methods side by side, every figure pooled over the seeds of each method."""
    import numpy as np

    from ..evaluate import plots
    from ..evaluate.predictions import pool_reliability
    from ..evaluate.robustness import plot_noisy_fit

    true_p, mis, rel, hist, conf, noisy, seeds = {}, {}, {}, {}, {}, {}, {}
    for label, items in analyses.items():
        rels, hists, cms, fits, pooled_p, pred_lp, true_lp = [], [], [], [], [], [], []
        for _, an in items:
            pr = _result(an, "predictions")
            if pr:
                pooled_p += pr["true_class_probability"]
                pred_lp += pr["misclassified_log_probs"]["predicted"]
                true_lp += pr["misclassified_log_probs"]["true"]
            cal = _result(an, "calibration")
            if cal:
                rels.append(cal["reliability"])
                hists.append(cal["confidence_histogram"])
            pc = _result(an, "perclass")
            if pc:
                cms.append(np.asarray(pc["confusion_matrix"], dtype=np.float64))
            nf = _result(an, "noise")
            if nf:
                fits.append(nf)
        seeds[label] = sum(1 for _, an in items if an)
        if pooled_p:
            true_p[label] = pooled_p
        if pred_lp or true_lp:
            mis[label] = {"predicted": pred_lp, "true": true_lp}
        if rels:
            rel[f"{label} ({len(rels)} seeds)"] = pool_reliability(rels)
        if hists:
            hist[label] = {"edges": hists[0]["edges"], "correct": list(np.sum([h["correct"] for h in hists], 0)),
                           "wrong": list(np.sum([h["wrong"] for h in hists], 0)), "n": len(hists)}
        if cms and all(c.shape == cms[0].shape for c in cms):
            conf[label] = (sum(cms), len(cms))
        if fits:
            common = sorted(set.intersection(*[set(f["epochs"]) for f in fits]))
            noisy[f"{label} ({len(fits)} seeds)"] = {
                "epochs": common,
                "noisy_fit": [float(np.mean([f["noisy_fit"][f["epochs"].index(e)] for f in fits])) for e in common]}
    out = []
    if true_p:
        out.append(_fig(plots.plot_true_class_boxes(true_p), "Probability of the true class",
                        "Box plots of the softmax probability given to the true class of every test sample, "
                        "all seeds of a method pooled; whiskers span min to max, triangles mark the means "
                        "(JGL Fig. 4)."))
    if rel:
        out.append(_fig(plots.plot_reliability(rel), "Reliability diagrams, seeds pooled",
                        "Accuracy against confidence in 20 equal-width bins over the samples of all seeds of a "
                        "method; hatched: the gap to the bin's mean confidence; the ECE printed is that of "
                        "the pooled samples (CS-KD Fig. 5)."))
    for label, h in hist.items():
        out.append(_fig(plots.plot_confidence_histogram(h), f"{label}: confidence, {h['n']} seeds pooled",
                        f"{label}: histogram of the max-softmax confidence of correct (green) and wrong (red) "
                        f"predictions, counts summed over {h['n']} seeds."))
    for label, (cm, n) in conf.items():
        out.append(_fig(plots.plot_confusion_matrix(cm), f"{label}: confusion matrix, {n} seeds summed",
                        f"{label}: confusion matrix summed over {n} seeds, each row normalised by the samples "
                        f"of its true class (per-class recall on the diagonal).", cls="half"))
    if mis:
        out.append(_fig(plots.plot_misclassified_histograms(mis), "Log-probabilities on misclassified samples",
                        "Histograms of the log-probability of (a) the predicted class and (b) the true class on "
                        "the misclassified test samples of all seeds of each method (CS-KD Fig. 2)."))
    if noisy:
        out.append(_fig(plot_noisy_fit(noisy), "Fit to the noisy training labels, mean over seeds",
                        "Top-1 error on the training samples whose labels were corrupted, measured against the "
                        "wrong labels, per epoch, averaged over seeds; higher means the noise is memorised "
                        "less (OLS Fig. 5)."))
    return out


def _fixed_broken(analyses, baseline: Optional[str]) -> List[str]:
    """Samples each method fixes and breaks relative to the baseline method, seed by seed,
    from the per-sample predictions the ``predictions`` analysis saved."""
    labels = list(analyses)
    if not labels:
        return []
    base = baseline if baseline in analyses else labels[0]

    def preds(items):
        out = {}
        for _, an in items:
            pr = _result(an, "predictions")
            if pr and "predicted" in pr and an.get("_run"):
                out[an["_run"].get("seed")] = (pr["predicted"], pr["labels"])
        return out

    base_preds = preds(analyses[base])
    values: Dict[str, List] = {}
    examples: List[List[str]] = []
    for label in labels:
        if label == base:
            continue
        for seed, (pred, y) in preds(analyses[label]).items():
            if seed not in base_preds or len(base_preds[seed][1]) != len(y) or base_preds[seed][1] != y:
                continue
            bp = base_preds[seed][0]
            fixed = [i for i in range(len(y)) if bp[i] != y[i] and pred[i] == y[i]]
            broken = [i for i in range(len(y)) if bp[i] == y[i] and pred[i] != y[i]]
            values.setdefault(label, []).append((seed, {"fixed": len(fixed), "broken": len(broken),
                                                        "net": len(fixed) - len(broken)}))
            examples.append([label, str(seed), ", ".join(f"#{i} ({y[i]}→{pred[i]} was {bp[i]})" for i in fixed[:6]),
                             ", ".join(f"#{i} ({y[i]}→{pred[i]})" for i in broken[:6])])
    if not values:
        return []
    return [f"<h2>Samples fixed and broken relative to {html.escape(base)}</h2>",
            f"<p class='note'>Per seed, the test samples {html.escape(base)} gets wrong and the method right "
            f"(fixed), and the reverse (broken); net = fixed − broken is the drop in wrong samples (JGL Table "
            f"VIII). Mean ± std over the seeds both methods have.</p>",
            format_table(_seed_rows(values, ("fixed", "broken", "net")), ("fixed", "broken", "net"), fmt="html"),
            "<details><summary>The first samples, by index (true→predicted)</summary>",
            _simple_table(["method", "seed", "fixed (true→now, was)", "broken (true→now)"], examples),
            "</details>"]


def _seed_table(analyses, name: str, pick) -> Optional[str]:
    """A mean ± std over seeds table from one analysis' results (``pick(results)`` → {column: value})."""
    values: Dict[str, List] = {}
    for label, items in analyses.items():
        for _, an in items:
            res = _result(an, name)
            if res:
                picked = {k: v for k, v in pick(res).items() if isinstance(v, (int, float))}
                values.setdefault(label, []).append((an["_run"].get("seed"), picked))
    if not values:
        return None
    cols = [c for c in next(iter(values.values()))[0][1]
            if all(c in v for items in values.values() for _, v in items)]
    return format_table(_seed_rows(values, cols), cols, fmt="html")


def _captioned(label: str, an: dict, name: str) -> List[str]:
    """The saved figures of one analysis of one run, each with its caption."""
    from ..evaluate.analyze import figure_caption

    seed = an.get("_run", {}).get("seed")
    out = []
    for f in an[name].get("figures", []):
        caption = an[name].get("captions", {}).get(f) or figure_caption(name, Path(f).stem[len(name) + 1:])
        out.append((an["dir"] / f, f"{label}, seed {seed}: {caption}"))
    return out


def _sample_figures(analyses, name: str) -> List[str]:
    """The figures of analysis ``name`` of every run, half width, one collapsible block per method."""
    out = []
    for label, items in analyses.items():
        figs = [_img(_png_uri(f), caption, cls="half") for _, an in items
                if an and isinstance(an.get(name), dict) for f, caption in _captioned(label, an, name)]
        if figs:
            out.append(f"<details open><summary>{html.escape(label)}</summary>{''.join(figs)}</details>")
    return out


def render_report(paths: Sequence[str], out_html: Path, *, which: str = "best", split: str = "test",
                  baseline: Optional[str] = None, title: Optional[str] = None, band: str = "minmax",
                  labels: Optional[Dict[str, str]] = None) -> Path:
    """Write the HTML report of the runs under ``paths`` (and the study tables of any study
    folder among them) to ``out_html``; returns its path. ``band``: the learning curves' band
    over seeds, ``minmax`` or ``std``; ``labels``: run directory → row label (``report``'s
    FOLDER/LABEL rows when several folders hold the same method; see report.table.folder_labels)."""
    from ..engine.trainer import read_metrics
    from ..evaluate import plots

    run_paths, studies = split_study_paths(paths)
    runs = find_runs(run_paths) if run_paths else []
    rows = aggregate(runs, which=which, split=split, metrics=METRICS, labels=labels) if runs else []
    by_label: Dict[str, List[Path]] = {r.label: [Path(d) for d in r.runs] for r in rows}
    analyses = {label: [(d, _analyses_of(d, which, split)) for d in dirs] for label, dirs in by_label.items()}

    parts = [f"<h1>{html.escape(title or 'softlabels report')}</h1>",
             f"<p class='note'>{len(runs)} runs, {len(rows)} methods"
             f"{f', {len(studies)} studies' if studies else ''}; {split} metrics at the "
             f"{'epoch chosen on validation' if which == 'best' else 'last epoch'}, mean ± std over seeds. "
             f"Generated {_dt.datetime.now().isoformat(timespec='seconds')}.</p>"]
    if rows:
        metrics = [m for m in METRICS if all(m in r.mean for r in rows)]
        parts += ["<h2>Summary</h2>", format_table(rows, metrics, baseline=baseline, fmt="html")]

        histories = {label: [read_metrics(d) for d in dirs] for label, dirs in by_label.items()}
        histories = {k: v for k, v in histories.items() if any(v)}
        if histories:
            band_text = "min to max" if band == "minmax" else "± one standard deviation"
            parts += ["<h2>Learning curves</h2>", _fig(
                plots.plot_learning_curves(histories, band=band),
                "Learning curves, mean over seeds",
                f"Top-1 error (left) and loss (right) per epoch from each run's metrics.jsonl: training "
                f"(solid, on the augmented training batches; loss = the method's total objective), "
                f"validation (dashed) and test (dotted, NLL). Lines: mean over seeds; bands: {band_text} "
                f"over seeds.")]

        comp = _pooled_figures(analyses)
        if comp:
            parts += ["<h2>Methods side by side (seeds pooled)</h2>", *comp]
        parts += _fixed_broken(analyses, baseline)
        errors = _sample_figures(analyses, "errors")
        fixes = _sample_figures(analyses, "baseline")
        if errors or fixes:
            parts += ["<h2>Misclassified samples chosen by the analysis</h2>",
                      "<p class='note'>Grad-CAM of the test samples each run misclassifies with the highest "
                      "confidence, and of samples a run fixes or breaks relative to its baseline run "
                      "(<code>softlabels eval RUN --analyses baseline --baseline BASE_RUN</code>).</p>",
                      *errors, *fixes]

        feats = _seed_table(analyses, "features", lambda r: {"recall@1 (%)": r["recall"].get("recall@1"),
                                                              "intra-class variance": r["intra_variance"],
                                                              "inter-class distance": r["inter_distance"]})
        if feats:
            parts += ["<h2>Feature space</h2>", "<p class='note'>Recall@1 of the penultimate embeddings and "
                      "class distances (CS-KD Table 6, JGL Table III), mean ± std over seeds.</p>", feats]
        robust = _seed_table(analyses, "robustness", lambda r: {k: v["top1_error"] for k, v in r.items()
                                                                 if isinstance(v, dict) and "top1_error" in v})
        if robust:
            parts += ["<h2>Adversarial robustness</h2>", "<p class='note'>Top-1 error (%) on clean inputs and "
                      "under FGSM and PGD-20 (OLS Tables VIII–IX), mean ± std over seeds.</p>", robust]

        ols = []
        for label, dirs in by_label.items():
            mats = [m for m in (soft_label_matrix(d) for d in dirs) if m is not None]
            if mats and all(m.shape == mats[0].shape for m in mats):
                names = (_read_json(dirs[0] / "data.json") or {}).get("classes")
                names = names if isinstance(names, list) and len(names) == mats[0].shape[0] else None
                mean = sum(mats) / len(mats)
                ols.append(_fig(plots.plot_soft_label_matrix(mean, names),
                                f"{label}: OLS soft-label matrix, mean of {len(mats)} seeds",
                                f"{label}: the soft labels at the end of training (last checkpoint), row c being "
                                f"the target distribution for samples of class c, averaged over {len(mats)} "
                                f"seeds (OLS Fig. 1).", cls="half"))
        if ols:
            parts += ["<h2>OLS soft-label matrices</h2>", *ols]

        configs = {label: _read_config(dirs[0]) for label, dirs in by_label.items()}
        configs = {k: v for k, v in configs.items() if v is not None}
        if len(configs) > 1:
            keys, diff = config_differences(configs)
            parts.append("<h2>Config differences between methods</h2>")
            if keys:
                parts.append(_simple_table(["key", *configs], [[k, *(_value(diff[k][m]) for m in configs)]
                                                               for k in keys]))
            else:
                parts.append("<p class='note'>The methods' configs are identical apart from the seed.</p>")
        env = environment_summary([d for dirs in by_label.values() for d in dirs])
        if env:
            parts += ["<h2>Environment and commit</h2>", _simple_table(["field", "value"], env)]

    if studies:
        parts.append("<h2>Paper studies</h2>")
        for folder, table_file in studies:
            parts.append(_study_html(read_study_table(table_file), folder))

    if runs:
        parts.append("<h2>Runs</h2>")
        for label, items in analyses.items():
            for d, an in items:
                figs = []
                if an:
                    for name, entry in an.items():
                        if isinstance(entry, dict) and name != "_run":
                            figs += [_img(_png_uri(f), caption) for f, caption in _captioned(label, an, name)]
                note = "" if an else ("<p class='note'>no analyses saved: run "
                                      f"<code>softlabels eval {html.escape(str(d))} --analyses</code></p>")
                parts.append(f"<details{' open' if len(runs) <= 2 else ''}><summary>{html.escape(label)} — "
                             f"{html.escape(str(d))}</summary>{note}{''.join(figs)}</details>")
    elif not studies:
        raise SoftlabelsError("report: nothing to report")

    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title or 'softlabels report')}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>")
    from ..engine.checkpoint import atomic_write_text

    out_html = Path(out_html)
    try:
        out_html.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_html, page)
    except OSError as e:
        raise SoftlabelsError(f"{out_html}: cannot write the HTML report: {e.strerror or e}") from None
    return out_html
