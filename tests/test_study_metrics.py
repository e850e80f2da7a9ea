"""Study metrics from a run's checkpoints (evaluate/run_metrics.py): FGSM/PGD errors (OLS Tables
VIII-IX), snapshot ensembles (OLS Table III), the CIFAR-10H KL (OLS Table XII) and the fit to
noisy labels (OLS Fig. 5), end to end through a study on digits; the cache in
RUN_DIR/study_metrics.json; the dry run's checks."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from helpers import expect_config_error
from softlabels.cli import main
from softlabels.study import build_table, check_plan, load_study, plan_study

pytestmark = pytest.mark.usefixtures("one_thread")

METRICS = ["top1_error", "fgsm_top1_error", "pgd_top1_error", "pgd_top5_error", "snapshot2_top1_error",
           "cifar10h_kl", "noisy_fit_error"]


def study_file(tmp_path: Path, name: str = "m", metrics=METRICS, pgd_steps: int = 2, human="{data_root}/h/probs.npy",
               **extra) -> Path:
    data = {"title": "checkpoint metrics", "paper": "none", "source": "test", "metrics": list(metrics), "seeds": 1,
            "metric_options": {"fgsm": {"epsilon": "8/255"},
                               "pgd": {"epsilon": "8/255", "step_size": "2/255", "steps": pgd_steps},
                               "attack_samples": 40, "human_labels": human},
            "base": {"data": {"name": "digits", "batch_size": 128, "label_noise": 0.3},
                     "model": {"name": "resnet8"}, "optim": {"lr": 0.05}, "schedule": {"name": "constant"},
                     "train": {"epochs": 2, "snapshot_epochs": [1]}},
            "columns": {"d": {"label": "digits"}},
            "rows": [{"label": "CE", "method": "ce"}], **extra}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(data, sort_keys=False))
    return p


def fake_cifar10h(path: Path, n: int, seed: int = 0) -> torch.Tensor:
    """A CIFAR-10H stand-in: n × 10 vote counts (a few classes voted per image)."""
    g = np.random.default_rng(seed)
    counts = g.integers(0, 4, size=(n, 10)).astype(np.float64)
    counts[np.arange(n), g.integers(0, 10, size=n)] += 20
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, counts / counts.sum(1, keepdims=True))
    return torch.from_numpy(counts / counts.sum(1, keepdims=True))


class Counter:
    """Counts the calls of the functions the metrics are computed with."""

    def __init__(self, monkeypatch):
        from softlabels.evaluate import ensemble, human, robustness

        self.calls = {}
        for mod, name in ((robustness, "attack_metrics"), (ensemble, "snapshot_metrics"), (human, "human_labels_kl")):
            self._wrap(monkeypatch, mod, name)

    def _wrap(self, monkeypatch, mod, name):
        real = getattr(mod, name)

        def wrapper(*a, **k):
            self.calls.setdefault(name, []).append(k.get("attacks"))
            return real(*a, **k)

        monkeypatch.setattr(mod, name, wrapper)

    def n(self, name):
        return len(self.calls.get(name, []))


def test_checkpoint_metrics_end_to_end_cached_and_checked_by_hand(tmp_path, capsys, monkeypatch):
    from softlabels.engine.runs import load_model_from_run
    from softlabels.engine.trainer import read_metrics
    from softlabels.evaluate.analyze import split_outputs
    from softlabels.evaluate.robustness import fgsm
    from softlabels.evaluate.run import load_run_model

    root, out = tmp_path / "root", tmp_path / "out"
    path = study_file(tmp_path)
    # the dry run names the absent human-labels file ({data_root} replaced), one line, exit 1
    assert main(["study", str(path), "--data-root", str(root), "--out", str(out), "--dry-run",
                 "--throughput", "1000"]) == 1
    o, err = capsys.readouterr()
    assert "cannot produce" not in o
    assert f"human-labels file {root}/h/probs.npy: not found (needed by metric cifar10h_kl)" in o
    assert err.startswith("softlabels: error: ") and err.count("\n") == 1
    human = fake_cifar10h(root / "h" / "probs.npy", 359)   # digits: 359 test images, 10 classes
    assert main(["study", str(path), "--data-root", str(root), "--out", str(out), "--dry-run",
                 "--throughput", "1000"]) == 0, capsys.readouterr()

    count = Counter(monkeypatch)
    assert main(["study", str(path), "--data-root", str(root), "--out", str(out), "--no-progress"]) == 0, \
        capsys.readouterr().err
    # computed in the run's own process right after training, each once; the table build read them
    assert count.n("attack_metrics") == 1 and count.n("snapshot_metrics") == 1 and count.n("human_labels_kl") == 1
    run = out / "CE".lower() / "d" / "seed0"
    cache = json.loads((run / "study_metrics.json").read_text())
    assert sum(k.startswith("fgsm@last:") for k in cache) == 1 and sum(k.startswith("pgd@last:") for k in cache) == 1
    cells = {c["metric"]: c["mean"] for c in json.loads((out / "table.json").read_text())["cells"]}
    assert all(cells[m] is not None for m in METRICS), cells

    # by hand: the snapshot ensemble = the averaged softmax of epoch 1 and the final model
    cfg, data, model, dev, _ = load_run_model(run, "last", "cpu")
    got = split_outputs(model, data, cfg.data, "test", dev)
    y = got["labels"]
    probs = []
    for name in ("epoch1", "last"):
        m = load_model_from_run(run, name)
        probs.append(torch.softmax(split_outputs(m, data, cfg.data, "test", dev)["logits"].double(), 1))
    err_snap = 100.0 * float(((probs[0] + probs[1]) / 2).argmax(1).ne(y).double().mean())
    assert cells["snapshot2_top1_error"] == pytest.approx(err_snap)
    # noisy_fit_error = 100 - the last record's train.noisy_fit
    assert cells["noisy_fit_error"] == pytest.approx(100.0 - read_metrics(run)[-1]["train"]["noisy_fit"])
    # KL(human || model) over the correctly classified test images
    logp = torch.log_softmax(got["logits"].double(), 1)
    ok = got["logits"].argmax(1) == y
    h = human[ok]
    kl = (h * (torch.log(h.clamp_min(1e-300)) - logp[ok])).sum(1).mean()
    assert cells["cifar10h_kl"] == pytest.approx(float(kl))
    # FGSM on exactly the first 40 test images (attack_samples), ε = 8/255 in pixel space
    xs, ys = [], []
    for b in got["loader"]:
        xs.append(b.x)
        ys.append(b.y)
    x, yy = torch.cat(xs)[:40], torch.cat(ys)[:40]
    adv = fgsm(model, x, yy, 8 / 255, data.dataset.mean, data.dataset.std)
    with torch.no_grad():
        fgsm_err = 100.0 * float(model(adv).logits.argmax(1).ne(yy).double().mean())
    assert cells["fgsm_top1_error"] == pytest.approx(fgsm_err)
    assert cache[next(k for k in cache if k.startswith("fgsm@"))]["samples"] == 40

    # an unchanged study: nothing is computed again
    study = load_study(path)
    plan = plan_study(study, out, data_root=str(root))
    mtime = (run / "study_metrics.json").stat().st_mtime_ns
    table = build_table(plan)
    assert count.n("attack_metrics") == 1 and count.n("snapshot_metrics") == 1 and count.n("human_labels_kl") == 1
    assert (run / "study_metrics.json").stat().st_mtime_ns == mtime and not table.errors
    # a changed PGD setting computes PGD again (not FGSM); a changed human-labels file the KL
    plan = plan_study(load_study(study_file(tmp_path, "m3", pgd_steps=3)), out, data_root=str(root))
    table = build_table(plan)
    assert count.n("attack_metrics") == 2 and [a["name"] for a in count.calls["attack_metrics"][-1]] == ["pgd"]
    assert count.n("human_labels_kl") == 1
    fake_cifar10h(root / "h" / "probs.npy", 359, seed=1)
    table = build_table(plan)
    assert count.n("human_labels_kl") == 2 and count.n("attack_metrics") == 2 and count.n("snapshot_metrics") == 1
    assert not table.errors
    # another snapshot set is another ensemble: one snapshot (the final model) = the final model's error
    plan = plan_study(load_study(study_file(tmp_path, "m1", metrics=["top1_error", "snapshot1_top1_error"])), out,
                      data_root=str(root))
    table = build_table(plan)
    assert count.n("snapshot_metrics") == 2 and not table.errors
    cell = next(iter(table.cells.values()))
    assert cell.values["snapshot1_top1_error"][0] == pytest.approx(cell.values["top1_error"][0])

    # the eval analyses go through the same functions
    assert main(["eval", str(run), "--analyses", "robustness,human", "--max-adversarial", "33",
                 "--human-labels", str(root / "h" / "probs.npy"), "--checkpoint", "last"]) == 0
    res = json.loads((run / "eval" / "last-test" / "analyses.json").read_text())
    assert res["robustness"]["results"]["samples"] == 33
    assert count.n("attack_metrics") == 3 and count.n("human_labels_kl") == 3

    # the human-labels file gone: the table is written, the cell is missing, one line, exit 1
    (root / "h" / "probs.npy").unlink()
    capsys.readouterr()
    assert main(["study", str(path), "--data-root", str(root), "--out", str(out), "--no-progress"]) == 1
    o, err = capsys.readouterr()
    assert err.strip().splitlines()[-1].startswith("softlabels: error: study m: 1 metric value(s) missing: ")
    assert "human-labels file" in err.strip().splitlines()[-1] and "probs.npy not found" in err
    cells = {c["metric"]: c["mean"] for c in json.loads((out / "table.json").read_text())["cells"]}
    assert cells["cifar10h_kl"] is None and cells["pgd_top1_error"] is not None


def test_metric_options_are_checked_with_one_line(tmp_path):
    for change, needle in (({"pgd": {"steps": 0}}, "m.yaml: metric_options.pgd.steps: expected an integer >= 1"),
                           ({"fgsm": {"epsilon": "8/0"}}, "m.yaml: metric_options.fgsm.epsilon: expected a number"),
                           ({"fgsm": {"steps": 3}}, "m.yaml: metric_options.fgsm.steps: unknown key"),
                           ({"attack_samples": 0}, "metric_options.attack_samples: expected null"),
                           ({"human_label": "x"}, "metric_options.human_label: unknown key")):
        p = study_file(tmp_path)
        d = yaml.safe_load(p.read_text())
        d["metric_options"] = change
        p.write_text(yaml.safe_dump(d))
        expect_config_error(lambda: load_study(p), needle)
    d["metric_options"] = {}
    d["columns"]["d"]["metric_options"] = {"pgd": {"random_start": "yes"}}
    p.write_text(yaml.safe_dump(d))
    expect_config_error(lambda: load_study(p), "m.yaml: columns.d.metric_options.pgd.random_start: expected true or false")
    # a column's options go over the study's, {data_root} replaced
    d["metric_options"] = {"pgd": {"steps": 7}, "human_labels": "{data_root}/a.npy"}
    d["columns"]["d"]["metric_options"] = {"pgd": {"step_size": 0.01}}
    p.write_text(yaml.safe_dump(d))
    from softlabels.study import metric_options

    opts = metric_options(plan_study(load_study(p), tmp_path / "o", data_root="/r"), "d")
    assert opts["pgd"] == {"epsilon": 8 / 255, "step_size": 0.01, "steps": 7, "random_start": True}
    assert opts["human_labels"] == "/r/a.npy" and opts["attack_samples"] is None


def test_dry_run_checks_snapshot_epochs_and_label_noise(tmp_path):
    p = study_file(tmp_path, metrics=["top1_error", "snapshot3_top1_error", "snapshot4_top1_error",
                                      "noisy_fit_error", "fgsm_top5_error"], human=None)
    d = yaml.safe_load(p.read_text())
    d["base"]["train"] = {"epochs": 3, "snapshot_epochs": [1]}
    d["base"]["data"]["label_noise"] = 0.0
    p.write_text(yaml.safe_dump(d))
    chk = check_plan(plan_study(load_study(p), tmp_path / "o"), throughput=1000.0)
    text = "\n".join(chk.missing)
    assert "metric snapshot3_top1_error: train.snapshot_epochs must keep epochs 2 (the 3 uniform snapshots: [1, 2, 3])" in text
    assert "metric snapshot4_top1_error: 4 snapshots need train.epochs >= 4" in text
    assert "metric noisy_fit_error: needs training-label noise (data.label_noise > 0)" in text
    assert "fgsm" not in text and "cannot produce" not in text
    # the display names and directions of the new metrics
    from softlabels.study import lower_is_better, metric_display

    assert metric_display("pgd_top5_error") == "PGD top-5 err (%)" and lower_is_better("pgd_top5_error")
    assert metric_display("snapshot6_top1_error") == "6-snapshot ens. top-1 err (%)"
    assert not lower_is_better("noisy_fit_error") and lower_is_better("cifar10h_kl")


def test_uniform_snapshot_epochs():
    from softlabels.evaluate.ensemble import uniform_snapshot_epochs

    assert uniform_snapshot_epochs(300, 6) == [50, 100, 150, 200, 250, 300]
    assert uniform_snapshot_epochs(300, 20)[:3] == [15, 30, 45]
    assert uniform_snapshot_epochs(10, 3) == [3, 7, 10]
    assert uniform_snapshot_epochs(1, 6) == [1]
    # the shipped OLS Table III keeps every epoch its four ensemble sizes need
    study = load_study(Path(__file__).resolve().parent.parent / "src/softlabels/studies/ols-table3.yaml")
    kept = set(study.base["train"]["snapshot_epochs"])
    for n in (6, 10, 15, 20):
        assert set(uniform_snapshot_epochs(300, n)) <= kept


def test_jobs_compute_the_attacks_in_each_runs_own_process(tmp_path, capsys, monkeypatch):
    """With --jobs 2 each run's child process attacks its model right after training; the table
    build in the parent only reads the cache."""
    p = study_file(tmp_path, "j", metrics=["top1_error", "fgsm_top1_error", "pgd_top1_error"], human=None)
    d = yaml.safe_load(p.read_text())
    d["base"]["train"] = {"epochs": 1}
    d["rows"].append({"label": "LS", "method": "ls"})
    p.write_text(yaml.safe_dump(d))
    count = Counter(monkeypatch)
    out = tmp_path / "out"
    assert main(["study", str(p), "--out", str(out), "--no-progress", "--device", "cpu", "--jobs", "2"]) == 0, \
        capsys.readouterr().err
    assert count.n("attack_metrics") == 0
    for row in ("ce", "ls"):
        cache = json.loads((out / row / "d" / "seed0" / "study_metrics.json").read_text())
        assert sorted(k.split("@")[0] for k in cache) == ["fgsm", "pgd"]
    cells = json.loads((out / "table.json").read_text())["cells"]
    assert all(c["mean"] is not None for c in cells)


@pytest.mark.parametrize("name", ["ols-table3", "ols-table8", "ols-table9", "ols-table12", "ols-fig5"])
def test_ols_studies_dry_runs_miss_only_files(name, tmp_path):
    """OLS's tables of attacks, snapshot ensembles, CIFAR-10H and noisy fit: every metric can be
    produced; only the data (and CIFAR-10H's file) are missing from an empty data root."""
    from softlabels.study import resolve_study

    empty = tmp_path / "nodata"
    empty.mkdir()
    chk = check_plan(plan_study(load_study(resolve_study(name)), tmp_path / "o", data_root=str(empty)),
                     throughput=1000.0)
    assert chk.missing and all(m.startswith(("dataset ", "human-labels file ")) for m in chk.missing), chk.missing
    assert any(m.startswith(f"human-labels file {empty}/cifar10h/cifar10h-probs.npy") for m in chk.missing) == \
        (name == "ols-table12")
