"""report's CSV/LaTeX/HTML tables, the pooling and sample selection behind the HTML report, and
the study-table reader (issue 14). No training: runs are final.json files written here."""
import csv
import io
import json

import pytest
import torch
from helpers import expect_config_error

from softlabels.cli import main
from softlabels.errors import SoftlabelsError
from softlabels.evaluate.plots import learning_curve_series, plot_learning_curves, plot_soft_label_matrix
from softlabels.evaluate.predictions import (
    fixed_and_broken,
    fixed_and_broken_samples,
    most_confident_errors,
    pool_reliability,
    reliability,
)
from softlabels.report.html import config_differences, environment_summary, read_study_table
from softlabels.report.table import TABLE_FORMATS, Row, format_table, latex_escape

pytestmark = pytest.mark.usefixtures("one_thread")


def _rows():
    return [Row("ce", "ce", "digits", "resnet8", "best", "test", [0, 1], {"top1_error": 10.0, "nll": 0.4},
                {"top1_error": 1.5, "nll": 0.0123}),
            Row("ols_a&b", "ols", "digits", "resnet8", "best", "test", [0, 1], {"top1_error": 8.0, "nll": 0.5},
                {"top1_error": 0.5, "nll": 0.01})]


def test_every_format_has_the_same_header_and_cells():
    rows = _rows()
    text = format_table(rows, ["top1_error", "nll"], baseline="ce")
    parsed = list(csv.reader(io.StringIO(format_table(rows, ["top1_error", "nll"], baseline="ce", fmt="csv"))))
    assert parsed[0] == ["method", "seeds", "top-1 err (%)", "NLL", "rel. err. red. (%)"]
    assert parsed[1] == ["ce", "2", "10.00 ± 1.50", "0.400 ± 0.012", ""]
    assert parsed[2] == ["ols_a&b", "2", "8.00 ± 0.50", "0.500 ± 0.010", "20.00"]
    for cells in parsed[1:]:  # the text table shows exactly these cells
        assert all(c in text for c in cells)
    tex = format_table(rows, ["top1_error", "nll"], baseline="ce", fmt="latex")
    assert tex.startswith(r"\begin{tabular}{lrrrr}") and tex.rstrip().endswith(r"\end{tabular}")
    assert r"ols\_a\&b & 2 & 8.00 $\pm$ 0.50 & 0.500 $\pm$ 0.010 & 20.00 \\" in tex
    assert r"rel. err. red. (\%)" in tex
    page = format_table(rows, ["top1_error", "nll"], fmt="html")
    assert page.count("<tr>") == 3 and "ols_a&amp;b" in page and "<td>8.00 ± 0.50</td>" in page
    assert set(TABLE_FORMATS) == {"text", "markdown", "csv", "latex", "html"}
    expect_config_error(lambda: format_table(rows, fmt="rst"), "rst", "latex")
    assert latex_escape("a_b 5% ~x") == r"a\_b 5\% \textasciitilde{}x"


def _final(path, label, seed, err):
    path.mkdir(parents=True)
    block = {"epoch": 2, "val": {"top1_error": err}, "test": {"top1_error": err, "top5_error": 1.0, "nll": 0.3,
                                                              "ece": 2.0}}
    (path / "final.json").write_text(json.dumps({"run": {"method": label, "label": label, "seed": seed},
                                                 "selection": "val", "last": block, "best": block}))


def test_report_writes_csv_and_latex(tmp_path, capsys):
    for label, errs in (("ce", (10.0, 12.0)), ("ls", (9.0, 9.0))):
        for seed, err in enumerate(errs):
            _final(tmp_path / "cmp" / label / f"seed{seed}", label, seed, err)
    out_csv, out_tex = tmp_path / "out" / "t.csv", tmp_path / "t.tex"
    assert main(["report", str(tmp_path / "cmp"), "--csv", str(out_csv), "--latex", str(out_tex),
                 "--baseline", "ce"]) == 0
    rows = list(csv.reader(out_csv.open()))
    assert rows[1][:3] == ["ce", "2", "11.00 ± 1.41"] and rows[2][-1] == "18.18"
    assert r"ls & 2 & 9.00 $\pm$ 0.00" in out_tex.read_text()
    capsys.readouterr()
    blocked = tmp_path / "file"
    blocked.write_text("")
    assert main(["report", str(tmp_path / "cmp"), "--csv", str(blocked / "t.csv")]) != 0
    err = capsys.readouterr().err
    assert err.startswith("softlabels: error: ") and err.count("\n") == 1 and "cannot write" in err


def test_pool_reliability_equals_reliability_of_the_pooled_samples():
    g = torch.Generator().manual_seed(0)
    parts = [(torch.randn(n, 5, generator=g) * 3, torch.randint(0, 5, (n,), generator=g)) for n in (40, 70, 1)]
    pooled = pool_reliability([reliability(z, y, bins=10) for z, y in parts])
    whole = reliability(torch.cat([z for z, _ in parts]), torch.cat([y for _, y in parts]), bins=10)
    assert pooled["bin_count"] == whole["bin_count"] and pooled["count"] == 111
    for key in ("ece", "accuracy", "mean_confidence"):
        assert pooled[key] == pytest.approx(whole[key], abs=1e-9)
    for a, b in zip(pooled["bin_accuracy"], whole["bin_accuracy"]):
        assert (a is None and b is None) or a == pytest.approx(b, abs=1e-12)
    with pytest.raises(ValueError):
        pool_reliability([reliability(*parts[0], bins=10), reliability(*parts[1], bins=5)])


def test_sample_selection_by_hand():
    labels = torch.tensor([0, 1, 2, 0])
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 4.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 9.0]])
    # wrong: 0 (conf high), 2 (conf lower), 3 (highest); right: 1
    assert most_confident_errors(logits, labels, k=None) == [3, 0, 2]
    assert most_confident_errors(logits, labels, k=1) == [3]
    base = torch.tensor([[5.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 1.0]])
    got = fixed_and_broken_samples(base, logits, labels, k=None)
    counts = fixed_and_broken(base, logits, labels)
    assert len(got["fixed"]) == counts["fixed"] and len(got["broken"]) == counts["broken"]
    assert got == {"fixed": [], "broken": [0, 2]}
    assert fixed_and_broken_samples(logits, base, labels)["fixed"] == [0, 2]


def test_learning_curves_mean_and_band_over_seeds():
    seeds = [[{"epoch": 1, "train": {"loss": 2.0, "top1_error": 50.0}, "test": {"top1_error": 40.0, "nll": 1.0}},
              {"epoch": 2, "train": {"loss": 1.0, "top1_error": 30.0}, "test": {"top1_error": 20.0, "nll": 0.5}}],
             [{"epoch": 1, "train": {"loss": 4.0, "top1_error": 70.0}, "test": {"top1_error": 60.0, "nll": 3.0}}]]
    s = learning_curve_series(seeds)
    assert s["train loss"] == {"epoch": [1, 2], "mean": [3.0, 1.0], "min": [2.0, 1.0], "max": [4.0, 1.0],
                               "std": [pytest.approx(2 ** 0.5), 0.0], "n": [2, 1]}
    assert "val nll" not in s and s["test top1_error"]["mean"] == [50.0, 20.0]
    fig = plot_learning_curves({"ce": seeds, "ols": seeds[:1]}, band="std")
    assert len(fig.axes) == 2 and fig.axes[0].get_title() == "Top-1 error"
    assert len(plot_soft_label_matrix(torch.full((3, 3), 1 / 3), ["a", "b", "c"]).axes) == 2


def test_config_differences_and_environment(tmp_path):
    a = {"method": {"name": "ce", "options": {}}, "train": {"seed": 0, "epochs": 2}, "name": "ce"}
    b = {"method": {"name": "ols", "options": {"alpha": 0.5}}, "train": {"seed": 1, "epochs": 2}, "name": "ols"}
    keys, diff = config_differences({"ce": a, "ols": b})
    # train.seed and name differ by construction and are left out; an empty mapping is a value
    assert keys == ["method.name", "method.options", "method.options.alpha"]
    assert diff["method.options.alpha"] == {"ce": None, "ols": 0.5}
    assert diff["method.name"] == {"ce": "ce", "ols": "ols"}
    for i, commit in enumerate(("abc", "abc", "def")):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "environment.json").write_text(json.dumps({"torch": "2.x", "git": {"commit": commit}}))
    env = dict(environment_summary([tmp_path / str(i) for i in range(3)]))
    assert env["torch"] == "2.x" and env["git.commit"] == "abc (2 runs); def (1 runs)"


def test_study_table_reader_takes_both_shapes(tmp_path):
    runner = {"study": {"name": "cskd-table1", "title": "CS-KD Table 1", "paper": "cskd", "source": "Table 1",
                        "metrics": ["top1_error", "nll"]},
              "columns": [{"key": "c1", "label": "CIFAR-100"}],
              "lines": [{"key": "ce", "label": "Cross-entropy"}],
              "cells": [{"line": "ce", "column": "c1", "metric": "top1_error", "n": 3, "mean": 25.0, "std": 0.5,
                         "paper_mean": 24.71, "paper_std": None, "delta": 0.29, "verdict": "✔"},
                        {"line": "ce", "column": "c1", "metric": "nll", "n": 3, "mean": 1.0, "std": 0.1}]}
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "table.json").write_text(json.dumps(runner))
    t = read_study_table(tmp_path / "a" / "table.json")
    assert t["title"] == "CS-KD Table 1" and t["source"] == "cskd Table 1" and t["columns"] == ["CIFAR-100"]
    assert t["rows"] == [{"label": "Cross-entropy", "cells": {"CIFAR-100": {
        "ours_mean": 25.0, "ours_std": 0.5, "n": 3, "paper_mean": 24.71, "paper_std": None, "delta": 0.29,
        "verdict": "✔"}}}]
    documented = {"title": "T", "source": "S", "columns": ["CIFAR-100"], "rows": t["rows"]}
    (tmp_path / "b.json").write_text(json.dumps(documented))
    assert read_study_table(tmp_path / "b.json")["rows"] == t["rows"]
    (tmp_path / "c.json").write_text("[1, 2]")
    with pytest.raises(SoftlabelsError, match="not a study table"):
        read_study_table(tmp_path / "c.json")


def test_soft_label_matrix_read_from_the_last_checkpoint(tmp_path):
    from safetensors.torch import save_file

    from softlabels.report.html import soft_label_matrix

    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir(parents=True)
    assert soft_label_matrix(tmp_path / "run") is None  # no checkpoint
    m = torch.softmax(torch.randn(4, 4), 1)
    save_file({"model.head.weight": torch.zeros(4, 2), "method.methods.ols.soft_label_matrix": m},
              str(ckpt / "last.safetensors"))
    assert torch.allclose(soft_label_matrix(tmp_path / "run"), m.double())
    save_file({"model.head.weight": torch.zeros(4, 2)}, str(ckpt / "last.safetensors"))
    assert soft_label_matrix(tmp_path / "run") is None  # not an OLS run
    (ckpt / "last.safetensors").write_bytes(b"torn")
    assert soft_label_matrix(tmp_path / "run") is None


def test_robustness_and_feature_tables_are_mean_and_std_over_seeds(tmp_path):
    from softlabels.report.html import _seed_table

    def an(seed, clean, pgd):
        return {"_run": {"seed": seed}, "robustness": {"results": {"samples": 64, "clean": {"top1_error": clean},
                                                                   "pgd": {"top1_error": pgd}}}}

    analyses = {"ce": [(tmp_path, an(0, 10.0, 80.0)), (tmp_path, an(1, 12.0, 90.0))],
                "ols": [(tmp_path, an(0, 9.0, 70.0)), (tmp_path, None)]}
    page = _seed_table(analyses, "robustness", lambda r: {k: v["top1_error"] for k, v in r.items()
                                                         if isinstance(v, dict)})
    assert "<th>clean</th><th>pgd</th>" in page
    assert "<td>ce</td><td>2</td><td>11.00 ± 1.41</td><td>85.00 ± 7.07</td>" in page
    assert "<td>ols</td><td>1</td><td>9.00 ± 0.00</td><td>70.00 ± 0.00</td>" in page
    assert _seed_table(analyses, "features", lambda r: r) is None
