"""Train a run, resume it, or reuse it: the one rule compare and pipeline share."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from ..config import RunConfig


def train_or_reuse(cfg: RunConfig, run_dir: Path, rt, teachers: Sequence = (), progress=None,
                   progress_offset: int = 0, progress_total_runs: int = 1) -> dict:
    """A finished run (``final.json``) is read back; an interrupted one (``checkpoints/last``)
    resumes; otherwise a new run starts. Returns the run's final.json content."""
    from .trainer import Trainer

    run_dir = Path(run_dir)
    final = run_dir / "final.json"
    if final.is_file():
        return json.loads(final.read_text())
    resume = (run_dir / "checkpoints" / "last.json").is_file()
    trainer = Trainer(cfg, run_dir, resume=resume, runtime=rt, teachers=teachers, progress=progress)
    if progress is not None:
        per_run = cfg.train.epochs * len(trainer.train_loader)
        if progress.total is None:
            progress.total = progress_total_runs * per_run
        progress.n = progress_offset * per_run + trainer.start_epoch * len(trainer.train_loader)
        progress.refresh()
    return trainer.fit()


def method_requires(cfg: RunConfig):
    """The merged ``Requires`` of a config's method, without building a model.

    What a method requires does not depend on the number of classes K, but a few options are
    checked against it at construction (AdaCos's default scale needs K >= 3, per-class weight
    lists need exactly K entries). The objective is first built for a nominal K = 1000; only
    when that is refused is the dataset read for its true K (and an option that fits neither
    gets its one-line error from the build with the true K)."""
    from ..errors import ConfigError
    from ..methods.base import build_objective

    try:
        return build_objective(cfg.method, 1000).requires
    except ConfigError:
        from ..data import load_dataset

        k = load_dataset(cfg.data.name, cfg.data.root, cfg.data.options).num_classes
        return build_objective(cfg.method, k).requires


def default_checkpoint(run_dir: Path) -> str:
    """The checkpoint that stands for a run's result: ``best`` (the epoch chosen on validation)
    when the run saved one, otherwise ``last`` (a run without a validation split reports its last
    epoch as best, and an unfinished run has only ``last``)."""
    return "best" if (Path(run_dir) / "checkpoints" / "best.json").is_file() else "last"
