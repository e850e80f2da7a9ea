"""Train several methods over several seeds with one config, then tabulate them.

Each (method, seed) run gets its own run directory under one comparison folder. Re-running
the same command with ``--out`` pointing at that folder skips finished runs and resumes
interrupted ones, so a killed comparison loses at most one epoch.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional, Sequence

from .config import RunConfig, build_config, dump_yaml
from .errors import ConfigError, SoftlabelsError


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


def run_compare(runs: List[RunConfig], out: Path, *, baseline: Optional[str] = None,
                which: str = "best", show_progress: bool = True, stream=None,
                teacher_method: str = "ce", teacher_model: Optional[str] = None,
                teacher_overrides: Sequence[str] = ()) -> dict:
    """Train every (method, seed) run under ``out`` and print the table.

    Methods that need a teacher (KD-style, FocusNet, JGL, orthogonal) get one per seed: a run
    of ``teacher_method`` on ``teacher_model`` (default: the student's model), trained once and
    reused by every method at that seed. When that run is identical to one of the compared runs
    (e.g. ``ce`` with the same model), the compared run is the teacher. ``teacher_overrides``
    (``teacher:KEY=VALUE`` on the command line) configure the teacher run.
    """
    import hashlib

    from .engine.runs import RunDir, method_requires, progress_bar
    from .engine.runtime import setup_runtime
    from .report.table import aggregate, format_table, write_summary

    stream = stream or sys.stdout
    rt = setup_runtime(runs[0].train.device)
    from .engine.checkpoint import storage

    with storage(out):
        out.mkdir(parents=True, exist_ok=True)
    needs = [max(r.teachers, 1 if r.uses_teachers else 0) for r in map(method_requires, runs)]
    if max(needs) > 1:
        raise ConfigError("compare supplies one teacher per seed; methods that need more "
                          "(e.g. long orthogonal ensembles) run through `softlabels pipeline`")
    run_dir_of = {id(c): out / c.method.name.replace("+", "_plus_") / f"seed{c.train.seed}" for c in runs}
    bar = progress_bar(show_progress and rt.is_main)
    tag = "-" + hashlib.sha256("\n".join(teacher_overrides).encode()).hexdigest()[:8] if teacher_overrides else ""
    run_dirs, failure = [], None
    try:
        for i, (cfg, need) in enumerate(zip(runs, needs)):
            run_dir = run_dir_of[id(cfg)]
            teachers = []
            if need:
                tcfg = teacher_config(cfg, teacher_method, teacher_model, teacher_overrides)
                twin = next((c for c in runs if c.train.seed == cfg.train.seed and c.method.name == teacher_method
                             and c.method.options == {} and _same_run(c, tcfg)), None)
                tdir = run_dir_of[id(twin)] if twin is not None else (
                    out / f"teacher-{teacher_method}-{tcfg.model.name}{tag}" / f"seed{cfg.train.seed}")
                if bar is not None:
                    bar.set_description(f"teacher for seed {cfg.train.seed}")
                RunDir(tdir).train(twin or tcfg, rt)
                teachers = [RunDir(tdir).load_model()]
            if bar is not None:
                bar.set_description(f"{cfg.method.name} seed {cfg.train.seed} ({i + 1}/{len(runs)})")
            RunDir(run_dir).train(cfg, rt, teachers=teachers, progress=bar, progress_offset=i,
                                  progress_total_runs=len(runs))
            run_dirs.append(run_dir)
    except SoftlabelsError as exc:
        failure = exc
    finally:
        if bar is not None:
            bar.close()
    result = {"run_dirs": [str(d) for d in run_dirs], "table": None}
    if rt.is_main and run_dirs:
        rows = aggregate(run_dirs, which=which)
        metrics = ("top1_error", "top5_error", "nll", "ece")
        text = format_table(rows, metrics, baseline=baseline, fmt="text")
        (out / "table.md").write_text(format_table(rows, metrics, baseline=baseline, fmt="markdown") + "\n")
        write_summary(rows, out / "summary.json")
        sel = "epoch chosen on validation" if which == "best" else "last epoch"
        print(f"\nTest metrics ({sel}), mean ± std over seeds:\n", file=stream)
        print(text, file=stream)
        print(f"\nRun directories: {out}/<method>/seed<N>   (table: {out / 'table.md'})", file=stream)
        result["table"] = text
    if failure is not None:
        raise failure
    return result


def _same_run(a: RunConfig, b: RunConfig) -> bool:
    """Two configs train the same run (labels aside)."""
    from .engine.runs import config_changes

    return all(key == "name" for key, _, _ in config_changes(a, b))
