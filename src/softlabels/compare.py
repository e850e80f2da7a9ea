"""Train several methods over several seeds with one config, then tabulate them.

A thin front-end over the study runner: the methods, seeds, config and teacher rules become a
study (:func:`compare_study`, written to ``OUT/study.yaml``) whose plan runs through
``study.run_plan`` (``--jobs``/``--launcher`` as for ``softlabels study``). Each (method, seed)
run gets its own run directory ``OUT/<method>/seed<N>``. Re-running the same command with
``--out`` pointing at that folder skips finished runs and resumes interrupted ones, so a
killed comparison loses at most one epoch.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .config import RunConfig, build_config
from .errors import ConfigError
from .study import slugify


TEACHER = "teacher"  # prefix of overrides for the teacher run: teacher:model.options.stem=cifar


def teacher_overrides(overrides: Sequence[str]) -> List[str]:
    """The ``teacher:KEY=VALUE`` overrides, without their prefix."""
    out = []
    for o in overrides:
        head, sep, rest = o.partition(":")
        if sep and "=" not in head and head == TEACHER:
            out.append(rest)
    return out


def split_method_overrides(methods: Sequence[str], overrides: Sequence[str]):
    """``ols:method.options.alpha=0.3`` applies to method ``ols`` only; plain ones to all;
    ``teacher:...`` ones to the teacher run (see :func:`teacher_overrides`)."""
    common, per = [], {m: [] for m in methods}
    for o in overrides:
        head, sep, rest = o.partition(":")
        if sep and "=" not in head:
            if head == TEACHER and head not in per:
                continue
            if head not in per:
                raise ConfigError(f"override {o!r}: {head!r} is not one of the compared methods ({', '.join(methods)})")
            per[head].append(rest)
        else:
            common.append(o)
    return common, per


def plan_runs(methods: Sequence[str], seeds: Sequence[int], config: Optional[str],
              overrides: Sequence[str]) -> List[RunConfig]:
    common, per = split_method_overrides(methods, overrides)
    runs = []
    for m in methods:
        for s in seeds:
            ov = list(common) + [f"method.name={m}", f"train.seed={s}", f"name={m}"] + per[m]
            runs.append(build_config(config, ov))
    return runs


def teacher_config(cfg: RunConfig, method: str, model: Optional[str], overrides: Sequence[str] = ()) -> RunConfig:
    """The teacher run for a student config: same data, schedule and seed; the teacher's method
    (with its default options) and a full model config: the student's (name, options, weights)
    when ``model`` is None or the student's model; for another model, the student's model
    options that model accepts (``stem: cifar`` stays a CIFAR stem) and no weights. Then the
    ``teacher:`` overrides (``model.options.X``, ``model.weights``, any key)."""
    import dataclasses

    from .config import apply_overrides, config_from_dict, validate_registered

    data = dataclasses.replace(cfg, name="teacher").to_dict()
    data["method"] = {"name": method}
    if model not in (None, cfg.model.name):
        from .engine.runs import teacher_model_options

        data["model"] = {"name": model, "options": teacher_model_options(cfg.model, model)}
    tcfg = config_from_dict(apply_overrides(data, list(overrides)))
    validate_registered(tcfg)
    return tcfg


METRICS = ("top1_error", "top5_error", "nll", "ece")
LAYOUT = {"runs": "{row}/seed{seed}", "teachers": "{teacher}/seed{seed}", "names": "label"}


def method_folder(method: str) -> str:
    """A compared method's folder in the comparison folder (``kd+cskd`` → ``kd_plus_cskd``)."""
    return method.replace("+", "_plus_")


def compare_study(runs: List[RunConfig], *, which: str = "best", teacher_method: str = "ce",
                  teacher_model: Optional[str] = None, teacher_overrides: Sequence[str] = ()) -> dict:
    """The comparison as a study mapping (docs/study-schema.md): one row per method (its whole
    config), one column, the teacher rules below, and the comparison folder's layout
    ``<method>/seed<N>`` and ``teacher-<method>-<model>[-tag]/seed<N>``.

    Methods that need a teacher (KD-style, FocusNet, JGL, orthogonal) get one per seed: a run
    of ``teacher_method`` on ``teacher_model`` (default: the student's model), trained once and
    reused by every method at that seed. When that run is identical to one of the compared runs
    (e.g. ``ce`` with the same model), the compared run is the teacher (its "twin").
    ``teacher_overrides`` (``teacher:KEY=VALUE`` on the command line) configure the teacher run
    and give its folder a tag (the overrides' hash)."""
    import hashlib

    from .engine.runs import method_requires

    needs = [method_requires(r).teacher_models for r in runs]
    if max(needs) > 1:
        raise ConfigError("compare supplies one teacher per seed; methods that need more "
                          "(e.g. long orthogonal ensembles) run through `softlabels pipeline`")
    if not any(needs) and (teacher_overrides or teacher_model):
        what = f"--teacher-model {teacher_model}" if teacher_model else f"teacher:{teacher_overrides[0]}"
        raise ConfigError(f"{what}: no compared method needs a teacher ({', '.join(dict.fromkeys(c.method.name for c in runs))})")
    tag = "-" + hashlib.sha256("\n".join(teacher_overrides).encode()).hexdigest()[:8] if teacher_overrides else ""
    first = {}  # method -> its config at the first seed (seeds differ in train.seed only)
    for cfg, need in zip(runs, needs):
        first.setdefault(cfg.method.name, (cfg, need))
    rows, teachers = [], {}
    for m, (cfg, need) in first.items():
        data = cfg.to_dict()
        method = data.pop("method")
        row = {"label": m, "slug": method_folder(m), "method": method["name"], "options": method["options"],
               "weights": method["weights"], "config": data, "teacher_checkpoint": "best"}
        if need:
            tcfg = teacher_config(cfg, teacher_method, teacher_model, teacher_overrides)
            if method_requires(tcfg).teachers:  # (an orthogonal member 1 trains alone)
                raise ConfigError(f"--teacher {teacher_method}: that method needs a teacher itself; give compare's "
                                  f"teacher a method that trains alone (e.g. ce), or chain them in a pipeline")
            twin = next((c for c, _ in first.values() if c.method.name == teacher_method and c.method.options == {}
                         and _same_run(c, tcfg)), None)
            if twin is not None:
                row["teachers"] = [twin.method.name]
            else:
                name = f"teacher-{teacher_method}-{tcfg.model.name}{tag}"
                teachers[name] = {"config": tcfg.to_dict(), "checkpoint": "best"}
                row["teachers"] = [name]
        rows.append(row)
    c0 = runs[0]
    seeds = sorted({c.train.seed for c in runs})
    return {"title": f"softlabels compare: {', '.join(first)} on {c0.data.name} ({len(seeds)} seed(s))",
            "paper": "none", "source": "softlabels compare", "metrics": list(METRICS), "seeds": len(seeds),
            "report": which if which == "last" or all(c.data.val_fraction > 0 for c in runs) else "last",
            "columns": {slugify(c0.data.name): {"label": c0.data.name}},
            "teachers": teachers, "rows": rows, "layout": dict(LAYOUT)}


def plan_compare(runs: List[RunConfig], out: Path, **teacher_rules):
    """(study.Plan, the study file's text) of a comparison under ``out``; ``teacher_rules``:
    the keyword arguments of :func:`compare_study`. Nothing is written."""
    from .study import plan_translated

    seeds = list(dict.fromkeys(c.train.seed for c in runs))
    return plan_translated(compare_study(runs, **teacher_rules), Path(out), seeds, name="compare")


def run_compare(runs: List[RunConfig], out: Path, *, baseline: Optional[str] = None,
                which: str = "best", show_progress: bool = True, stream=None,
                teacher_method: str = "ce", teacher_model: Optional[str] = None,
                teacher_overrides: Sequence[str] = (), launch=None, device: Optional[str] = None,
                planned=None) -> dict:
    """Train every (method, seed) run under ``out`` through the study runner (``launch``: a
    ``launch.LaunchOptions`` for parallel or SLURM runs), then print the table of the finished
    runs. A failed run skips the runs that need it (its teacher's students); the others go on,
    and the error is raised after the table. See :func:`compare_study` for the teacher rules.
    ``planned``: what :func:`plan_compare` returned for these arguments, if at hand."""
    from .report.table import aggregate, format_table, write_summary
    from .study import is_done, plan_failure, run_translated

    stream = stream or sys.stdout
    plan, text = planned or plan_compare(runs, out, which=which, teacher_method=teacher_method,
                                         teacher_model=teacher_model, teacher_overrides=teacher_overrides)
    status = run_translated(plan, text, launch=launch, device=device, show_progress=show_progress)
    specs = plan.by_id()
    run_dirs = [specs[rid].run_dir for line in plan.lines for ids in line.cells.values() for rid in ids
                if is_done(specs[rid])]
    result = {"run_dirs": [str(d) for d in run_dirs], "table": None, "status": status}
    if run_dirs and _is_main():
        which = plan.study.report  # "last" when a run has no validation split to choose on (compare_study)
        rows = aggregate(run_dirs, which=which)
        text = format_table(rows, METRICS, baseline=baseline, fmt="text")
        (out / "table.md").write_text(format_table(rows, METRICS, baseline=baseline, fmt="markdown") + "\n")
        write_summary(rows, out / "summary.json")
        sel = "epoch chosen on validation" if which == "best" else "last epoch"
        print(f"\nTest metrics ({sel}), mean ± std over seeds:\n", file=stream)
        print(text, file=stream)
        plus = next((m for m in (c.method.name for c in runs) if "+" in m), None)
        where = f" ({plus} in {method_folder(plus)})" if plus else ""
        print(f"\nRun directories: {out}/<method>/seed<N>{where}   (table: {out / 'table.md'})", file=stream)
        result["table"] = text
    failure = plan_failure(status, "compare")
    if failure is not None:
        raise failure
    return result


def _is_main() -> bool:
    """Not a DDP rank other than 0 (torchrun sets RANK)."""
    import os

    return os.environ.get("RANK", "0") == "0"


def _same_run(a: RunConfig, b: RunConfig) -> bool:
    """Two configs train the same run (labels aside)."""
    from .engine.runs import config_changes

    return all(key == "name" for key, _, _ in config_changes(a, b))
