"""Throughput targets (run with `pytest -m benchmark`; not part of `make test`).

Issue 2, on the 2-core CPU: the engine's CE step for ResNet-8 on 28×28, batch 128, fp32,
channels_last must reach 90 % of a bare PyTorch loop's images/s, and the OLS step must stay
within 5 % of CE. Issue 13 (CPU-time clock, so a shared machine does not decide): the file path
from its second epoch ≥ 2× the images per CPU-second of ImageFolder + DataLoader; a whole
training epoch ≥ 1.3× the authors'-shape loop, for CE and CS-KD; every method's step cost per
anchor ≤ 1.1× its FLOP ratio (reported; see docs/benchmarks.md for the methods that miss it).
"""
import pytest

from softlabels.bench import (
    format_bench,
    format_suite,
    run_bench,
    run_epoch_part,
    run_files_part,
    run_methods_part,
)


@pytest.mark.benchmark
def test_engine_step_throughput_against_bare_loop():
    res = run_bench(model="resnet8", methods=("ce", "ols"), batch_size=128, image_size=28, channels=1,
                    channels_last=True, steps=20, rounds=9, clock="cpu")
    print(format_bench(res))
    assert res["ratio_vs_bare"]["engine:ce"] >= 0.90
    assert res["ratio_vs_engine:ce"]["engine:ols"] >= 0.95


@pytest.mark.benchmark
def test_file_path_from_its_second_epoch_is_twice_imagefolder(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path))
    res = run_files_part(n=192, rounds=3, clock="cpu")
    print(format_suite({"clock": "cpu", "rounds": 3, "threads": 1, "date": "", "files": res}))
    cached = next(r for r in res["rows"] if r["name"] == "epochs 2+: softlabels, cached")
    assert cached["ratio"]["median"] >= 2.0


@pytest.mark.benchmark
def test_whole_epoch_against_the_authors_shape_loop():
    res = run_epoch_part(n=1024, rounds=3, clock="cpu")
    print(format_suite({"clock": "cpu", "rounds": 3, "threads": 1, "date": "", "epoch": res}))
    for row in res["rows"]:
        if "softlabels" in row["name"]:
            assert row["ratio"]["median"] >= 1.3, row["name"]


@pytest.mark.benchmark
def test_method_step_cost_against_flops():
    res = run_methods_part(steps=5, rounds=3, clock="cpu")
    print(format_suite({"clock": "cpu", "rounds": 3, "threads": 1, "date": "", "methods": res}))
    assert not res["skipped"]
    over = {r["name"]: round(r["excess"], 2) for r in res["rows"] if r["excess"] > 1.1}
    print("over 1.1x their FLOP ratio:", over)
    assert res["rows"] and all(r["flop_ratio"] >= 0.99 for r in res["rows"])
