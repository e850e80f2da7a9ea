"""A run's per-epoch record, written three ways.

``metrics.jsonl`` is the source of truth: one JSON object per epoch, appended and flushed as the
epoch ends (a resume truncates it to the epochs the checkpoint covers). ``metrics.csv`` is the
same records flattened to columns (``train/loss``, ``val/top1_error`` …) for spreadsheets and
pandas; it is rewritten from the JSON lines after every epoch, so it always matches them, also
after a resume. With ``tensorboard`` installed (``pip install softlabels[tensorboard]``) and
``train.tensorboard`` on, the scalars also go to TensorBoard event files in ``RUN_DIR/tb/``
(``tensorboard --logdir runs/``): every loss term, the learning rate and every train, validation
and test metric, with the epoch as the step.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Dict, Iterable, List, Optional

from .checkpoint import append_line, atomic_write_text


def flatten(record: dict, prefix: str = "") -> Dict[str, object]:
    """``{"train": {"loss": 1.0}}`` → ``{"train/loss": 1.0}``; lists are left out (per-class
    vectors belong in the analyses, not in a table of scalars)."""
    out: Dict[str, object] = {}
    for key, value in record.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "/"))
        elif isinstance(value, (int, float, str, bool)) or value is None:
            out[name] = value
    return out


def records_to_csv(records: Iterable[dict]) -> str:
    rows = [flatten(r) for r in records]
    columns: List[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


class RunLog:
    """Appends epoch records to a run directory (see the module docstring)."""

    def __init__(self, run_dir: Path, start_epoch: int = 0, tensorboard: bool = True):
        self.run_dir = Path(run_dir)
        self._tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is an optional extra
                SummaryWriter = None
            if SummaryWriter is not None:
                # purge_step drops events a killed process wrote beyond the resumed checkpoint
                self._tb = SummaryWriter(str(self.run_dir / "tb"), purge_step=start_epoch + 1)

    @property
    def tensorboard(self) -> bool:
        return self._tb is not None

    def append(self, record: dict) -> None:
        append_line(self.run_dir / "metrics.jsonl", json.dumps(record))
        from .trainer import read_metrics

        atomic_write_text(self.run_dir / "metrics.csv", records_to_csv(read_metrics(self.run_dir)))
        if self._tb is not None:
            step = int(record["epoch"])
            for name, value in flatten(record).items():
                if name in ("epoch",) or isinstance(value, (str, bool)) or value is None:
                    continue
                self._tb.add_scalar(name, value, step)
            self._tb.flush()

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def progress_postfix(record: Optional[dict], running_loss: Optional[float], images_per_s: Optional[float],
                     lr: float, epoch: int, epochs: int) -> Dict[str, str]:
    """What the progress bar shows beside its step count and time left: the epoch, the running
    training loss, the last validation (or, without a validation split, test) error, the
    learning rate and the images per second."""
    shown = {"epoch": f"{epoch}/{epochs}"}
    if running_loss is not None:
        shown["loss"] = f"{running_loss:.3f}"
    if record is not None:
        split = "val" if "val" in record else "test" if "test" in record else None
        if split is not None:
            shown[f"{split}_err"] = f"{record[split]['top1_error']:.2f}%"
    shown["lr"] = f"{lr:.3g}"
    if images_per_s is not None:
        shown["img/s"] = f"{images_per_s:.0f}"
    return shown
