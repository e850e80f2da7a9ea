"""softlabels eval on a folder of runs, on a bare weights file, and on another dataset (issue 14)."""
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from softlabels.cli import main


@pytest.fixture(scope="module")
def cmp_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("evalmore") / "cmp"
    assert main(["compare", "--dataset", "digits", "--methods", "ce,ls", "--seeds", "2", "--epochs", "1",
                 "--no-progress", "--out", str(out)]) == 0
    return out


def _one_line_error(capsys, argv, *needles):
    capsys.readouterr()
    assert main(argv) != 0
    err = capsys.readouterr().err
    assert err.startswith("softlabels: error: ") and err.count("\n") == 1, err
    for n in needles:
        assert n in err, (n, err)


def test_eval_a_folder_prints_a_table_of_every_run(cmp_dir, capsys):
    capsys.readouterr()
    assert main(["eval", str(cmp_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:4] == ["method", "seeds", "top-1", "err"]
    assert [ln.split()[:2] for ln in lines[2:4]] == [["ce", "2"], ["ls", "2"]]
    # every run re-evaluated, matching what training recorded for its best checkpoint
    for m in ("ce", "ls"):
        for seed in (0, 1):
            run = cmp_dir / m / f"seed{seed}"
            got = json.loads((run / "eval" / "best-test.json").read_text())
            want = json.loads((run / "final.json").read_text())["best"]["test"]
            assert got["top1_error"] == pytest.approx(want["top1_error"])


def test_eval_bare_weights_with_a_model_name(cmp_dir, tmp_path, capsys):
    run = cmp_dir / "ce" / "seed0"
    from softlabels.engine import checkpoint as ckpt

    tensors, _ = ckpt.load_checkpoint(run / "checkpoints" / "best")
    model = {k[len("model."):]: v for k, v in tensors.items()
             if k.startswith("model.")}
    save_file(model, str(tmp_path / "w.safetensors"))
    torch.save(model, tmp_path / "w.pth")
    want = json.loads((run / "final.json").read_text())["best"]["test"]["top1_error"]
    for f in ("w.safetensors", "w.pth"):
        capsys.readouterr()
        assert main(["eval", "--weights", str(tmp_path / f), "--model", "resnet8", "--dataset", "digits"]) == 0
        out = {k.strip(): v for k, v in (line.split(":", 1) for line in capsys.readouterr().out.splitlines())}
        assert float(out["top1_error"]) == pytest.approx(want, abs=1e-3)
    _one_line_error(capsys, ["eval", "--weights", str(tmp_path / "w.pth"), "--model", "resnet20",
                             "--dataset", "digits"], "do not fit model resnet20")
    _one_line_error(capsys, ["eval", "--weights", str(tmp_path / "w.pth"), "--model", "resnet8", "--dataset",
                             "synthetic", "--set", "data.options.num_classes=5"], "5 classes")
    _one_line_error(capsys, ["eval", "--weights", str(tmp_path / "w.pth"), "--dataset", "digits"], "--model")
    _one_line_error(capsys, ["eval", "--weights", str(tmp_path / "nope.pth"), "--model", "resnet8",
                             "--dataset", "digits"], "no such file")


def test_eval_a_run_on_another_dataset(cmp_dir, capsys):
    run = cmp_dir / "ls" / "seed1"
    capsys.readouterr()
    assert main(["eval", str(run), "--dataset", "synthetic", "--set", "data.options.test_size=64"]) == 0
    out = json.loads((run / "eval" / "best-test-on-synthetic.json").read_text())
    assert out["dataset"] == "synthetic" and out["count"] == 64 and 0 <= out["top1_error"] <= 100
    assert "synthetic" in capsys.readouterr().out
    _one_line_error(capsys, ["eval", str(run), "--dataset", "synthetic", "--set", "data.options.num_classes=7"],
                    "predicts 10 classes", "synthetic has 7")
    _one_line_error(capsys, ["eval", str(run), "--dataset", "synthetic", "--set", "data.options.channels=3"],
                    "cannot take the images", "3 channels")
    _one_line_error(capsys, ["eval", str(run), "--dataset", "nosuchset"], "nosuchset")
    _one_line_error(capsys, ["eval", str(run), "--dataset", "synthetic", "--set", "model.name=resnet20"],
                    "only data.* keys")
    _one_line_error(capsys, ["eval", str(run), "--set", "data.options.channels=3"], "--dataset")
    _one_line_error(capsys, ["eval"], "a run directory, a folder of runs, or --weights")
    # a whole folder on another dataset
    capsys.readouterr()
    assert main(["eval", str(cmp_dir), "--dataset", "synthetic", "--set", "data.options.test_size=32"]) == 0
    assert "ls          2" in capsys.readouterr().out
