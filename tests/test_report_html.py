"""eval --analyses and report --html, checked in headless Chromium (issues 4 and 14)."""
import json
import shutil
import subprocess
from pathlib import Path

import pytest

from softlabels.cli import main

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
FAST = ["--epochs", "2", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    cmp_dir = root / "cmp"
    assert main(["compare", "--dataset", "digits", "--methods", "ce,ols", "--seeds", "2", "--out", str(cmp_dir),
                 *FAST]) == 0
    noisy = root / "noisy"
    assert main(["train", "--dataset", "digits", "--out", str(noisy), *FAST, "data.label_noise=0.3",
                 "train.snapshot_epochs=[1,2]"]) == 0
    return cmp_dir, noisy


def test_default_analyses_write_json_and_pngs(runs):
    cmp_dir, _ = runs
    for m in ("ce", "ols"):
        assert main(["eval", str(cmp_dir / m / "seed0"), "--analyses", "--samples", "4"]) == 0
    out = cmp_dir / "ols" / "seed0" / "eval" / "best-test"
    res = json.loads((out / "analyses.json").read_text())
    for name in ("calibration", "perclass", "features", "predictions", "attention", "errors"):
        assert res[name]["figures"], name
        for f in res[name]["figures"]:
            assert (out / f).read_bytes().startswith(b"\x89PNG")
            assert res[name]["captions"][f] and ".png" not in res[name]["captions"][f]
    # the most confident errors: misclassified, surest first
    errors = res["errors"]["results"]
    assert errors["indices"] and all(not e["correct"] for e in errors["topk"])
    confidence = [e["top"][0][1] for e in errors["topk"]]
    assert confidence == sorted(confidence, reverse=True)
    assert len(res["predictions"]["results"]["predicted"]) == 359
    final = json.loads((cmp_dir / "ols" / "seed0" / "final.json").read_text())["best"]["test"]
    assert res["calibration"]["results"]["metrics"]["top1_error"] == pytest.approx(final["top1_error"])
    assert len(res["predictions"]["results"]["true_class_probability"]) == 359
    assert len(res["predictions"]["results"]["topk"]) == 4
    assert res["_run"]["sample_index"] == [0, 119, 239, 358]


def test_optional_analyses(runs, capsys):
    cmp_dir, noisy = runs
    code = main(["eval", str(noisy), "--analyses", "noise,snapshots,baseline,or_maps,robustness",
                 "--baseline", str(cmp_dir / "ce" / "seed0"),
                 "--members", str(cmp_dir / "ce" / "seed0"), str(cmp_dir / "ols" / "seed0"),
                 "--max-adversarial", "64", "--samples", "2"])
    assert code == 0
    res = json.loads((noisy / "eval" / "best-test" / "analyses.json").read_text())
    assert res["noise"]["results"]["epochs"] == [1, 2]
    assert res["snapshots"]["results"]["snapshots"] == ["epoch1", "epoch2"]
    assert len(res["snapshots"]["results"]["members"]) == 2
    b = res["baseline"]["results"]
    assert b["fixed"] + b["broken"] + b["both_right"] + b["both_wrong"] == 359
    assert len(b["samples"]["fixed"]) == min(b["fixed"], 1) and len(b["samples"]["broken"]) == min(b["broken"], 1)
    assert res["baseline"]["figures"] == (["baseline-gradcam.png"] if b["fixed"] + b["broken"] else [])
    rob = res["robustness"]["results"]
    assert rob["samples"] >= 64
    assert rob["pgd"]["top1_error"] >= rob["clean"]["top1_error"]
    assert res["or_maps"]["figures"] == ["or_maps-or_maps.png"]
    capsys.readouterr()
    # named explicitly without its input: one-line error, exit 2; as part of `all`: skipped
    assert main(["eval", str(cmp_dir / "ce" / "seed0"), "--analyses", "noise"]) == 2
    assert "not trained with label noise" in capsys.readouterr().err


STUDY = {"study": {"name": "cskd-table1", "title": "CS-KD Table 1: top-1 error (%)", "paper": "cskd",
                   "source": "Table 1", "metrics": ["top1_error"],
                   "compare_to": "Cross-entropy"},
         "columns": [{"key": "c100", "label": "CIFAR-100 / ResNet-18"}],
         "lines": [{"key": "ce", "label": "Cross-entropy"}, {"key": "cskd", "label": "CS-KD"}],
         "cells": [{"line": "ce", "column": "c100", "metric": "top1_error", "n": 3, "mean": 24.9, "std": 0.3,
                    "paper_mean": 24.71, "paper_std": 0.24, "delta": 0.19, "verdict": "✔"},
                   {"line": "cskd", "column": "c100", "metric": "top1_error", "n": 3, "mean": 23.5, "std": 0.2,
                    "paper_mean": 21.99, "paper_std": None, "delta": 1.51, "verdict": "✘",
                    "vs_ref": {"n": 3, "mean_diff": -1.4, "std_diff": 0.2, "p": 0.012, "sign": "better", "wins": 3}}]}


def test_html_report_renders_every_plot_in_chromium(runs, tmp_path):
    import re

    cmp_dir, _ = runs
    for m in ("ce", "ols"):
        if not (cmp_dir / m / "seed0" / "eval" / "best-test" / "analyses.json").is_file():
            assert main(["eval", str(cmp_dir / m / "seed0"), "--analyses", "--samples", "4"]) == 0
        # the second seeds with the cheap analyses only (t-SNE is the slow one)
        assert main(["eval", str(cmp_dir / m / "seed1"), "--analyses", "calibration,perclass,predictions"]) == 0
    study = tmp_path / "study"  # a study folder as `softlabels study` leaves it
    study.mkdir()
    (study / "table.json").write_text(json.dumps(STUDY))
    page = tmp_path / "report.html"
    assert main(["report", str(cmp_dir), str(study), "--html", str(page), "--title", "digits",
                 "--baseline", "ce", "--band", "std"]) == 0
    text = page.read_text()
    assert "http://" not in text and "https://" not in text  # self-contained
    assert text.count("<img") >= 20
    assert "bands: ± one standard deviation over seeds" in text
    for section in ("Summary", "Learning curves", "Methods side by side (seeds pooled)",
                    "Samples fixed and broken relative to ce", "Misclassified samples chosen by the analysis",
                    "Feature space", "OLS soft-label matrices", "Config differences between methods",
                    "Environment and commit", "Paper studies", "Runs"):
        assert f"<h2>{section}</h2>" in text, section
    # pooled over both seeds, not the first one only
    for title in ("Reliability diagrams, seeds pooled", "ce: confidence, 2 seeds pooled",
                  "ols: confusion matrix, 2 seeds summed", "ols: OLS soft-label matrix, mean of 2 seeds"):
        assert f'alt="{title}"' in text, title
    # feature table: mean ± std over the seeds that have the analysis, like the summary
    features = text.split("<h2>Feature space</h2>")[1].split("<h2>")[0]
    assert re.search(r"<td>ols</td><td>1</td><td>[\d.]+ ± 0.00</td>", features)
    fixed = text.split("<h2>Samples fixed and broken relative to ce</h2>")[1].split("<h2>")[0]
    assert re.search(r"<td>ols</td><td>2</td><td>[\d.]+ ± [\d.]+</td>", fixed)
    assert "<td>method.name</td><td>ce</td><td>ols</td>" in text
    assert "CS-KD Table 1" in text and "24.90 ± 0.30 (3) · paper 24.71 ± 0.24 · Δ +0.19" in text
    assert "Δ +1.51 · vs Cross-entropy: -1.40 (better, 3/3 seeds, p = 0.012)" in text
    # every figure has a caption that says what it shows, not a file name
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", text)
    assert len(captions) == text.count("<img") and not [c for c in captions if ".png" in c or len(c) < 20]
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (apt-get install chromium); the HTML was checked statically")
    flags = [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    dom = subprocess.run(flags + ["--virtual-time-budget=10000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    n = text.count("<img")
    assert f'data-images="{n}/{n}"' in dom, dom[:300]
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report.png"
    subprocess.run(flags + ["--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    assert shot.read_bytes().startswith(b"\x89PNG")
