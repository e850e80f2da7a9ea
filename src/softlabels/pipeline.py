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
        teachers: [teacher]    # earlier stages, {run: DIR}, or {weights: FILE, model: NAME}
      - name: member           # `sequence: N` expands to member1..memberN, each taught by
        sequence: 3            # all earlier members (plus its own `teachers`)
        config: {method: {name: orthogonal}}
      - name: ensemble
        ensemble: [member1, member2, member3]   # evaluation only: members and their ensemble

Each training stage is an ordinary run directory ``OUT/seed<S>/<stage>``. Running the same
pipeline again skips finished stages (their ``final.json`` exists) and resumes interrupted ones.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import torch

from .config import _deepcopy, _merge, apply_overrides, config_from_dict, load_yaml, validate_registered
from .errors import CheckpointError, ConfigError

STAGE_KEYS = {"name", "config", "overrides", "teachers", "teacher_checkpoint", "sequence", "ensemble"}


@dataclass
class Stage:
    name: str
    config: Dict[str, Any] = field(default_factory=dict)
    overrides: List[str] = field(default_factory=list)
    teachers: List[Any] = field(default_factory=list)
    teacher_checkpoint: str = "best"
    ensemble: Optional[List[str]] = None


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
        if "ensemble" in st:
            members = st["ensemble"]
            if not isinstance(members, list) or not members:
                raise ConfigError(f"{at}.ensemble: expected a list of stage names")
            stages.append(Stage(name, ensemble=[str(m) for m in members]))
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
                                common["teachers"] + earlier, common["teacher_checkpoint"]))
    names = [s.name for s in stages]
    for s in stages:
        if names.count(s.name) > 1:
            raise ConfigError(f"{where}: stage name {s.name!r} is used twice")
        before = names[:names.index(s.name)]
        for t in (s.ensemble or []) + [t for t in s.teachers if isinstance(t, str)]:
            if t not in before:
                raise ConfigError(f"{where}: stage {s.name!r} refers to {t!r}, which is not an earlier stage")
    return base, stages


def stage_config(base: dict, stage: Stage, seed: int, extra_overrides: List[str]):
    data = _merge(_deepcopy(base), stage.config)
    data = apply_overrides(data, list(stage.overrides) + list(extra_overrides) + [f"train.seed={seed}"])
    data.setdefault("name", stage.name)
    cfg = config_from_dict(data)
    validate_registered(cfg)
    return cfg


def load_model_from_run(run_dir: Path, checkpoint: str = "best"):
    """The model saved in a run directory's checkpoint, on the CPU, in eval mode."""
    from .engine import checkpoint as ckpt
    from .engine.trainer import load_state
    from .methods.base import build_run_model

    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"teacher run {run_dir}: no config.yaml; not a run directory")
    cfg = config_from_dict(load_yaml(str(run_dir / "config.yaml")))
    stem = run_dir / "checkpoints" / checkpoint
    tensors, meta = ckpt.load_checkpoint(stem)
    model = build_run_model(cfg, int(meta["num_classes"]), int(meta["in_channels"]))
    load_state(model, ckpt.unprefixed("model", tensors), stem, "model")
    return model.eval()


def resolve_teacher(spec, stage_dirs: Dict[str, Path], checkpoint: str, num_classes: int, in_channels: int):
    from .models import build_model

    if isinstance(spec, str):
        model = load_model_from_run(stage_dirs[spec], checkpoint)
    elif isinstance(spec, dict) and "run" in spec:
        model = load_model_from_run(Path(spec["run"]), spec.get("checkpoint", checkpoint))
    elif isinstance(spec, dict) and "weights" in spec and "model" in spec:
        model = build_model(spec["model"], num_classes, in_channels, spec.get("options") or {}, spec["weights"]).eval()
    else:
        raise ConfigError(f"teacher {spec!r}: expected a stage name, {{run: DIR}} or {{weights: FILE, model: NAME}}")
    k = model.head.out_features
    if k != num_classes:
        raise CheckpointError(f"teacher {spec!r} predicts {k} classes, this stage's dataset has {num_classes}")
    return model


def _data_shape(cfg):
    from .data import load_dataset

    ds = load_dataset(cfg.data.name, cfg.data.root, cfg.data.options)
    return ds.num_classes, ds.in_channels


def run_pipeline(path: str, out: Path, seeds: List[int], extra_overrides: List[str] = (),
                 show_progress: bool = True) -> dict:
    from .engine import Trainer
    from .engine.checkpoint import atomic_write_text
    from .engine.runtime import setup_runtime
    from .progress import progress_bar

    base, stages = parse_pipeline(load_yaml(path, what="pipeline file"), where=Path(path).name)
    # validate every stage's config before training anything
    plans = {s.name: stage_config(base, s, seeds[0], list(extra_overrides)) for s in stages if s.ensemble is None}
    rt = setup_runtime(next(iter(plans.values())).train.device)
    out.mkdir(parents=True, exist_ok=True)
    if rt.is_main:
        (out / "pipeline.yaml").write_text(Path(path).read_text())
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
            if (run_dir / "final.json").is_file():
                results[st.name] = json.loads((run_dir / "final.json").read_text())
                continue
            cfg = stage_config(base, st, seed, list(extra_overrides))
            k, c = _data_shape(cfg) if st.teachers else (None, None)
            teachers = [resolve_teacher(t, stage_dirs, st.teacher_checkpoint, k, c) for t in st.teachers]
            resume = (run_dir / "checkpoints" / "last.json").is_file()
            bar = progress_bar(show_progress and rt.is_main, f"seed {seed} {st.name}")
            try:
                trainer = Trainer(cfg, run_dir, resume=resume, runtime=rt, teachers=teachers, progress=bar)
                if bar is not None:
                    bar.total = cfg.train.epochs * len(trainer.train_loader)
                    bar.n = trainer.start_epoch * len(trainer.train_loader)
                results[st.name] = trainer.fit()
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
    from .evaluate.ensemble import ensemble_metrics

    done = run_dir / "ensemble.json"
    if done.is_file():
        return json.loads(done.read_text())
    cfg = plans[st.ensemble[0]]
    data = prepare_data(cfg.data)
    _, _, test = build_loaders(data, cfg.data, device=rt.device, seed=0, rank=0, world=1, channels_last=False)
    models = [load_model_from_run(stage_dirs[m]).to(rt.device) for m in st.ensemble]
    result = {"stages": st.ensemble, **ensemble_metrics(models, test, data.num_classes, device=rt.device)}
    if rt.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(done, json.dumps(result, indent=1))
    return result


def _brief(result: dict) -> dict:
    if "best" in result:
        return {"best_test_top1_error": result["best"]["test"]["top1_error"],
                "last_test_top1_error": result["last"]["test"]["top1_error"], "best_epoch": result["best"]["epoch"]}
    brief = {k: v["top1_error"] for k, v in result.items() if isinstance(v, dict) and "top1_error" in v}
    brief["members_top1_error"] = [m["top1_error"] for m in result.get("members", [])]
    return brief
