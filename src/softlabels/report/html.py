"""``softlabels report PATHS --html FILE``: one self-contained HTML page.

The page holds the multi-seed summary table, comparative plots drawn across methods from the
saved analyses (true-class probability boxes, reliability diagrams, log-probabilities on
misclassified samples, noisy-label fit), tables of the feature-space and robustness figures,
and every run's own plots. Images are embedded as data URIs; the page loads nothing from the
network. A small inline script marks how many images decoded (``data-images`` on <body>),
which the tests read through headless Chromium.
"""
from __future__ import annotations

import base64
import datetime as _dt
import html
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..engine.checkpoint import atomic_write_text
from .table import aggregate, find_runs, format_table

METRICS = ("top1_error", "top5_error", "nll", "ece", "macro_f1")

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1200px;color:#222;padding:0 1rem}
h1{font-size:1.6rem} h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd;padding-bottom:.3rem}
table{border-collapse:collapse;margin:.5rem 0 1rem} th,td{border:1px solid #ccc;padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left} th{background:#f3f3f3}
figure{display:inline-block;margin:.5rem;vertical-align:top} figcaption{font-size:.85rem;color:#555;text-align:center}
img{max-width:100%;height:auto;border:1px solid #eee} details{margin:.5rem 0} summary{cursor:pointer;font-weight:600}
.note{color:#666;font-size:.9rem}
"""

SCRIPT = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  document.body.setAttribute('data-images', ok + '/' + imgs.length);
});
"""


def _img(data_uri: str, caption: str) -> str:
    return (f'<figure><img src="{data_uri}" alt="{html.escape(caption)}">'
            f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def _png_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _fig_uri(fig) -> str:
    from ..evaluate.plots import figure_to_data_uri

    return figure_to_data_uri(fig)


def _analyses_of(run: Path, which: str, split: str) -> Optional[dict]:
    for name in (f"{which}-{split}", f"best-{split}", f"last-{split}"):
        p = run / "eval" / name / "analyses.json"
        if p.is_file():
            return {"dir": p.parent, **json.loads(p.read_text())}
    return None


def _result(an: Optional[dict], name: str) -> Optional[dict]:
    if not an or name not in an or "results" not in an[name]:
        return None
    return an[name]["results"]


def _table_html(rows, baseline: Optional[str]) -> str:
    md = format_table(rows, [m for m in METRICS if all(m in r.mean for r in rows)], baseline=baseline, fmt="markdown")
    lines = [l for l in md.splitlines() if l.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    out = ["<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in head) + "</tr>"]
    for l in lines[2:]:
        cells = [c.strip() for c in l.strip("|").split("|")]
        out.append("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>")
    return "\n".join(out) + "</table>"


def _simple_table(header: Sequence[str], body: List[Sequence]) -> str:
    out = ["<table><tr>" + "".join(f"<th>{html.escape(str(h))}</th>" for h in header) + "</tr>"]
    for row in body:
        out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>")
    return "\n".join(out) + "</table>"


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"
    return "n/a" if v is None else str(v)


def render_report(paths: Sequence[str], out_html: Path, *, which: str = "best", split: str = "test",
                  baseline: Optional[str] = None, title: Optional[str] = None) -> Path:
    from ..evaluate import plots
    from ..evaluate.robustness import plot_noisy_fit

    runs = find_runs(list(paths))
    rows = aggregate(runs, which=which, split=split, metrics=METRICS)
    by_label: Dict[str, List[Path]] = {r.label: [Path(d) for d in r.runs] for r in rows}
    analyses = {label: [(d, _analyses_of(d, which, split)) for d in dirs] for label, dirs in by_label.items()}

    parts = [f"<h1>{html.escape(title or 'softlabels report')}</h1>",
             f"<p class='note'>{len(runs)} runs, {len(rows)} methods; {split} metrics at the "
             f"{'epoch chosen on validation' if which == 'best' else 'last epoch'}, mean ± std over seeds. "
             f"Generated {_dt.datetime.now().isoformat(timespec='seconds')}.</p>",
             "<h2>Summary</h2>", _table_html(rows, baseline)]
    for given in paths:  # study folders (softlabels study): their table beside the paper's numbers
        doc = Path(given) / "table.json"
        if doc.is_file():
            study = json.loads(doc.read_text())
            parts += [f"<h2>Study {html.escape(study['study']['name'])}: {html.escape(study['study']['title'])}</h2>",
                      study.get("html", "")]
            if (Path(given) / "table.png").is_file():
                parts.append(_img(_png_uri(Path(given) / "table.png"), "ours (mean ± std) and the paper's value"))

    # comparative plots, pooled over the seeds of each method
    true_p, mis, rel, noisy, feats, robust = {}, {}, {}, {}, [], []
    for label, items in analyses.items():
        pooled_p, pooled_pred, pooled_true = [], [], []
        for d, an in items:
            pr = _result(an, "predictions")
            if pr:
                pooled_p += pr["true_class_probability"]
                pooled_pred += pr["misclassified_log_probs"]["predicted"]
                pooled_true += pr["misclassified_log_probs"]["true"]
            cal = _result(an, "calibration")
            if cal and label not in rel:
                rel[label] = cal["reliability"]
            nf = _result(an, "noise")
            if nf and label not in noisy:
                noisy[label] = nf
            fe = _result(an, "features")
            if fe:
                feats.append((label, an["_run"]["seed"], fe["recall"].get("recall@1"), fe["intra_variance"],
                              fe["inter_distance"]))
            rb = _result(an, "robustness")
            if rb:
                robust.append((label, an["_run"]["seed"], *(rb[k]["top1_error"] for k in rb
                                                            if isinstance(rb[k], dict))))
        if pooled_p:
            true_p[label] = pooled_p
        if pooled_pred:
            mis[label] = {"predicted": pooled_pred, "true": pooled_true}
    comp = []
    if true_p:
        comp.append(_img(_fig_uri(plots.plot_true_class_boxes(true_p)),
                         "Probability of the true class, per method (JGL Fig. 4)"))
    if rel:
        comp.append(_img(_fig_uri(plots.plot_reliability(rel)), "Reliability diagrams (CS-KD Fig. 5), first seed"))
    if mis:
        comp.append(_img(_fig_uri(plots.plot_misclassified_histograms(mis)),
                         "Log-probabilities of the predicted and the true class on misclassified samples (CS-KD Fig. 2)"))
    if noisy:
        comp.append(_img(_fig_uri(plot_noisy_fit(noisy)), "Error on the noisy training labels (OLS Fig. 5)"))
    if comp:
        parts += ["<h2>Methods side by side</h2>", *comp]
    if feats:
        parts += ["<h2>Feature space</h2>", _simple_table(
            ["method", "seed", "recall@1 (%)", "intra-class variance", "inter-class distance"], feats)]
    if robust:
        first = next(an for items in analyses.values() for _, an in items if _result(an, "robustness"))
        keys = [k for k, v in _result(first, "robustness").items() if isinstance(v, dict)]
        parts += ["<h2>Adversarial robustness (top-1 error, %)</h2>",
                  _simple_table(["method", "seed", *keys], robust)]

    parts.append("<h2>Runs</h2>")
    for label, items in analyses.items():
        for d, an in items:
            figs = []
            if an:
                for name, entry in an.items():
                    if isinstance(entry, dict):
                        figs += [_img(_png_uri(an["dir"] / f), f"{name}: {f}") for f in entry.get("figures", [])]
            note = "" if an else ("<p class='note'>no analyses saved: run "
                                  f"<code>softlabels eval {html.escape(str(d))} --analyses</code></p>")
            parts.append(f"<details{' open' if len(runs) <= 2 else ''}><summary>{html.escape(label)} — "
                         f"{html.escape(str(d))}</summary>{note}{''.join(figs)}</details>")

    page = ("<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
            f"<title>{html.escape(title or 'softlabels report')}</title><style>{CSS}</style>"
            f"<script>{SCRIPT}</script></head><body>{''.join(parts)}</body></html>")
    out_html = Path(out_html)
    out_html.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_html, page)
    return out_html
