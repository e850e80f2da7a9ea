"""``softlabels pipeline FILE.yaml``: named stages run in order, later ones using earlier ones.

A pipeline file::

    base:                      # a RunConfig mapping every stage starts from
      data: {name: digits}
      model: {name: resnet8}
    stages:
      - name: teacher          # a training stage: `config` is merged over `base`,
        config: {method: {name: ce}}          # `overrides` are KEY=VALUE strings
      - name: student
        config: {method: {name: glr_cd}}
        teachers: [teacher]    # earlier stages, {run: DIR}, or {weights: FILE, model: NAME|{name, options}}
      - name: member           # `sequence: N` expands to member1..memberN, each taught by
        sequence: 3            # all earlier members (plus its own `teachers`)
        config: {method: {name: orthogonal}}
      - name: ensemble
        ensemble: [member1, member2, member3]   # evaluation only: members ({run: DIR} too) and their ensemble

Seeds: a stage trains with ``train.seed = S + 1000 * seed_offset`` for pipeline seed ``S``;
``seed_offset`` is 0 unless the stage sets it, and member k of a ``sequence`` adds k − 1, so
members start from different initialisations. Two stages that would train the same run (same
config, seed and teachers) are refused: give one a ``seed_offset`` to make them independent.

A thin front-end over the study runner: the file becomes a study (:func:`pipeline_study`,
written to ``OUT/study.yaml``: stages are rows, ``teachers`` earlier rows or study teachers, an
ensemble stage an ensemble of listed members) whose plan runs through ``study.run_plan``
(``--jobs``/``--launcher`` as for ``softlabels study``: a student waits for its teachers of the
same seed, an ensemble for its members). Each training stage is an ordinary run directory
``OUT/seed<S>/<stage>`` managed by :class:`~softlabels.engine.runs.RunDir`: running the same
pipeline again skips finished stages, resumes interrupted ones and redoes torn ones.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


from .config import _deepcopy, _merge, apply_overrides, config_from_dict, load_yaml, validate_registered
from .engine.runs import load_model_from_run  # noqa: F401  (moved to the run manager; still importable here)
from .errors import ConfigError
from .study import CHECKPOINT_RE, SEED_STRIDE, slugify

STAGE_KEYS = {"name", "config", "overrides", "teachers", "teacher_checkpoint", "sequence", "ensemble",
              "seed_offset"}


@dataclass
class Stage:
    name: str
    config: Dict[str, Any] = field(default_factory=dict)
    overrides: List[str] = field(default_factory=list)
    teachers: List[Any] = field(default_factory=list)
    teacher_checkpoint: str = "best"
    ensemble: Optional[List[Any]] = None  # stage names or {run: DIR, checkpoint: NAME}
    seed_offset: int = 0


def parse_pipeline(data: dict, where: str = "pipeline") -> tuple:
    """(base mapping, list of Stage) with sequences expanded; raises ConfigError on bad input."""
    unknown = set(data) - {"base", "stages"}
    if unknown:
        raise ConfigError(f"{where}: unknown key {sorted(unknown)[0]!r} (accepted: base, stages)")
    base = data.get("base") or {}
    if not isinstance(base, dict):
        raise ConfigError(f"{where}.base: expected a mapping")
    raw = data.get("stages")
    if not isinstance(raw, list) or not raw:
        raise ConfigError(f"{where}.stages: expected a non-empty list of stages")
    stages: List[Stage] = []
    for i, st in enumerate(raw):
        at = f"{where}.stages[{i}]"
        if not isinstance(st, dict) or "name" not in st:
            raise ConfigError(f"{at}: expected a mapping with a name")
        bad = set(st) - STAGE_KEYS
        if bad:
            raise ConfigError(f"{at}.{sorted(bad)[0]}: unknown stage key (accepted: {', '.join(sorted(STAGE_KEYS))})")
        name = str(st["name"])
        if not name.replace("_", "").replace("-", "").isalnum():
            raise ConfigError(f"{at}.name: {name!r} must be letters, digits, '-' or '_'")
        for key in ("overrides", "teachers"):
            if not isinstance(st.get(key) or [], list):
                raise ConfigError(f"{at}.{key}: expected a list, got {st[key]!r}")
        common = dict(config=st.get("config") or {}, overrides=list(st.get("overrides") or []),
                      teachers=list(st.get("teachers") or []),
                      teacher_checkpoint=st.get("teacher_checkpoint", "best"))
        if not isinstance(common["config"], dict):
            raise ConfigError(f"{at}.config: expected a mapping")
        if not isinstance(common["teacher_checkpoint"], str) or not CHECKPOINT_RE.fullmatch(common["teacher_checkpoint"]):
            raise ConfigError(f"{at}.teacher_checkpoint: expected last, best, ema or epochN, "
                              f"got {common['teacher_checkpoint']!r}")
        offset = st.get("seed_offset", 0)
        if not isinstance(offset, int) or isinstance(offset, bool) or not 0 <= offset < 10**6:
            raise ConfigError(f"{at}.seed_offset: expected an integer in 0..999999, got {offset!r}")
        common["seed_offset"] = offset
        if "ensemble" in st:
            members = st["ensemble"]
            if not isinstance(members, list) or not members:
                raise ConfigError(f"{at}.ensemble: expected a list of stage names or {{run: DIR}}")
            for m in members:
                if isinstance(m, dict) and (set(m) - {"run", "checkpoint"} or "run" not in m):
                    raise ConfigError(f"{at}.ensemble: {m!r}: expected a stage name or {{run: DIR, checkpoint: NAME}}")
            stages.append(Stage(name, ensemble=[m if isinstance(m, dict) else str(m) for m in members]))
            continue
        n = st.get("sequence")
        if n is None:
            stages.append(Stage(name, **common))
            continue
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ConfigError(f"{at}.sequence: expected an integer >= 1, got {n!r}")
        for k in range(1, n + 1):
            earlier = [f"{name}{j}" for j in range(1, k)]
            stages.append(Stage(f"{name}{k}", common["config"], common["overrides"],
                                common["teachers"] + earlier, common["teacher_checkpoint"],
                                seed_offset=offset + k - 1))
    names = [s.name for s in stages]
    for s in stages:
        if names.count(s.name) > 1:
            raise ConfigError(f"{where}: stage name {s.name!r} is used twice")
        before = names[:names.index(s.name)]
        for t in [t for t in (s.ensemble or []) + s.teachers if isinstance(t, str)]:
            if t not in before:
                raise ConfigError(f"{where}: stage {s.name!r} refers to {t!r}, which is not an earlier stage")
        if s.ensemble is not None and len(s.ensemble) < 2:
            raise ConfigError(f"{where}: stage {s.name!r}: an ensemble needs at least 2 members, got {len(s.ensemble)}")
    return base, stages


def stage_config(base: dict, stage: Stage, seed: int, extra_overrides: List[str]):
    data = _merge(_deepcopy(base), stage.config)
    data = apply_overrides(data, list(stage.overrides) + list(extra_overrides)
                           + [f"train.seed={seed + SEED_STRIDE * stage.seed_offset}"])
    data.setdefault("name", stage.name)
    cfg = config_from_dict(data)
    validate_registered(cfg)
    return cfg


def _check_distinct(stages: List[Stage], plans: dict, where: str) -> None:
    """No two training stages may train the same run (they would come out identical)."""
    from .engine.runs import config_changes

    train = [s for s in stages if s.ensemble is None]
    for i, a in enumerate(train):
        for b in train[:i]:
            if repr(a.teachers) == repr(b.teachers) and all(
                    k == "name" for k, _, _ in config_changes(plans[a.name], plans[b.name])):
                raise ConfigError(f"{where}: stages {b.name!r} and {a.name!r} would train the same run (same config, "
                                  f"seed and teachers); give one of them `seed_offset: 1` to make them independent")


def pipeline_study(path: str, seeds: List[int], extra_overrides: List[str] = ()) -> dict:
    """The pipeline file as a study mapping (docs/study-schema.md): one row per stage (its whole
    config, its ``seed_offset``, its teachers: earlier stages' rows, and study teachers for
    ``{run: DIR}`` and weights files), an ensemble stage as an ensemble of listed members, one
    column, and the pipeline folder's layout ``seed<S>/<stage>``. Every stage's config is
    checked here (one ConfigError), and two stages that would train the same run are refused."""
    from .config import resolve_recipe
    from .engine.runs import method_requires, teacher_spec

    where = Path(path).name
    base, stages = parse_pipeline(load_yaml(resolve_recipe(path), what="pipeline file"), where=where)
    plans = {s.name: stage_config(base, s, seeds[0], list(extra_overrides)) for s in stages if s.ensemble is None}
    _check_distinct(stages, plans, where)
    for st in stages:
        need = method_requires(plans[st.name]).teachers if st.ensemble is None else 0
        if need > len(st.teachers):
            raise ConfigError(f"{where}: stage {st.name!r}: method {plans[st.name].method.name} needs {need} teacher(s), "
                              f"the stage gives {len(st.teachers)} (teachers: [an earlier stage, {{run: DIR}} or "
                              f"{{weights: FILE, model: NAME}}])")
    names = {s.name for s in stages}
    teachers: Dict[str, dict] = {}
    rows = []
    for st in stages:
        if st.ensemble is not None:
            members = [m if isinstance(m, str) else {k: v for k, v in (("run", str(m["run"])),
                                                                       ("checkpoint", m.get("checkpoint")))
                                                     if v is not None} for m in st.ensemble]
            rows.append({"label": st.name, "slug": st.name, "ensemble": {"members": members, "checkpoint": "best"}})
            continue
        tnames = []
        for j, t in enumerate(st.teachers):
            if isinstance(t, str):
                tnames.append(t)
                continue
            entry = teacher_spec(t, f"{where}: stage {st.name}: teachers[{j}]")
            tname = next((k for k, v in teachers.items() if v == entry), None)
            if tname is None:
                k = len(teachers) + 1
                while f"external-{k}" in names:
                    k += 1
                tname = f"external-{k}"
                teachers[tname] = entry
            tnames.append(tname)
        data = plans[st.name].to_dict()
        method = data.pop("method")
        rows.append({"label": st.name, "slug": st.name, "method": method["name"], "options": method["options"],
                     "weights": method["weights"], "config": data, "teachers": tnames,
                     "teacher_checkpoint": st.teacher_checkpoint, "seed_offset": st.seed_offset})
    c0 = next(iter(plans.values()))
    col = slugify(Path(path).stem)
    return {"title": f"softlabels pipeline {where}: {', '.join(s.name for s in stages)}", "paper": "none",
            "source": f"softlabels pipeline {where}", "metrics": ["top1_error", "top5_error", "nll", "ece"],
            "seeds": len(seeds), "report": "best" if all(c.data.val_fraction > 0 for c in plans.values()) else "last",
            "columns": {col: {"label": f"{c0.data.name} · {c0.model.name}"}}, "teachers": teachers, "rows": rows,
            "layout": {"runs": "seed{seed}/{row}", "teachers": "_teachers/{teacher}/seed{seed}", "names": "label"}}


def plan_pipeline(path: str, out: Path, seeds: List[int], extra_overrides: List[str] = ()):
    """(study.Plan, the study file's text) of a pipeline under ``out``. Nothing is written."""
    from .study import plan_translated

    return plan_translated(pipeline_study(path, seeds, extra_overrides), Path(out), seeds, name="pipeline")


def run_pipeline(path: str, out: Path, seeds: List[int], extra_overrides: List[str] = (),
                 show_progress: bool = True, launch=None, device: Optional[str] = None, planned=None) -> dict:
    """Run every stage for every seed through the study runner (``launch``: a
    ``launch.LaunchOptions`` for parallel or SLURM runs) and write ``pipeline.json``: per seed,
    the figures of each finished stage. A failed stage skips the stages that need it; the error
    is raised (one line) after pipeline.json is written. ``planned``: what
    :func:`plan_pipeline` returned for these arguments, if at hand."""
    from .config import resolve_recipe
    from .engine.checkpoint import atomic_write_text
    from .study import _read_json, plan_failure, result_file, run_translated

    plan, text = planned or plan_pipeline(path, out, seeds, extra_overrides)
    status = run_translated(plan, text, launch=launch, device=device, show_progress=show_progress,
                            files={"pipeline.yaml": Path(resolve_recipe(path)).read_text()})
    if os.environ.get("RANK", "0") != "0":
        return {}
    specs = plan.by_id()
    summary: Dict[str, Any] = {}
    for seed in plan.seeds:
        stages = {}
        for line in plan.lines:
            spec = next((specs[r] for ids in line.cells.values() for r in ids if specs[r].seed == seed), None)
            result = _read_json(result_file(spec)) if spec is not None else None
            if result is not None:
                stages[line.label] = _brief(result)
        summary[f"seed{seed}"] = stages
    atomic_write_text(Path(out) / "pipeline.json", json.dumps(summary, indent=1))
    failure = plan_failure(status, "pipeline")
    if failure is not None:
        raise failure
    return summary


def _brief(result: dict) -> dict:
    if "best" in result:
        return {"best_test_top1_error": result["best"]["test"]["top1_error"],
                "last_test_top1_error": result["last"]["test"]["top1_error"], "best_epoch": result["best"]["epoch"]}
    brief = {k: result[k]["top1_error"] for k in ("mean_softmax", "sum_logits")
             if isinstance(result.get(k), dict) and "top1_error" in result[k]}
    brief["members_top1_error"] = [m["top1_error"] for m in result.get("members", [])
                                   if isinstance(m, dict) and "top1_error" in m]
    return brief
