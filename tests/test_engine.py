"""End-to-end training, exact resume, DDP equivalence and checkpoint errors."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from softlabels.config import build_config
from softlabels.engine import Trainer, read_metrics
from softlabels.engine import checkpoint as ckpt
from softlabels.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]


def test_digits_end_to_end_beats_90_percent(tmp_path):
    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", "method.name=ce", "train.epochs=12"])
    final = Trainer(cfg, tmp_path / "run").fit()
    assert final["last"]["test"]["top1_error"] < 10.0
    assert final["best"]["test"]["top1_error"] < 10.0
    # the best epoch is chosen on validation and its test numbers are that epoch's
    rows = {r["epoch"]: r for r in read_metrics(tmp_path / "run")}
    best = final["best"]
    assert rows[best["epoch"]]["test"] == best["test"]
    assert min(r["val"]["top1_error"] for r in rows.values()) == best["val"]["top1_error"]
    for name in ("config.yaml", "environment.json", "final.json", "metrics.jsonl", "data.json"):
        assert (tmp_path / "run" / name).is_file(), name
    # one complete generation of each checkpoint is kept
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.suffix != ".tmp") == [
        f"{n}.g{g:06d}.{e}" for n, g in (("best", ckpt.complete_generations(tmp_path / "run" / "checkpoints" / "best")[0]),
                                         ("last", 12)) for e in ("json", "safetensors")]
    env = json.loads((tmp_path / "run" / "environment.json").read_text())
    assert env["torch"] == torch.__version__ and "git" in env


class Interrupt(Exception):
    pass


def _resume_cfg():
    return build_config(None, ["data.name=digits", "model.name=resnet8", "method.name=ols", "train.epochs=4",
                               "train.deterministic=true", "data.batch_size=128", "schedule.name=step",
                               "schedule.milestones=[3]", "optim.nesterov=true"])


def _strip_times(rows):
    return [{k: v for k, v in r.items() if not k.endswith("time_s")} for r in rows]


def test_resume_equals_uninterrupted(tmp_path):
    full = Trainer(_resume_cfg(), tmp_path / "full").fit()

    def stop_after_two(trainer, record):
        if record["epoch"] == 2:
            raise Interrupt

    with pytest.raises(Interrupt):
        Trainer(_resume_cfg(), tmp_path / "cut", callbacks=[stop_after_two]).fit()
    assert not (tmp_path / "cut" / "final.json").exists()
    resumed = Trainer(_resume_cfg(), tmp_path / "cut", resume=True)
    assert resumed.start_epoch == 2
    final = resumed.fit()
    for block in ("last", "best"):
        assert final[block] == full[block], block  # exactly equal, not approximately
    assert _strip_times(read_metrics(tmp_path / "cut")) == _strip_times(read_metrics(tmp_path / "full"))
    a, _ = ckpt.load_checkpoint(tmp_path / "full" / "checkpoints" / "last")
    b, _ = ckpt.load_checkpoint(tmp_path / "cut" / "checkpoints" / "last")
    for k in a:
        if not k.startswith("rng."):
            assert torch.equal(a[k], b[k]), k
    assert "method.methods.ols.soft_label_matrix" in a


def test_resume_refuses_checkpoint_of_another_model(tmp_path):
    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", "train.epochs=1"])
    Trainer(cfg, tmp_path / "r").fit()
    other = build_config(None, ["data.name=digits", "model.name=resnet20", "train.epochs=2"])
    with pytest.raises(CheckpointError, match="resnet8") as info:
        Trainer(other, tmp_path / "r", resume=True)
    assert "\n" not in str(info.value)


def test_corrupt_checkpoint_is_one_line_error(tmp_path):
    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", "train.epochs=1"])
    Trainer(cfg, tmp_path / "r").fit()
    st = tmp_path / "r" / "checkpoints" / "last.g000001.safetensors"
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(CheckpointError) as info:
        ckpt.load_checkpoint(tmp_path / "r" / "checkpoints" / "last")
    assert "\n" not in str(info.value) and "last.g000001.safetensors" in str(info.value)


META = {"epoch": 1, "num_classes": 2, "in_channels": 1,
        "identity": {"model": "m", "model_options": {}, "dataset": "d", "method": "ce"}}


def test_mixed_checkpoint_pair_detected(tmp_path):
    """A sidecar of one save beside the tensors of another (copied by hand) is refused."""
    ckpt.save_checkpoint(tmp_path / "a", {"x": torch.ones(2)}, META)
    first_json = (tmp_path / "a.g000001.json").read_text()
    ckpt.save_checkpoint(tmp_path / "a", {"x": torch.zeros(2)}, {**META, "epoch": 2})
    (tmp_path / "a.g000002.json").write_text(first_json)
    with pytest.raises(CheckpointError, match="different saves"):
        ckpt.load_checkpoint(tmp_path / "a")


DDP_ARGS = ["--dataset", "synthetic", "--model", "lenet5", "--method", "ols", "--epochs", "2", "--no-progress",
            "data.options.train_size=256", "data.options.test_size=64", "data.batch_size=64",
            "train.deterministic=true", "train.threads=1", "data.val_fraction=0.125"]


def _final_and_state(run):
    final = json.loads((run / "final.json").read_text())
    tensors, _ = ckpt.load_checkpoint(run / "checkpoints" / "last")
    return final, tensors


def test_ddp_two_processes_match_single_process(tmp_path):
    """2 gloo processes, global batch 64 (32 each) vs 1 process, batch 64.

    Same samples, same crops (drawn for the global batch), gradients averaged by DDP, OLS
    accumulators all-reduced. Stated tolerance: weights within 1e-5, OLS matrix within 1e-5,
    test metrics within 1e-3 (float summation order is the only difference).
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "softlabels", "train", *DDP_ARGS, "--out", str(single)],
                   check=True, env=env, cwd=tmp_path, capture_output=True, timeout=300)
    ddp = tmp_path / "ddp"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           "--master_port", "29531", "-m", "softlabels", "train", *DDP_ARGS, "--out", str(ddp)],
                          env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    fa, ta = _final_and_state(single)
    fb, tb = _final_and_state(ddp)
    for k in ta:
        if k.startswith("model.") or k.startswith("method."):
            assert torch.allclose(ta[k], tb[k], atol=1e-5), k
    assert not torch.allclose(ta["method.methods.ols.soft_label_matrix"], torch.full_like(ta["method.methods.ols.soft_label_matrix"], 0.1))
    for block in ("last", "best"):
        for m, v in fa[block]["test"].items():
            assert fb[block]["test"][m] == pytest.approx(v, abs=1e-3), (block, m)
    assert json.loads((ddp / "environment.json").read_text())["world_size"] == 2


def test_method_requires_is_independent_of_the_class_count():
    """compare asks what each method needs before any data is read: options that are checked
    against K (AdaCos's default scale needs K >= 3, focal's per-class weights need K entries)
    must not make that fail."""
    from softlabels.engine.runs import method_requires

    assert method_requires(build_config(None, ["method.name=adacos"])).teachers == 0
    alpha = "[" + ",".join(["1.0"] * 10) + "]"
    cfg = build_config(None, ["data.name=digits", "method.name=focal", f"method.options.alpha={alpha}"])
    assert method_requires(cfg).teachers == 0
    assert method_requires(build_config(None, ["method.name=kd"])).teachers == 1
    assert method_requires(build_config(None, ["method.name=cskd"])).pairs
