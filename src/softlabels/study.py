"""``softlabels study``: regenerate one table or figure of a paper, beside the published numbers.

A study file (docs/studies.md; the packaged ones live in ``softlabels/studies/``) declares a base
config, **columns** (dataset × backbone cells), **rows** (methods with options, sweeps,
ensembles), **teachers**, seeds and the paper's numbers. This module turns it into runs and a
table in four separate steps, so that a parallel executor can replace step 3:

1. :func:`load_study` reads and checks the file (one-line ``ConfigError`` naming
   ``<file>: rows[3].paper.cub-r18``);
2. :func:`plan_study` expands rows × columns × seeds into an explicit list of
   :class:`RunSpec` in topological order (every run after the runs it depends on: teachers,
   earlier ensemble members), each with its run directory;
3. :func:`run_plan` executes them one after the other through the one run manager
   (``engine.runs.train_or_reuse``); :func:`execute_run` runs one spec whose dependencies are
   done. A run that fails is reported and the runs that do not depend on it go on;
4. :func:`build_table` reads what finished and :func:`write_outputs` writes the table
   (Markdown, CSV, LaTeX, JSON) and a figure.

:func:`check_plan` is the dry run: names, options, data, weight files and metrics, with an
estimated time from a throughput measured on this machine.
"""
from __future__ import annotations

import json
import math
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

from .config import RunConfig, _deepcopy, _merge, apply_overrides, config_from_dict, load_yaml
from .errors import ConfigError, SoftlabelsError
from .evaluate import run_metrics as _run_metrics

STUDIES_DIR = Path(__file__).resolve().parent / "studies"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")   # column keys and teacher names (folder names)
PAPERS = ("jgl", "focusnet", "kt", "cskd", "ols", "none")
TOP_KEYS = {"title", "paper", "source", "metrics", "seeds", "report", "notes", "base", "columns",
            "teachers", "rows", "compare_to", "metric_options", "layout"}
REQUIRED_TOP = ("title", "paper", "source", "metrics", "columns", "rows")
COLUMN_KEYS = {"label", "config", "overrides", "resources", "metric_options"}
TEACHER_KEYS = {"config", "overrides", "weights", "model", "row", "run", "checkpoint"}
ROW_KEYS = {"label", "method", "options", "weights", "overrides", "config", "teachers",
            "teacher_checkpoint", "columns", "only", "paper", "sweep", "ensemble", "slug", "seed_offset"}
TWEAK_KEYS = {"options", "overrides", "config", "teachers"}
ENSEMBLE_KEYS = {"members", "mode", "report", "combine", "checkpoint"}
# ``layout:`` where a study's runs go and what they are called (compare and pipeline folders
# keep their own layouts through it): run folder templates and the runs' names
LAYOUT_KEYS = {"runs", "teachers", "names"}
DEFAULT_LAYOUT = {"runs": "{row}/{column}/seed{seed}", "teachers": "_teachers/{teacher}/{column}/seed{seed}",
                  "names": "cell"}
CHECKPOINT_RE = re.compile(r"last|best|ema|epoch[0-9]+")   # checkpoints a teacher or member may be read from
SEED_STRIDE = 1000   # a row's ``seed_offset``: train.seed = seed + SEED_STRIDE * offset
# Studies report the final epoch of a run on the whole training set unless they say otherwise.
STUDY_DEFAULTS = {"data": {"val_fraction": 0.0}}

#: metrics of final.json's test block
TEST_METRICS = ("top1_error", "top5_error", "nll", "ece", "macro_precision", "macro_recall", "macro_f1")
#: derived metrics a study table reports (not in classification_metrics' output):
#: name -> (display name, lower is better), as evaluate.metrics.METRIC_INFO for the others
DERIVED_INFO = {
    "top1_accuracy": ("top-1 acc (%)", False), "top5_accuracy": ("top-5 acc (%)", False),
    "params_m": ("params (M)", True), "flops_g": ("FLOPs (G)", True),
    "train_params_m": ("train params (M)", True), "train_flops_g": ("train FLOPs (G)", True),
    "train_top1_error": ("train top-1 err (%)", True),
    "samples_fixed": ("fixed vs ref.", False), "net_fixed": ("net fixed vs ref.", False),
}
#: metrics computed from a run's checkpoints and cached in RUN_DIR/study_metrics.json
#: (evaluate.run_metrics): the test outputs' OUTPUT_METRICS, and the families fgsm_<m>, pgd_<m>,
#: snapshot<N>_<m>, cifar10h_kl and noisy_fit_error (run_metrics.family)
OUTPUT_METRICS = _run_metrics.OUTPUT_METRICS
DERIVED = tuple(DERIVED_INFO)
KNOWN_METRICS = TEST_METRICS + DERIVED + OUTPUT_METRICS


def known_metric(name: str) -> bool:
    """Whether the runner can produce metric ``name``."""
    return name in KNOWN_METRICS or _run_metrics.family(name) is not None


# metrics counted against the compare_to row's run of the same column and seed
PAIRED_METRICS = ("samples_fixed", "net_fixed")

# (classes, channels, image size, train images, test images) of each registered dataset with its
# default options: the shape --smoke gives its synthetic stand-in, and the dry run's image counts
# when the data is not there to be counted.
DATASET_SHAPES = {
    "digits": (10, 1, 8, 1438, 359),
    "mnist": (10, 1, 28, 60000, 10000),
    "fashion-mnist": (10, 1, 28, 60000, 10000),
    "cifar10": (10, 3, 32, 50000, 10000),
    "cifar100": (100, 3, 32, 50000, 10000),
    "tinyimagenet": (200, 3, 64, 100000, 10000),
    "imagenet": (1000, 3, 224, 1281167, 50000),
    "cub200": (200, 3, 224, 5994, 5794),
    "dogs": (120, 3, 224, 12000, 8580),
    "mit67": (67, 3, 224, 5360, 1340),
    "flowers102": (102, 3, 224, 2040, 6149),
    "stanford_cars": (196, 3, 224, 8144, 8041),
    "fgvc_aircraft": (100, 3, 224, 6667, 3333),
    "imagewoof": (10, 3, 224, 9025, 3929),
    "imagenet_dogs": (120, 3, 64, 150000, 6000),
    "imagefolder": (10, 3, 224, 10000, 2000),
}
# --smoke: models kept as they are (already tiny); every other one becomes SMOKE_MODEL, which has
# the stage-feature and split-last-stage protocols (CD, orthogonal, BYOT, ONE keep working).
SMOKE_MODEL = "resnet8"
SMOKE_KEEP = {"resnet8", "lenet5"}
SMOKE_MAX_SIZE = 32
SMOKE_TRAIN, SMOKE_TEST = 64, 32


# ====================================================================== the study file


@dataclass
class Column:
    key: str
    label: str
    config: dict
    overrides: List[str]
    resources: dict = field(default_factory=dict)   # launch.RESOURCE_KEYS: gpus, time, mem, cpus
    metric_options: dict = field(default_factory=dict)   # over the study's (evaluate.run_metrics)


@dataclass
class Teacher:
    name: str
    config: Optional[dict] = None        # a training, merged over base + column
    overrides: List[str] = field(default_factory=list)
    weights: Optional[str] = None        # or a file
    model: Optional[dict] = None         # {name, options} of the file's model
    row: Optional[str] = None            # or another row's run
    checkpoint: Optional[str] = None
    run: Optional[str] = None            # or a finished run directory outside the study


@dataclass
class Row:
    index: int
    label: str
    slug: str
    method: str
    options: dict
    weights: dict
    overrides: List[str]
    config: dict
    teachers: List[str]
    teacher_checkpoint: str
    columns: Dict[str, dict]
    only: Optional[List[str]]
    paper: Dict[str, Any]
    sweep: Optional[Tuple[str, List[Any]]]
    ensemble: Optional[dict]
    seed_offset: int = 0


@dataclass
class Study:
    name: str
    path: Path
    title: str
    paper: str
    source: str
    metrics: List[str]
    seeds: int
    report: str
    notes: str
    base: dict
    columns: Dict[str, Column]
    teachers: Dict[str, Teacher]
    rows: List[Row]
    compare_to: Optional[str] = None
    metric_options: dict = field(default_factory=dict)   # evaluate.run_metrics.check_options
    layout: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_LAYOUT))

    def row(self, label: str) -> Row:
        for r in self.rows:
            if r.label == label:
                return r
        raise KeyError(label)


def list_studies() -> List[str]:
    """Names of the studies shipped in the package."""
    return sorted(p.stem for p in STUDIES_DIR.glob("*.yaml"))


def resolve_study(name_or_path: str) -> Path:
    """A study file path, or the name of a packaged study (``cskd-table1``)."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    packaged = STUDIES_DIR / f"{name_or_path}.yaml"
    if packaged.is_file() and "/" not in name_or_path:
        return packaged
    names = list_studies()
    raise ConfigError(f"study {name_or_path!r}: no such file and no packaged study of that name "
                      f"(packaged: {', '.join(names) or 'none'})")


def slugify(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9.]+", "-", str(text)).strip("-.").lower()
    return s or "x"


def value_slug(v) -> str:
    """A sweep value as part of a folder name (a minus sign becomes ``m``: -1 → m1)."""
    return slugify(str(v).replace("-", "m") if _is_num(v) else v)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class _Where:
    """Builds ``<file>: rows[3].paper.cub-r18`` error locations."""

    def __init__(self, file: str):
        self.file = file

    def err(self, where: str, msg: str) -> ConfigError:
        return ConfigError(f"{self.file}: {where}: {msg}")


def _mapping(w: _Where, where: str, v, allow_none=True) -> dict:
    if v is None and allow_none:
        return {}
    if not isinstance(v, dict):
        raise w.err(where, f"expected a mapping, got {v!r}")
    return v


def _str_list(w: _Where, where: str, v) -> List[str]:
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise w.err(where, f"expected a list of strings, got {v!r}")
    return list(v)


def _keys(w: _Where, where: str, d: dict, allowed: set) -> None:
    bad = sorted(str(k) for k in set(d) - allowed)
    if bad:
        raise w.err(f"{where}.{bad[0]}" if where else bad[0],
                    f"unknown key (accepted: {', '.join(sorted(allowed))})")


def _check_checkpoint(w: _Where, where: str, ck, allow_none: bool = True):
    if ck is None and allow_none:
        return None
    if not isinstance(ck, str) or not CHECKPOINT_RE.fullmatch(ck):
        raise w.err(where, f"expected last, best, ema or epochN, got {ck!r}")
    return ck


def _check_layout(w: _Where, raw, n_columns: int) -> Dict[str, str]:
    """``layout: {runs: TEMPLATE, teachers: TEMPLATE, names: cell | label}``: folder templates
    relative to the study folder (fields {row} {column} {seed}; {teacher} {column} {seed}); names
    ``label``: a run is named after its row label or teacher (a ``name`` its config sets wins)
    instead of ``label · column``."""
    raw = _mapping(w, "layout", raw)
    _keys(w, "layout", raw, LAYOUT_KEYS)
    out = dict(DEFAULT_LAYOUT)
    for key, own in (("runs", "row"), ("teachers", "teacher")):
        t = raw.get(key, out[key])
        fields = set(re.findall(r"{([^{}]*)}", t)) if isinstance(t, str) else None
        need = {own, "seed"} | ({"column"} if n_columns > 1 else set())
        if (fields is None or not need <= fields or fields - {own, "column", "seed"} or t.startswith("/")
                or ".." in t.split("/")):
            raise w.err(f"layout.{key}", f"expected a relative folder template with {{{own}}} and {{seed}}"
                        f"{' and {column}' if n_columns > 1 else ''} (fields {{{own}}} {{column}} {{seed}}), got {t!r}")
        out[key] = t
    names = raw.get("names", out["names"])
    if names not in ("cell", "label"):
        raise w.err("layout.names", f"expected cell or label, got {names!r}")
    out["names"] = names
    return out


def load_study(path, data: Optional[dict] = None, name: Optional[str] = None) -> Study:
    """Read and check a study file (structure, types, references between its parts). Names
    and options of models, datasets and methods are checked by :func:`check_plan`. ``data``:
    the file's mapping already in hand (compare and pipeline translate theirs; ``path`` is where
    it will be written); ``name``: the study's name (default: the file's stem)."""
    path, study_name = Path(path), name or Path(path).stem
    w = _Where(path.name)
    data = load_yaml(str(path), what="study file") if data is None else data
    _keys(w, "", data, TOP_KEYS)
    for k in REQUIRED_TOP:
        if k not in data:
            raise w.err(k, "required key missing")
    title, source = data["title"], data["source"]
    for k in ("title", "source"):
        if not isinstance(data[k], str) or not data[k].strip():
            raise w.err(k, f"expected a non-empty string, got {data[k]!r}")
    paper = data["paper"]
    if paper not in PAPERS:
        raise w.err("paper", f"expected one of {', '.join(PAPERS)}, got {paper!r}")
    metrics = data["metrics"]
    if isinstance(metrics, str):
        metrics = [metrics]
    if not isinstance(metrics, list) or not metrics or not all(isinstance(m, str) for m in metrics):
        raise w.err("metrics", f"expected a non-empty list of metric names, got {metrics!r}")
    seeds = data.get("seeds", 1)
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 1:
        raise w.err("seeds", f"expected an integer >= 1, got {seeds!r}")
    report = data.get("report", "last")
    if report not in ("last", "best"):
        raise w.err("report", f"expected last or best, got {report!r}")
    notes = data.get("notes") or ""
    if not isinstance(notes, str):
        raise w.err("notes", "expected text")
    base = _mapping(w, "base", data.get("base"))

    raw_cols = _mapping(w, "columns", data["columns"], allow_none=False)
    if not raw_cols:
        raise w.err("columns", "expected at least one column")
    columns: Dict[str, Column] = {}
    for key, c in raw_cols.items():
        at = f"columns.{key}"
        key = str(key)
        if not NAME_RE.fullmatch(key):
            raise w.err(at, "a column key must be letters, digits, '-', '_' or '.' (it names a folder)")
        c = _mapping(w, at, c)
        _keys(w, at, c, COLUMN_KEYS)
        label = c.get("label", key)
        if not isinstance(label, str):
            raise w.err(f"{at}.label", f"expected a string, got {label!r}")
        columns[key] = Column(key, label, _mapping(w, f"{at}.config", c.get("config")),
                              _str_list(w, f"{at}.overrides", c.get("overrides")))
        from .launch import check_resources
        columns[key].resources = check_resources(c.get("resources"), f"{path.name}: {at}.resources")
        columns[key].metric_options = _run_metrics.check_options(c.get("metric_options"),
                                                                 f"{path.name}: {at}.metric_options")

    raw_rows = data["rows"]
    if not isinstance(raw_rows, list) or not raw_rows:
        raise w.err("rows", "expected a non-empty list of rows")
    labels = []
    for i, r in enumerate(raw_rows):
        if not isinstance(r, dict) or not isinstance(r.get("label"), str) or not r.get("label"):
            raise w.err(f"rows[{i}]", "expected a mapping with a label (a non-empty string)")
        if r["label"] in labels:
            raise w.err(f"rows[{i}].label", f"{r['label']!r} is used twice")
        labels.append(r["label"])

    teachers: Dict[str, Teacher] = {}
    for name, t in _mapping(w, "teachers", data.get("teachers")).items():
        at = f"teachers.{name}"
        name = str(name)
        if not NAME_RE.fullmatch(name):
            raise w.err(at, "a teacher name must be letters, digits, '-', '_' or '.' (it names a folder)")
        if name in labels:
            raise w.err(at, "a teacher and a row have the same name")
        t = _mapping(w, at, t, allow_none=False)
        _keys(w, at, t, TEACHER_KEYS)
        forms = [k for k in ("config", "weights", "row", "run") if k in t]
        if len(forms) != 1:
            raise w.err(at, "give exactly one of config (a training), weights (a file), row (a row's run) or "
                        "run (a finished run directory)")
        ck = _check_checkpoint(w, f"{at}.checkpoint", t.get("checkpoint"))
        if "run" in t:
            if not isinstance(t["run"], str) or not t["run"]:
                raise w.err(f"{at}.run", f"expected a run directory, got {t['run']!r}")
            teachers[name] = Teacher(name, run=t["run"], checkpoint=ck)
        elif "config" in t:
            teachers[name] = Teacher(name, config=_mapping(w, f"{at}.config", t["config"]),
                                     overrides=_str_list(w, f"{at}.overrides", t.get("overrides")),
                                     checkpoint=ck)
        elif "weights" in t:
            model = _mapping(w, f"{at}.model", t.get("model"), allow_none=False)
            if not isinstance(model.get("name"), str):
                raise w.err(f"{at}.model", "expected {name: MODEL, options: {...}}")
            _keys(w, f"{at}.model", model, {"name", "options"})
            if not isinstance(t["weights"], str):
                raise w.err(f"{at}.weights", f"expected a file path, got {t['weights']!r}")
            teachers[name] = Teacher(name, weights=t["weights"],
                                     model={"name": model["name"],
                                            "options": _mapping(w, f"{at}.model.options", model.get("options"))})
        else:
            if t["row"] not in labels:
                raise w.err(f"{at}.row", f"{t['row']!r} is not the label of a row")
            teachers[name] = Teacher(name, row=t["row"], checkpoint=ck)

    metric_set = set(metrics)
    rows: List[Row] = []
    slugs = set()
    for i, r in enumerate(raw_rows):
        at = f"rows[{i}]"
        _keys(w, at, r, ROW_KEYS)
        listed = isinstance(r.get("ensemble"), dict) and isinstance(r["ensemble"].get("members"), list)
        if listed and "method" not in r:
            r = dict(r, method="ensemble")  # an ensemble of listed runs trains nothing of its own
        if not isinstance(r.get("method"), str) or not r["method"].strip():
            raise w.err(f"{at}.method", f"expected a method name, got {r.get('method')!r}")
        if r.get("slug") is not None:
            slug = r["slug"]
            if not isinstance(slug, str) or not NAME_RE.fullmatch(slug) or slug in slugs:
                raise w.err(f"{at}.slug", f"expected a folder name (letters, digits, '-', '_', '.') used once, "
                            f"got {slug!r}")
        else:
            slug = slugify(r["label"])
            while slug in slugs or slug.startswith("_"):
                slug = f"{slug}-{i}"
        slugs.add(slug)
        offset = r.get("seed_offset", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 10 ** 6:
            raise w.err(f"{at}.seed_offset", f"expected an integer in 0..999999, got {offset!r}")
        tcs = _check_checkpoint(w, f"{at}.teacher_checkpoint", r.get("teacher_checkpoint", "last"), False)
        tnames = _str_list(w, f"{at}.teachers", r.get("teachers"))
        for t in tnames:
            if t not in teachers and t not in labels:
                raise w.err(f"{at}.teachers", f"{t!r} is neither a teacher name nor a row label")
            if t == r["label"]:
                raise w.err(f"{at}.teachers", "a row cannot be its own teacher")
        tweaks = _mapping(w, f"{at}.columns", r.get("columns"))
        for ck, tw in tweaks.items():
            if str(ck) not in columns:
                raise w.err(f"{at}.columns.{ck}", f"not a column (columns: {', '.join(columns)})")
            tw = _mapping(w, f"{at}.columns.{ck}", tw)
            _keys(w, f"{at}.columns.{ck}", tw, TWEAK_KEYS)
            _mapping(w, f"{at}.columns.{ck}.options", tw.get("options"))
            _mapping(w, f"{at}.columns.{ck}.config", tw.get("config"))
            _str_list(w, f"{at}.columns.{ck}.overrides", tw.get("overrides"))
            for t in _str_list(w, f"{at}.columns.{ck}.teachers", tw.get("teachers")):
                if t not in teachers and t not in labels:
                    raise w.err(f"{at}.columns.{ck}.teachers", f"{t!r} is neither a teacher name nor a row label")
        only = r.get("only")
        if only is not None:
            only = _str_list(w, f"{at}.only", only)
            for c in only:
                if c not in columns:
                    raise w.err(f"{at}.only", f"{c!r} is not a column (columns: {', '.join(columns)})")
        sweep = None
        if r.get("sweep") is not None:
            sw = _mapping(w, f"{at}.sweep", r["sweep"])
            if len(sw) != 1:
                raise w.err(f"{at}.sweep", "expected exactly one key: {KEY: [values...]}")
            (sk, sv), = sw.items()
            if not isinstance(sv, list) or not sv:
                raise w.err(f"{at}.sweep.{sk}", f"expected a non-empty list of values, got {sv!r}")
            sweep = (str(sk), list(sv))
            value_slugs = [value_slug(v) for v in sv]
            if len(set(value_slugs)) != len(sv):
                raise w.err(f"{at}.sweep.{sk}", f"values must differ (as folder names: {value_slugs})")
        ens = None
        if r.get("ensemble") is not None:
            e = _mapping(w, f"{at}.ensemble", r["ensemble"])
            _keys(w, f"{at}.ensemble", e, ENSEMBLE_KEYS)
            n = e.get("members")
            listed = None
            if isinstance(n, list):  # an ensemble of other rows' runs and run directories
                listed = []
                for j, m in enumerate(n):
                    mat = f"{at}.ensemble.members[{j}]"
                    if isinstance(m, dict) and set(m) <= {"run", "checkpoint"} and isinstance(m.get("run"), str):
                        listed.append({"run": m["run"],
                                       "checkpoint": _check_checkpoint(w, f"{mat}.checkpoint", m.get("checkpoint"))})
                    elif isinstance(m, str) and m in labels and m != r["label"]:
                        listed.append(m)
                    else:
                        raise w.err(mat, f"expected the label of another row or {{run: DIR, checkpoint: NAME}}, "
                                    f"got {m!r}")
                if len(listed) < 2:
                    raise w.err(f"{at}.ensemble.members", f"an ensemble needs at least 2 members, got {len(listed)}")
                if sweep is not None:
                    raise w.err(f"{at}.sweep", "an ensemble of listed members cannot be swept")
                n = len(listed)
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise w.err(f"{at}.ensemble.members", f"expected an integer >= 1 or a list of rows and "
                            f"{{run: DIR}}, got {n!r}")
            mode = e.get("mode", "sequential" if listed is None else "listed")
            if listed is not None:
                if mode != "listed" or e.get("report", ["ensemble"]) != ["ensemble"]:
                    raise w.err(f"{at}.ensemble", "an ensemble of listed members takes no mode and reports the "
                                "ensemble only")
            elif mode not in ("sequential", "independent"):
                raise w.err(f"{at}.ensemble.mode", f"expected sequential or independent, got {mode!r}")
            rep = _str_list(w, f"{at}.ensemble.report", e.get("report", ["ensemble"]))
            if not rep or set(rep) - {"ensemble", "members"}:
                raise w.err(f"{at}.ensemble.report", f"expected a list of ensemble, members; got {rep!r}")
            comb = e.get("combine", "mean_softmax")
            if comb not in ("mean_softmax", "sum_logits"):
                raise w.err(f"{at}.ensemble.combine", f"expected mean_softmax or sum_logits, got {comb!r}")
            if sweep is not None and sweep[0] == "members":
                bad = [v for v in sweep[1] if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= n]
                if bad:
                    raise w.err(f"{at}.sweep.members", f"expected integers in 1..{n}, got {bad[0]!r}")
            ens = {"members": n, "mode": mode, "report": rep, "combine": comb, "list": listed,
                   "checkpoint": _check_checkpoint(w, f"{at}.ensemble.checkpoint", e.get("checkpoint"))}
        elif sweep is not None and sweep[0] == "members":
            raise w.err(f"{at}.sweep.members", "sweeping members needs an `ensemble:` row")
        published = _check_paper(w, f"{at}.paper", r.get("paper"), columns, metric_set, sweep, ens)
        rows.append(Row(i, r["label"], slug, r["method"].strip(), _mapping(w, f"{at}.options", r.get("options")),
                        _mapping(w, f"{at}.weights", r.get("weights")),
                        _str_list(w, f"{at}.overrides", r.get("overrides")),
                        _mapping(w, f"{at}.config", r.get("config")), tnames, tcs,
                        {str(k): v or {} for k, v in tweaks.items()}, only, published, sweep, ens, offset))
    compare_to = data.get("compare_to")
    if compare_to is not None and compare_to not in labels:
        raise w.err("compare_to", f"{compare_to!r} is not the label of a row")
    layout = _check_layout(w, data.get("layout"), len(columns))
    return Study(study_name, path, title, paper, source, list(metrics), seeds, report, notes, base, columns,
                 teachers, rows, compare_to,
                 metric_options=_run_metrics.check_options(data.get("metric_options"),
                                                           f"{path.name}: metric_options"),
                 layout=layout)


def _paper_value(w: _Where, where: str, v, metrics: set) -> Dict[str, Tuple[float, Optional[float]]]:
    """number | [mean, std] | {metric: number | [mean, std]} -> {metric: (mean, std)};
    a bare number or pair is the main metric (key "")."""
    if v is None:
        return {}
    if _is_num(v):
        return {"": (float(v), None)}
    if isinstance(v, list):
        if len(v) == 2 and all(_is_num(x) for x in v) and v[1] >= 0:
            return {"": (float(v[0]), float(v[1]))}
        raise w.err(where, f"expected a number or [mean, std], got {v!r}")
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            if k not in metrics:
                raise w.err(f"{where}.{k}", f"not one of the study's metrics ({', '.join(sorted(metrics))})")
            got = _paper_value(w, f"{where}.{k}", x, metrics)
            if got:
                if set(got) != {""}:
                    raise w.err(f"{where}.{k}", f"expected a number or [mean, std], got {x!r}")
                out[k] = got[""]
        return out
    raise w.err(where, f"expected a number, [mean, std] or a mapping of metrics, got {v!r}")


def _same_value(a, b) -> bool:
    if _is_num(a) and _is_num(b):
        return float(a) == float(b)
    return str(a) == str(b)


def _check_paper(w, where, paper, columns, metrics, sweep, ens) -> Dict[str, Any]:
    """Per column: {line key: {metric: (mean, std)}} with line keys "" (the row itself),
    "sweep:<value>", "ensemble", "member<n>"."""
    paper = _mapping(w, where, paper)
    out: Dict[str, Any] = {}
    for col, v in paper.items():
        at = f"{where}.{col}"
        if str(col) not in columns:
            raise w.err(at, f"not a column (columns: {', '.join(columns)})")
        lines: Dict[str, Any] = {}   # stays empty for a null cell: no published number
        if v is None:
            out[str(col)] = lines
            continue
        if sweep is not None:
            v = _mapping(w, at, v)
            for val, x in v.items():
                match = [s for s in sweep[1] if _same_value(s, val)]
                if not match:
                    raise w.err(f"{at}.{val}", f"not one of the sweep's values {sweep[1]}")
                sub = ("ensemble" if ens else "") + f"sweep:{match[0]}"
                lines[sub] = _paper_value(w, f"{at}.{val}", x, metrics)
        elif ens is not None and isinstance(v, dict) and any(
                str(k) == "ensemble" or re.fullmatch(r"member\d+", str(k)) for k in v):
            for k, x in v.items():
                k = str(k)
                m = re.fullmatch(r"member(\d+)", k)
                if k != "ensemble" and not (m and 1 <= int(m.group(1)) <= ens["members"]):
                    raise w.err(f"{at}.{k}", f"expected ensemble or member1..member{ens['members']}")
                lines[k] = _paper_value(w, f"{at}.{k}", x, metrics)
        else:
            lines["ensemble" if ens is not None else ""] = _paper_value(w, at, v, metrics)
        out[str(col)] = lines
    return out


# ====================================================================== the plan


@dataclass
class TeacherRef:
    """One teacher of a run: another run of the plan (``run``), or a weights file."""

    run: Optional[str] = None            # RunSpec id
    checkpoint: str = "last"
    weights: Optional[str] = None
    model: Optional[dict] = None         # {name, options}

    def describe(self) -> str:
        return f"run {self.run} ({self.checkpoint})" if self.run else f"{self.model['name']} from {self.weights}"


@dataclass
class RunSpec:
    """One unit of work: a training run (``kind="train"``) or the evaluation of an ensemble of
    earlier runs (``kind="ensemble"``). ``deps`` are the ids of the runs it needs finished."""

    id: str                              # run directory relative to the study folder
    kind: str
    run_dir: Path
    column: str
    seed: int
    what: str                            # "KD · c100-r18 · seed 0"
    cfg: Optional[RunConfig] = None      # train; for ensembles the config used for its data
    teachers: List[TeacherRef] = field(default_factory=list)
    members: List[str] = field(default_factory=list)
    deps: List[str] = field(default_factory=list)
    combine: str = "mean_softmax"
    checkpoint: str = "last"             # ensembles: the members' checkpoint
    member_checkpoints: List[Optional[str]] = field(default_factory=list)  # per member, None: ``checkpoint``
    where: str = ""                      # study-file location, for error messages


@dataclass
class Line:
    """One line of the output table: a row, a sweep value, an ensemble or one of its members."""

    key: str
    label: str
    row: int
    sub: str                             # "", "sweep:<v>", "ensemble", "ensemblesweep:<n>", "member<n>"
    indent: bool = False
    cells: Dict[str, List[str]] = field(default_factory=dict)   # column -> run ids (one per seed)


@dataclass
class Plan:
    study: Study
    out: Path
    seeds: List[int]
    columns: List[str]
    lines: List[Line]
    runs: List[RunSpec]                  # topological order
    data_root: Optional[str] = None
    smoke: bool = False
    request: dict = field(default_factory=dict)   # plan_study's arguments: a launcher's child plans again

    def by_id(self) -> Dict[str, RunSpec]:
        return {r.id: r for r in self.runs}


def _subst(obj, data_root: Optional[str]):
    if isinstance(obj, str):
        return obj.replace("{data_root}", data_root) if data_root is not None else obj
    if isinstance(obj, dict):
        return {k: _subst(v, data_root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_subst(v, data_root) for v in obj]
    return obj


def dataset_shape(name: str, options: dict) -> Tuple[int, int, int, int, int]:
    """(classes, channels, image size, train images, test images) of a dataset with these
    options, from :data:`DATASET_SHAPES` (no file is read)."""
    if name == "synthetic":
        o = {"num_classes": 10, "channels": 1, "image_size": 28, "train_size": 1024, "test_size": 256}
        o.update(options or {})
        return o["num_classes"], o["channels"], o["image_size"], o["train_size"], o["test_size"]
    k, c, size, n_train, n_test = DATASET_SHAPES.get(name, (10, 3, 32, 10000, 2000))
    options = options or {}
    if name == "cifar100" and options.get("labels") == "coarse":
        k = 20
    if isinstance(options.get("image_size"), int):
        size = options["image_size"]
    return k, c, size, n_train, n_test


def smoke_config(data: dict) -> dict:
    """The --smoke version of a run's config mapping: synthetic data of the column's shape
    (classes, channels; image size at most 32), max(64, classes) training and 32 test images,
    one epoch, and a tiny model (CIFAR ResNet-8) in place of any larger one, without weights
    files."""
    data = _deepcopy(data)
    d = data.setdefault("data", {})
    k, c, size, _, _ = dataset_shape(d.get("name", "digits"), d.get("options") or {})
    d.update(name="synthetic", root=None, workers=0,
             options={"num_classes": k, "channels": c, "image_size": min(size, SMOKE_MAX_SIZE),
                      "train_size": max(SMOKE_TRAIN, k), "test_size": SMOKE_TEST})
    d["batch_size"] = min(int(d.get("batch_size", 64)), 32)
    d["eval_batch_size"] = 256
    d.pop("train_subset", None)
    m = data.setdefault("model", {})
    if m.get("name", "resnet8") not in SMOKE_KEEP:
        data["model"] = {"name": SMOKE_MODEL, "options": {}}
    data["model"]["weights"] = None
    t = data.setdefault("train", {})
    t["epochs"] = 1
    if t.get("snapshot_epochs"):
        t["snapshot_epochs"] = [1]
    t["compile"] = False
    data.setdefault("schedule", {})["warmup_epochs"] = 0.0
    return data


class _Planner:
    def __init__(self, study: Study, out: Path, seeds: List[int], columns: List[str], data_root: Optional[str],
                 smoke: bool, overrides: Sequence[str]):
        self.s, self.out, self.seeds, self.columns = study, out, seeds, columns
        self.data_root, self.smoke, self.overrides = data_root, smoke, list(overrides)
        self.w = _Where(study.path.name)
        self.runs: Dict[str, RunSpec] = {}
        self.order: List[str] = []
        self._visiting: set = set()      # plain runs being planned (a teacher cycle check)

    def add(self, spec: RunSpec) -> str:
        if spec.id not in self.runs:
            missing = [d for d in spec.deps if d not in self.runs]
            assert not missing, missing  # callers plan dependencies first
            self.runs[spec.id] = spec
            self.order.append(spec.id)
        return spec.id

    # -------------------------------------------------------------- configs
    def column_base(self, col: str) -> dict:
        c = self.s.columns[col]
        data = _merge(_merge(STUDY_DEFAULTS, self.s.base), c.config)
        return self._apply(data, c.overrides, f"columns.{col}.overrides")

    def _apply(self, data: dict, overrides: List[str], where: str) -> dict:
        try:
            return apply_overrides(data, overrides)
        except ConfigError as exc:
            raise self.w.err(where, str(exc)) from None

    def run_id(self, row: str, col: str, seed: int) -> str:
        """A run's id: its folder relative to the study folder (``layout.runs``)."""
        return self.s.layout["runs"].format(row=row, column=col, seed=seed)

    def teacher_id(self, name: str, col: str, seed: int) -> str:
        return self.s.layout["teachers"].format(teacher=name, column=col, seed=seed)

    def finish(self, data: dict, seed: int, label: str, column: str, where: str,
               name: Optional[str] = None) -> RunConfig:
        data = self._apply(data, self.overrides, "command-line overrides")
        for sec in ("data", "model", "method", "optim", "schedule", "train"):
            if not isinstance(data.get(sec, {}), dict):
                raise self.w.err(where, f"{sec}: expected a mapping, got {data[sec]!r}")
        if self.smoke and not isinstance(data.get("data", {}).get("batch_size", 64), int):
            raise self.w.err(where, f"data.batch_size: expected int, got {data['data']['batch_size']!r}")
        data = _subst(data, self.data_root)
        data.setdefault("train", {})["seed"] = seed
        # the run's label in final.json: the table line and the column, so that `softlabels
        # report` on a study folder groups seeds of one cell, never two columns
        if self.s.layout["names"] == "label":  # compare, pipeline: a run is named after its method or stage
            data.setdefault("name", name or label)
        else:
            data["name"] = f"{label} · {column}"
        d = data.setdefault("data", {})
        if d.get("root") is None and self.data_root is not None:
            d["root"] = f"{self.data_root}/{d.get('name', 'digits')}"
        if self.smoke:
            data = smoke_config(data)
        try:
            return config_from_dict(data)
        except ConfigError as exc:
            raise self.w.err(where, str(exc)) from None

    def row_config(self, row: Row, col: str, seed: int, label: str, sweep_value=None) -> RunConfig:
        data = self.column_base(col)
        if row.config:
            data = _merge(data, row.config)
        method = {"name": row.method, "options": _deepcopy(row.options), "weights": dict(row.weights)}
        tw = row.columns.get(col, {})
        if tw.get("options"):
            method["options"] = _merge(method["options"], tw["options"])
        data["method"] = method
        data = self._apply(data, row.overrides, f"rows[{row.index}].overrides")
        if tw.get("config"):
            data = _merge(data, tw["config"])
        data = self._apply(data, list(tw.get("overrides") or []), f"rows[{row.index}].columns.{col}.overrides")
        if row.sweep is not None and row.sweep[0] != "members":
            key = row.sweep[0]
            if "." in key:
                data = self._apply(data, [f"{key}={json.dumps(sweep_value)}"], f"rows[{row.index}].sweep")
            else:
                data["method"]["options"][key] = sweep_value
        return self.finish(data, seed + SEED_STRIDE * row.seed_offset, label, col,
                           f"rows[{row.index}] ({row.label}) × column {col}")

    # -------------------------------------------------------------- teachers
    def teacher_refs(self, row: Row, col: str, seed: int) -> List[TeacherRef]:
        names = list(row.teachers) + [t for t in (row.columns.get(col, {}).get("teachers") or [])
                                      if t not in row.teachers]
        return [self.teacher(n, col, seed, row.teacher_checkpoint, f"rows[{row.index}].teachers") for n in names]

    def teacher(self, name: str, col: str, seed: int, checkpoint: str, where: str) -> TeacherRef:
        s = self.s
        if name in s.teachers:
            t = s.teachers[name]
            if t.weights is not None:
                weights = _subst(t.weights, self.data_root)
                model = dict(t.model)
                if self.smoke:
                    weights, model = None, ({"name": SMOKE_MODEL, "options": {}}
                                            if model["name"] not in SMOKE_KEEP else model)
                return TeacherRef(weights=weights, model=model)
            if t.row is not None:
                return self.teacher(t.row, col, seed, t.checkpoint or checkpoint, f"teachers.{name}.row")
            if t.run is not None:
                return TeacherRef(run=self.external(t.run), checkpoint=t.checkpoint or checkpoint)
            tid = self.teacher_id(name, col, seed)
            if tid not in self.runs:
                data = _merge(self.column_base(col), t.config)
                data = self._apply(data, t.overrides, f"teachers.{name}.overrides")
                cfg = self.finish(data, seed, f"teacher {name}", col, f"teachers.{name} × column {col}", name=name)
                self.add(RunSpec(tid, "train", self.out / tid, col, seed, f"teacher {name} · {col} · seed {seed}",
                                 cfg=cfg, where=f"teachers.{name} × column {col}"))
            return TeacherRef(run=tid, checkpoint=t.checkpoint or checkpoint)
        row = s.row(name)
        if row.sweep is not None or row.ensemble is not None:
            raise self.w.err(where, f"row {name!r} is a sweep or an ensemble; a teacher must be a single run")
        if row.only is not None and col not in row.only:
            raise self.w.err(where, f"row {name!r} has no run in column {col} (only: {', '.join(row.only)})")
        return TeacherRef(run=self.plain_run(row, col, seed), checkpoint=checkpoint)

    def external(self, run_dir: str) -> str:
        """A finished run directory outside the study (a teacher or an ensemble member): a spec
        of kind ``external`` that is never trained, only required to have finished."""
        path = Path(_subst(run_dir, self.data_root)).expanduser()
        key = str(path.resolve())
        rid = next((i for i, r in self.runs.items() if r.kind == "external" and str(r.run_dir.resolve()) == key), None)
        if rid is None:
            rid = f"_external/{sum(r.kind == 'external' for r in self.runs.values()) + 1}"
            cfg = None
            if (path / "config.yaml").is_file():
                from .engine.runs import RunDir

                try:
                    cfg = RunDir(path).config()
                except SoftlabelsError:
                    cfg = None
            self.add(RunSpec(rid, "external", path, "", -1, f"run {path}", cfg=cfg, where=f"run {path}"))
        return rid

    def plain_run(self, row: Row, col: str, seed: int) -> str:
        rid = self.run_id(row.slug, col, seed)
        if rid not in self.runs:
            if rid in self._visiting:
                raise self.w.err(f"rows[{row.index}].teachers", "the rows' teachers form a cycle")
            self._visiting.add(rid)
            teachers = self.teacher_refs(row, col, seed)
            cfg = self.row_config(row, col, seed, row.label)
            self.add(RunSpec(rid, "train", self.out / rid, col, seed, f"{row.label} · {col} · seed {seed}", cfg=cfg,
                             teachers=teachers, deps=[t.run for t in teachers if t.run],
                             where=f"rows[{row.index}] ({row.label}) × column {col}"))
            self._visiting.discard(rid)
        return rid

    # -------------------------------------------------------------- rows
    def plan_row(self, row: Row) -> List[Line]:
        cols = [c for c in self.columns if row.only is None or c in row.only]
        if row.ensemble is not None and row.ensemble.get("list") is not None:
            return [self.listed_ensemble(row, cols)]
        if row.ensemble is not None:
            return self.plan_ensemble(row, cols)
        if row.sweep is None:
            line = Line(row.slug, row.label, row.index, "")
            for c in cols:
                line.cells[c] = [self.plain_run(row, c, s) for s in self.seeds]
            return [line]
        key, values = row.sweep
        lines = []
        for v in values:
            label = f"{row.label} ({key}={v})"
            slug = f"{row.slug}--{slugify(key)}-{value_slug(v)}"
            line = Line(slug, label, row.index, f"sweep:{v}", indent=True)
            for c in cols:
                ids = []
                for s in self.seeds:
                    rid = self.run_id(slug, c, s)
                    if rid not in self.runs:
                        teachers = self.teacher_refs(row, c, s)
                        cfg = self.row_config(row, c, s, label, v)
                        self.add(RunSpec(rid, "train", self.out / rid, c, s, f"{label} · {c} · seed {s}", cfg=cfg,
                                         teachers=teachers, deps=[t.run for t in teachers if t.run],
                                         where=f"rows[{row.index}] ({row.label}) × column {c}"))
                    ids.append(rid)
                line.cells[c] = ids
            lines.append(line)
        return lines

    def listed_ensemble(self, row: Row, cols: List[str]) -> Line:
        """The ensemble of other rows' runs (same column and seed) and run directories."""
        e = row.ensemble
        line = Line(row.slug, row.label, row.index, "ensemble")
        where = f"rows[{row.index}] ({row.label}) × column "
        for c in cols:
            for s in self.seeds:
                members, cks = [], []
                for m in e["list"]:
                    if isinstance(m, dict):
                        members.append(self.external(m["run"]))
                        cks.append(m["checkpoint"])
                        continue
                    mrow = self.s.row(m)
                    if mrow.sweep is not None or mrow.ensemble is not None or (mrow.only and c not in mrow.only):
                        raise self.w.err(f"rows[{row.index}].ensemble.members", f"row {m!r} has no single run in "
                                         f"column {c}")
                    members.append(self.plain_run(mrow, c, s))
                    cks.append(None)
                rid = self.run_id(row.slug, c, s)
                self.add(RunSpec(rid, "ensemble", self.out / rid, c, s, f"{row.label} · {c} · seed {s}",
                                 cfg=self.runs[members[0]].cfg, members=members, deps=list(dict.fromkeys(members)),
                                 combine=e["combine"], checkpoint=e.get("checkpoint") or self.s.report,
                                 member_checkpoints=cks, where=where + c))
                line.cells.setdefault(c, []).append(rid)
        return line

    def plan_ensemble(self, row: Row, cols: List[str]) -> List[Line]:
        """Members (sequential: member n taught by members 1..n-1; independent: train.seed =
        seed·1000 + n) and the ensemble evaluation(s). A `members` sweep evaluates the ensembles
        of the first n members of one set; a sweep of any other key trains one set per value."""
        e = row.ensemble
        if row.sweep is None or row.sweep[0] == "members":
            groups = [(row.slug, row.label, None)]
        else:
            key = row.sweep[0]
            groups = [(f"{row.slug}--{slugify(key)}-{value_slug(v)}", f"{row.label} ({key}={v})", v)
                      for v in row.sweep[1]]
        lines: List[Line] = []
        for slug, label, value in groups:
            lines += self._ensemble_group(row, cols, slug, label, value)
        return lines

    def _ensemble_group(self, row: Row, cols: List[str], slug: str, label: str, value) -> List[Line]:
        e = row.ensemble
        n = e["members"]
        where = f"rows[{row.index}] ({row.label}) × column "
        member_lines = [Line(f"{slug}--member{k}", f"{label}: member {k}", row.index,
                             f"member{k}" if value is None else "", indent=True) for k in range(1, n + 1)]
        if row.sweep is not None and row.sweep[0] == "members":
            sizes = list(row.sweep[1])
            ens_lines = [Line(f"{slug}--ensemble{size}", f"{label} (members={size})", row.index,
                              f"ensemblesweep:{size}", indent=True) for size in sizes]
        else:
            sizes = [n]
            sub = "ensemble" if value is None else f"ensemblesweep:{value}"
            ens_lines = [Line(f"{slug}--ensemble", label, row.index, sub, indent=value is not None)]
        for c in cols:
            for s in self.seeds:
                own = self.teacher_refs(row, c, s)
                members: List[str] = []
                for k in range(1, n + 1):
                    rid = self.run_id(f"{slug}--member{k}", c, s)
                    mlabel = f"{label}: member {k}"
                    if e["mode"] == "sequential":
                        teachers = own + [TeacherRef(run=m, checkpoint=row.teacher_checkpoint) for m in members]
                        seed = s
                    else:
                        teachers, seed = own, s * 1000 + k
                    cfg = self.row_config(row, c, seed, mlabel, value)
                    self.add(RunSpec(rid, "train", self.out / rid, c, s, f"{mlabel} · {c} · seed {s}", cfg=cfg,
                                     teachers=teachers, deps=[t.run for t in teachers if t.run], where=where + c))
                    members.append(rid)
                    member_lines[k - 1].cells.setdefault(c, []).append(rid)
                for size, line in zip(sizes, ens_lines):
                    rid = self.run_id(line.key, c, s)
                    first = self.runs[members[0]]
                    self.add(RunSpec(rid, "ensemble", self.out / rid, c, s, f"{line.label} · {c} · seed {s}",
                                     cfg=first.cfg, members=members[:size], deps=members[:size],
                                     combine=e["combine"], checkpoint=e.get("checkpoint") or self.s.report,
                                     where=where + c))
                    line.cells.setdefault(c, []).append(rid)
        if "members" not in e["report"]:
            return ens_lines
        return ([ens_lines[0]] + member_lines + ens_lines[1:]) if len(ens_lines) == 1 else ens_lines + member_lines


def _pick(kind: str, given: Optional[Sequence[str]], choices: Dict[str, str]) -> List[str]:
    """Keys named by --rows/--columns (a key, slug or label each), in the study's order."""
    if not given:
        return list(choices)
    picked = []
    for g in given:
        hit = [k for k, label in choices.items() if g in (k, label)]
        if not hit:
            raise ConfigError(f"--{kind}: {g!r} is not one of the study's {kind} "
                              f"({', '.join(choices)})")
        picked += hit
    return [k for k in choices if k in picked]


def plan_study(study: Study, out, *, data_root: Optional[str] = None, seeds: Optional[Sequence[int]] = None,
               rows: Optional[Sequence[str]] = None, columns: Optional[Sequence[str]] = None,
               smoke: bool = False, overrides: Sequence[str] = ()) -> Plan:
    """Expand a study into runs (teachers, rows, sweep values, ensemble members, ensemble
    evaluations) for the selected rows, columns and seeds, in topological order.

    ``rows``/``columns`` select by key, slug or label (``None``: all); the ``compare_to`` row is
    always kept. ``overrides`` (KEY=VALUE) apply to every run. With ``smoke`` every run's config
    goes through :func:`smoke_config`. Raises ConfigError naming the study file's key."""
    out = Path(out)
    seeds = list(range(study.seeds)) if seeds is None else list(seeds)
    if not seeds:
        raise ConfigError("a study needs at least one seed")
    cols = _pick("columns", columns, {k: c.label for k, c in study.columns.items()})
    row_keys = _pick("rows", rows, {r.slug: r.label for r in study.rows})
    if study.compare_to is not None and study.row(study.compare_to).slug not in row_keys:
        row_keys = [r.slug for r in study.rows if r.slug in row_keys or r.label == study.compare_to]
    p = _Planner(study, out, seeds, cols, data_root, smoke, overrides)
    lines: List[Line] = []
    for r in study.rows:
        if r.slug in row_keys:
            lines += p.plan_row(r)
    request = {"study": str(study.path.resolve()), "out": str(out.resolve()), "data_root": data_root, "seeds": seeds,
               "rows": None if rows is None else list(rows), "columns": None if columns is None else list(columns),
               "smoke": smoke, "overrides": list(overrides)}
    return Plan(study, out, seeds, cols, lines, [p.runs[i] for i in p.order], data_root, smoke, request)


# ====================================================================== the dry run


@dataclass
class Check:
    """What the dry run found: per-run estimates and what is missing."""

    missing: List[str] = field(default_factory=list)
    data: Dict[str, str] = field(default_factory=dict)         # dataset description -> status
    weights: Dict[str, str] = field(default_factory=dict)      # file -> status
    throughput: Dict[str, Tuple[float, str]] = field(default_factory=dict)  # model key -> (img/s, how)
    images: Dict[str, int] = field(default_factory=dict)       # run id -> training images processed
    seconds: Dict[str, float] = field(default_factory=dict)    # run id -> estimate

    def miss(self, text: str) -> None:
        if text not in self.missing:
            self.missing.append(text)


def _short(msg: str) -> str:
    return msg.split("; choose one of")[0]


def _model_key(cfg: RunConfig, shape) -> str:
    opts = json.dumps(cfg.model.options, sort_keys=True) if cfg.model.options else ""
    k, c, size = shape[:3]
    return f"{cfg.model.name}{opts} {c}×{size}×{size} K={k} batch {cfg.data.batch_size}"


def measure_throughput(cfg: RunConfig, shape, device, seconds: float = 1.0, max_steps: int = 30) -> float:
    """Training images/s of ``cfg``'s model (plain CE step, SGD) on random inputs of ``shape``:
    two warm-up steps, then timed steps until ``seconds`` have passed (at least 2, at most
    ``max_steps``), batch min(batch_size, 128) for small models, min(batch_size, 16) otherwise."""
    import torch

    from .models import build_model

    k, c, size = shape[:3]
    model = build_model(cfg.model.name, k, c, cfg.model.options).to(device).train()
    small = sum(p.numel() for p in model.parameters()) < 5_000_000 and size <= 64
    b = max(2, min(cfg.data.batch_size, 128 if small else 16))
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    x = torch.randn(b, c, size, size, device=device)
    y = torch.randint(0, k, (b,), device=device)

    def step():
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.cross_entropy(model(x).logits, y).backward()
        opt.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()
    step()
    sync()
    t0 = time.perf_counter()
    steps = 0
    while steps < 2 or (steps < max_steps and time.perf_counter() - t0 < seconds):
        step()
        steps += 1
        sync()
    return b * steps / max(time.perf_counter() - t0, 1e-9)


def check_plan(plan: Plan, *, throughput: Optional[float] = None, device: Optional[str] = None,
               measure: bool = True) -> Check:
    """The dry run: every run's names and options against the registries, the teachers its
    method needs, its data and weight files, the study's metrics; images to process and an
    estimated time (``throughput`` images/s, or measured per distinct model and input shape)."""
    from .config import validate_registered
    from .data import load_dataset
    from .engine.runs import method_requires
    from .engine.runtime import setup_runtime
    from . import methods as _methods, models as _models  # noqa: F401  (registration)
    from .registry import DATASETS, METHODS, MODELS

    chk = Check()
    for m in plan.study.metrics:
        if not known_metric(m):
            chk.miss(f"metric {m}: the runner cannot produce it yet (docs/studies.md lists those it can)")
        if m in PAIRED_METRICS and plan.study.compare_to is None:
            chk.miss(f"metric {m}: needs compare_to (the row whose run of the same column and seed is the reference)")
    datasets: Dict[tuple, Any] = {}
    cost: Dict[str, float] = {}   # run id -> cost of a step relative to a plain CE step
    dev = None
    for spec in plan.runs:
        cfg = spec.cfg
        if spec.kind == "external" and not is_done(spec):
            chk.miss(f"{spec.where}: not a finished run (no valid final.json there)")
        if spec.kind != "train":
            continue
        other = other_run_there(spec)
        if other:
            chk.miss(f"{spec.where}: {other}")
        unknown = [f"unknown {reg.kind} {n!r}" for reg, names in
                   ((DATASETS, [cfg.data.name]), (MODELS, [cfg.model.name]), (METHODS, cfg.method.components))
                   for n in names if n not in reg]
        for u in unknown:
            chk.miss(f"{spec.where}: {u}")
        ok = not unknown
        if ok:
            try:
                validate_registered(cfg)
            except ConfigError as exc:
                chk.miss(f"{spec.where}: {_short(str(exc))}")
                ok = False
        if ok:
            try:
                req = method_requires(cfg)
                cost[spec.id] = (1.0 + 0.35 * len(spec.teachers) + (1.0 if req.pairs else 0.0)
                                 + (req.views - 1) + (0.3 if req.clean else 0.0))
                need = req.teachers
                if need > len(spec.teachers):
                    chk.miss(f"{spec.where}: method {cfg.method.name} needs {need} teacher(s), "
                             f"the row gives {len(spec.teachers)}")
            except SoftlabelsError as exc:
                if "data" not in type(exc).__name__.lower():
                    chk.miss(f"{spec.where}: {_short(str(exc))}")
        dkey = (cfg.data.name, cfg.data.root, json.dumps(cfg.data.options, sort_keys=True))
        desc = f"{cfg.data.name} at {cfg.data.root}" if cfg.data.root else cfg.data.name
        if plan.study.report == "best" and cfg.data.val_fraction == 0:
            chk.miss(f"{spec.where}: report: best needs a validation split (data.val_fraction > 0)")
        if dkey not in datasets:
            try:
                ds = load_dataset(cfg.data.name, cfg.data.root, cfg.data.options)
                datasets[dkey] = ds
                chk.data[desc] = f"present ({len(ds.train)} train / {len(ds.test)} test images)"
            except SoftlabelsError as exc:
                datasets[dkey] = None
                chk.data[desc] = "MISSING"
                if cfg.data.name in DATASETS:
                    chk.miss(f"dataset {desc}: {_short(str(exc))}")
        files = [cfg.model.weights] if cfg.model.weights else []
        files += [t.weights for t in spec.teachers if t.weights]
        for f in files:
            if f not in chk.weights:
                there = Path(f).expanduser().is_file()
                chk.weights[f] = "present" if there else "MISSING"
                if not there:
                    chk.miss(f"weights file {f}: not found (needed by {spec.where})")
        for t in spec.teachers:
            if t.run and t.checkpoint == "best" and plan.by_id()[t.run].kind == "train" \
                    and plan.by_id()[t.run].cfg.data.val_fraction == 0:
                chk.miss(f"{spec.where}: teacher_checkpoint best needs the teacher run {t.run} to have a "
                         f"validation split (data.val_fraction > 0); use last")
            if t.weights and t.model:
                from .registry import MODELS

                if t.model["name"] not in MODELS:
                    chk.miss(f"{spec.where}: teacher model {t.model['name']!r} is not registered")
        # images and time
        ds = datasets.get(dkey)
        shape = list(dataset_shape(cfg.data.name, cfg.data.options))
        if ds is not None:
            shape = [ds.num_classes, ds.in_channels, getattr(ds, "image_size", shape[2]),
                     len(ds.train), len(ds.test)]
        n_train = int(round(shape[3] * (1 - cfg.data.val_fraction)))
        if cfg.data.train_subset is not None:
            n_train = min(n_train, cfg.data.train_subset)
        imgs = n_train * cfg.train.epochs
        evals = -(-cfg.train.epochs // cfg.train.eval_every)
        chk.images[spec.id] = imgs
        mkey = _model_key(cfg, shape)
        if mkey not in chk.throughput:
            if throughput:
                chk.throughput[mkey] = (float(throughput), "given")
            elif measure and ok:
                try:
                    import torch

                    if dev is None:
                        dev = setup_runtime(device or cfg.train.device).device
                    with torch.random.fork_rng(devices=[]):
                        chk.throughput[mkey] = (measure_throughput(cfg, shape, dev), f"measured on {dev}")
                except Exception as exc:  # an unusable model shape is reported, not raised
                    chk.throughput[mkey] = (float("nan"), f"not measured ({str(exc).splitlines()[0][:80]})")
            else:
                chk.throughput[mkey] = (float("nan"), "not measured")
        rate = chk.throughput[mkey][0]
        factor = cost.get(spec.id, 1.0 + 0.35 * len(spec.teachers))
        eval_imgs = evals * (n_train * cfg.data.val_fraction + shape[4]) / 3.0
        eval_imgs += _check_run_metrics(plan, spec, chk, shape)
        chk.seconds[spec.id] = (imgs * factor + eval_imgs) / rate if rate == rate and rate > 0 else float("nan")
    return chk


def _hms(s: float) -> str:
    if s != s:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def format_dry_run(plan: Plan, chk: Check, jobs: Optional[int] = None) -> str:
    s = plan.study
    n_lines = len(plan.lines)
    train = [r for r in plan.runs if r.kind == "train"]
    n_ext = sum(r.kind == "external" for r in plan.runs)
    out = [f"study {s.name}: {s.title}",
           f"  source: {s.source if s.paper == 'none' else s.paper + ' ' + s.source}; metrics: {', '.join(s.metrics)}; reported epoch: {s.report}",
           f"  table: {n_lines} lines × {len(plan.columns)} columns × {len(plan.seeds)} seeds "
           f"(seeds {', '.join(map(str, plan.seeds))}); {len(train)} training runs, "
           f"{sum(r.kind == 'ensemble' for r in plan.runs)} ensemble evaluations"
           + (f", {n_ext} finished run(s) from elsewhere" if n_ext else "") + ("; SMOKE (synthetic data, 1 epoch)" if plan.smoke else ""),
           f"  folder: {plan.out}", "", "runs:"]
    rows = [("run", "dataset", "model", "method", "ep", "images", "est.", "after")]
    for r in plan.runs:
        if r.kind == "train":
            c = r.cfg
            done = "done" if (r.run_dir / "final.json").is_file() else _hms(chk.seconds.get(r.id, float("nan")))
            rows.append((r.id, c.data.name, c.model.name, c.method.name, str(c.train.epochs),
                         str(chk.images.get(r.id, "")), done, ", ".join(t.describe() for t in r.teachers) or "-"))
        elif r.kind == "external":
            rows.append((r.id, "", "", f"finished run {r.run_dir}", "", "", "done" if is_done(r) else "MISSING", "-"))
        else:
            rows.append((r.id, "", "", f"ensemble of {len(r.members)}", "", "", "", "members"))
    widths = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    for x in rows:
        out.append("  " + "  ".join(v.ljust(wd) for v, wd in zip(x, widths)).rstrip())
    out.append("")
    out.append("data:")
    out += [f"  {k}: {v}" for k, v in chk.data.items()] or ["  (none)"]
    if chk.weights:
        out.append("weight files:")
        out += [f"  {k}: {v}" for k, v in chk.weights.items()]
    out.append("throughput (training images/s):")
    out += [f"  {k}: {v:.0f} ({how})" if v == v else f"  {k}: ? ({how})" for k, (v, how) in chk.throughput.items()]
    todo = [r.id for r in train if not (r.run_dir / "final.json").is_file()]
    total = sum(chk.seconds.get(i, 0.0) for i in todo)
    out.append(f"estimated time of the {len(todo)} runs to do: {_hms(total)} "
               f"({sum(chk.images.get(i, 0) for i in todo)} training images)")
    from .launch import dry_run_lines
    out += dry_run_lines(plan, chk.seconds, jobs)
    if chk.missing:
        out.append("")
        out.append(f"MISSING ({len(chk.missing)}):")
        out += [f"  - {m}" for m in chk.missing]
    return "\n".join(out) + "\n"


# ====================================================================== running


def _read_json(path: Path) -> Optional[dict]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _set_aside(path: Path) -> None:
    """A torn or unreadable result file is moved aside so the run is redone (it resumes from
    its last checkpoint)."""
    k = 0
    while path.with_name(f"{path.name}.torn{k}").exists():
        k += 1
    path.rename(path.with_name(f"{path.name}.torn{k}"))


# keys that do not change what a run computes: a finished run is reused whatever they are
RUNTIME_KEYS = {"out_dir", "train.device", "train.threads", "data.workers", "data.eval_batch_size"}
# RunConfig and its sections: a key the saved run has and the config no longer knows is no difference
CONFIG_SECTIONS = {"", "data", "model", "method", "optim", "schedule", "train"}


def _config_differs(run_dir: Path, cfg: RunConfig) -> Optional[str]:
    """The first key where the run directory's saved config differs from the planned one."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        return None
    try:
        saved = load_yaml(str(saved_path))
    except ConfigError:
        return None

    def walk(want, got, trail):
        if isinstance(want, dict):
            if not isinstance(got, dict):
                return trail
            if trail not in CONFIG_SECTIONS:  # options, weights: a key only the saved run has differs too
                extra = sorted(str(k) for k in set(got) - set(want))
                if extra:
                    return f"{trail}.{extra[0]}"
            for k, v in want.items():
                if (f"{trail}.{k}" if trail else k) in RUNTIME_KEYS or k not in got:
                    continue  # a key newer than the saved run keeps its default: not a difference
                d = walk(v, got.get(k), f"{trail}.{k}" if trail else k)
                if d:
                    return d
            return None
        if isinstance(want, float) or isinstance(got, float):
            return None if (isinstance(got, (int, float)) and float(got) == float(want)) else trail
        return None if want == got else trail

    key = walk(cfg.to_dict(), saved, "")
    return key


def _teacher_models(spec: RunSpec, plan_runs: Dict[str, RunSpec]):
    """The frozen teachers of a run, through the run manager (so the student's environment.json
    records each teacher's run or file and its sha256). A teacher from a weights file gets the
    model options it does not set from the student's model (``runs.teacher_model_options``)."""
    from .engine.runs import load_teacher

    models, shape = [], None
    for t in spec.teachers:
        if t.run is not None:
            models.append(load_teacher({"run": plan_runs[t.run].run_dir, "checkpoint": t.checkpoint}))
            continue
        if shape is None:
            from .data import load_dataset

            ds = load_dataset(spec.cfg.data.name, spec.cfg.data.root, spec.cfg.data.options)
            shape = (ds.num_classes, ds.in_channels)
        models.append(load_teacher({"weights": t.weights, "model": {"name": t.model["name"],
                                                                     "options": t.model.get("options") or {}}},
                                   num_classes=shape[0], in_channels=shape[1], student=spec.cfg.model,
                                   where=spec.where))
    return models


def _member_label(spec: RunSpec) -> str:
    return str(spec.run_dir) if spec.kind == "external" else spec.what.split(" · ")[0]


def evaluate_ensemble(spec: RunSpec, plan_runs: Dict[str, RunSpec], rt) -> dict:
    """Test metrics of an ensemble of finished member runs (``evaluate.ensemble``), written to
    ``ensemble.json`` under the evaluation's run lock (two launchers never evaluate it at once;
    one that finds it written reads it back). The one ensemble evaluation of study, compare and
    pipeline."""
    import contextlib

    from .data.prepare import build_loaders, prepare_data
    from .engine.checkpoint import atomic_write_text, storage
    from .engine.runs import RunDir
    from .evaluate.ensemble import ensemble_metrics

    with storage(spec.run_dir):
        spec.run_dir.mkdir(parents=True, exist_ok=True)
    with RunDir(spec.run_dir).lock() if rt.is_main else contextlib.nullcontext():
        done = _read_json(spec.run_dir / "ensemble.json")
        if done is not None:
            return done
        members = [plan_runs[m] for m in spec.members]
        cfg = spec.cfg or RunDir(members[0].run_dir).config()
        data = prepare_data(cfg.data)
        _, _, test = build_loaders(data, cfg.data, device=rt.device, seed=0, rank=0, world=1, channels_last=False)
        cks = spec.member_checkpoints or [None] * len(members)
        models = [RunDir(m.run_dir).load_model(ck or spec.checkpoint, num_classes=data.num_classes).to(rt.device)
                  for m, ck in zip(members, cks)]
        res = ensemble_metrics(models, test, data.num_classes, device=rt.device)
        out = {"run": {"label": spec.what.split(" · ")[0], "seed": spec.seed, "dataset": cfg.data.name,
                       "model": cfg.model.name, "method": f"ensemble:{cfg.method.name}"},
               "stages": [_member_label(m) for m in members], "member_runs": [str(m.run_dir) for m in members],
               "checkpoint": spec.checkpoint, "member_checkpoints": [ck or spec.checkpoint for ck in cks],
               "combine": spec.combine, "test": res[spec.combine], "members": res["members"],
               "mean_softmax": res["mean_softmax"], "sum_logits": res["sum_logits"]}
        if rt.is_main:
            atomic_write_text(spec.run_dir / "ensemble.json", json.dumps(out, indent=1))
        return out


def result_file(spec: RunSpec) -> Path:
    return spec.run_dir / ("ensemble.json" if spec.kind == "ensemble" else "final.json")


def is_done(spec: RunSpec) -> bool:
    return _read_json(result_file(spec)) is not None


def is_reusable(spec: RunSpec) -> bool:
    """Finished as planned: its result is there and, for a training, its config is the planned
    one (:data:`RUNTIME_KEYS` aside)."""
    return is_done(spec) and (spec.kind != "train" or not _config_differs(spec.run_dir, spec.cfg))


def check_run_dirs(plan: Plan) -> None:
    """Before anything runs: every planned training whose folder already holds a run must be
    that run (:func:`_config_differs`, as :func:`execute_run` checks), else one ConfigError
    naming the key. compare and pipeline refuse a folder made with other settings up front."""
    for spec in plan.runs:
        problem = other_run_there(spec)
        if problem:
            raise ConfigError(problem)


def other_run_there(spec: RunSpec) -> Optional[str]:
    """For a training whose folder holds a run of another config: the message naming the key."""
    key = _config_differs(spec.run_dir, spec.cfg) if spec.kind == "train" else None
    if key:
        return (f"{key}: {spec.run_dir} holds a run made with another {key}; the same folder with "
                f"other settings would mix two experiments (give another --out)")
    return None


def execute_run(spec: RunSpec, plan: Plan, rt, progress=None) -> Tuple[str, dict]:
    """Run one spec whose dependencies have finished: ("reused" | "done", its result). A result
    file that is torn is set aside and the run redone; a run directory holding a run of another
    config is refused (CheckpointError). An ``external`` run is only read: it must have finished."""
    from .engine.runs import train_or_reuse
    from .errors import CheckpointError

    res_path = result_file(spec)
    if spec.kind == "external":
        done = _read_json(res_path)
        if done is None:
            raise CheckpointError(f"{spec.run_dir}: not a finished run (no valid final.json there)")
        return "reused", done
    if res_path.exists() and _read_json(res_path) is None:
        _set_aside(res_path)
        from .engine.runs import _say

        _say(f"{res_path}: torn; set aside, {spec.what} is redone (a training from its last checkpoint)")
    if spec.kind == "train":
        check_config(spec, plan)
        differs = _config_differs(spec.run_dir, spec.cfg)
        if differs:
            raise CheckpointError(f"{spec.run_dir} holds a run of another config ({differs} differs); "
                                  f"delete it or give another --out")
    if is_reusable(spec):
        return "reused", _read_json(res_path)
    runs = plan.by_id()
    if spec.kind == "ensemble":
        return "done", evaluate_ensemble(spec, runs, rt)
    teachers = _teacher_models(spec, runs)
    result = train_or_reuse(spec.cfg, spec.run_dir, rt, teachers=teachers, progress=progress)
    precompute_metrics(spec, plan, rt)   # the study's checkpoint metrics, in the run's own process
    return "done", result


def check_config(spec: RunSpec, plan: Plan, suffix: str = "") -> None:
    """A training run's names and options are registered and valid (``validate_registered``);
    else one ConfigError naming the study file's place (and ``suffix``)."""
    from .config import validate_registered

    try:
        validate_registered(spec.cfg)
    except ConfigError as exc:
        raise ConfigError(f"{plan.study.path.name}: {spec.where}: {_short(str(exc))}{suffix}") from None


def check_configs(plan: Plan) -> None:
    """:func:`check_config` for every training run of the plan, before any run starts. Faults
    that only show while running (missing data or weights, a crash) stay per run: see
    :func:`run_plan`."""
    for spec in plan.runs:
        if spec.kind == "train":
            check_config(spec, plan, " (nothing was run; `--dry-run` lists every such problem)")


def run_plan(plan: Plan, *, device: Optional[str] = None, show_progress: bool = True, stream=None,
             launch=None) -> Dict[str, dict]:
    """Execute the plan's runs in order. Returns ``{run id: {"status": reused | done | failed |
    skipped, "error": text, "seconds": s}}`` (a failed run also has the ``exit_code`` of its
    error); a failed run (missing data or weights, a fault while training) is reported, its
    dependents are skipped, the others go on; an unregistered name or a bad option in any run's
    config stops the plan before anything runs (:func:`check_configs`). ``launch``
    (a ``launch.LaunchOptions`` asking for parallel or SLURM runs) hands the plan to
    ``launch.launch_plan``: each run in its own process or job. The one runner of study,
    compare and pipeline."""
    from .engine.runs import progress_bar
    from .engine.runtime import setup_runtime

    stream = stream or sys.stderr
    check_configs(plan)  # a user mistake in any run's config stops the study before anything trains
    if launch is not None and launch.parallel:  # launch.LaunchOptions: runs in child processes or jobs
        from .launch import launch_plan

        return launch_plan(plan, launch, device=device, stream=stream)
    first = next((r.cfg for r in plan.runs if r.cfg is not None), None)
    rt = setup_runtime(device or (first.train.device if first is not None else "auto"))
    plan.out.mkdir(parents=True, exist_ok=True)
    if rt.is_main and plan.study.path.resolve() != (plan.out / "study.yaml").resolve():
        (plan.out / "study.yaml").write_text(plan.study.path.read_text())
    status: Dict[str, dict] = {}
    total = len(plan.runs)
    for i, spec in enumerate(plan.runs):
        left = total - i - 1
        bad = [d for d in spec.deps if status.get(d, {}).get("status") in ("failed", "skipped")]
        if bad:
            status[spec.id] = {"status": "skipped", "error": f"needs {bad[0]}, which did not finish"}
            print(f"[{i + 1}/{total}] {spec.what}: skipped (needs {bad[0]})", file=stream)
            continue
        bar = progress_bar(show_progress and rt.is_main and spec.kind == "train" and not is_done(spec),
                           f"[{i + 1}/{total}] {spec.what}")
        t0 = time.time()
        try:
            state, _ = execute_run(spec, plan, rt, progress=bar)
            status[spec.id] = {"status": state, "seconds": round(time.time() - t0, 2)}
            word = "already finished" if state == "reused" else f"finished in {time.time() - t0:.1f} s"
            print(f"[{i + 1}/{total}] {spec.what}: {word} ({left} left)", file=stream)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # a failing run is reported; the others go on
            first_line = (str(exc).splitlines() or [type(exc).__name__])[0]
            msg = first_line if isinstance(exc, SoftlabelsError) else f"{type(exc).__name__}: {first_line}"
            status[spec.id] = {"status": "failed", "error": msg, "exit_code": getattr(exc, "exit_code", 1)}
            print(f"[{i + 1}/{total}] {spec.what}: FAILED: {msg} ({left} left)", file=stream)
        finally:
            if bar is not None:
                bar.close()
    if rt.is_main:
        from .engine.checkpoint import atomic_write_text

        atomic_write_text(plan.out / "status.json", json.dumps(status, indent=1))
    return status


# ---------------------------------------------------------------------- front-ends (compare, pipeline)
TRANSLATED_FILE = "study.yaml"   # a front-end's study, next to its runs (a launcher's children plan from it)


def plan_translated(mapping: dict, out: Path, seeds: Sequence[int], name: str) -> Tuple[Plan, str]:
    """(plan, file text) of a study mapping made by a front-end (``compare``, ``pipeline``),
    checked and planned exactly as the file ``OUT/study.yaml`` will read back. Nothing is
    written: a dry run or a refused input leaves no folder behind."""
    import yaml

    from .config import load_yaml_text

    path = Path(out) / TRANSLATED_FILE
    text = (f"# written by `softlabels {name}`: the runs of this folder as a study (docs/study-schema.md)\n"
            + yaml.safe_dump(mapping, sort_keys=False, allow_unicode=True))
    study = load_study(path, data=load_yaml_text(text, str(path)), name=name)
    return plan_study(study, out, seeds=list(seeds)), text


def run_translated(plan: Plan, text: str, *, launch=None, device: Optional[str] = None,
                   show_progress: bool = True, stream=None, files: Optional[Dict[str, str]] = None) -> Dict[str, dict]:
    """Run a front-end's plan through the one runner: every existing run folder is checked to be
    the planned run first (:func:`check_run_dirs`: one ConfigError before anything trains), the
    study file (and ``files``: name -> text, e.g. the pipeline file) is written next to the runs,
    then :func:`run_plan`. Without ``show_progress`` nothing is printed per run (the front-end
    reports failures in one line at the end)."""
    import io

    from .engine.checkpoint import atomic_write_text, storage

    check_run_dirs(plan)
    if device is None:  # train.device set in the config (--device cpu): the launcher's device too
        devices = {r.cfg.train.device for r in plan.runs if r.kind == "train"}
        device = devices.pop() if len(devices) == 1 and "auto" not in devices else None
    with storage(plan.out):
        plan.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(plan.study.path, text)
    for name, content in (files or {}).items():
        atomic_write_text(plan.out / name, content)
    return run_plan(plan, device=device, show_progress=show_progress, launch=launch,
                    stream=(stream or sys.stderr) if show_progress else io.StringIO())


def plan_failure(status: Dict[str, dict], what: str) -> Optional[SoftlabelsError]:
    """The one-line error for runs of a plan that did not finish (None when all did), with the
    exit code of the first failure."""
    failed = [k for k, v in status.items() if v["status"] in ("failed", "skipped")]
    if not failed:
        return None
    first = status[failed[0]]
    err = SoftlabelsError(f"{what}: {len(failed)} run(s) did not finish (first: {failed[0]}: {first['error']})")
    err.exit_code = first.get("exit_code", 1)
    return err


# ====================================================================== the table


def _metric_info(metric: str):
    from .evaluate.metrics import METRIC_INFO

    return METRIC_INFO.get(metric) or DERIVED_INFO.get(metric) or _run_metrics.metric_info(metric) or (metric, True)


def metric_display(metric: str) -> str:
    return _metric_info(metric)[0]


def lower_is_better(metric: str) -> bool:
    return _metric_info(metric)[1]


def metric_of(result: dict, which: str, metric: str) -> Optional[float]:
    """One metric of a final.json (its ``which`` block's test split) or an ensemble.json."""
    test = result.get("test") if "test" in result else (result.get(which) or {}).get("test")
    test = test or {}

    def num(v):
        return float(v) if _is_num(v) else None

    if metric in test:
        return num(test[metric])
    if metric in ("top1_accuracy", "top5_accuracy"):
        v = num(test.get(metric.replace("accuracy", "error")))
        return None if v is None else 100.0 - v
    comp = result.get("complexity") or {}
    for name, part, key, scale in (("params_m", "inference", "params", 1e6), ("flops_g", "inference", "flops", 1e9),
                                   ("train_params_m", "training", "params", 1e6),
                                   ("train_flops_g", "training", "flops", 1e9)):
        if metric == name:
            v = num((comp.get(part) or {}).get(key))
            return None if v is None else v / scale
    return None


@dataclass
class Cell:
    """One (line, column) of the table, per metric."""

    n_planned: int
    values: Dict[str, List[Optional[float]]]      # metric -> per seed (None: not finished/collapsed)
    seeds: List[int]
    collapsed: List[int] = field(default_factory=list)
    failed: List[int] = field(default_factory=list)
    paper: Dict[str, Tuple[float, Optional[float]]] = field(default_factory=dict)


def _mean_std(values: Sequence[float]):
    from .report.table import _mean_std as ms

    return ms(values)


def _fixed_vs(plan: Plan, rid: str, ref_id: str, which: str, metric: str) -> Optional[float]:
    """Against the reference run: ``samples_fixed`` = test samples it gets wrong and this run
    right; ``net_fixed`` = that minus those it gets right and this run wrong (cached in the run
    directory as ``fixed_vs.json``, keyed by the reference run and checkpoint)."""
    runs = plan.by_id()
    spec, ref = runs.get(rid), runs.get(ref_id)
    if spec is None or ref is None or spec.kind != "train" or not is_done(spec) or not is_done(ref):
        return None
    cache = spec.run_dir / "fixed_vs.json"
    got = _read_json(cache) or {}
    key = f"{ref.run_dir.resolve()}:{which}"
    if key not in got:
        import torch

        from .data.prepare import build_loaders, prepare_data
        from .engine.checkpoint import atomic_write_text
        from .evaluate.ensemble import ensemble_predictions
        from .engine.runs import load_model_from_run

        dev = torch.device("cpu")
        data = prepare_data(spec.cfg.data)
        _, _, test = build_loaders(data, spec.cfg.data, device=dev, seed=0, rank=0, world=1, channels_last=False)
        (z, zr), y = ensemble_predictions([load_model_from_run(spec.run_dir, which),
                                           load_model_from_run(ref.run_dir, which)], test, dev)
        ok, ok_ref = z.argmax(1) == y, zr.argmax(1) == y
        got[key] = {"fixed": int((ok & ~ok_ref).sum()), "broken": int((~ok & ok_ref).sum())}
        atomic_write_text(cache, json.dumps(got))
    fixed, broken = got[key]["fixed"], got[key]["broken"]
    return float(fixed if metric == "samples_fixed" else fixed - broken)


def metric_options(plan: Plan, column: str) -> dict:
    """The ``metric_options`` of a column's runs: the defaults (evaluate.run_metrics), the
    study's, the column's, with ``{data_root}`` replaced."""
    return _subst(_run_metrics.merge_options(plan.study.metric_options, plan.study.columns[column].metric_options),
                  plan.data_root)


def study_run_metrics(plan: Plan, spec: RunSpec, device=None, errors: Optional[List[str]] = None) -> Dict[str, Optional[float]]:
    """The study's metrics of one finished training run that come from its checkpoints
    (evaluate.run_metrics: test-output metrics, attacks, snapshot ensembles, CIFAR-10H KL, noisy
    fit), read from ``RUN_DIR/study_metrics.json`` or computed and cached. What cannot be
    computed is None, its one-line reason appended to ``errors``."""
    names = [m for m in plan.study.metrics if _run_metrics.family(m) is not None]
    if not names:
        return {}
    values, errs = _run_metrics.run_metrics(spec.run_dir, plan.study.report, names, metric_options(plan, spec.column),
                                            device=device, smoke=plan.smoke)
    if errors is not None:
        errors += [f"{spec.id}: {e}" for e in errs]
    return values


def precompute_metrics(spec: RunSpec, plan: Plan, rt) -> None:
    """Right after a run trained (in its own process under ``--jobs``): compute and cache its
    checkpoint metrics (:func:`study_run_metrics`), so that the attacks of many runs go in
    parallel and the table build only reads them. A failure is a warning here; the table
    build tries again and reports it."""
    if spec.kind != "train" or not getattr(rt, "is_main", True):
        return
    res = _read_json(result_file(spec))
    if res is None or res.get("collapsed"):
        return
    errs: List[str] = []
    try:
        study_run_metrics(plan, spec, device=rt.device, errors=errs)
    except Exception as exc:  # noqa: BLE001  the run itself finished; the table build tries again
        errs.append(f"{spec.id}: {type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}")
    for e in errs:
        print(f"softlabels: warning: {e} (the table build tries again)", file=sys.stderr)


def _check_run_metrics(plan: Plan, spec: RunSpec, chk: "Check", shape) -> float:
    """The dry run's checks of the study's checkpoint metrics for one training run (snapshot
    epochs kept, label noise on, the human-labels file there and of the test split's shape);
    returns the extra work in training-image equivalents (attack steps, snapshot passes) for
    the time estimate."""
    from .evaluate.ensemble import uniform_snapshot_epochs
    from .evaluate.human import load_cifar10h

    cfg = spec.cfg
    opts = metric_options(plan, spec.column)
    k, n_test = shape[0], shape[4]
    attacks, snapshots = set(), set()
    for m in plan.study.metrics:
        fam = _run_metrics.family(m)
        kind = fam[0] if fam else None
        if kind == "attack":
            attacks.add(fam[1]["attack"])
        elif kind == "snapshots":
            n, epochs = fam[1]["n"], cfg.train.epochs
            snapshots.add(n)
            if plan.smoke:
                continue
            if n > epochs:
                chk.miss(f"{spec.where}: metric {m}: {n} snapshots need train.epochs >= {n}")
                continue
            want = uniform_snapshot_epochs(epochs, n)
            lacking = [e for e in want if e != epochs and e not in cfg.train.snapshot_epochs]
            if lacking:
                chk.miss(f"{spec.where}: metric {m}: train.snapshot_epochs must keep epochs "
                         f"{', '.join(map(str, lacking))} (the {n} uniform snapshots: {want})")
        elif kind == "noisy" and not cfg.data.label_noise > 0:
            chk.miss(f"{spec.where}: metric {m}: needs training-label noise (data.label_noise > 0)")
        elif kind == "human":
            path = opts.get("human_labels")
            if not path:
                chk.miss(f"metric {m}: set metric_options.human_labels to the CIFAR-10H file "
                         f"(e.g. {{data_root}}/cifar10h/cifar10h-probs.npy)")
                continue
            desc = f"human labels {path}"
            if desc in chk.data:
                continue
            p = Path(path).expanduser()
            if not p.is_file():
                chk.data[desc] = "MISSING"
                if not plan.smoke:
                    chk.miss(f"human-labels file {path}: not found (needed by metric {m})")
                continue
            try:
                load_cifar10h(p, shape=(n_test, k)) if not plan.smoke else None
                chk.data[desc] = "present"
            except SoftlabelsError as exc:
                chk.data[desc] = "UNUSABLE"
                chk.miss(_short(str(exc)))
    n_att = min(opts.get("attack_samples") or n_test, n_test)
    steps = sum(1 if a == "fgsm" else opts["pgd"]["steps"] for a in attacks)
    extra = n_att * (steps + (1 + len(attacks)) / 3.0) if attacks else 0.0
    return extra + n_test * sum(snapshots) / 3.0


def _train_metric(spec: RunSpec, which: str, result: dict) -> Optional[float]:
    """``train_top1_error``: the training-set top-1 error (on the augmented batches of that
    epoch, labels as trained on) of the reported epoch, from ``metrics.jsonl``."""
    from .engine.trainer import read_metrics

    epoch = (result.get(which) or {}).get("epoch")
    for rec in read_metrics(spec.run_dir):
        if rec.get("epoch") == epoch:
            v = (rec.get("train") or {}).get("top1_error")
            return float(v) if _is_num(v) else None
    return None


@dataclass
class Table:
    plan: Plan
    metrics: List[str]
    cells: Dict[Tuple[str, str], Cell]
    ref_line: Optional[str] = None
    errors: List[str] = field(default_factory=list)   # metric values that could not be computed

    def cell(self, line: Line, col: str) -> Optional[Cell]:
        return self.cells.get((line.key, col))


def _paper_for(study: Study, line: Line, col: str, main: str) -> Dict[str, Tuple[float, Optional[float]]]:
    row = study.rows[line.row]
    by_line = row.paper.get(col) or {}
    got = by_line.get(line.sub) or {}
    return {(main if m == "" else m): v for m, v in got.items()}


def build_table(plan: Plan) -> Table:
    """Read every finished run of the plan into cells (collapsed runs kept apart)."""
    study = plan.study
    which = study.report
    main = study.metrics[0]
    ref_line = None
    if study.compare_to is not None:
        ref_row = study.row(study.compare_to)
        ref_line = next((ln.key for ln in plan.lines if ln.row == ref_row.index), None)
    runs = plan.by_id()
    cells: Dict[Tuple[str, str], Cell] = {}
    errors: List[str] = []
    for line in plan.lines:
        for col, ids in line.cells.items():
            cell = Cell(len(ids), {m: [] for m in study.metrics}, [], paper=_paper_for(study, line, col, main))
            for rid in ids:
                spec = runs[rid]
                res = _read_json(result_file(spec))
                cell.seeds.append(spec.seed)
                if res is None:
                    cell.failed.append(spec.seed)
                    for m in study.metrics:
                        cell.values[m].append(None)
                    continue
                if res.get("collapsed"):
                    cell.collapsed.append(spec.seed)
                    for m in study.metrics:
                        cell.values[m].append(None)
                    continue
                extra = study_run_metrics(plan, spec, errors=errors) if spec.kind == "train" else {}
                for m in study.metrics:
                    if m in PAIRED_METRICS:
                        ref = next((ln for ln in plan.lines if ln.key == ref_line), None)
                        ref_ids = ref.cells.get(col, []) if ref else []
                        ref_id = next((r for r in ref_ids if runs[r].seed == spec.seed), None)
                        cell.values[m].append(_fixed_vs(plan, rid, ref_id, which, m) if ref_id else None)
                    elif m == "train_top1_error" and spec.kind == "train":
                        cell.values[m].append(_train_metric(spec, which, res))
                    elif _run_metrics.family(m) is not None:
                        cell.values[m].append(extra.get(m))
                    else:
                        cell.values[m].append(metric_of(res, which, m))
            cells[(line.key, col)] = cell
    return Table(plan, list(study.metrics), cells, ref_line, errors)


@dataclass
class Stat:
    n: int
    mean: Optional[float]
    std: Optional[float]
    paper_mean: Optional[float] = None
    paper_std: Optional[float] = None
    delta: Optional[float] = None
    verdict: Optional[str] = None


def cell_stat(cell: Cell, metric: str) -> Stat:
    """mean ± std (sample std, ddof 1) over the finished, non-collapsed seeds, and the paper
    comparison: Δ = ours − paper, ✔ when |Δ| ≤ 2·sqrt(σ_paper² + σ_ours²)."""
    vals = [v for v in cell.values.get(metric, []) if v is not None and math.isfinite(v)]
    st = Stat(len(vals), None, None)
    if vals:
        st.mean, st.std = _mean_std(vals)
    p = cell.paper.get(metric)
    if p is not None:
        st.paper_mean, st.paper_std = p
        if st.mean is not None:
            st.delta = st.mean - p[0]
            tol = 2.0 * math.sqrt((p[1] or 0.0) ** 2 + st.std ** 2)
            st.verdict = "✔" if abs(st.delta) <= tol + 1e-9 else "✘"
    return st


def paired(table: Table, line: Line, col: str, metric: str) -> Optional[dict]:
    """Paired comparison with the reference row over the seeds both finished: mean and std of
    the differences (ours − ref), how many seeds moved which way, and the paired t-test p."""
    if table.ref_line is None or line.key == table.ref_line:
        return None
    a, b = table.cells.get((line.key, col)), table.cells.get((table.ref_line, col))
    if a is None or b is None:
        return None
    ref = dict(zip(b.seeds, b.values.get(metric, [])))
    diffs = [v - ref[s] for s, v in zip(a.seeds, a.values.get(metric, []))
             if v is not None and ref.get(s) is not None]
    if not diffs:
        return None
    mean, std = _mean_std(diffs)
    p = None
    if len(diffs) >= 2 and std > 0:
        from scipy import stats

        t = mean / (std / math.sqrt(len(diffs)))
        p = float(2 * stats.t.sf(abs(t), len(diffs) - 1))
    elif len(diffs) >= 2:
        p = 0.0 if mean != 0 else 1.0
    better = (mean < 0) if lower_is_better(metric) else (mean > 0)
    return {"n": len(diffs), "mean_diff": mean, "std_diff": std, "p": p,
            "sign": "better" if (mean != 0 and better) else ("same" if mean == 0 else "worse"),
            "wins": sum(1 for d in diffs if (d < 0 if lower_is_better(metric) else d > 0))}


def _fmt(x: Optional[float], metric: str, signed=False) -> str:
    if x is None:
        return "—"
    d = 3 if metric == "nll" else (0 if metric in PAIRED_METRICS else 2)
    return f"{x:+.{d}f}" if signed else f"{x:.{d}f}"


def cell_text(table: Table, line: Line, col: str, metric: str) -> str:
    """``ours mean ± std (n) · paper · Δ · verdict`` (plus the paired comparison with the
    reference row on the main metric)."""
    cell = table.cell(line, col)
    if cell is None:
        return ""
    st = cell_stat(cell, metric)
    if st.mean is None:
        ours = f"missing (0/{cell.n_planned})"
    elif st.n == 1:
        ours = f"{_fmt(st.mean, metric)} (n = 1)"
    else:
        ours = f"{_fmt(st.mean, metric)} ± {_fmt(st.std, metric)} ({st.n})"
    notes = []
    if cell.collapsed:
        notes.append(f"{len(cell.collapsed)} collapsed")
    absent = cell.n_planned - st.n - len(cell.collapsed)
    if st.mean is not None and absent:
        notes.append(f"{absent} missing")
    if notes:
        ours += " [" + ", ".join(notes) + "]"
    parts = [ours]
    if st.paper_mean is not None:
        parts.append(_fmt(st.paper_mean, metric) + ("" if st.paper_std is None else f" ± {_fmt(st.paper_std, metric)}"))
        if st.delta is not None:
            parts += [f"Δ {_fmt(st.delta, metric, True)}", st.verdict]
    if metric == table.metrics[0]:
        pc = paired(table, line, col, metric)
        if pc is not None:
            ref = table.plan.study.compare_to
            pv = "" if pc["p"] is None else f", p = {pc['p']:.3f}"
            parts.append(f"vs {ref}: {_fmt(pc['mean_diff'], metric, True)} ({pc['sign']}, "
                         f"{pc['wins']}/{pc['n']} seeds{pv})")
    return " · ".join(parts)


def _header(table: Table) -> List[str]:
    cols = table.plan.columns
    study = table.plan.study
    if len(table.metrics) == 1:
        return ["method"] + [study.columns[c].label for c in cols]
    return ["method"] + [f"{study.columns[c].label}: {metric_display(m)}" for c in cols for m in table.metrics]


def _body(table: Table) -> List[List[str]]:
    out = []
    for line in table.plan.lines:
        cells = [("  " if line.indent else "") + line.label]
        for c in table.plan.columns:
            for m in table.metrics:
                cells.append(cell_text(table, line, c, m) if c in line.cells else "")
        out.append(cells)
    return out


def format_markdown(table: Table) -> str:
    s = table.plan.study
    which = "last epoch" if s.report == "last" else "epoch chosen on the validation split"
    head = [f"# {s.title}", "",
            f"Study `{s.name}` ({s.source if s.paper == 'none' else s.paper + ' ' + s.source}); metric{'s' if len(table.metrics) > 1 else ''}: "
            f"{', '.join(metric_display(m) for m in table.metrics)} on the test split, {which}; "
            f"seeds {', '.join(map(str, table.plan.seeds))}" + (" — SMOKE run (synthetic data, 1 epoch): "
                                                                 "the numbers mean nothing" if table.plan.smoke else "."),
            "",
            ("Each cell: ours mean ± std (seeds) · paper · Δ = ours − paper · ✔ when |Δ| ≤ 2·√(σ_paper² + σ_ours²) "
             "(σ_paper = 0 where the paper prints none), ✘ otherwise." if any(r.paper for r in s.rows) else
             "Each cell: ours mean ± std (seeds); the study has no published numbers.") +
            (f" `vs {s.compare_to}`: mean paired difference over seeds, seeds that improved, paired t-test p."
             if s.compare_to else ""), ""]

    def md(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

    header = _header(table)
    lines = head + [md(header), "| " + " | ".join(["---"] + ["---:"] * (len(header) - 1)) + " |"]
    lines += [md(c) for c in _body(table)]
    return "\n".join(lines) + "\n"


def _latex_escape(text: str) -> str:
    rep = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
           "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\^{}"}
    text = "".join(rep.get(ch, ch) for ch in text)
    for a, b in (("±", r"$\pm$"), ("✔", r"\checkmark"), ("✘", r"$\times$"), ("Δ", r"$\Delta$"),
                 ("·", r"$\cdot$"), ("—", "--"), ("√", r"$\sqrt{}$"), ("σ", r"$\sigma$"), ("−", "-")):
        text = text.replace(a, b)
    return text


def format_html(table: Table) -> str:
    """The table as an HTML ``<table>`` (for ``softlabels report --html``)."""
    import html

    head = "".join(f"<th>{html.escape(h)}</th>" for h in _header(table))
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>" for cells in _body(table))
    return f"<table><tr>{head}</tr>{body}</table>"


def format_latex(table: Table) -> str:
    """A ``tabular`` (needs amssymb for \\checkmark)."""
    header = _header(table)
    s = table.plan.study
    out = [f"% {s.title} -- regenerated by softlabels study {s.name}",
           r"\begin{tabular}{l" + "r" * (len(header) - 1) + "}", r"\hline",
           " & ".join(_latex_escape(h) for h in header) + r" \\", r"\hline"]
    for cells in _body(table):
        out.append(" & ".join(_latex_escape(c) for c in cells) + r" \\")
    out += [r"\hline", r"\end{tabular}"]
    return "\n".join(out) + "\n"


def table_records(table: Table) -> List[dict]:
    """One record per (line, column, metric): the numbers behind every cell."""
    recs = []
    for line in table.plan.lines:
        for col in table.plan.columns:
            cell = table.cell(line, col)
            if cell is None:
                continue
            for m in table.metrics:
                st = cell_stat(cell, m)
                rec = {"line": line.key, "label": line.label, "column": col, "metric": m, "n": st.n,
                       "planned": cell.n_planned, "mean": st.mean, "std": st.std, "paper_mean": st.paper_mean,
                       "paper_std": st.paper_std, "delta": st.delta, "verdict": st.verdict,
                       "seeds": cell.seeds, "values": cell.values.get(m), "collapsed": cell.collapsed}
                pc = paired(table, line, col, m) if m == table.metrics[0] else None
                if pc is not None:
                    rec["vs_ref"] = pc
                recs.append(rec)
    return recs


def _clean(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_clean(v) for v in x]
    return x


def plot_table(table: Table):
    """Bars (ours, mean ± std) per line, one panel per column, the paper's value marked."""
    from .evaluate.plots import plot_bars_with_reference

    m = table.metrics[0]
    panels = {}
    for col in table.plan.columns:
        bars = []
        for line in table.plan.lines:
            cell = table.cell(line, col)
            if cell is None:
                continue
            st = cell_stat(cell, m)
            bars.append((line.label, st.mean, st.std, st.paper_mean))
        panels[table.plan.study.columns[col].label] = bars
    s = table.plan.study
    title = f"{s.name}: {s.source if s.paper == 'none' else s.paper + ' ' + s.source}"
    return plot_bars_with_reference(panels, metric_display(m), title=title[:100])


def write_outputs(table: Table, status: Optional[Dict[str, dict]] = None) -> Dict[str, Path]:
    """table.md, table.csv, table.tex, table.json and table.png in the study folder."""
    import csv
    import io

    from .engine.checkpoint import atomic_write_text
    from .evaluate.plots import figure_to_png_bytes

    out = table.plan.out
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / f"table.{k}" for k in ("md", "csv", "tex", "json", "png")}
    atomic_write_text(paths["md"], format_markdown(table))
    atomic_write_text(paths["tex"], format_latex(table))
    recs = table_records(table)
    buf = io.StringIO()
    fields = ["line", "label", "column", "metric", "n", "planned", "mean", "std", "paper_mean", "paper_std",
              "delta", "verdict", "collapsed", "vs_ref_mean_diff", "vs_ref_p", "vs_ref_sign"]
    wr = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    wr.writeheader()
    for r in recs:
        row = dict(r, collapsed=len(r["collapsed"]))
        if "vs_ref" in r:
            row.update(vs_ref_mean_diff=r["vs_ref"]["mean_diff"], vs_ref_p=r["vs_ref"]["p"],
                       vs_ref_sign=r["vs_ref"]["sign"])
        wr.writerow({k: ("" if v is None else v) for k, v in row.items()})
    atomic_write_text(paths["csv"], buf.getvalue())
    s = table.plan.study
    doc = {"study": {"name": s.name, "title": s.title, "paper": s.paper, "source": s.source, "metrics": s.metrics,
                     "report": s.report, "compare_to": s.compare_to, "smoke": table.plan.smoke},
           "seeds": table.plan.seeds,
           "columns": [{"key": c, "label": s.columns[c].label} for c in table.plan.columns],
           "lines": [{"key": ln.key, "label": ln.label, "row": s.rows[ln.row].label, "sub": ln.sub} for ln in table.plan.lines],
           "cells": recs, "runs": status or {}, "html": format_html(table)}
    atomic_write_text(paths["json"], json.dumps(_clean(doc), indent=1, allow_nan=False))
    paths["png"].write_bytes(figure_to_png_bytes(plot_table(table)))
    return paths


def study_summary(table: Table) -> str:
    """The verdict count printed after a study."""
    n_ok = n_bad = 0
    for r in table_records(table):
        n_ok += r["verdict"] == "✔"
        n_bad += r["verdict"] == "✘"
    return f"{n_ok} cells within 2σ of the paper (✔), {n_bad} not (✘)" if n_ok + n_bad else "no published numbers to compare"
