"""Evaluate a finished (or interrupted) run's checkpoint on one split."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from ..engine import checkpoint as ckpt


def load_run_model(run_dir: Path, checkpoint: Optional[str] = None, device: Optional[str] = None):
    """(config, prepared data, model on device, device, checkpoint sidecar) for a run directory's
    checkpoint (``None``/``best``: the one final.json names as best; see RunDir.resolve_checkpoint)."""
    from ..data.prepare import prepare_data
    from ..engine.runtime import resolve_device
    from ..engine.runs import RunDir

    rd = RunDir(run_dir)
    cfg = rd.config()
    data = prepare_data(cfg.data)
    model, meta = rd.load_model(checkpoint, num_classes=data.num_classes, with_meta=True)
    dev = resolve_device(device or cfg.train.device)
    return cfg, data, model.to(dev).eval(), dev, meta


def evaluate_run(run_dir: Path, checkpoint: Optional[str] = None, split: str = "test",
                 device: Optional[str] = None) -> dict:
    """Metrics of a checkpoint on a split; also written to ``RUN_DIR/eval/<checkpoint>-<split>.json``
    (``checkpoint`` None: the one final.json names as best)."""
    from ..engine.runs import RunDir
    from .analyze import collect
    from .metrics import classification_metrics

    rd = RunDir(run_dir)
    rd.config()  # first what the run is (one line when config.yaml is missing or damaged)
    checkpoint = rd.resolve_checkpoint(checkpoint)
    got = collect(Path(run_dir), checkpoint, split, device)
    metrics = classification_metrics(got["logits"], got["labels"], got["data"].num_classes)
    out = {"checkpoint": checkpoint, "epoch": got["meta"].get("epoch"), "split": split, **metrics}
    eval_dir = Path(run_dir) / "eval"
    with ckpt.storage(eval_dir):
        eval_dir.mkdir(exist_ok=True)
    ckpt.atomic_write_text(eval_dir / f"{checkpoint}-{split}.json", json.dumps(out, indent=1))
    return out
