"""``softlabels study``: study files, the plan, running, the table (issue 11)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from helpers import expect_config_error
from softlabels.cli import main
from softlabels.errors import ConfigError
from softlabels.study import (STUDIES_DIR, Cell, build_table, cell_stat, cell_text, check_plan, list_studies,
                              load_study, plan_study, resolve_study, run_plan, write_outputs)

pytestmark = pytest.mark.usefixtures("one_thread")

SHIPPED = sorted(STUDIES_DIR.glob("*.yaml"))
BUNDLED = {"digits", "synthetic"}


def write_study(tmp_path: Path, data: dict, name: str = "s") -> Path:
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def digits_base(epochs: int = 1) -> dict:
    return {"data": {"name": "digits", "batch_size": 128},
            "model": {"name": "resnet8"},
            "optim": {"lr": 0.05}, "schedule": {"name": "constant"}, "train": {"epochs": epochs}}


# ---------------------------------------------------------------------------- shipped studies


def test_packaged_studies_resolve_by_name():
    assert "fashion-mnist-seeds" in list_studies()
    assert resolve_study("fashion-mnist-seeds") == STUDIES_DIR / "fashion-mnist-seeds.yaml"
    assert (Path(__file__).resolve().parent.parent / "studies" / "fashion-mnist-seeds.yaml").is_file()
    expect_config_error(lambda: resolve_study("no-such-study"), "no-such-study", "fashion-mnist-seeds")


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_shipped_study_dry_run_names_missing_data(path, tmp_path, capsys):
    """Every shipped study loads and plans; with an empty data root its dry run names each
    missing dataset and exits non-zero with one line, never a traceback."""
    study = load_study(path)
    assert study.name == path.stem
    empty = tmp_path / "nodata"
    empty.mkdir()
    plan = plan_study(study, tmp_path / "out", data_root=str(empty))
    assert plan.runs and plan.lines
    ids = [r.id for r in plan.runs]
    assert len(ids) == len(set(ids))
    seen = set()
    for r in plan.runs:  # topological order: dependencies come first
        assert set(r.deps) <= seen, r.id
        seen.add(r.id)
    chk = check_plan(plan, throughput=1000.0)
    files = {r.cfg.data.name for r in plan.runs if r.cfg is not None} - BUNDLED
    from softlabels.registry import DATASETS

    for name in files:
        want = f"dataset {name}" if name in DATASETS else f"unknown dataset '{name}'"
        assert any(want in m for m in chk.missing), (want, chk.missing)
    code = main(["study", str(path), "--data-root", str(empty), "--dry-run", "--throughput", "1000",
                 "--out", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert "runs:" in out and "estimated time" in out
    if chk.missing:
        assert code != 0
        assert err.startswith("softlabels: error: ") and err.count("\n") == 1, err
        assert "MISSING" in out
    else:
        assert code == 0


def _smoke_picks():
    """One shipped study per paper (and each project study): the one whose first column at one
    seed trains on the fewest images, so the smoke tests stay short."""
    best = {}
    for p in SHIPPED:
        try:
            st = load_study(p)
            plan = plan_study(st, Path("/nonexistent"), seeds=[0], columns=[next(iter(st.columns))], smoke=True)
        except ConfigError:
            continue  # test_shipped_study_dry_run_names_missing_data reports it
        cost = sum(r.cfg.data.options["train_size"] for r in plan.runs if r.kind == "train")
        key = st.paper if st.paper != "none" else st.name
        if key not in best or cost < best[key][0]:
            best[key] = (cost, p)
    return sorted(p for _, p in best.values())


SMOKE = _smoke_picks()


@pytest.mark.slow
@pytest.mark.parametrize("path", SMOKE, ids=[p.stem for p in SMOKE])
def test_shipped_study_smoke(path, tmp_path):
    """One shipped study per paper runs end to end with --smoke (first column, one seed)."""
    study = load_study(path)
    plan = plan_study(study, tmp_path / "out", seeds=[0], columns=[next(iter(study.columns))], smoke=True,
                      data_root=str(tmp_path))
    status = run_plan(plan, show_progress=False)
    assert all(v["status"] == "done" for v in status.values()), status
    paths = write_outputs(build_table(plan), status)
    assert "missing" not in paths["md"].read_text()


def test_fashion_mnist_seeds_dry_run_with_data(tmp_path, capsys):
    root = Path("/usr/share/datasets")
    if not (root / "fashion-mnist").is_dir():
        pytest.skip("Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
    code = main(["study", "fashion-mnist-seeds", "--data-root", str(root), "--dry-run", "--throughput", "1200",
                 "--out", str(tmp_path / "fm")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "39 training runs, 3 ensemble evaluations" in out
    assert "present (60000 train / 10000 test images)" in out
    # 10,000-image subset x 12 epochs per run
    assert "kd/fmnist-r8/seed2" in out and " 120000 " in out


# ---------------------------------------------------------------------------- a digits study


def test_digits_study_end_to_end(tmp_path, capsys):
    """A repeated method, a sweep row, teachers with model options (trained and from a weights
    file) and an independent ensemble, on digits, one epoch; a second call trains nothing."""
    from safetensors.torch import save_file

    from softlabels.models import build_model

    weights = tmp_path / "teacher.safetensors"
    torch.manual_seed(0)
    save_file(build_model("resnet20", 10, 1, {"shortcut": "A"}).state_dict(), str(weights))
    study = {
        "title": "digits test study", "paper": "none", "source": "test",
        "metrics": ["top1_error", "nll", "net_fixed", "samples_fixed", "train_top1_error"],
        "seeds": 1, "compare_to": "CE",
        "base": digits_base(),
        "columns": {"digits-r8": {"label": "digits / ResNet-8", "config": {"data": {"name": "digits"}}}},
        "teachers": {
            "a-net": {"config": {"model": {"name": "resnet8", "options": {"shortcut": "A"}}, "method": {"name": "ce"}}},
            "file-net": {"weights": "{data_root}/teacher.safetensors",
                         "model": {"name": "resnet20", "options": {"shortcut": "A"}}},
        },
        "rows": [
            {"label": "CE", "method": "ce"},
            {"label": "LS 0.1", "method": "ls", "options": {"epsilon": 0.1}},
            {"label": "LS 0.3", "method": "ls", "options": {"epsilon": 0.3}},
            {"label": "KD", "method": "kd", "teachers": ["a-net"], "sweep": {"temperature": [2.0, 4.0]}},
            {"label": "KD file", "method": "kd", "teachers": ["file-net"]},
            {"label": "Base", "method": "ce", "ensemble": {"members": 2, "mode": "independent",
                                                             "report": ["ensemble", "members"]}},
        ],
    }
    path = write_study(tmp_path, study, "digits-test")
    out = tmp_path / "out"
    args = ["study", str(path), "--data-root", str(tmp_path), "--out", str(out), "--no-progress"]
    assert main(args) == 0
    text = capsys.readouterr().out
    for rid in ("cross-entropy" if False else "ce", "ls-0.1", "ls-0.3", "kd--temperature-2.0", "kd--temperature-4.0",
                "kd-file", "base--member1", "base--member2", "base--ensemble"):
        assert (out / rid / "digits-r8" / "seed0").is_dir(), rid
    teacher = out / "_teachers" / "a-net" / "digits-r8" / "seed0"
    assert yaml.safe_load((teacher / "config.yaml").read_text())["model"]["options"] == {"shortcut": "A"}
    ls1 = yaml.safe_load((out / "ls-0.1/digits-r8/seed0/config.yaml").read_text())
    ls3 = yaml.safe_load((out / "ls-0.3/digits-r8/seed0/config.yaml").read_text())
    assert (ls1["method"]["options"], ls3["method"]["options"]) == ({"epsilon": 0.1}, {"epsilon": 0.3})
    kd2 = yaml.safe_load((out / "kd--temperature-2.0/digits-r8/seed0/config.yaml").read_text())
    assert kd2["method"]["options"]["temperature"] == 2.0 and kd2["data"]["val_fraction"] == 0.0
    seeds = [json.loads((out / f"base--member{k}/digits-r8/seed0/final.json").read_text())["run"]["seed"]
             for k in (1, 2)]
    assert seeds == [1, 2]  # independent members: seed * 1000 + n
    ens = json.loads((out / "base--ensemble/digits-r8/seed0/ensemble.json").read_text())
    assert len(ens["members"]) == 2 and 0 <= ens["test"]["top1_error"] <= 100
    # the table: sweep sub-rows and ensemble members laid out, n = 1 noted, paired column vs CE
    md = (out / "table.md").read_text()
    for label in ("KD (temperature=2.0)", "KD (temperature=4.0)", "Base: member 2", "(n = 1)", "vs CE"):
        assert label in md, label
    assert "no published numbers" in md and "Δ = ours − paper" not in md  # the legend fits the study
    for ext in ("csv", "tex", "json", "png"):
        assert (out / f"table.{ext}").stat().st_size > 0
    assert (out / "table.png").read_bytes()[:4] == b"\x89PNG"
    # metrics against the reference row: net_fixed = (ref error − our error) × test images
    doc = json.loads((out / "table.json").read_text())
    cells = {(c["line"], c["metric"]): c for c in doc["cells"]}
    for line in ("ce", "ls-0.3", "kd-file"):
        ours, ref = cells[(line, "top1_error")]["mean"], cells[("ce", "top1_error")]["mean"]
        assert cells[(line, "net_fixed")]["mean"] == pytest.approx((ref - ours) * 359 / 100, abs=1e-6)
        assert cells[(line, "samples_fixed")]["mean"] >= max(0.0, cells[(line, "net_fixed")]["mean"])
    assert cells[("ce", "samples_fixed")]["mean"] == 0.0
    last = [json.loads(x) for x in (out / "ls-0.1/digits-r8/seed0/metrics.jsonl").read_text().splitlines()][-1]
    assert cells[("ls-0.1", "train_top1_error")]["mean"] == pytest.approx(last["train"]["top1_error"])
    # `softlabels report --html` on the study folder: the runs and the study's table
    assert main(["report", str(out), "--html", str(tmp_path / "r.html")]) == 0
    page = (tmp_path / "r.html").read_text()
    assert "Paper studies" in page and "digits test study" in page and "KD (temperature=4.0)" in page
    assert "a study folder; its tables are" in capsys.readouterr().out
    # rerun: every run is reused, nothing retrained
    mtime = (out / "ce/digits-r8/seed0/final.json").stat().st_mtime_ns
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "already finished" in err and "finished in" not in err
    assert (out / "ce/digits-r8/seed0/final.json").stat().st_mtime_ns == mtime
    status = json.loads((out / "status.json").read_text())
    assert {v["status"] for v in status.values()} == {"reused"}


# ---------------------------------------------------------------------------- smoke with a paper column


def paper_study() -> dict:
    return {
        "title": "a CS-KD-like table", "paper": "cskd", "source": "Table 1", "metrics": ["top1_error", "ece"],
        "seeds": 2,
        "base": {"data": {"batch_size": 128}, "optim": {"lr": 0.1}, "schedule": {"name": "step", "milestones": [100, 150]},
                 "train": {"epochs": 200}},
        "columns": {
            "c100-r18": {"label": "CIFAR-100 / ResNet-18",
                         "config": {"data": {"name": "cifar100"}, "model": {"name": "resnet18", "options": {"stem": "cifar"}}}},
            "cub-r18": {"label": "CUB / ResNet-18",
                        "config": {"data": {"name": "cub200"}, "model": {"name": "resnet18"}}},
        },
        "rows": [
            {"label": "Cross-entropy", "method": "ce",
             "paper": {"c100-r18": [24.71, 0.24], "cub-r18": {"top1_error": 46.0, "ece": [15.0, 1.0]}}},
            {"label": "CS-KD", "method": "cskd", "only": ["c100-r18"], "sweep": {"lam": [1, 2]},
             "paper": {"c100-r18": {1: 21.99, 2: None}}},
            {"label": "FocusNet", "method": "focusnet", "teachers": ["Cross-entropy"], "paper": {"cub-r18": 40.0}},
        ],
    }


def test_smoke_run_builds_the_table_with_verdicts(tmp_path, capsys):
    path = write_study(tmp_path, paper_study(), "paper-test")
    out = tmp_path / "smoke"
    dry = main(["study", str(path), "--smoke", "--dry-run", "--throughput", "500", "--out", str(out)])
    assert dry == 0, capsys.readouterr()
    code = main(["study", str(path), "--smoke", "--out", str(out), "--no-progress"])
    text = capsys.readouterr().out
    assert code == 0, text
    cfg = yaml.safe_load((out / "cross-entropy/cub-r18/seed1/config.yaml").read_text())
    assert cfg["data"]["name"] == "synthetic" and cfg["data"]["options"]["num_classes"] == 200
    assert cfg["model"]["name"] == "resnet8" and cfg["train"]["epochs"] == 1
    doc = json.loads((out / "table.json").read_text())
    cells = {(c["line"], c["column"], c["metric"]): c for c in doc["cells"]}
    ce = cells[("cross-entropy", "c100-r18", "top1_error")]
    assert ce["n"] == 2 and ce["paper_mean"] == 24.71 and ce["paper_std"] == 0.24
    assert ce["verdict"] in ("✔", "✘") and abs(ce["delta"] - (ce["mean"] - 24.71)) < 1e-9
    assert cells[("cross-entropy", "cub-r18", "ece")]["paper_std"] == 1.0
    assert cells[("cs-kd--lam-1", "c100-r18", "top1_error")]["paper_mean"] == 21.99
    assert cells[("cs-kd--lam-2", "c100-r18", "top1_error")]["paper_mean"] is None
    assert ("cs-kd--lam-1", "cub-r18", "top1_error") not in cells  # `only`
    md = (out / "table.md").read_text()
    assert "24.71 ± 0.24 · Δ" in md and ("✔" in md or "✘" in md)
    assert "Δ = ours − paper" in md
    assert "CS-KD (lam=1)" in md and "SMOKE" in md
    tex = (out / "table.tex").read_text()
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex


def test_verdict_rule_and_cell_text():
    cell = Cell(3, {"top1_error": [10.0, 12.0, None]}, [0, 1, 2], failed=[2], paper={"top1_error": (11.0, None)})
    st = cell_stat(cell, "top1_error")
    assert st.n == 2 and st.mean == 11.0 and st.delta == 0.0 and st.verdict == "✔"
    cell.paper = {"top1_error": (15.0, 0.5)}
    st = cell_stat(cell, "top1_error")  # |Δ| = 4 > 2·sqrt(0.25 + 2) = 3.0
    assert st.verdict == "✘"
    cell.paper = {"top1_error": (13.5, 0.5)}  # |Δ| = 2.5 <= 3.0
    assert cell_stat(cell, "top1_error").verdict == "✔"
    one = Cell(1, {"top1_error": [7.0]}, [0], paper={"top1_error": (7.5, None)})
    assert cell_stat(one, "top1_error").verdict == "✘"  # n = 1, σ = 0: any difference fails


# ---------------------------------------------------------------------------- hostile input


def minimal(**extra) -> dict:
    d = {"title": "t", "paper": "none", "source": "s", "metrics": ["top1_error"], "seeds": 1,
         "base": digits_base(), "columns": {"d": {"config": {"data": {"name": "digits"}}}},
         "rows": [{"label": "CE", "method": "ce"}, {"label": "LS", "method": "ls"}]}
    d.update(extra)
    return d


@pytest.mark.parametrize("change, needles", [
    (lambda d: d.update(colour="red"), ["s.yaml: colour", "unknown key"]),
    (lambda d: d.pop("title"), ["title", "required"]),
    (lambda d: d.update(paper="nature"), ["paper", "jgl"]),
    (lambda d: d["rows"][1].update(paper={"cub": 3.0}), ["rows[1].paper.cub", "not a column"]),
    (lambda d: d["rows"][1].update(paper={"d": [1.0, 2.0, 3.0]}), ["rows[1].paper.d", "[mean, std]"]),
    (lambda d: d["rows"][1].update(paper={"d": {"macro_f1": 3.0}}), ["rows[1].paper.d.macro_f1", "metrics"]),
    (lambda d: d["rows"][1].update(sweep={"a": [1], "b": [2]}), ["rows[1].sweep", "exactly one key"]),
    (lambda d: d["rows"][1].update(teachers=["nobody"]), ["rows[1].teachers", "nobody"]),
    (lambda d: d["rows"][1].update(label="CE"), ["rows[1].label", "twice"]),
    (lambda d: d["rows"][0].update(ensemble={"members": 0}), ["rows[0].ensemble.members"]),
    (lambda d: d.update(teachers={"t": {"config": {}, "weights": "w.pth"}}), ["teachers.t", "exactly one"]),
    (lambda d: d["rows"][1].update(overrides=["optim.lr=-1"]), ["rows[1] (LS) × column d", "optim.lr"]),
    (lambda d: d["rows"][1].update(options={"epsilon": "x"}), ["rows[1] (LS) × column d", "epsilon"]),
    (lambda d: d.update(compare_to="XE"), ["compare_to", "XE"]),
    (lambda d: d["base"].update(train=5), ["rows[0] (CE) × column d", "train: expected a mapping"]),
    (lambda d: d["columns"]["d"].update(overrides=["optim"]), ["columns.d.overrides", "KEY=VALUE"]),
])
def test_bad_study_files_give_one_line_errors(tmp_path, change, needles, capsys):
    d = minimal()
    change(d)
    path = write_study(tmp_path, d)
    code = main(["study", str(path), "--dry-run", "--throughput", "100", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("softlabels: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_unknown_row_or_column_on_the_command_line(tmp_path, capsys):
    path = write_study(tmp_path, minimal())
    assert main(["study", str(path), "--rows", "ce,kd", "--dry-run", "--throughput", "9"]) == 2
    err = capsys.readouterr().err
    assert "--rows: 'kd' is not one of the study's rows (ce, ls)" in err and err.count("\n") == 1
    assert main(["study", str(path), "--columns", "x", "--dry-run", "--throughput", "9"]) == 2


def test_unregistered_names_are_listed_by_the_dry_run(tmp_path, capsys):
    d = minimal()
    d["columns"]["d"]["config"]["model"] = {"name": "resnet9000"}
    d["rows"][1]["method"] = "telepathy"
    path = write_study(tmp_path, d)
    assert main(["study", str(path), "--dry-run", "--throughput", "9", "--out", str(tmp_path / "o")]) == 1
    out = capsys.readouterr().out
    assert "unknown model 'resnet9000'" in out and "unknown method 'telepathy'" in out


def test_torn_final_json_is_redone_and_a_failing_run_does_not_stop_the_others(tmp_path, capsys):
    d = minimal()
    d["teachers"] = {"gone": {"weights": "{data_root}/missing.pth", "model": {"name": "resnet8"}}}
    d["rows"] += [{"label": "KD", "method": "kd", "teachers": ["gone"]},
                  {"label": "Ens", "method": "orthogonal", "teachers": ["gone"],
                   "ensemble": {"members": 2}}]
    path = write_study(tmp_path, d)
    out = tmp_path / "o"
    args = ["study", str(path), "--out", str(out), "--data-root", str(tmp_path), "--no-progress"]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "KD · d · seed 0: FAILED" in captured.err and "skipped" in captured.err
    assert captured.err.strip().splitlines()[-1].startswith("softlabels: error: study s: 4 run(s) did not finish")
    status = json.loads((out / "status.json").read_text())
    assert status["ce/d/seed0"]["status"] == "done" and status["ls/d/seed0"]["status"] == "done"
    assert status["kd/d/seed0"]["status"] == "failed" and "missing.pth" in status["kd/d/seed0"]["error"]
    assert status["ens--member2/d/seed0"]["status"] == "skipped"
    assert "missing (0/1)" in (out / "table.md").read_text()
    # a torn final.json: set aside, the run resumes from its last checkpoint and finishes again
    final = out / "ce/d/seed0/final.json"
    good = json.loads(final.read_text())
    final.write_text(final.read_text()[:40])
    d["rows"] = d["rows"][:2]
    del d["teachers"]
    write_study(tmp_path, d)
    assert main(args) == 0
    assert json.loads(final.read_text())["last"]["test"] == good["last"]["test"]
    assert (out / "ce/d/seed0/final.json.torn0").is_file()
    # a run directory of another config is refused, not silently reused
    d["base"]["train"]["epochs"] = 2
    write_study(tmp_path, d)
    assert main(args) == 1
    assert "holds a run of another config (train.epochs differs)" in capsys.readouterr().err


def test_collapsed_runs_are_marked_not_averaged(tmp_path):
    path = write_study(tmp_path, minimal(seeds=2, rows=[{"label": "CE", "method": "ce"}]))
    plan = plan_study(load_study(path), tmp_path / "o")
    for r in plan.runs:  # fake finished runs: seed 1 collapsed
        r.run_dir.mkdir(parents=True)
        res = {"run": {"label": "CE", "seed": r.seed}, "last": {"epoch": 1, "test": {"top1_error": 10.0 + r.seed}}}
        if r.seed == 1:
            res["collapsed"] = True
        (r.run_dir / "final.json").write_text(json.dumps(res))
    table = build_table(plan)
    line = plan.lines[0]
    assert cell_text(table, line, "d", "top1_error") == "10.00 (n = 1) [1 collapsed]"


def test_params_and_flops_come_from_final_json_complexity():
    from softlabels.study import metric_of

    res = {"last": {"test": {"top1_error": 5.0}},
           "complexity": {"inference": {"params": 2_500_000, "flops": 3.0e9}, "training": {"params": 3_000_000}}}
    assert metric_of(res, "last", "params_m") == 2.5 and metric_of(res, "last", "flops_g") == 3.0
    assert metric_of(res, "last", "train_params_m") == 3.0 and metric_of(res, "last", "train_flops_g") is None
    assert metric_of(res, "last", "top1_accuracy") == 95.0


def test_plan_rejects_a_teacher_row_without_a_run_in_the_column(tmp_path):
    d = minimal(columns={"a": {"config": {}}, "b": {"config": {}}})
    d["rows"] = [{"label": "CE", "method": "ce", "only": ["a"]},
                 {"label": "KD", "method": "kd", "teachers": ["CE"]}]
    study = load_study(write_study(tmp_path, d))
    expect_config_error(lambda: plan_study(study, tmp_path / "o"), "rows[1].teachers", "no run in column b")
    with pytest.raises(ConfigError):
        plan_study(study, tmp_path / "o", rows=["nope"])


def test_ensemble_rows_sweep_members_or_an_option(tmp_path):
    d = minimal(seeds=1)
    d["rows"] = [
        {"label": "OR", "method": "orthogonal", "sweep": {"alpha": [0.0, 0.5]},
         "ensemble": {"members": 2, "mode": "sequential"}, "paper": {"d": {0.0: 1.0, 0.5: [2.0, 0.1]}}},
        {"label": "Base", "method": "ce", "sweep": {"members": [1, 3]},
         "ensemble": {"members": 3, "mode": "independent"}, "paper": {"d": {3: 9.0}}},
    ]
    plan = plan_study(load_study(write_study(tmp_path, d)), tmp_path / "o")
    assert [ln.key for ln in plan.lines] == ["or--alpha-0.0--ensemble", "or--alpha-0.5--ensemble",
                                             "base--ensemble1", "base--ensemble3"]
    runs = plan.by_id()
    m2 = runs["or--alpha-0.5--member2/d/seed0"]
    assert m2.cfg.method.options == {"alpha": 0.5} and m2.deps == ["or--alpha-0.5--member1/d/seed0"]
    assert runs["base--ensemble1/d/seed0"].members == ["base--member1/d/seed0"]
    assert [runs[f"base--member{k}/d/seed0"].cfg.train.seed for k in (1, 2, 3)] == [1, 2, 3]
    table = build_table(plan)
    assert table.cell(plan.lines[1], "d").paper == {"top1_error": (2.0, 0.1)}
    assert table.cell(plan.lines[3], "d").paper == {"top1_error": (9.0, None)}


def test_train_subset_is_a_fixed_stratified_part_of_the_training_set():
    from softlabels.config import DataConfig
    from softlabels.data.prepare import prepare_data

    a = prepare_data(DataConfig(name="digits", val_fraction=0.1, train_subset=500))
    b = prepare_data(DataConfig(name="digits", val_fraction=0.1, train_subset=500))
    assert abs(len(a.train) - 500) <= 10 and torch.equal(a.train.labels, b.train.labels)
    counts = torch.bincount(a.train.labels)
    assert counts.max() - counts.min() <= 3
    assert len(a.val) == len(prepare_data(DataConfig(name="digits", val_fraction=0.1)).val)


def test_sweep_values_name_distinct_folders(tmp_path):
    d = minimal()
    d["rows"][1].update(method="kd", sweep={"method.options.temperature": [-1, 1]})
    plan = plan_study(load_study(write_study(tmp_path, d)), tmp_path / "o")
    assert [ln.key for ln in plan.lines][1:] == ["ls--method.options.temperature-m1", "ls--method.options.temperature-1"]
    d["rows"][1]["sweep"] = {"lam": ["a b", "a-b"]}
    expect_config_error(lambda: load_study(write_study(tmp_path, d)), "rows[1].sweep.lam", "values must differ")


def test_command_line_overrides_follow_the_study_name(tmp_path, capsys):
    path = write_study(tmp_path, minimal())
    args = ["--dry-run", "--throughput", "9", "--out", str(tmp_path / "o")]
    assert main(["study", str(path), "train.epochs=3", "data.train_subset=100"] + args) == 0
    out = capsys.readouterr().out
    assert "ce/d/seed0  digits   resnet8  ce      3   300" in out  # 3 epochs x 100 images
    assert main(["study", str(path), "optim.lr=-1"] + args) == 2
    assert "optim.lr: expected a value > 0.0" in capsys.readouterr().err


def test_a_row_with_an_unregistered_method_stops_the_study_before_any_run(tmp_path, capsys):
    """A user mistake in one run's config is one line before anything trains (with or without
    a launcher), not a failure found after every other run has trained."""
    d = minimal()
    d["rows"][1]["method"] = "telepathy"
    out = tmp_path / "o"
    for extra in ([], ["--jobs", "2"]):
        assert main(["study", str(write_study(tmp_path, d)), "--out", str(out), "--no-progress", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("softlabels: error: s.yaml: rows[1] (LS) × column d: unknown method 'telepathy'")
        assert "nothing was run" in err[-1]
        assert not (out / "ce/d/seed0/final.json").exists()


def test_output_metrics_from_the_test_features_and_softmax(tmp_path, capsys):
    """R@1 (CS-KD Table 6), intra/inter-class distances (JGL Table III) and the quartiles of the
    true-class probability (JGL Fig. 4) come from the reported checkpoint's test outputs."""
    from softlabels.evaluate.analyze import split_outputs
    from softlabels.evaluate.features import class_distances, recall_at_k
    from softlabels.evaluate.run import load_run_model

    metrics = ["top1_error", "recall_at_1", "intra_variance", "inter_distance", "true_class_prob_q1",
               "true_class_prob_median", "true_class_prob_q3"]
    study = {"title": "output metrics", "paper": "none", "source": "test", "metrics": metrics, "seeds": 1,
             "base": digits_base(), "columns": {"d": {"label": "digits"}},
             "rows": [{"label": "CE", "method": "ce"}]}
    path = write_study(tmp_path, study, "outm")
    out = tmp_path / "out"
    assert main(["study", str(path), "--out", str(out), "--dry-run", "--throughput", "1000"]) == 0
    assert "cannot produce" not in capsys.readouterr().out
    assert main(["study", str(path), "--out", str(out), "--no-progress"]) == 0
    cells = {c["metric"]: c for c in json.loads((out / "table.json").read_text())["cells"]}
    run = out / "ce" / "d" / "seed0"
    cfg, data, model, dev, _ = load_run_model(run, "last", "cpu")
    got = split_outputs(model, data, cfg.data, "test", dev)
    emb, y = got["embeddings"], got["labels"]
    assert cells["recall_at_1"]["mean"] == pytest.approx(recall_at_k(emb, y, (1,))["recall@1"])
    dist = class_distances(emb, y)
    assert cells["intra_variance"]["mean"] == pytest.approx(dist["intra_variance"])
    assert cells["inter_distance"]["mean"] == pytest.approx(dist["inter_distance"])
    q1, med, q3 = (cells[f"true_class_prob_{q}"]["mean"] for q in ("q1", "median", "q3"))
    assert 0.0 <= q1 <= med <= q3 <= 1.0
    assert any(k.startswith("outputs@last:") for k in json.loads((run / "study_metrics.json").read_text()))  # cached
