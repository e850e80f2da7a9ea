"""Parallel and cluster execution of a study (issue 15): ``softlabels study --jobs/--launcher``."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from softlabels.cli import main
from softlabels.errors import ConfigError, SoftlabelsError
from softlabels.launch import (LaunchOptions, StudyLock, child_command, estimate_wall, parse_mem, parse_time,
                               run_resources)
from softlabels.study import load_study, plan_study

pytestmark = pytest.mark.usefixtures("one_thread")


def study_file(tmp_path: Path, **extra) -> Path:
    """6 runs on digits (2 seeds × CE, a trained teacher and KD taught by it), 1 epoch,
    deterministic, one thread per run: the same numbers in any process."""
    d = {"title": "launch test", "paper": "none", "source": "test", "metrics": ["top1_error", "nll"], "seeds": 2,
         "base": {"data": {"name": "digits", "batch_size": 128, "train_subset": 400}, "model": {"name": "resnet8"},
                  "optim": {"lr": 0.05}, "schedule": {"name": "constant"},
                  "train": {"epochs": 1, "deterministic": True, "threads": 1}},
         "columns": {"d": {"label": "digits"}},
         "teachers": {"t": {"config": {"train": {"epochs": 1}}}},
         "rows": [{"label": "CE", "method": "ce"}, {"label": "KD", "method": "kd", "teachers": ["t"]}]}
    d.update(extra)
    p = tmp_path / "launch-test.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def cells(out: Path) -> dict:
    doc = json.loads((out / "table.json").read_text())
    return {(c["line"], c["column"], c["metric"]): c["values"] for c in doc["cells"]}


def test_jobs_2_gives_the_table_of_jobs_1(tmp_path, capsys):
    path = study_file(tmp_path)
    base = ["study", str(path), "--no-progress", "--device", "cpu"]
    assert main(base + ["--out", str(tmp_path / "seq")]) == 0
    capsys.readouterr()
    assert main(base + ["--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    err = capsys.readouterr().err
    assert "2 CPU process(es) at once" in err and "[6/6]" in err
    status = json.loads((tmp_path / "par/status.json").read_text())
    assert len(status) == 6 and {v["status"] for v in status.values()} == {"done"}
    assert all(Path(v["log"]).is_file() for v in status.values())
    seq, par = cells(tmp_path / "seq"), cells(tmp_path / "par")
    assert seq == par and all(None not in v for v in par.values())
    # the student waited for its teacher: the teacher's final.json is older than the student's start
    t = tmp_path / "par/_teachers/t/d/seed0/final.json"
    assert t.stat().st_mtime <= (tmp_path / "par/kd/d/seed0/config.yaml").stat().st_mtime
    # a second call reuses everything without starting a process
    assert main(base + ["--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    assert "6 already finished, 0 to run" in capsys.readouterr().err


def test_a_failing_run_is_reported_and_the_others_finish(tmp_path, capsys):
    """Bad's teacher weights file does not exist: its process fails, the ensemble taught by it is
    skipped, CE finishes, the table marks the missing cells."""
    path = study_file(tmp_path, seeds=1, teachers={"gone": {"weights": "{data_root}/missing.pth",
                                                            "model": {"name": "resnet8"}}},
                      rows=[{"label": "CE", "method": "ce"}, {"label": "Bad", "method": "kd", "teachers": ["gone"]},
                            {"label": "Ens", "method": "ce", "teachers": ["Bad"], "ensemble": {"members": 2}}])
    out = tmp_path / "o"
    code = main(["study", str(path), "--no-progress", "--device", "cpu", "--out", str(out), "--jobs", "2",
                 "--data-root", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 1
    assert "Bad · d · seed 0: FAILED" in captured.err and "missing.pth" in captured.err
    assert captured.err.strip().splitlines()[-1].startswith("softlabels: error: study launch-test: 4 run(s)")
    status = json.loads((out / "status.json").read_text())
    assert status["ce/d/seed0"]["status"] == "done"
    assert status["bad/d/seed0"]["status"] == "failed" and "missing.pth" in status["bad/d/seed0"]["error"]
    assert "missing.pth" in Path(status["bad/d/seed0"]["log"]).read_text()
    assert status["ens--member1/d/seed0"]["status"] == "skipped"
    assert status["ens--ensemble/d/seed0"]["status"] == "skipped"
    assert "missing (0/1)" in (out / "table.md").read_text()


def test_slurm_path_with_submitits_local_executor_resubmits_only_what_failed(tmp_path, capsys):
    pytest.importorskip("submitit")
    from safetensors.torch import save_file

    from softlabels.models import build_model

    path = study_file(tmp_path, seeds=1, teachers={"file": {"weights": "{data_root}/teacher.safetensors",
                                                            "model": {"name": "resnet8"}}},
                      columns={"d": {"label": "digits", "resources": {"time": "00:10:00", "cpus": 1, "mem": "2G"}}})
    d = yaml.safe_load(path.read_text())
    d["rows"][1]["teachers"] = ["file"]
    path.write_text(yaml.safe_dump(d))
    out = tmp_path / "o"
    args = ["study", str(path), "--no-progress", "--device", "cpu", "--out", str(out), "--launcher",
            "submitit-local", "--data-root", str(tmp_path)]
    assert main(args) == 1  # the teacher's weights file is not there yet: the KD job fails
    err = capsys.readouterr().err
    assert "submitit local executor" in err and "KD · d · seed 0: FAILED" in err
    status = json.loads((out / "status.json").read_text())
    assert status["kd/d/seed0"]["status"] == "failed" and "teacher.safetensors" in status["kd/d/seed0"]["error"]
    assert status["ce/d/seed0"]["status"] == "done" and status["ce/d/seed0"]["job"]
    assert list((out / "_launch/submitit").glob("*_submitted.pkl"))
    torch.manual_seed(0)
    save_file(build_model("resnet8", 10, 1, {}).state_dict(), str(tmp_path / "teacher.safetensors"))
    assert main(args) == 0  # re-run: the finished runs are collected, only KD is submitted again
    err = capsys.readouterr().err
    assert "1 already finished, 1 to run" in err
    status = json.loads((out / "status.json").read_text())
    assert status["kd/d/seed0"]["status"] == "done"
    assert status["ce/d/seed0"]["status"] == "reused"
    assert json.loads((out / "_launch/jobs.json").read_text()) == {}


def test_multi_gpu_column_runs_under_torchrun(tmp_path):
    path = study_file(tmp_path, columns={"d": {"resources": {"gpus": 4}}, "e": {}})
    plan = plan_study(load_study(path), tmp_path / "o", seeds=[0])
    spec = plan.by_id()["ce/d/seed0"]
    assert run_resources(plan, spec, LaunchOptions())["gpus"] == 4
    assert run_resources(plan, plan.by_id()["ce/e/seed0"], LaunchOptions(gpus_per_run=2))["gpus"] == 2
    cmd = child_command(Path("req.json"), spec.id, 4, device="cuda")
    assert cmd[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4"]
    assert cmd[5:] == ["-m", "softlabels.launch", "--request", "req.json", "--run-id", "ce/d/seed0", "--device", "cuda"]
    assert child_command(Path("r"), "x", 1)[:3] == [sys.executable, "-m", "softlabels.launch"]
    # a 4-GPU run cannot start on 2 CPU slots: one line before anything runs
    with pytest.raises(ConfigError, match="asks for 4 GPUs"):
        from softlabels.study import run_plan
        run_plan(plan, launch=LaunchOptions(jobs=2), device="cpu")
    # the dry run's wall time: teachers before students, 4-GPU runs take 4 slots at 1/4 of the time
    secs = {r.id: 100.0 for r in plan.runs}
    wall1, dev = estimate_wall(plan, secs, 1)
    assert dev == 100.0 * len(plan.runs)
    wall8, _ = estimate_wall(plan, secs, 8)
    assert wall8 < wall1 and wall8 >= 2 * 25.0  # teacher then KD on column d, 4 GPUs each


def test_ddp_run_through_torchrun_on_cpu(tmp_path, capsys):
    """A column with resources.gpus: 2 on CPU: two gloo processes under torchrun, one run."""
    path = study_file(tmp_path, seeds=1, columns={"d": {"resources": {"gpus": 2}}},
                      rows=[{"label": "CE", "method": "ce"}])
    d = yaml.safe_load(path.read_text())
    d.pop("teachers")
    path.write_text(yaml.safe_dump(d))
    out = tmp_path / "o"
    code = main(["study", str(path), "--no-progress", "--device", "cpu", "--out", str(out), "--jobs", "2"])
    log = (out / "_launch/logs/ce__d__seed0.log").read_text()
    assert code == 0, log
    assert "torch.distributed.run" in log.splitlines()[0]
    assert json.loads((out / "ce/d/seed0/final.json").read_text())["last"]["test"]["top1_error"] >= 0


def test_resources_and_options_are_checked(tmp_path, capsys):
    for bad, needle in (({"gpus": 0}, "resources.gpus: expected an integer"),
                        ({"gpu": 2}, "resources.gpu: unknown key"),
                        ({"time": "soon"}, "resources.time: expected minutes"),
                        ({"mem": "lots"}, "resources.mem: expected a size")):
        path = study_file(tmp_path, columns={"d": {"resources": bad}})
        assert main(["study", str(path), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and needle in err and "launch-test.yaml: columns.d" in err, err
    path = study_file(tmp_path)
    for flags, needle in ((["--jobs", "0"], "--jobs: expected an integer from 1"), (["--devices", "a,b"], "--devices"),
                          (["--time", "x"], "--time"), (["--mem", "9Q"], "--mem")):
        assert main(["study", str(path), "--out", str(tmp_path / "o")] + flags) == 2
        err = capsys.readouterr().err
        assert err.startswith("softlabels: error: ") and needle in err and err.count("\n") == 1
    if not torch.cuda.is_available():
        assert main(["study", str(path), "--out", str(tmp_path / "o"), "--devices", "0"]) == 2
        assert "--devices: GPU 0 is not visible (0 GPU(s) here)" in capsys.readouterr().err
    assert parse_time("1-02:30:00") == 1590 and parse_time(90) == 90 and parse_mem("512M") == 0.5


def test_one_launcher_per_study_folder(tmp_path):
    with StudyLock(tmp_path):
        with pytest.raises(SoftlabelsError, match="a launcher is already running this study .pid"):
            with StudyLock(tmp_path):
                pass
    with StudyLock(tmp_path):  # released
        pass


def test_without_submitit_the_slurm_launcher_says_so_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "submitit", None)
    path = study_file(tmp_path)
    assert main(["study", str(path), "--out", str(tmp_path / "o"), "--launcher", "slurm"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "needs submitit: pip install 'softlabels[slurm]'" in err


def test_dry_run_prints_device_hours_and_wall_time(tmp_path, capsys):
    path = study_file(tmp_path)
    assert main(["study", str(path), "--dry-run", "--throughput", "1000", "--jobs", "4",
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "device-hours of the runs to do:" in out
    assert "wall time at --jobs 1:" in out and "wall time at --jobs 4:" in out and "wall time at --jobs 8:" in out


def test_slurm_launcher_off_a_cluster_says_so_in_one_line(tmp_path, capsys):
    pytest.importorskip("submitit")
    import shutil

    if shutil.which("srun"):
        pytest.skip("this machine is a SLURM node")
    path = study_file(tmp_path)
    assert main(["study", str(path), "--out", str(tmp_path / "o"), "--launcher", "slurm"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--launcher slurm: submitit cannot submit here" in err
