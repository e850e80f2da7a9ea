"""Pipelines: parsing, stage reuse, teachers from earlier stages, sequences and ensembles."""
import json

import pytest
import yaml

from softlabels.cli import main
from softlabels.errors import ConfigError
from softlabels.pipeline import parse_pipeline


def test_sequence_expands_with_all_earlier_members_as_teachers():
    base, stages = parse_pipeline({"base": {}, "stages": [
        {"name": "t", "config": {"method": {"name": "ce"}}},
        {"name": "m", "sequence": 3, "teachers": ["t"]},
        {"name": "ens", "ensemble": ["m1", "m2", "m3"]}]})
    assert [s.name for s in stages] == ["t", "m1", "m2", "m3", "ens"]
    assert stages[1].teachers == ["t"]
    assert stages[3].teachers == ["t", "m1", "m2"]
    assert stages[4].ensemble == ["m1", "m2", "m3"]


@pytest.mark.parametrize("stages,needle", [
    ([{"name": "a", "teachers": ["b"]}, {"name": "b"}], "not an earlier stage"),
    ([{"name": "a"}, {"name": "a"}], "used twice"),
    ([{"name": "a", "epochs": 3}], "unknown stage key"),
    ([{"name": "a", "sequence": 0}], "sequence: expected an integer >= 1"),
    ([{"name": "e", "ensemble": ["x"]}], "not an earlier stage"),
    ([{"name": "a"}, {"name": "e", "ensemble": ["a"]}], "an ensemble needs at least 2 members, got 1"),
    ([], "non-empty list"),
    ([{"name": "a", "teachers": "teacher"}], r"stages\[0\].teachers: expected a list, got 'teacher'"),
    ([{"name": "a", "overrides": "train.epochs=2"}], r"stages\[0\].overrides: expected a list"),
    ([{"name": "a", "teacher_checkpoint": "bogus"}], r"stages\[0\].teacher_checkpoint: expected last, best, ema or epochN"),
])
def test_bad_pipelines_are_one_line_config_errors(stages, needle):
    with pytest.raises(ConfigError, match=needle):
        parse_pipeline({"stages": stages})


def test_pipeline_cli_unknown_stage_config_key_exits_2(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"base": {"data": {"name": "digits"}},
                                 "stages": [{"name": "a", "config": {"optim": {"lrr": 1}}}]}))
    assert main(["pipeline", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    assert "optim.lrr: unknown config key" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


BASE = {"data": {"name": "digits"}, "model": {"name": "resnet8"}, "train": {"epochs": 2}}


def test_pipeline_teacher_student_sequence_and_ensemble(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"base": BASE, "stages": [
        {"name": "teacher", "config": {"method": {"name": "ce"}}},
        {"name": "student", "config": {"method": {"name": "glr_cd"}}, "teachers": ["teacher"]},
        {"name": "focus", "config": {"method": {"name": "focusnet"}}, "teachers": ["teacher"],
         "teacher_checkpoint": "last"},
        {"name": "member", "sequence": 2, "config": {"method": {"name": "orthogonal"}}},
        {"name": "ens", "ensemble": ["member1", "member2"]}]}))
    out = tmp_path / "out"
    assert main(["pipeline", str(p), "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "student" in printed and "ens" in printed
    summary = json.loads((out / "pipeline.json").read_text())["seed0"]
    for stage in ("teacher", "student", "focus", "member1", "member2"):
        assert summary[stage]["best_test_top1_error"] < 60.0, stage  # chance is 90 %
        assert (out / "seed0" / stage / "final.json").is_file()
    ens = json.loads((out / "seed0" / "ens" / "ensemble.json").read_text())
    assert ens["stages"] == ["member1", "member2"] and len(ens["members"]) == 2
    assert ens["mean_softmax"]["top1_error"] <= max(m["top1_error"] for m in ens["members"])
    # member2 was taught by member1: its loss logged an orthogonal term
    rec = json.loads((out / "seed0" / "member2" / "metrics.jsonl").read_text().splitlines()[0])
    assert "or" in rec["train"]
    first = json.loads((out / "seed0" / "member1" / "metrics.jsonl").read_text().splitlines()[0])
    assert "or" not in first["train"]
    # a second run reuses every finished stage
    stamp = (out / "seed0" / "teacher" / "final.json").stat().st_mtime_ns
    assert main(["pipeline", str(p), "--out", str(out), "--no-progress"]) == 0
    assert (out / "seed0" / "teacher" / "final.json").stat().st_mtime_ns == stamp
    # `report` on the folder lists the ensemble evaluation beside the trained stages (test split
    # only: it has no validation numbers), and `eval` does not mistake it for a run to load
    capsys.readouterr()
    assert main(["report", str(out), "--which", "best"]) == 0
    rows = {line.split()[0]: line.split() for line in capsys.readouterr().out.splitlines()[2:] if line.strip()}
    assert set(rows) >= {"ens", "teacher", "member1", "member2"}
    assert float(rows["ens"][2]) == pytest.approx(ens["test"]["top1_error"], abs=0.005)
    assert main(["report", str(out), "--split", "val"]) == 0
    assert "ens " not in capsys.readouterr().out
    from softlabels.report.table import find_runs
    assert out / "seed0" / "ens" not in find_runs([out])
    assert out / "seed0" / "ens" in find_runs([out], ensembles=True)
    # a torn ensemble.json: one line naming it and a non-zero exit, never a traceback
    (out / "seed0" / "ens" / "ensemble.json").write_text('{"run": {"label"')
    capsys.readouterr()
    assert main(["report", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "ensemble.json: not valid JSON" in err[0] and "Traceback" not in err[0]


def test_compare_trains_one_teacher_per_seed_and_reuses_the_ce_run(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--dataset", "digits", "--methods", "ce,label_refinery,cskd+ols", "--seeds", "1",
                 "--out", str(out), "--epochs", "2", "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "label_refinery" in text and "cskd+ols" in text
    assert not any(d.name.startswith("teacher-") for d in out.iterdir())  # the ce run was the teacher
    assert main(["compare", "--dataset", "digits", "--methods", "label_refinery", "--seeds", "1",
                 "--out", str(tmp_path / "cmp2"), "--epochs", "1", "--no-progress"]) == 0
    assert (tmp_path / "cmp2" / "teacher-ce-resnet8" / "seed0" / "final.json").is_file()


def test_teachers_from_a_run_directory_and_from_a_weights_file(tmp_path, capsys):
    from safetensors.torch import save_file

    from softlabels.engine.runs import load_model_from_run

    teacher_run = tmp_path / "teacher"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--out", str(teacher_run)]) == 0
    weights = tmp_path / "teacher.safetensors"
    save_file({k: v.contiguous() for k, v in load_model_from_run(teacher_run).state_dict().items()}, str(weights))
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"base": {**BASE, "train": {"epochs": 1}}, "stages": [
        {"name": "from_run", "config": {"method": {"name": "focusnet"}}, "teachers": [{"run": str(teacher_run)}]},
        {"name": "from_file", "config": {"method": {"name": "kd"}},
         "teachers": [{"weights": str(weights), "model": "resnet8"}]}]}))
    assert main(["pipeline", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 0
    for stage in ("from_run", "from_file"):
        assert (tmp_path / "o" / "seed0" / stage / "final.json").is_file()
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({"base": BASE, "stages": [
        {"name": "s", "config": {"method": {"name": "kd"}}, "teachers": [{"weights": str(weights), "model": "resnet20"}]}]}))
    capsys.readouterr()
    assert main(["pipeline", str(bad), "--out", str(tmp_path / "o2"), "--no-progress"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "resnet20" in err[0]


def test_compare_gives_an_orthogonal_member_the_seed_teacher(tmp_path, capsys):
    out = tmp_path / "cmp"
    assert main(["compare", "--dataset", "digits", "--methods", "ce,orthogonal", "--seeds", "1",
                 "--out", str(out), "--epochs", "1", "--no-progress"]) == 0
    rec = json.loads((out / "orthogonal" / "seed0" / "metrics.jsonl").read_text().splitlines()[0])
    assert "or" in rec["train"]  # taught by the ce run: the orthogonal term is there


def test_a_stage_without_the_teachers_its_method_needs_is_refused_before_anything_trains(tmp_path, capsys):
    p = tmp_path / "p.yaml"
    p.write_text(yaml.safe_dump({"base": BASE, "stages": [{"name": "c", "config": {"method": {"name": "ce"}}},
                                                          {"name": "s", "config": {"method": {"name": "kd"}}}]}))
    assert main(["pipeline", str(p), "--out", str(tmp_path / "o"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("softlabels: error: p.yaml: stage 's': method kd needs 1 teacher(s), the stage gives 0")
    assert "\n" not in err and not (tmp_path / "o").exists()
