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

Each training stage is an ordinary run directory ``OUT/seed<S>/<stage>`` managed by
:class:`~softlabels.engine.runs.RunDir`: running the same pipeline again skips finished stages,
resumes interrupted ones and redoes torn ones.
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional


from .config import _deepcopy, _merge, apply_overrides, config_from_dict, load_yaml, validate_registered
from .engine.runs import load_model_from_run  # noqa: F401  (moved to the run manager; still importable here)
from .errors import ConfigError

STAGE_KEYS = {"name", "config", "overrides", "teachers", "teacher_checkpoint", "sequence", "ensemble",
              "seed_offset"}
SEED_STRIDE = 1000  # stage seed = pipeline seed + SEED_STRIDE * seed_offset


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
        common = dict(config=st.get("config") or {}, overrides=list(st.get("overrides") or []),
                      teachers=list(st.get("teachers") or []),
                      teacher_checkpoint=str(st.get("teacher_checkpoint", "best")))
        if not isinstance(common["config"], dict):
            raise ConfigError(f"{at}.config: expected a mapping")
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
    return base, stages


def stage_config(base: dict, stage: Stage, seed: int, extra_overrides: List[str]):
    data = _merge(_deepcopy(base), stage.config)
    data = apply_overrides(data, list(stage.overrides) + list(extra_overrides)
                           + [f"train.seed={seed + SEED_STRIDE * stage.seed_offset}"])
    data.setdefault("name", stage.name)
    cfg = config_from_dict(data)
    validate_registered(cfg)
    return cfg


def resolve_teacher(spec, stage_dirs: Dict[str, Path], checkpoint: str, num_classes: int, in_channels: int,
                    student=None):
    """A stage name (that stage's run), ``{run: DIR}`` or a weights file with its model config
    (options it does not give follow the ``student``'s ModelConfig, see runs.teacher_model_options)."""
    from .engine.runs import RunDir, load_teacher

    if isinstance(spec, str):
        return RunDir(stage_dirs[spec]).load_model(checkpoint, num_classes=num_classes)
    return load_teacher(spec, checkpoint=checkpoint, num_classes=num_classes, in_channels=in_channels,
                        student=student)


def _data_shape(cfg):
    from .data import load_dataset

    ds = load_dataset(cfg.data.name, cfg.data.root, cfg.data.options)
    return ds.num_classes, ds.in_channels


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


def run_pipeline(path: str, out: Path, seeds: List[int], extra_overrides: List[str] = (),
                 show_progress: bool = True) -> dict:
    from .engine.checkpoint import atomic_write_text, storage
    from .engine.runs import RunDir, RunState, progress_bar
    from .engine.runtime import setup_runtime

    from .config import resolve_recipe

    path = resolve_recipe(path)  # a file, or the name of a packaged pipeline recipe
    base, stages = parse_pipeline(load_yaml(path, what="pipeline file"), where=Path(path).name)
    # validate every stage's config before training anything
    plans = {s.name: stage_config(base, s, seeds[0], list(extra_overrides)) for s in stages if s.ensemble is None}
    _check_distinct(stages, plans, Path(path).name)
    rt = setup_runtime(next(iter(plans.values())).train.device)
    with storage(out):
        out.mkdir(parents=True, exist_ok=True)
    if rt.is_main:
        atomic_write_text(out / "pipeline.yaml", Path(path).read_text())
    summary: Dict[str, Any] = {}
    for seed in seeds:
        seed_dir = out / f"seed{seed}"
        stage_dirs: Dict[str, Path] = {}
        results: Dict[str, Any] = {}
        for st in stages:
            run_dir = seed_dir / st.name
            stage_dirs[st.name] = run_dir
            if st.ensemble is not None:
                results[st.name] = _ensemble_stage(st, plans, stage_dirs, run_dir, rt)
                continue
            cfg = stage_config(base, st, seed, list(extra_overrides))
            rd = RunDir(run_dir)
            done = rd.state() is RunState.FINISHED and cfg.train.epochs <= rd.config().train.epochs
            teachers = []
            if st.teachers and not done:  # a finished stage needs neither its teachers nor the data
                k, c = _data_shape(cfg)
                teachers = [resolve_teacher(t, stage_dirs, st.teacher_checkpoint, k, c, cfg.model) for t in st.teachers]
            bar = progress_bar(show_progress and rt.is_main and not done, f"seed {seed} {st.name}")
            try:
                results[st.name] = rd.train(cfg, rt, teachers=teachers, progress=bar)
            finally:
                if bar is not None:
                    bar.close()
        summary[f"seed{seed}"] = {name: _brief(r) for name, r in results.items()}
        if rt.is_main:
            atomic_write_text(out / "pipeline.json", json.dumps(summary, indent=1))
    return summary


def _ensemble_stage(st: Stage, plans, stage_dirs, run_dir: Path, rt) -> dict:
    from .data.prepare import build_loaders, prepare_data
    from .engine.checkpoint import atomic_write_text
    from .engine.runs import RunDir
    from .evaluate.ensemble import ensemble_metrics

    done = run_dir / "ensemble.json"
    with RunDir(run_dir).lock() if rt.is_main else contextlib.nullcontext():
        if done.is_file():
            try:
                result = json.loads(done.read_text())
                if isinstance(result, dict) and isinstance(result.get("members"), list):
                    return result
            except (OSError, ValueError):
                pass  # torn by a kill: evaluated again
        members = [RunDir(stage_dirs[m]) if isinstance(m, str) else RunDir(m["run"]) for m in st.ensemble]
        checkpoints = [None if isinstance(m, str) else m.get("checkpoint") for m in st.ensemble]
        first = st.ensemble[0]
        cfg = plans[first] if isinstance(first, str) else members[0].config()
        data = prepare_data(cfg.data)
        _, _, test = build_loaders(data, cfg.data, device=rt.device, seed=0, rank=0, world=1, channels_last=False)
        models = [m.load_model(c, num_classes=data.num_classes).to(rt.device) for m, c in zip(members, checkpoints)]
        names = [m if isinstance(m, str) else str(m["run"]) for m in st.ensemble]
        result = {"stages": names, **ensemble_metrics(models, test, data.num_classes, device=rt.device)}
        if rt.is_main:
            atomic_write_text(done, json.dumps(result, indent=1))
        return result


def _brief(result: dict) -> dict:
    if "best" in result:
        return {"best_test_top1_error": result["best"]["test"]["top1_error"],
                "last_test_top1_error": result["last"]["test"]["top1_error"], "best_epoch": result["best"]["epoch"]}
    brief = {k: v["top1_error"] for k, v in result.items() if isinstance(v, dict) and "top1_error" in v}
    brief["members_top1_error"] = [m["top1_error"] for m in result.get("members", [])]
    return brief
