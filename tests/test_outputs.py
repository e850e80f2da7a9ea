"""What a run directory holds besides metrics.jsonl: metrics.csv and TensorBoard event files."""
import csv
import json

import pytest

from softlabels.cli import main
from softlabels.engine.runlog import flatten, progress_postfix, records_to_csv

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out, *extra):
    return main(["train", "--dataset", "digits", "--model", "resnet8", "--epochs", "2", "--out", str(out),
                 "--no-progress", "train.deterministic=true", *extra])


def test_flatten_and_csv_columns():
    recs = [{"epoch": 1, "lr": 0.1, "train": {"loss": 2.0, "ce": 2.0}, "test": {"top1_error": 50.0, "pc": [1, 2]}},
            {"epoch": 2, "lr": 0.05, "train": {"loss": 1.0, "ce": 1.0, "extra": 0.5}}]
    assert flatten(recs[0]) == {"epoch": 1, "lr": 0.1, "train/loss": 2.0, "train/ce": 2.0, "test/top1_error": 50.0}
    rows = list(csv.DictReader(records_to_csv(recs).splitlines()))
    assert list(rows[0]) == ["epoch", "lr", "train/loss", "train/ce", "test/top1_error", "train/extra"]
    assert rows[1]["train/extra"] == "0.5" and rows[1]["test/top1_error"] == ""


def test_csv_and_tensorboard_match_jsonl(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    assert _train(run) == 0
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    rows = list(csv.DictReader((run / "metrics.csv").read_text().splitlines()))
    assert len(rows) == len(records) == 2
    for rec, row in zip(records, rows):
        assert float(row["train/loss"]) == pytest.approx(rec["train"]["loss"])
        assert float(row["test/top1_error"]) == pytest.approx(rec["test"]["top1_error"])
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"lr", "train/loss", "train/ce", "val/top1_error", "test/top1_error", "test/ece"} <= tags
    loss = acc.Scalars("train/loss")
    assert [e.step for e in loss] == [1, 2]
    assert [e.value for e in loss] == pytest.approx([r["train"]["loss"] for r in records], rel=1e-6)


def test_tensorboard_off(tmp_path):
    run = tmp_path / "run"
    assert _train(run, "train.tensorboard=false", "train.epochs=1") == 0
    assert not (run / "tb").exists()
    assert (run / "metrics.csv").is_file()


def test_progress_postfix_names_what_a_user_looks_for():
    rec = {"epoch": 3, "val": {"top1_error": 12.5}, "test": {"top1_error": 13.0}}
    shown = progress_postfix(rec, 0.4567, 1234.4, 0.05, 3, 10)
    assert shown == {"epoch": "3/10", "loss": "0.457", "val_err": "12.50%", "lr": "0.05", "img/s": "1234"}
    no_val = progress_postfix({"epoch": 1, "test": {"top1_error": 9.0}}, None, None, 0.1, 1, 2)
    assert no_val == {"epoch": "1/2", "test_err": "9.00%", "lr": "0.1"}


def test_terminal_bar_only_on_a_terminal(monkeypatch):
    """eval's and bench's loops draw a bar (count, time left, img/s) only when stderr is a
    terminal, so logs and captured output stay clean."""
    import sys

    from softlabels.progress import LazyBar, terminal_bar

    monkeypatch.setattr(sys.stderr, "isatty", lambda: False, raising=False)
    assert terminal_bar("eval test", 5) is None
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    bar = terminal_bar("eval test", 5)
    assert isinstance(bar, LazyBar) and bar.total == 5 and not bar.started
    bar.close()
