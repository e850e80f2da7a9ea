import json
import statistics

import pytest

from softlabels.errors import SoftlabelsError
from softlabels.report import (
    REL_ERR_COLUMN,
    aggregate,
    find_runs,
    format_table,
    read_final,
    write_summary,
)

METRICS = ("top1_error", "top5_error", "nll", "ece")

# label -> seed -> best test metrics
BEST = {
    "ce": {
        0: {"top1_error": 30.10, "top5_error": 10.20, "nll": 1.2345, "ece": 8.50},
        1: {"top1_error": 29.70, "top5_error": 10.00, "nll": 1.2011, "ece": 8.10},
        2: {"top1_error": 30.60, "top5_error": 10.90, "nll": 1.2502, "ece": 9.00},
    },
    "ols": {
        0: {"top1_error": 27.40, "top5_error": 9.10, "nll": 1.0412, "ece": 3.30},
        1: {"top1_error": 27.90, "top5_error": 9.40, "nll": 1.0601, "ece": 3.10},
        2: {"top1_error": 27.10, "top5_error": 9.00, "nll": 1.0333, "ece": 3.70},
    },
}


def _final(label, seed, best, last=None, dataset="digits"):
    extra = {"macro_precision": 70.0, "macro_recall": 70.0, "macro_f1": 70.0, "count": 100.0}
    last = last or {k: v + 1.0 for k, v in best.items()}
    return {
        "run": {"method": label, "label": label, "seed": seed, "dataset": dataset,
                "model": "resnet8"},
        "selection": "val top1_error (lowest)",
        "last": {"epoch": 29, "val": dict(last, **extra), "test": dict(last, **extra)},
        "best": {"epoch": 25, "val": dict(best, **extra), "test": dict(best, **extra)},
    }


def _write(root, name, data):
    d = root / name
    d.mkdir(parents=True)
    (d / "final.json").write_text(json.dumps(data))
    return d


@pytest.fixture
def runs(tmp_path):
    root = tmp_path / "runs"
    for label in ("ols", "ce"):
        for seed, best in BEST[label].items():
            _write(root / label, f"seed{seed}", _final(label, seed, best))
    return root


def test_find_runs(runs, tmp_path):
    found = find_runs([str(runs)])
    assert len(found) == 6
    assert all((d / "final.json").is_file() for d in found)
    # a run dir itself, a final.json path, and duplicates are accepted once
    one = runs / "ols" / "seed1"
    assert find_runs([one, one / "final.json", runs / "ols"]) == [one, runs / "ols" / "seed0",
                                                                  runs / "ols" / "seed2"]


def test_aggregate_mean_std(runs):
    dirs = find_runs([runs / "ols", runs / "ce"])
    rows = aggregate(dirs, which="best", split="test", metrics=METRICS)
    assert [r.label for r in rows] == ["ols", "ce"]  # first-seen order
    for row in rows:
        assert row.n_seeds == 3
        assert sorted(row.seeds) == [0, 1, 2]
        assert row.dataset == "digits" and row.model == "resnet8"
        for m in METRICS:
            vals = [BEST[row.label][s][m] for s in (0, 1, 2)]
            assert row.mean[m] == pytest.approx(statistics.mean(vals), abs=1e-12)
            assert row.std[m] == pytest.approx(statistics.stdev(vals), abs=1e-12)

    last = aggregate(dirs, which="last", metrics=["top1_error"])
    assert last[0].mean["top1_error"] == pytest.approx(
        statistics.mean(BEST["ols"][s]["top1_error"] for s in range(3)) + 1.0)
    assert last[0].which == "last" and last[0].split == "test"


def test_single_seed_std_is_zero(runs):
    rows = aggregate([runs / "ce" / "seed1"])
    assert rows[0].n_seeds == 1
    assert rows[0].std == {m: 0.0 for m in METRICS}
    assert rows[0].mean["nll"] == pytest.approx(1.2011)


def test_format_text_and_markdown(runs):
    rows = aggregate(find_runs([runs]), metrics=METRICS)
    by = {r.label: r for r in rows}
    ce = [BEST["ce"][s]["top1_error"] for s in range(3)]
    ols = [BEST["ols"][s]["top1_error"] for s in range(3)]
    red = (statistics.mean(ce) - statistics.mean(ols)) / statistics.mean(ce) * 100

    text = format_table(rows, METRICS, baseline="ce")
    lines = text.strip("\n").split("\n")
    assert len(lines) == 2 + 2  # header, rule, two methods
    for name in ("method", "seeds", "top-1 err (%)", "top-5 err (%)", "NLL", "ECE (%)",
                 REL_ERR_COLUMN):
        assert name in lines[0]
    ols_line = next(l for l in lines if l.startswith("ols"))
    ce_line = next(l for l in lines if l.startswith("ce"))
    assert f"{statistics.mean(ols):.2f} ± {statistics.stdev(ols):.2f}" in ols_line
    nll = [BEST["ols"][s]["nll"] for s in range(3)]
    assert f"{statistics.mean(nll):.3f} ± {statistics.stdev(nll):.3f}" in ols_line
    assert ols_line.endswith(f"{red:.2f}")
    assert red == pytest.approx(8.85, abs=0.01)
    # blank reduction for the baseline: its line ends with the ECE cell
    assert ce_line.endswith(f"{by['ce'].mean['ece']:.2f} ± {by['ce'].std['ece']:.2f}")
    # columns are aligned: every line has the same length up to trailing blanks
    assert len({len(l) for l in lines[:2]}) == 1
    assert " 3 " in ols_line  # seeds column

    md = format_table(rows, METRICS, baseline="ce", fmt="markdown")
    mlines = md.strip("\n").split("\n")
    assert len(mlines) == 4
    assert all(l.startswith("| ") and l.endswith(" |") for l in mlines)
    assert mlines[0] == ("| method | seeds | top-1 err (%) | top-5 err (%) | NLL | ECE (%) | "
                         f"{REL_ERR_COLUMN} |")
    assert mlines[1] == "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"
    assert f"| {red:.2f} |" in next(l for l in mlines if l.startswith("| ols "))
    assert next(l for l in mlines if l.startswith("| ce ")).endswith("|  |")

    plain = format_table(rows, ["top1_error"])
    assert REL_ERR_COLUMN not in plain


def test_relative_reduction_guard(tmp_path):
    zero = {"top1_error": 0.0, "top5_error": 0.0, "nll": 0.01, "ece": 0.1}
    _write(tmp_path, "a", _final("base", 0, zero))
    _write(tmp_path, "b", _final("other", 0, dict(zero, top1_error=1.0)))
    rows = aggregate(find_runs([tmp_path]))
    text = format_table(rows, ["top1_error"], baseline="base")
    assert text.strip().split("\n")[-1].endswith("n/a")
    with pytest.raises(SoftlabelsError, match="baseline 'nope'"):
        format_table(rows, ["top1_error"], baseline="nope")


def test_write_summary(runs, tmp_path):
    rows = aggregate(find_runs([runs]))
    out = write_summary(rows, tmp_path / "sub" / "summary.json")
    data = json.loads(out.read_text())
    assert [r["label"] for r in data["rows"]] == [r.label for r in rows]
    first = data["rows"][0]
    assert first["n_seeds"] == 3 and first["which"] == "best" and first["split"] == "test"
    assert first["metrics"]["top1_error"]["mean"] == pytest.approx(rows[0].mean["top1_error"])
    assert first["metrics"]["nll"]["std"] == pytest.approx(rows[0].std["nll"])


def test_missing_paths(tmp_path):
    missing = tmp_path / "no_such_dir"
    with pytest.raises(SoftlabelsError, match="no_such_dir"):
        find_runs([missing])
    empty = tmp_path / "empty"
    (empty / "deeper").mkdir(parents=True)
    with pytest.raises(SoftlabelsError, match="no runs found") as e:
        find_runs([empty])
    assert "\n" not in str(e.value)


def test_malformed_final(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "final.json").write_text("{not json")
    with pytest.raises(SoftlabelsError, match="not valid JSON") as e:
        find_runs([tmp_path])
    assert str(bad / "final.json") in str(e.value)
    with pytest.raises(SoftlabelsError, match="not valid JSON"):
        read_final(bad)

    nokey = tmp_path / "nokey"
    nokey.mkdir()
    (nokey / "final.json").write_text(json.dumps({"best": {}}))
    with pytest.raises(SoftlabelsError, match="'run'") as e:
        find_runs([nokey])
    assert str(nokey / "final.json") in str(e.value)

    # a metric or split missing only shows at aggregation; the message names file and key
    nometric = _write(tmp_path / "ok", "r", _final("x", 0, {"top1_error": 1.0}))
    with pytest.raises(SoftlabelsError, match=r"missing key 'best\.test\.top5_error'") as e:
        aggregate(find_runs([nometric]))
    assert str(nometric / "final.json") in str(e.value)
    with pytest.raises(SoftlabelsError, match=r"missing key 'best\.train'"):
        aggregate([nometric], split="train", metrics=["top1_error"])


def test_mixed_groups_rejected(tmp_path):
    m = BEST["ce"][0]
    _write(tmp_path, "a", _final("ce", 0, m))
    _write(tmp_path, "b", _final("ce", 0, m))
    with pytest.raises(SoftlabelsError, match="repeat seed 0"):
        aggregate(find_runs([tmp_path]))
    other = tmp_path / "other"
    _write(other, "a", _final("ce", 0, m))
    _write(other, "b", _final("ce", 1, m, dataset="cifar100"))
    with pytest.raises(SoftlabelsError, match="mix datasets"):
        aggregate(find_runs([other]))


def test_collapsed_seeds_are_marked_not_averaged(tmp_path):
    """Issue 9: a run the engine stopped as collapsed (final.json key ``collapsed``) is listed,
    never folded into mean ± std; a label whose seeds all collapsed shows ``collapsed``."""
    root = tmp_path / "runs"
    for seed, best in BEST["ce"].items():
        _write(root / "ce", f"seed{seed}", _final("ce", seed, best))
    for seed, best in BEST["ols"].items():
        data = _final("kd", seed, best)
        if seed != 0:
            data["collapsed"] = {"epoch": 1, "split": "val", "reason": "its predictions are uniform"}
            data["best"]["test"]["top1_error"] = 90.0
        _write(root / "kd", f"seed{seed}", data)
    data = _final("focusnet", 0, BEST["ce"][0])
    data["collapsed"] = {"epoch": 1, "split": "val", "reason": "constant"}
    _write(root / "focusnet", "seed0", data)
    rows = {r.label: r for r in aggregate(find_runs([root]))}
    kd = rows["kd"]
    assert kd.seeds == [0] and kd.collapsed == [1, 2] and kd.n_seeds == 1
    assert kd.mean["top1_error"] == pytest.approx(27.40) and kd.std["top1_error"] == 0.0
    assert rows["focusnet"].collapsed == [0] and rows["focusnet"].n_seeds == 0
    md = format_table(list(rows.values()), baseline="ce", fmt="markdown")
    kd_line = next(line for line in md.splitlines() if line.startswith("| kd "))
    assert "| 1 + 2 collapsed |" in kd_line and "90" not in kd_line
    fn_line = next(line for line in md.splitlines() if line.startswith("| focusnet "))
    assert fn_line.count("collapsed") == 5 and fn_line.endswith("| n/a |")
    summary = json.loads(write_summary(list(rows.values()), tmp_path / "s.json").read_text())
    assert {r["label"]: r["collapsed_seeds"] for r in summary["rows"]}["kd"] == [1, 2]
