"""Wall and CPU time of `softlabels study --jobs 1` vs `--jobs 2` on the same 6-run study, side by
side (docs/benchmarks.md, "Study runs in parallel").

    PYTHONPATH=src python scripts/bench_study_jobs.py [--epochs 3] [--rounds 1] [--out /tmp/bench-jobs]

The study: digits (1,438 training images), CIFAR ResNet-8, 2 seeds × (cross-entropy, a trained
teacher, KD taught by it) = 6 runs, deterministic. Each configuration is a fresh
`python -m softlabels study` process on a fresh folder; the order alternates between rounds.
CPU time is the user + system time of that process and all its children. Three configurations:
`--jobs 1` (one process, torch's default threads = all cores), `--jobs 1` with
`train.threads=1`, and `--jobs 2` (two processes of one thread each). The tables of the runs with
one thread per run must be identical (the script checks it; CPU kernels' results depend on the
number of threads, so the default-thread table may differ in the last bits).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml


def study(epochs: int) -> dict:
    return {"title": "jobs benchmark", "paper": "none", "source": "benchmark", "metrics": ["top1_error"], "seeds": 2,
            "base": {"data": {"name": "digits", "batch_size": 64}, "model": {"name": "resnet8"},
                     "optim": {"lr": 0.05}, "schedule": {"name": "constant"},
                     "train": {"epochs": epochs, "deterministic": True}},
            "columns": {"d": {"label": "digits"}},
            "teachers": {"t": {"config": {}}},
            "rows": [{"label": "CE", "method": "ce"}, {"label": "KD", "method": "kd", "teachers": ["t"]}]}


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run(path: Path, out: Path, jobs: int, extra: list) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "softlabels", "study", str(path)] + extra + [
        "--out", str(out), "--no-progress", "--device", "cpu", "--jobs", str(jobs)]
    c0, t0 = children_cpu(), time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall, cpu = time.perf_counter() - t0, children_cpu() - c0
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    cells = {(c["line"], c["column"], c["metric"]): c["values"]
             for c in json.loads((out / "table.json").read_text())["cells"]}
    return {"wall": wall, "cpu": cpu, "cells": cells}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--out", default="/tmp/bench-study-jobs")
    ap.add_argument("--no-default-threads", action="store_true",
                    help="leave out `--jobs 1` with torch's default threads (slow when the cores are shared)")
    a = ap.parse_args()
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    path = root / "jobs-bench.yaml"
    path.write_text(yaml.safe_dump(study(a.epochs), sort_keys=False))
    print(f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, {os.cpu_count()} CPUs, "
          f"load average {os.getloadavg()[0]:.1f}; study: 6 runs, {a.epochs} epochs each")
    configs = {"--jobs 1": (1, []), "--jobs 1 train.threads=1": (1, ["train.threads=1"]), "--jobs 2": (2, [])}
    if a.no_default_threads:
        del configs["--jobs 1"]
    res = {k: [] for k in configs}
    for r in range(a.rounds):
        names = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in names:
            jobs, extra = configs[name]
            got = run(path, root / name.replace(" ", "_").replace("=", "-"), jobs, extra)
            res[name].append(got)
            print(f"  round {r + 1} {name}: wall {got['wall']:.1f} s, CPU {got['cpu']:.1f} s "
                  f"(load average now {os.getloadavg()[0]:.1f})", flush=True)
    mean = {k: (sum(x["wall"] for x in v) / len(v), sum(x["cpu"] for x in v) / len(v)) for k, v in res.items()}
    ref = "--jobs 1 train.threads=1"
    for k, (w, c) in mean.items():
        print(f"{k}: wall {w:.1f} s, CPU {c:.1f} s; wall / ({ref}) {w / mean[ref][0]:.2f}")
    one = res["--jobs 1 train.threads=1"] + res["--jobs 2"]
    print(f"tables of one thread per run identical: {all(x['cells'] == one[0]['cells'] for x in one)}"
          + ("" if a.no_default_threads else
             f"; default-thread table identical to them: {res['--jobs 1'][0]['cells'] == one[0]['cells']}"))


if __name__ == "__main__":
    main()
