"""The command line: compare, report, eval, train with label noise, bench."""
import json

import pytest
import yaml

from softlabels.cli import main

FAST = ["--epochs", "2", "--no-progress", "model.name=resnet8"]


def test_compare_prints_table_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", "--dataset", "digits", "--methods", "ce,ols", "--seeds", "2", "--out", str(out),
                 *FAST, "ols:method.options.alpha=0.3"])
    assert code == 0
    text = capsys.readouterr().out
    assert "mean ± std over seeds" in text and "rel. err. red." in text
    lines = [l for l in text.splitlines() if l.startswith(("ce ", "ols "))]
    assert len(lines) == 2 and all(" 2 " in l for l in lines)
    for m in ("ce", "ols"):
        for s in (0, 1):
            assert (out / m / f"seed{s}" / "final.json").is_file()
    ols_cfg = yaml.safe_load((out / "ols" / "seed0" / "config.yaml").read_text())
    assert ols_cfg["method"]["options"] == {"alpha": 0.3}
    ce_cfg = yaml.safe_load((out / "ce" / "seed1" / "config.yaml").read_text())
    assert ce_cfg["method"]["options"] == {} and ce_cfg["train"]["seed"] == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [r["label"] for r in summary["rows"]] == ["ce", "ols"]
    stamp = (out / "ce" / "seed0" / "final.json").stat().st_mtime_ns
    assert main(["compare", "--dataset", "digits", "--methods", "ce,ols", "--seeds", "2", "--out", str(out), *FAST,
                 "ols:method.options.alpha=0.3"]) == 0
    assert (out / "ce" / "seed0" / "final.json").stat().st_mtime_ns == stamp  # not retrained
    # the same folder with another setting would mix two experiments: refused, naming the key
    capsys.readouterr()
    assert main(["compare", "--dataset", "digits", "--methods", "ce,ols", "--seeds", "2", "--out", str(out), *FAST]) == 2
    assert "method.options.alpha" in capsys.readouterr().err

    capsys.readouterr()
    assert main(["report", str(out), "--markdown", "--baseline", "ce"]) == 0
    md = capsys.readouterr().out
    assert md.startswith("| method |") and "| ols | 2 |" in md

    assert main(["eval", str(out / "ols" / "seed0"), "--checkpoint", "best"]) == 0
    best = json.loads((out / "ols" / "seed0" / "final.json").read_text())["best"]["test"]
    evaluated = json.loads((out / "ols" / "seed0" / "eval" / "best-test.json").read_text())
    assert evaluated["top1_error"] == pytest.approx(best["top1_error"])
    assert evaluated["nll"] == pytest.approx(best["nll"], abs=1e-5)


def test_compare_rejects_unknown_method_before_training(tmp_path, capsys):
    code = main(["compare", "--dataset", "digits", "--methods", "ce,bogus", "--out", str(tmp_path / "c"), *FAST])
    assert code == 2 and "unknown method 'bogus'" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()
    # a typo that YAML would read as a mapping (ce:) is named as what it is
    code = main(["compare", "--dataset", "digits", "--methods", "ce:,ls", "--out", str(tmp_path / "c"), *FAST])
    assert code == 2 and "--methods: 'ce:' is not a method name" in capsys.readouterr().err
    assert not (tmp_path / "c").exists()


def test_train_with_label_noise_records_indices(tmp_path, capsys):
    run = tmp_path / "noisy"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--out", str(run),
                 "data.label_noise=0.2"]) == 0
    noise = json.loads((run / "noise.json").read_text())
    data = json.loads((run / "data.json").read_text())
    assert len(noise["indices"]) == round(0.2 * data["train"]) == data["label_noise_count"]
    assert all(a != b for a, b in zip(noise["original"], noise["noisy"]))
    record = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert {"noisy_fit", "noisy_recovered"} <= set(record["train"])


def test_train_refuses_existing_run_dir_and_resume_of_finished(tmp_path, capsys):
    run = tmp_path / "r"
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--out", str(run)]) == 0
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--no-progress", "--out", str(run)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    assert "already finished" in capsys.readouterr().out


def test_bench_smoke(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", "--parts", "engine", "--model", "lenet5", "--batch-size", "16", "--steps", "1",
                 "--rounds", "1", "--json", str(out)]) == 0
    res = json.loads(out.read_text())["engine"]
    assert set(res["images_per_s"]) == {"bare", "engine:ce", "engine:ols"}
    assert all(v > 0 for v in res["images_per_s"].values())
