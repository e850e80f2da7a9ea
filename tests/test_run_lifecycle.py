"""A run's life cycle under faults: no dead end after a crash, no lost checkpoint, one line per fault.

Each test is a class of failure (issue 10): a kill at any point of a checkpoint save, a kill
before the first checkpoint, torn results, two processes on one run directory, Ctrl-C/SIGTERM,
identity-changing overrides on resume, disk full / read-only folder, a failing DDP rank; and
the run manager's contract (teachers' full model config and provenance, distinct pipeline
seeds, eval's default checkpoint). A new command or file format gets its hostile cases here.
"""
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from helpers import expect_one_line
from softlabels.cli import main as _main
from softlabels.config import build_config
from softlabels.engine import Trainer
from softlabels.engine import checkpoint as ckpt
from softlabels.engine.runs import RunDir, RunLock, RunState, load_model_from_run, train_or_reuse
from softlabels.engine.runtime import setup_runtime
from softlabels.errors import CheckpointError, ConfigError

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--dataset", "synthetic", "--model", "lenet5", "--no-progress", "data.options.train_size=128",
        "data.options.test_size=32", "data.batch_size=32", "train.threads=1"]
TINY_OV = [a for a in TINY if "=" in a] + ["data.name=synthetic", "model.name=lenet5"]
META = {"epoch": 1, "num_classes": 2, "in_channels": 1, "identity": {"model": "m", "model_options": {},
                                                                      "dataset": "d", "method": "ce"}}


def main(argv):
    """The CLI, with KEY=VALUE overrides moved after the option flags (the form every release accepts)."""
    argv = list(argv)
    ov = [a for a in argv[1:] if "=" in a and not a.startswith("-")]
    return _main([a for a in argv if a not in ov] + ov)


def tiny_cfg(*extra):
    return build_config(None, TINY_OV + list(extra))


def _err_lines(text):
    return [l for l in text.strip().splitlines() if l.strip()]


# ------------------------------------------------------------------ a save is atomic as a pair
@pytest.mark.parametrize("die_at", ["tensors-write", "tensors-rename", "sidecar-write", "sidecar-rename"])
def test_a_kill_at_any_point_of_a_save_keeps_the_previous_pair(tmp_path, monkeypatch, die_at):
    stem = tmp_path / "last"
    ckpt.save_checkpoint(stem, {"x": torch.ones(2)}, META)

    class Killed(BaseException):
        pass

    real_replace, real_save = os.replace, ckpt.save_file
    calls = {"replace": 0}

    def replace(a, b):
        calls["replace"] += 1
        if (die_at, calls["replace"]) in (("tensors-rename", 1), ("sidecar-rename", 2)):
            raise Killed
        return real_replace(a, b)

    def save_file(*a, **k):
        if die_at == "tensors-write":
            raise Killed
        return real_save(*a, **k)

    real_open = open

    def fake_open(path, mode="r", *a, **k):
        if die_at == "sidecar-write" and str(path).endswith(".json.tmp"):
            f = real_open(path, mode, *a, **k)
            f.write('{"epoch": 2, "tok')  # half written, then the kill
            f.close()
            raise Killed
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(ckpt.os, "replace", replace)
    monkeypatch.setattr(ckpt, "save_file", save_file)
    monkeypatch.setattr(ckpt, "open", fake_open, raising=False)
    with pytest.raises(Killed):
        ckpt.save_checkpoint(stem, {"x": torch.zeros(2)}, {**META, "epoch": 2})
    monkeypatch.undo()
    tensors, meta = ckpt.load_checkpoint(stem)
    assert meta["epoch"] == 1 and torch.equal(tensors["x"], torch.ones(2))
    # and the next save succeeds and wins
    ckpt.save_checkpoint(stem, {"x": torch.full((2,), 3.0)}, {**META, "epoch": 3})
    tensors, meta = ckpt.load_checkpoint(stem)
    assert meta["epoch"] == 3 and tensors["x"][0] == 3
    assert len(ckpt.complete_generations(stem)) == 1


def test_a_lone_newer_tensor_file_is_ignored_and_legacy_pairs_load(tmp_path):
    stem = tmp_path / "best"
    ckpt.save_checkpoint(stem, {"x": torch.ones(2)}, META)
    (tmp_path / "best.g000009.safetensors").write_bytes(b"half")  # renamed, sidecar never came
    assert ckpt.load_checkpoint(stem)[1]["epoch"] == 1
    legacy = tmp_path / "old"
    ckpt.save_checkpoint(legacy, {"y": torch.ones(1)}, META)
    for ext in ("safetensors", "json"):  # the layout of softlabels < 0.2
        os.replace(tmp_path / f"old.g000001.{ext}", tmp_path / f"old.{ext}")
    assert ckpt.load_checkpoint(legacy)[1]["epoch"] == 1
    assert ckpt.checkpoint_names(tmp_path) == ["best", "old"]


def test_a_save_counts_only_after_file_and_folder_are_fsynced(tmp_path, monkeypatch):
    synced, dirs = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd)))
    monkeypatch.setattr(ckpt, "fsync_dir", lambda p: dirs.append(Path(p)))
    ckpt.save_checkpoint(tmp_path / "last", {"x": torch.ones(2)}, META)
    assert any(s.endswith(".safetensors.tmp") for s in synced) and any(s.endswith(".json.tmp") for s in synced)
    assert dirs == [tmp_path]


@pytest.mark.parametrize("meta,needle", [
    ([1, 2], "expected a JSON object"),
    ({**META, "epoch": "three"}, "epoch should be"),
    ({k: v for k, v in META.items() if k != "num_classes"}, "'num_classes' is missing"),
    ({**META, "identity": {"model": 3}}, "identity.model"),
    ({**META, "identity": "resnet8"}, "identity should be"),
])
def test_a_sidecar_of_the_wrong_shape_is_one_line(tmp_path, meta, needle):
    ckpt.save_checkpoint(tmp_path / "c", {"x": torch.ones(1)}, META)
    js = tmp_path / "c.g000001.json"
    token = json.loads(js.read_text())["token"]
    js.write_text(json.dumps(meta if not isinstance(meta, dict) else {**meta, "token": token}))
    expect_one_line(CheckpointError, lambda: ckpt.load_checkpoint(tmp_path / "c"), needle)


def test_a_training_sidecar_without_optimizer_state_is_one_line(tmp_path):
    Trainer(tiny_cfg("train.epochs=1"), tmp_path / "r").fit()
    js = next((tmp_path / "r" / "checkpoints").glob("last.g*.json"))
    meta = json.loads(js.read_text())
    meta["schedule"] = {"step_count": "x"}
    js.write_text(json.dumps(meta))
    expect_one_line(CheckpointError, lambda: Trainer(tiny_cfg("train.epochs=2"), tmp_path / "r", resume=True),
                    "schedule")


# ------------------------------------------------------------------ kills before a checkpoint, torn runs
def test_killed_before_the_first_checkpoint_resume_restarts_it(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"

    def boom(self, batch, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as m:
        m.setattr(Trainer, "train_step", boom)
        assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 130
    err = capsys.readouterr().err
    assert f"train --resume {run}" in err and "RUN_DIR" not in err
    assert RunDir(run).state() is RunState.INTERRUPTED
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 2  # --out refuses, naming --resume
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "starting it from the beginning" in capsys.readouterr().err
    assert RunDir(run).state() is RunState.FINISHED


@pytest.mark.parametrize("damage", ["final", "final-wrong-shape", "metrics", "config"])
def test_a_torn_run_is_detected_and_redone(tmp_path, damage):
    rt = setup_runtime("cpu")
    cfg = tiny_cfg("train.epochs=2")
    run = tmp_path / "r"
    first = train_or_reuse(cfg, run, rt)
    if damage == "final":
        (run / "final.json").write_text((run / "final.json").read_text()[:40])
    elif damage == "final-wrong-shape":
        (run / "final.json").write_text("[]")
    elif damage == "metrics":  # killed while appending epoch 2's line, before its checkpoint
        run = tmp_path / "cut"

        def stop(trainer, record):
            if record["epoch"] == 1:
                raise RuntimeError("killed")

        with pytest.raises(RuntimeError):
            Trainer(cfg, run, callbacks=[stop]).fit()
        line = (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()[1]
        with open(run / "metrics.jsonl", "a") as f:
            f.write(line[:30])
    else:
        (run / "config.yaml").write_text("data: {name: [")
    assert RunDir(run).state() in (RunState.TORN, RunState.RESUMABLE)
    again = train_or_reuse(cfg, run, rt)
    assert RunDir(run).state() is RunState.FINISHED
    assert again["last"]["epoch"] == 2
    if damage != "config":  # redone from the last checkpoint: the same numbers
        assert again["last"]["test"] == first["last"]["test"]


def test_compare_redoes_a_torn_run_without_a_traceback(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", *TINY, "--methods", "ce,ls", "--seeds", "1", "--epochs", "1", "--out", str(out)]
    assert main(args) == 0
    (out / "ls" / "seed0" / "final.json").write_text('{"run": {"meth')
    capsys.readouterr()
    assert main(args) == 0
    assert "torn" in capsys.readouterr().err
    assert RunDir(out / "ls" / "seed0").state() is RunState.FINISHED


# ------------------------------------------------------------------ the lock
def _holder(run: Path):
    code = ("import sys, time; sys.path.insert(0, %r); from softlabels.engine.runs import RunLock; "
            "RunLock(%r).acquire(); print('held', flush=True); time.sleep(60)") % (str(ROOT / "src"), str(run))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "held"
    return p


def test_a_second_process_stops_naming_the_owner(tmp_path, capsys):
    run = tmp_path / "r"
    holder = _holder(run)
    try:
        assert RunLock(run).owner()["pid"] == holder.pid
        assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 1
        err = _err_lines(capsys.readouterr().err)
        assert len(err) == 1 and f"PID {holder.pid} on {socket.gethostname()} since" in err[0]
        (run / "config.yaml").write_text("{}")  # a run in progress there: the owner is still what is named
        assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 1
        assert f"PID {holder.pid}" in capsys.readouterr().err
        (run / "config.yaml").unlink()
    finally:
        holder.kill()
        holder.wait()
    # the kernel released the dead holder's lock: it is taken over
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    assert not (run / ".lock").exists()


def test_compare_rerun_over_a_run_in_use_is_one_line(tmp_path, capsys):
    out = tmp_path / "cmp"
    holder = _holder(out / "ce" / "seed0")
    try:
        assert main(["compare", *TINY, "--methods", "ce", "--seeds", "1", "--epochs", "1", "--out", str(out)]) == 1
        err = _err_lines(capsys.readouterr().err)
        assert len(err) == 1 and f"PID {holder.pid}" in err[0]
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    run = tmp_path / "r"
    run.mkdir()
    (run / ".lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname(),
                                           "started": "2026-11-29T10:00:00+00:00", "command": "softlabels train"}))
    assert RunLock(run).owner() is None
    with RunLock(run) as lock:
        info = lock.read()
        assert info["pid"] == os.getpid() and info["host"] == socket.gethostname() and info["started"]
        with RunLock(run):  # re-entrant in one process
            pass
        assert (run / ".lock").exists()
    assert not (run / ".lock").exists()


# ------------------------------------------------------------------ Ctrl-C and SIGTERM
def _cli(*args, env_extra=None, **kw):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src"), **(env_extra or {})}
    return [sys.executable, "-m", "softlabels", *args], env


SIG_ARGS = ["--dataset", "digits", "--model", "resnet8", "--epochs", "3", "--no-progress", "train.deterministic=true",
            "train.threads=1", "data.batch_size=128", "schedule.name=step", "schedule.milestones=[2]"]


def test_sigterm_stops_like_ctrl_c_and_the_resumed_run_equals_an_uninterrupted_one(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    cmd, env = _cli("train", *SIG_ARGS, "--out", str(full))
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    cmd, env = _cli("train", *SIG_ARGS, "--out", str(cut))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not ckpt.exists(cut / "checkpoints" / "last"):  # the first epoch's checkpoint, then the signal
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    t0 = time.time()
    _, err = proc.communicate(timeout=60)
    assert time.time() - t0 < 30  # a bounded stop
    assert proc.returncode == 128 + signal.SIGTERM
    lines = _err_lines(err)
    assert len(lines) == 1 and "SIGTERM" in lines[0] and f"train --resume {cut}" in lines[0], err
    assert not (cut / "final.json").exists() and not (cut / ".lock").exists()
    state = RunDir(cut).state()
    assert state is RunState.RESUMABLE
    cmd, env = _cli("train", "--resume", str(cut), "--no-progress")
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=300)
    a = json.loads((full / "final.json").read_text())
    b = json.loads((cut / "final.json").read_text())
    for block in ("last", "best"):
        assert a[block] == b[block], block


def test_interrupted_message_names_the_real_run_directory(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"

    def interrupt_after_first(trainer, record):
        raise KeyboardInterrupt

    real_init = Trainer.__init__

    def init(self, *a, **k):
        real_init(self, *a, **k)
        self.callbacks.append(interrupt_after_first)

    monkeypatch.setattr(Trainer, "__init__", init)
    assert main(["train", *TINY, "--epochs", "3", "--out", str(run)]) == 130
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and str(run) in err[0] and "SIGINT" in err[0] and "RUN_DIR" not in err[0]
    assert RunDir(run).state() is RunState.RESUMABLE


# ------------------------------------------------------------------ overrides on resume
@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("fin") / "r"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    return run


@pytest.mark.parametrize("override,key", [("data.label_noise=0.2", "data.label_noise"),
                                          ("optim.lr=0.5", "optim.lr"),
                                          ("model.name=resnet8", "model.name"),
                                          ("method.name=ls", "method.name"),
                                          ("train.seed=3", "train.seed")])
def test_resume_refuses_overrides_that_change_the_run(finished_run, capsys, override, key):
    assert main(["train", "--resume", str(finished_run), override, "--no-progress"]) == 2
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and err[0].startswith(f"softlabels: error: {key}") and "another run" in err[0]


def test_resume_allows_harmless_overrides_and_extends_epochs(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "train.device=cpu", "train.eval_every=1", "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out
    assert main(["train", "--resume", str(run), "--epochs", "2", "--no-progress"]) == 0
    assert json.loads((run / "final.json").read_text())["last"]["epoch"] == 2
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "--epochs", "1", "--no-progress"]) == 2
    assert "shorten" in capsys.readouterr().err


def test_reuse_refuses_a_different_run_in_the_same_directory(tmp_path):
    rt = setup_runtime("cpu")
    train_or_reuse(tiny_cfg("train.epochs=1"), tmp_path / "r", rt)
    expect_one_line(ConfigError, lambda: train_or_reuse(tiny_cfg("train.epochs=1", "optim.lr=0.01"), tmp_path / "r", rt),
                    "optim.lr", str(tmp_path / "r"))


# ------------------------------------------------------------------ disk full, read-only folder
def test_disk_full_while_saving_keeps_the_previous_checkpoint(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    real = ckpt.save_file
    calls = {"n": 0}

    def full_disk(tensors, path, **k):
        calls["n"] += 1
        if calls["n"] > 2:  # epoch 1 (best, last) saved, then the disk is full
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        return real(tensors, path, **k)

    monkeypatch.setattr(ckpt, "save_file", full_disk)
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run)]) == 1
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and "No space left on device" in err[0] and "ENOSPC" in err[0] and str(run) in err[0]
    monkeypatch.undo()
    assert ckpt.load_checkpoint(run / "checkpoints" / "last")[1]["epoch"] == 1
    assert not list((run / "checkpoints").glob("*.tmp"))
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0  # and it resumes from there


def test_read_only_output_folder_is_one_line(tmp_path, capsys, monkeypatch):
    run = tmp_path / "r"
    real_open = open

    def read_only(path, mode="r", *a, **k):
        if "w" in mode or "a" in mode:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr(ckpt, "open", read_only, raising=False)
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run)]) == 1
    err = _err_lines(capsys.readouterr().err)
    assert len(err) == 1 and "Read-only file system" in err[0] and str(run) in err[0]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_for_real(tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["train", *TINY, "--epochs", "1", "--out", str(ro / "r")]) == 1
        err = _err_lines(capsys.readouterr().err)
        assert len(err) == 1 and "Permission denied" in err[0]
    finally:
        ro.chmod(0o755)


# ------------------------------------------------------------------ DDP: one line per failing rank
FAULT = """
import os, sys
sys.path.insert(0, {src!r})
from softlabels.engine.trainer import Trainer
from softlabels.errors import DataError
real = Trainer.train_step
def step(self, batch, _n=[0], **kwargs):
    _n[0] += 1
    if os.environ["RANK"] == "1" and _n[0] == 2:
        raise DataError("image 17 of the training set is unreadable")
    return real(self, batch, **kwargs)
Trainer.train_step = step
from softlabels.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_a_failing_ddp_rank_gives_one_line_per_rank_and_no_hang(tmp_path):
    script = tmp_path / "fault.py"
    script.write_text(FAULT.format(src=str(ROOT / "src")))
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "OMP_NUM_THREADS": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
               "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29547",
               "SOFTLABELS_DIST_TIMEOUT": "60"}
        procs.append(subprocess.Popen([sys.executable, str(script), "train", "--epochs", "2", "--out",
                                       str(tmp_path / "ddp"), *TINY], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, cwd=tmp_path))
    t0 = time.time()
    outs = [p.communicate(timeout=120) for p in procs]
    assert time.time() - t0 < 100
    for rank, (p, (_, err)) in enumerate(zip(procs, outs)):
        assert p.returncode != 0, rank
        assert "Traceback" not in err, err[-2000:]
        mine = [l for l in err.splitlines() if l.startswith("softlabels: error:")]
        assert len(mine) == 1 and mine[0].startswith(f"softlabels: error: rank {rank}: "), err[-2000:]
    assert "image 17 of the training set is unreadable" in outs[1][1]


# ------------------------------------------------------------------ teachers, seeds, eval
def test_compare_teacher_keeps_a_full_model_config_and_students_record_it(tmp_path):
    out = tmp_path / "cmp"
    common = ["compare", "--methods", "kd", "--seeds", "1", "--epochs", "1", "--out", str(out), "--model", "resnet8",
              "--teacher-model", "resnet20", *[a for a in TINY if a not in ("--model", "lenet5")]]
    assert main([*common, "model.options.shortcut=A"]) == 0
    tdir = out / "teacher-ce-resnet20" / "seed0"
    tcfg = yaml.safe_load((tdir / "config.yaml").read_text())
    assert tcfg["model"] == {"name": "resnet20", "options": {"shortcut": "A"}, "weights": None}
    env = json.loads((out / "kd" / "seed0" / "environment.json").read_text())
    (taught,) = env["teachers"]
    assert taught["run"] == str(tdir.resolve()) and taught["checkpoint"] == "best"
    assert taught["sha256"] == ckpt_sha(Path(taught["file"])) and Path(taught["file"]).parent == (tdir / "checkpoints").resolve()
    # teacher: overrides set the teacher's own options (and give it its own folder)
    assert main([*common, "model.options.shortcut=A", "teacher:model.options.shortcut=B"]) == 0
    (other,) = [d for d in out.iterdir() if d.name.startswith("teacher-ce-resnet20-")]
    assert yaml.safe_load((other / "seed0" / "config.yaml").read_text())["model"]["options"] == {"shortcut": "B"}


def ckpt_sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_pipeline_stages_get_distinct_seeds_where_independent(tmp_path):
    from softlabels.pipeline import _check_distinct, parse_pipeline, stage_config

    base, stages = parse_pipeline({"base": {"data": {"name": "digits"}}, "stages": [
        {"name": "a", "config": {"method": {"name": "ce"}}},
        {"name": "b", "config": {"method": {"name": "ce"}}, "seed_offset": 1},
        {"name": "m", "sequence": 3}]})
    seeds = {s.name: stage_config(base, s, 2, []).train.seed for s in stages}
    assert seeds == {"a": 2, "b": 1002, "m1": 2, "m2": 1002, "m3": 2002}
    base, twins = parse_pipeline({"base": {}, "stages": [{"name": "a"}, {"name": "b"}]})
    plans = {s.name: stage_config(base, s, 0, []) for s in twins}
    expect_one_line(ConfigError, lambda: _check_distinct(twins, plans, "p.yaml"), "'a' and 'b'", "seed_offset")


def test_pipeline_ensemble_of_stages_and_run_directories(tmp_path, capsys):
    other = tmp_path / "other"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(other)]) == 0
    p = tmp_path / "p.yaml"
    base = {"data": {"name": "synthetic", "options": {"train_size": 128, "test_size": 32}, "batch_size": 32},
            "model": {"name": "lenet5"}, "train": {"epochs": 1, "threads": 1}}
    p.write_text(yaml.safe_dump({"base": base, "stages": [
        {"name": "ce", "config": {"method": {"name": "ce"}}},
        {"name": "ens", "ensemble": ["ce", {"run": str(other), "checkpoint": "last"}]}]}))
    assert main(["pipeline", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    ens = json.loads((tmp_path / "o" / "seed0" / "ens" / "ensemble.json").read_text())
    assert ens["stages"] == ["ce", str(other)] and len(ens["members"]) == 2


def test_eval_without_validation_split_uses_the_checkpoint_final_json_names(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", *TINY, "--epochs", "1", "--out", str(run), "data.val_fraction=0"]) == 0
    final = json.loads((run / "final.json").read_text())
    assert final["best_checkpoint"] == "last" and "best" not in RunDir(run).checkpoint_names()
    assert main(["eval", str(run)]) == 0
    got = json.loads((run / "eval" / "last-test.json").read_text())
    assert got["top1_error"] == pytest.approx(final["best"]["test"]["top1_error"])
    assert load_model_from_run(run).softlabels_source["checkpoint"] == "last"
    capsys.readouterr()
    assert main(["eval", str(run), "--checkpoint", "epoch7"]) == 1
    assert "available: last" in capsys.readouterr().err


def test_a_weights_file_teacher_keeps_the_stage_model_options(tmp_path):
    """{weights: FILE, model: NAME} without options: the options follow the stage's model."""
    from safetensors.torch import save_file

    from softlabels.config import ModelConfig
    from softlabels.engine.runs import load_teacher, teacher_model_options
    from softlabels.models import build_model

    model = build_model("resnet8", 10, 1, {"shortcut": "A"})
    weights = tmp_path / "t.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    student = ModelConfig(name="resnet8", options={"shortcut": "A"})
    teacher = load_teacher({"weights": str(weights), "model": "resnet8"}, num_classes=10, in_channels=1,
                           student=student)
    assert teacher.softlabels_source["model"] == {"name": "resnet8", "options": {"shortcut": "A"}}
    assert teacher.softlabels_source["sha256"] == ckpt_sha(weights)
    assert teacher_model_options(student, "resnet20") == {"shortcut": "A"}
    assert teacher_model_options(student, "lenet5") == {}
    assert teacher_model_options(student, "resnet20", {"shortcut": "B"}) == {"shortcut": "B"}


def test_a_run_killed_between_the_renames_of_a_save_resumes_to_the_same_result(tmp_path, capsys, monkeypatch):
    args = ["train", *TINY, "--epochs", "3", "train.deterministic=true"]
    assert main([*args, "--out", str(tmp_path / "full")]) == 0
    real = os.replace

    def kill_at_epoch2_sidecar(a, b):
        if str(b).endswith("last.g000002.json"):  # tensors of epoch 2 renamed, sidecar not yet
            raise KeyboardInterrupt
        return real(a, b)

    monkeypatch.setattr(ckpt.os, "replace", kill_at_epoch2_sidecar)
    cut = tmp_path / "cut"
    assert main([*args, "--out", str(cut)]) == 130
    monkeypatch.undo()
    assert ckpt.load_checkpoint(cut / "checkpoints" / "last")[1]["epoch"] == 1
    assert main(["train", "--resume", str(cut), "--no-progress"]) == 0
    a, b = (json.loads((d / "final.json").read_text()) for d in (tmp_path / "full", cut))
    assert a["last"] == b["last"] and a["best"] == b["best"]


def test_pipeline_redoes_a_torn_stage_and_a_torn_ensemble(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    base = {"data": {"name": "synthetic", "options": {"train_size": 128, "test_size": 32}, "batch_size": 32},
            "model": {"name": "lenet5"}, "train": {"epochs": 1, "threads": 1}}
    p.write_text(yaml.safe_dump({"base": base, "stages": [
        {"name": "a", "config": {"method": {"name": "ce"}}},
        {"name": "b", "config": {"method": {"name": "ce"}}, "seed_offset": 1},
        {"name": "ens", "ensemble": ["a", "b"]}]}))
    out = tmp_path / "o"
    assert main(["pipeline", str(p), "--out", str(out), "--no-progress"]) == 0
    first = json.loads((out / "seed0" / "ens" / "ensemble.json").read_text())
    (out / "seed0" / "b" / "final.json").write_text('{"last": ')
    (out / "seed0" / "ens" / "ensemble.json").write_text('{"stages": ["a", ')
    capsys.readouterr()
    assert main(["pipeline", str(p), "--out", str(out), "--no-progress"]) == 0
    assert "torn" in capsys.readouterr().err
    assert RunDir(out / "seed0" / "b").state() is RunState.FINISHED
    again = json.loads((out / "seed0" / "ens" / "ensemble.json").read_text())
    assert again["members"] == first["members"]
    a, b = (yaml.safe_load((out / "seed0" / s / "config.yaml").read_text())["train"]["seed"] for s in "ab")
    assert (a, b) == (0, 1000)
