"""The bench suite runs end to end on tiny sizes (figures are not judged here: see
tests/test_benchmark.py, marked benchmark), its CPU clock counts worker processes, and its
CUDA part is skipped with one line on a machine without CUDA."""
from __future__ import annotations

import multiprocessing
import time

import pytest
import torch

from softlabels.bench import cpu_seconds, format_suite, run_suite
from softlabels.cli import main
from softlabels.errors import ConfigError


def _burn(seconds):
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def test_cpu_clock_counts_child_processes():
    ctx = multiprocessing.get_context("fork")
    t0 = cpu_seconds()
    child = ctx.Process(target=_burn, args=(0.4,))
    child.start()
    time.sleep(0.3)
    live = cpu_seconds() - t0  # the live child's time so far, read from /proc
    child.join()
    done = cpu_seconds() - t0  # after the join: through RUSAGE_CHILDREN
    assert done >= 0.35 and live > 0.0


def test_suite_runs_every_part_on_tiny_sizes(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path / "cache"))
    res = run_suite(["engine", "epoch", "methods", "files", "cuda"], clock="cpu", rounds=1, steps=1,
                    device="cpu", model="resnet8", batch_size=16, image_size=16, epoch_images=48,
                    workers=0, files=6, methods=["ce", "kd", "cskd"])
    assert {r["name"] for r in res["methods"]["rows"]} == {"ce", "kd", "cskd"}
    kd = next(r for r in res["methods"]["rows"] if r["name"] == "kd")
    assert 1.2 < kd["flop_ratio"] < 1.5  # a teacher forward ≈ a third of a training step
    cskd = next(r for r in res["methods"]["rows"] if r["name"] == "cskd")
    assert 1.8 < cskd["flop_ratio"] < 2.2  # the partner batch's forward + backward
    assert len(res["epoch"]["rows"]) == 4 and len(res["files"]["rows"]) == 5
    if not torch.cuda.is_available():
        assert res["cuda"]["skipped"].startswith("no CUDA device")
    text = format_suite(res)
    for title in ("engine step", "whole training epoch", "per anchor image", "ImageFolder", "CUDA"):
        assert title in text
    assert not (tmp_path / "cache").exists()  # the files part keeps its cache to itself


def test_formats_part_compares_memory_formats():
    from softlabels.bench import run_formats_part

    res = run_formats_part(models=("resnet8",), batch_size=4, image_size=8, steps=1, rounds=1, device="cpu")
    names = [r["name"] for r in res["rows"]]
    assert names == ["resnet8: contiguous (NCHW)", "resnet8: channels_last"]
    assert res["rows"][1]["ratio"]["median"] > 0


def test_the_fine_grained_row_of_the_cuda_part_runs_on_the_cpu(tmp_path, monkeypatch):
    """The CUDA part's ResNet-50/448 measurement, shrunk and on the CPU: it trains from the
    file path and reports the data-wait share."""
    from softlabels.bench import _fine_grained_row

    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path / "cache"))
    row = _fine_grained_row(n=8, batch_size=4, device="cpu", model="resnet8", image_size=16,
                            resize=20, size=(30, 24), epochs=2, precision="fp32")
    assert row["median"] > 0 and 0 <= row["data_wait_share"] < 1
    assert not (tmp_path / "cache").exists()


def test_cli_bench_parts(capsys):
    with pytest.raises(ConfigError, match="unknown part"):
        run_suite(["gpu"])
    assert main(["bench", "--parts", "cuda"]) == 0
    out = capsys.readouterr().out
    assert "## CUDA" in out
