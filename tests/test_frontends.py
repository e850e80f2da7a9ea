"""compare and pipeline as front-ends over the study runner (issue 11 "One runner, not four",
issue 15 for compare/pipeline): --jobs gives the numbers of --jobs 1, folders of the earlier
layout are reused, the one ensemble evaluation takes the run lock, --dry-run plans only."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from softlabels.cli import main

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]

# digits, a 400-image subset, deterministic, one thread: the same numbers in any process
SMALL = ["--dataset", "digits", "--model", "resnet8", "--epochs", "1", "--no-progress", "--device", "cpu",
         "data.train_subset=400", "data.batch_size=128", "train.deterministic=true", "train.threads=1",
         "schedule.name=constant", "optim.lr=0.05"]
BASE = {"data": {"name": "digits", "train_subset": 400, "batch_size": 128}, "model": {"name": "resnet8"},
        "optim": {"lr": 0.05}, "schedule": {"name": "constant"},
        "train": {"epochs": 1, "deterministic": True, "threads": 1, "device": "cpu"}}


def _numbers(summary: Path) -> list:
    return [(r["label"], r["seeds"], r["metrics"]) for r in json.loads(summary.read_text())["rows"]]


def test_compare_jobs_2_gives_the_table_of_jobs_1(tmp_path, capsys):
    args = ["compare", *SMALL, "--methods", "ce,kd", "--seeds", "2"]
    assert main(args + ["--out", str(tmp_path / "seq")]) == 0
    seq_out = capsys.readouterr().out
    assert main(args + ["--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    par_out = capsys.readouterr().out
    table = lambda text: text[text.index("Test metrics"):text.index("Run directories")]  # noqa: E731
    assert table(seq_out) == table(par_out)  # identical numbers
    assert _numbers(tmp_path / "seq/summary.json") == _numbers(tmp_path / "par/summary.json")
    par = tmp_path / "par"
    status = json.loads((par / "status.json").read_text())
    assert sorted(status) == ["ce/seed0", "ce/seed1", "kd/seed0", "kd/seed1"]
    assert all(Path(v["log"]).is_file() for v in status.values())  # each run was its own process
    # kd waited for its teacher, the ce run of its seed (the "twin": no teacher-* folder)
    assert not any(d.name.startswith("teacher-") for d in par.iterdir())
    for s in (0, 1):
        assert (par / f"ce/seed{s}/final.json").stat().st_mtime <= (par / f"kd/seed{s}/config.yaml").stat().st_mtime
        env = json.loads((par / f"kd/seed{s}/environment.json").read_text())
        assert env["teachers"][0]["run"] == str((par / f"ce/seed{s}").resolve())
    # the translated study lies next to the runs; a second call trains nothing
    assert (par / "study.yaml").is_file()
    stamp = (par / "kd/seed1/final.json").stat().st_mtime_ns
    assert main(args + ["--out", str(par), "--jobs", "2"]) == 0
    assert (par / "kd/seed1/final.json").stat().st_mtime_ns == stamp


PIPELINE = {"base": BASE, "stages": [
    {"name": "teacher", "config": {"method": {"name": "ce"}}},
    {"name": "student", "config": {"method": {"name": "kd"}}, "teachers": ["teacher"]},
    {"name": "other", "config": {"method": {"name": "ls"}}},
    {"name": "ens", "ensemble": ["teacher", "student", "other"]}]}


def test_pipeline_jobs_2_matches_jobs_1(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(PIPELINE))
    for out, extra in (("seq", []), ("par", ["--jobs", "2"])):
        assert main(["pipeline", str(p), "--out", str(tmp_path / out), "--no-progress", *extra]) == 0
        printed = capsys.readouterr().out  # the members' errors with 2 decimals, like the others
        assert re.search(r"ens +mean_softmax \d+\.\d\d, sum_logits \d+\.\d\d, "
                         r"members_top1_error \[\d+\.\d\d, \d+\.\d\d, \d+\.\d\d\]\n", printed), printed
    seq, par = (json.loads((tmp_path / o / "pipeline.json").read_text()) for o in ("seq", "par"))
    assert seq == par and set(par["seed0"]) == {"teacher", "student", "other", "ens"}
    ens = [json.loads((tmp_path / o / "seed0/ens/ensemble.json").read_text()) for o in ("seq", "par")]
    assert ens[0]["mean_softmax"] == ens[1]["mean_softmax"] and ens[1]["stages"] == ["teacher", "student", "other"]
    par_dir = tmp_path / "par"
    assert (par_dir / "seed0/teacher/final.json").stat().st_mtime <= \
        (par_dir / "seed0/student/config.yaml").stat().st_mtime
    status = json.loads((par_dir / "status.json").read_text())
    assert status["seed0/ens"]["status"] == "done" and (par_dir / "pipeline.yaml").is_file()


def test_folders_of_the_earlier_layout_are_reused_not_retrained(tmp_path, capsys):
    """A comparison and a pipeline folder laid out as the earlier compare/pipeline code wrote them
    (RunDir.train straight into OUT/<method>/seed<N>, OUT/teacher-ce-<model>/seed<N>,
    OUT/seed<S>/<stage>, and the earlier ensemble.json) are continued: nothing is retrained."""
    from softlabels.compare import plan_runs, teacher_config
    from softlabels.engine.runs import RunDir
    from softlabels.engine.runtime import setup_runtime
    from softlabels.pipeline import parse_pipeline, stage_config

    rt = setup_runtime("cpu")
    ov = [a for a in SMALL if "=" in a] + ["data.name=digits", "model.name=resnet8", "train.epochs=1"]
    cmp = tmp_path / "cmp"
    ls, kd = plan_runs(["ls", "kd"], [0], None, ov)
    tcfg = teacher_config(kd, "ce", None)
    RunDir(cmp / "ls/seed0").train(ls, rt)
    RunDir(cmp / "teacher-ce-resnet8/seed0").train(tcfg, rt)
    RunDir(cmp / "kd/seed0").train(kd, rt, teachers=[RunDir(cmp / "teacher-ce-resnet8/seed0").load_model()])
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump(PIPELINE))
    pipe = tmp_path / "pipe"
    base, stages = parse_pipeline(PIPELINE)
    for st in stages[:3]:
        teachers = [RunDir(pipe / "seed0" / t).load_model() for t in st.teachers]
        RunDir(pipe / "seed0" / st.name).train(stage_config(base, st, 0, []), rt, teachers=teachers)
    old_ens = {"stages": ["teacher", "student", "other"], "members": [{"top1_error": 50.0}] * 3,
               "mean_softmax": {"top1_error": 40.0}, "sum_logits": {"top1_error": 41.0}}
    (pipe / "seed0/ens").mkdir()
    (pipe / "seed0/ens/ensemble.json").write_text(json.dumps(old_ens))
    files = sorted(list(cmp.rglob("final.json")) + list(pipe.rglob("final.json")) + list(pipe.rglob("ensemble.json")))
    stamps = [f.stat().st_mtime_ns for f in files]

    assert main(["compare", *SMALL, "--methods", "ls,kd", "--seeds", "1", "--out", str(cmp)]) == 0
    assert "ls " in capsys.readouterr().out
    assert main(["pipeline", str(p), "--out", str(pipe), "--no-progress"]) == 0
    assert [f.stat().st_mtime_ns for f in files] == stamps
    status = {**json.loads((cmp / "status.json").read_text()), **json.loads((pipe / "status.json").read_text())}
    assert {v["status"] for v in status.values()} == {"reused"} and len(status) == 7
    summary = json.loads((pipe / "pipeline.json").read_text())["seed0"]
    assert summary["ens"] == {"mean_softmax": 40.0, "sum_logits": 41.0, "members_top1_error": [50.0] * 3}


def test_the_ensemble_evaluation_takes_the_run_lock(tmp_path, capsys):
    """The one ensemble evaluation (study, pipeline) holds its folder's run lock: while another
    process holds it, the evaluation fails in one line naming that process, the trainings go on."""
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"base": BASE, "stages": [
        {"name": "a", "config": {"method": {"name": "ce"}}},
        {"name": "b", "config": {"method": {"name": "ls"}}},
        {"name": "ens", "ensemble": ["a", "b"]}]}))
    out = tmp_path / "o"
    code = ("import sys, time; sys.path.insert(0, %r); from softlabels.engine.runs import RunLock; "
            "RunLock(%r).acquire(); print('held', flush=True); time.sleep(120)") % (str(ROOT / "src"),
                                                                                 str(out / "seed0/ens"))
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["pipeline", str(p), "--out", str(out), "--no-progress"]) == 1
        err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(err) == 1 and f"PID {holder.pid}" in err[0] and "seed0/ens" in err[0]
        assert (out / "seed0/a/final.json").is_file() and (out / "seed0/b/final.json").is_file()
        assert not (out / "seed0/ens/ensemble.json").exists()
    finally:
        holder.kill()
        holder.wait()
    assert main(["pipeline", str(p), "--out", str(out), "--no-progress"]) == 0
    assert json.loads((out / "seed0/ens/ensemble.json").read_text())["stages"] == ["a", "b"]


def test_compare_and_pipeline_dry_run_print_the_plan_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "c"
    assert main(["compare", *SMALL, "--methods", "ce,kd", "--seeds", "2", "--out", str(out), "--dry-run",
                 "--jobs", "2", "--throughput", "1000"]) == 0
    text = capsys.readouterr().out
    assert "study compare:" in text and "kd/seed1" in text and "run ce/seed1 (best)" in text
    assert "wall time at --jobs 2" in text and not out.exists()
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"base": BASE, "stages": [
        {"name": "t", "config": {"method": {"name": "ce"}}},
        {"name": "s", "config": {"method": {"name": "kd"}}, "teachers": [{"run": str(tmp_path / "nowhere")}]}]}))
    assert main(["pipeline", str(p), "--out", str(tmp_path / "o"), "--dry-run", "--throughput", "1000"]) == 1
    captured = capsys.readouterr()
    assert "seed0/s" in captured.out and "MISSING" in captured.out
    assert captured.err.strip().count("\n") == 0 and "nowhere" in captured.err
    assert not (tmp_path / "o").exists()


def test_pipeline_seed_offsets_and_a_teacher_run_that_has_not_finished(tmp_path, capsys):
    from softlabels.pipeline import plan_pipeline

    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"base": BASE, "stages": [
        {"name": "a", "config": {"method": {"name": "ce"}}, "seed_offset": 2},
        {"name": "m", "sequence": 2, "config": {"method": {"name": "orthogonal"}}},
        {"name": "s", "config": {"method": {"name": "kd"}}, "teachers": [{"run": str(tmp_path / "nowhere")}]}]}))
    plan, text = plan_pipeline(str(p), tmp_path / "o", [3])
    seeds = {r.id: r.cfg.train.seed for r in plan.runs if r.kind == "train"}
    assert seeds == {"seed3/a": 2003, "seed3/m1": 3, "seed3/m2": 1003, "seed3/s": 3}
    assert plan.by_id()["seed3/m2"].deps == ["seed3/m1"]
    assert "layout:" in text and "seed{seed}/{row}" in text
    assert main(["pipeline", str(p), "--out", str(tmp_path / "o"), "--no-progress", "--seed-list", "3",
                 "train.epochs=1"]) == 1
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(err) == 1 and "nowhere: not a finished run" in err[0]
    assert json.loads((tmp_path / "o/status.json").read_text())["seed3/s"]["status"] == "skipped"
    assert (tmp_path / "o/seed3/m2/final.json").is_file()


def test_pipeline_through_submitits_local_executor(tmp_path, capsys):
    """--launcher submitit-local (the SLURM path on this machine): one job per stage, the
    student's job submitted after its teacher's finished."""
    pytest.importorskip("submitit")
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"base": BASE, "stages": PIPELINE["stages"][:2]}))
    out = tmp_path / "o"
    assert main(["pipeline", str(p), "--out", str(out), "--no-progress", "--launcher", "submitit-local"]) == 0
    status = json.loads((out / "status.json").read_text())
    assert {v["status"] for v in status.values()} == {"done"} and all("job" in v for v in status.values())
    env = json.loads((out / "seed0/student/environment.json").read_text())
    assert env["teachers"][0]["run"] == str((out / "seed0/teacher").resolve())
    assert set(json.loads((out / "pipeline.json").read_text())["seed0"]) == {"teacher", "student"}


def _study(tmp_path, **extra) -> Path:
    d = {"title": "t", "paper": "none", "source": "test", "metrics": ["top1_error"], "seeds": 2, "base": BASE,
         "columns": {"d": {"label": "digits"}},
         "rows": [{"label": "CE", "method": "ce", "slug": "plain_ce"},
                  {"label": "KD", "method": "kd", "teachers": ["ext"], "seed_offset": 1, "teacher_checkpoint": "epoch1"},
                  {"label": "Both", "ensemble": {"members": ["CE", "KD", {"run": str(tmp_path / "r")}],
                                                 "checkpoint": "best"}}],
         "teachers": {"ext": {"run": str(tmp_path / "r"), "checkpoint": "last"}},
         "layout": {"runs": "s{seed}/{row}", "names": "label"}}
    d.update(extra)
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d, sort_keys=False))
    return p


def test_study_schema_layout_listed_ensembles_external_runs_and_seed_offsets(tmp_path):
    from softlabels.study import load_study, plan_study

    plan = plan_study(load_study(_study(tmp_path)), tmp_path / "o")
    runs = plan.by_id()
    assert [r.id for r in plan.runs] == ["s0/plain_ce", "s1/plain_ce", "_external/1", "s0/kd", "s1/kd",
                                         "s0/both", "s1/both"]
    assert runs["s1/kd"].cfg.train.seed == 1001 and runs["s1/kd"].cfg.name == "KD"
    assert runs["s1/kd"].deps == ["_external/1"] and runs["s1/kd"].teachers[0].checkpoint == "last"
    both = runs["s1/both"]
    assert both.members == ["s1/plain_ce", "s1/kd", "_external/1"] and both.member_checkpoints == [None, None, None]
    assert both.deps == both.members and both.checkpoint == "best" and runs["_external/1"].kind == "external"
    assert [ln.key for ln in plan.lines] == ["plain_ce", "kd", "both"]


@pytest.mark.parametrize("change,needle", [
    ({"layout": {"runs": "{row}/x"}}, "layout.runs: expected a relative folder template with {row} and {seed}"),
    ({"layout": {"runs": "../{row}/{seed}"}}, "layout.runs"),
    ({"layout": {"names": "x"}}, "layout.names: expected cell or label"),
    ({"columns": {"a": {}, "b": {}}, "layout": {"runs": "{row}/{seed}"}}, "and {column}"),
    ({"teachers": {"ext": {"run": "x", "checkpoint": "final"}}}, "teachers.ext.checkpoint: expected last, best, ema"),
    ({"rows": [{"label": "E", "ensemble": {"members": ["E"]}}]}, "rows[0].ensemble.members[0]: expected the label"),
    ({"rows": [{"label": "A", "method": "ce"}, {"label": "E", "ensemble": {"members": ["A"]}}]},
     "rows[1].ensemble.members: an ensemble needs at least 2 members"),
    ({"rows": [{"label": "A", "method": "ce", "slug": "_a"}]}, "rows[0].slug"),
    ({"rows": [{"label": "A", "method": "ce", "seed_offset": -1}]}, "rows[0].seed_offset"),
])
def test_bad_layout_and_new_row_keys_are_one_line_errors(tmp_path, change, needle):
    from softlabels.errors import ConfigError
    from softlabels.study import load_study

    with pytest.raises(ConfigError) as info:
        load_study(_study(tmp_path, **change))
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_compare_refuses_a_teacher_that_needs_a_teacher(tmp_path, capsys):
    # the kd teacher run would need a teacher itself: refused before anything trains, not after ce
    for methods in ("ce,glr", "kd"):
        assert main(["compare", *SMALL, "--methods", methods, "--seeds", "1", "--teacher", "kd",
                     "--out", str(tmp_path / "o")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("softlabels: error: --teacher kd: that method needs a teacher itself") and "\n" not in err
        assert not (tmp_path / "o").exists()


def test_compare_without_validation_split_says_it_reports_the_last_epoch(tmp_path, capsys):
    assert main(["compare", *SMALL, "--methods", "ce", "--seeds", "1", "data.val_fraction=0",
                 "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "Test metrics (last epoch)" in out and "chosen on validation" not in out
    # the dry run of other settings over that folder names the clash (not "done"), as the run would
    assert main(["compare", *SMALL, "--methods", "ce", "--seeds", "1", "data.val_fraction=0", "train.epochs=2",
                 "--out", str(tmp_path / "o"), "--dry-run"]) == 1
    err = capsys.readouterr().err
    assert "train.epochs: " in err and "holds a run made with another train.epochs" in err


@pytest.mark.parametrize("extra,needle", [
    (["--teacher-model", "lenet5"], "--teacher-model lenet5: no compared method needs a teacher (ce, ls)"),
    (["teacher:optim.lr=0.01"], "teacher:optim.lr=0.01: no compared method needs a teacher (ce, ls)"),
    (["kd:optim.lr=0.01"], "'kd' is not one of the compared methods (ce, ls)"),
])
def test_compare_teacher_settings_without_a_teacher_based_method_are_refused(tmp_path, capsys, extra, needle):
    assert main(["compare", *SMALL, "--methods", "ce,ls", "--seeds", "1", "--out", str(tmp_path / "o"), *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("softlabels: error:") and needle in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_a_study_or_pipeline_file_that_is_not_a_mapping_is_named_as_such(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    for cmd, what in (("study", "study file"), ("pipeline", "pipeline file")):
        assert main([cmd, str(bad), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == f"softlabels: error: {what} {bad}: expected a mapping at the top level"


def test_pipeline_help_says_what_the_command_does(capsys):
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "default: runs/pipeline-<file>-<time>" in text and "name of a packaged recipe" in text
    assert "without --jobs and --devices, one run after the other in this process" in text


@pytest.mark.parametrize("where", ["after the study", "after the options"])
def test_study_overrides_count_wherever_they_are_written(tmp_path, capsys, where):
    study = str(_study(tmp_path, rows=[{"label": "CE", "method": "ce"}], teachers={}, layout={}))
    opts = ["--out", str(tmp_path / "o"), "--dry-run", "--throughput", "1000", "--no-progress"]
    args = [study, "train.epochs=0", *opts] if where == "after the study" else [study, *opts, "train.epochs=0"]
    assert main(["study", *args]) == 2  # never silently dropped
    assert "train.epochs: expected a value >= 1" in capsys.readouterr().err


def test_compare_names_the_folder_of_a_combined_method(tmp_path, capsys):
    assert main(["compare", *SMALL, "--methods", "ols+cutout", "--seeds", "1", "--out", str(tmp_path / "o")]) == 0
    assert "(ols+cutout in ols_plus_cutout)" in capsys.readouterr().out
    assert (tmp_path / "o/ols_plus_cutout/seed0/final.json").is_file()
