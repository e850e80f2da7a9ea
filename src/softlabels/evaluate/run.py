"""Evaluate a finished (or interrupted) run's checkpoint on one split."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from ..config import config_from_dict, load_yaml, validate_registered
from ..errors import CheckpointError, ConfigError, DataError
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


# ------------------------------------------------------------------ more inputs (folders, bare weights, other datasets)
_EVAL_METRICS = ("top1_error", "top5_error", "nll", "ece")


def _metrics_on_data(model, cfg, split: str, device, where: str, source: str) -> dict:
    """Metrics of ``model`` on ``split`` of the dataset ``cfg.data`` names. The first batch
    checks that the model fits the data (channels and image size, number of classes): a
    mismatch is one :class:`DataError` line before the rest of the split is run."""
    from ..data.prepare import prepare_data
    from ..engine.runtime import resolve_device
    from .analyze import split_outputs
    from .metrics import classification_metrics

    data = prepare_data(cfg.data)
    dev = resolve_device(device or "auto")
    model = model.to(dev).eval()

    def check(logits, batch):
        k = int(logits.shape[1])
        if k != data.num_classes:
            raise DataError(f"{source} predicts {k} classes, but dataset {cfg.data.name} has {data.num_classes}; "
                            f"evaluate on a dataset with the same classes")

    try:
        got = split_outputs(model, data, cfg.data, split, dev, cfg.train.seed, where=where, check=check)
    except RuntimeError as exc:  # the model cannot take these images (channels, size)
        raise DataError(f"{source} cannot take the images of dataset {cfg.data.name} "
                        f"({data.in_channels} channels): {str(exc).splitlines()[0][:160]}") from None
    return {"dataset": cfg.data.name, "split": split,
            **classification_metrics(got["logits"], got["labels"], data.num_classes)}


def evaluate_run_on(run_dir: Path, dataset: str, *, data_root: Optional[str] = None,
                    overrides: Sequence[str] = (), checkpoint: Optional[str] = "best", split: str = "test",
                    device: Optional[str] = None) -> dict:
    """Metrics of a run's checkpoint on another dataset than the one it was trained on.

    The run's data settings are kept except the dataset's name, ``root`` (``data_root``) and
    ``options`` (none, or those of ``overrides`` such as ``data.options.image_size=32``); the
    number of classes must match. Written to ``RUN_DIR/eval/<checkpoint>-<split>-on-<dataset>.json``.
    """
    from ..config import build_config
    from ..engine.runs import RunDir

    run_dir = Path(run_dir)
    rd = RunDir(run_dir)
    base = rd.config().to_dict()  # one line when it is not a run directory
    bad = [o for o in overrides if not o.strip().startswith("data.")]
    if bad:
        raise ConfigError(f"--set {bad[0]}: with a run directory only data.* keys can be set "
                          f"(the model is the run's)")
    base["data"] = {**base.get("data", {}), "name": dataset, "root": data_root, "options": {}}
    cfg = build_config(None, list(overrides), base=base)
    checkpoint = rd.resolve_checkpoint(checkpoint)
    model = rd.load_model(checkpoint)
    out = {"run": str(run_dir), "checkpoint": checkpoint,
           **_metrics_on_data(model, cfg, split, device, str(run_dir), f"run {run_dir}")}
    eval_dir = run_dir / "eval"
    eval_dir.mkdir(exist_ok=True)
    ckpt.atomic_write_text(eval_dir / f"{checkpoint}-{split}-on-{dataset}.json", json.dumps(out, indent=1))
    return out


def evaluate_weights(weights: str, model: str, dataset: str, *, data_root: Optional[str] = None,
                     overrides: Sequence[str] = (), split: str = "test", device: Optional[str] = None) -> dict:
    """Metrics of a bare weights file (``.safetensors`` or a ``torch.load(weights_only=True)``
    state dict) loaded into registered model ``model``, on ``split`` of ``dataset``.

    ``overrides`` set ``model.options.*`` and ``data.*`` keys. Every tensor of the model must
    come from the file: a head for another number of classes is an error here (training would
    keep a fresh head), as is any missing or mis-shaped key.
    """
    import warnings

    from ..config import build_config
    from ..data.prepare import prepare_data
    from ..models import build_model

    if not Path(weights).is_file():
        raise CheckpointError(f"--weights {weights}: no such file")
    cfg = build_config(None, list(overrides), base={"data": {"name": dataset, "root": data_root},
                                                     "model": {"name": model}})
    data = prepare_data(cfg.data)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        net = build_model(cfg.model.name, data.num_classes, data.in_channels, cfg.model.options, weights)
    for w in caught:
        text = str(w.message)
        if "not loaded" in text or "no weights for" in text:
            raise CheckpointError(f"{text.split(' (kept')[0]}; dataset {dataset} has {data.num_classes} classes")
    out = {"weights": str(weights), "model": model,
           **_metrics_on_data(net, cfg, split, device, str(weights), f"weights {weights}")}
    return out


def evaluate_folder(folder: Path, *, checkpoint: Optional[str] = "best", split: str = "test",
                    device: Optional[str] = None, dataset: Optional[str] = None, data_root: Optional[str] = None,
                    overrides: Sequence[str] = ()) -> List[Tuple[Path, dict, dict]]:
    """Evaluate every run under a comparison, pipeline or study folder (each run as
    :func:`evaluate_run`, or :func:`evaluate_run_on` with ``dataset``). Returns
    ``[(run_dir, final.json's run block, metrics)]`` in the order :func:`report.table.find_runs`
    finds them."""
    from ..report.table import find_runs, read_final

    out = []
    for run in find_runs([folder]):
        if dataset:
            metrics = evaluate_run_on(run, dataset, data_root=data_root, overrides=overrides,
                                      checkpoint=checkpoint, split=split, device=device)
        elif checkpoint:
            metrics = evaluate_run(run, checkpoint, split, device)
        else:
            metrics = evaluate_run(run, split=split, device=device)
        out.append((run, read_final(run)["run"], metrics))
    return out


def folder_table(results: Sequence[Tuple[Path, dict, dict]], fmt: str = "text") -> str:
    """The table of :func:`evaluate_folder`'s results: one row per run label, mean ± std over
    its seeds, with the columns of ``softlabels report``."""
    from ..report.table import Row, _mean_std, format_table

    groups: Dict[str, list] = {}
    for run_dir, run, metrics in results:
        groups.setdefault(str(run.get("label", run.get("method"))), []).append((run_dir, run, metrics))
    rows = []
    for label, items in groups.items():
        stats = {m: _mean_std([float(x[2][m]) for x in items]) for m in _EVAL_METRICS}
        first = items[0][1]
        rows.append(Row(label=label, method=str(first.get("method", label)), dataset=items[0][2].get("dataset"),
                        model=first.get("model"), which=str(items[0][2].get("checkpoint")),
                        split=str(items[0][2].get("split")), seeds=[x[1].get("seed") for x in items],
                        mean={m: s[0] for m, s in stats.items()}, std={m: s[1] for m, s in stats.items()},
                        runs=[str(x[0]) for x in items]))
    return format_table(rows, _EVAL_METRICS, fmt=fmt)
