"""The Python API a timm/torchvision user reaches for: load a trained model, export it, import
the losses cheaply, and the version flag."""
import subprocess
import sys

import pytest
import torch

import softlabels
from softlabels.cli import main
from softlabels.errors import CheckpointError
from softlabels.models import build_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    code = main(["train", "--dataset", "digits", "--model", "resnet8", "--method", "adacos", "--epochs", "1",
                 "--out", str(out), "--no-progress", "data.val_fraction=0"])
    assert code == 0
    return out


def test_load_model_from_run_without_dataset(trained_run, monkeypatch):
    import softlabels.data as data

    def refuse(*a, **k):
        raise AssertionError("load_model must not read the dataset")

    monkeypatch.setattr(data, "load_dataset", refuse)
    model = softlabels.load_model(trained_run)          # no validation split: the last checkpoint
    assert not model.training
    out = model(torch.zeros(3, 1, 8, 8))
    assert out.logits.shape == (3, 10)
    # the method's adaptation (AdaCos cosine head) is rebuilt, so the weights fit
    assert type(model.head).__name__ != "Linear"


def test_load_model_logits_only_traces_and_exports(trained_run):
    model = softlabels.load_model(trained_run, logits_only=True)
    x = torch.randn(2, 1, 8, 8)
    expected = model(x)
    assert isinstance(expected, torch.Tensor) and expected.shape == (2, 10)
    traced = torch.jit.trace(model, x)
    torch.testing.assert_close(traced(x), expected)
    exported = torch.export.export(model, (x,))
    torch.testing.assert_close(exported.module()(x), expected)


def test_export_raw_model_returns_model_output():
    model = build_model("resnet8", 10, 1).eval()
    x = torch.randn(2, 1, 8, 8)
    exported = torch.export.export(model, (x,))
    out = exported.module()(x)
    torch.testing.assert_close(out.logits, model(x).logits)
    torch.testing.assert_close(out.embedding, model(x).embedding)


def test_load_model_wrong_checkpoint_is_one_error(trained_run):
    with pytest.raises(CheckpointError):
        softlabels.load_model(trained_run, "epoch99")


def test_importing_the_losses_does_not_import_torchvision():
    code = "import sys, softlabels.losses; print('torchvision' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_flag(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"softlabels {softlabels.__version__}"


def test_extending_doc_examples_run():
    """docs/extending.md registers a backbone and a method and trains with them; run in a fresh
    process so the example registrations do not leak into the registries other tests check."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
    blocks = re.findall(r"```python\n(.*?)```", doc.read_text(), flags=re.S)
    assert len(blocks) >= 3
    script = "\n".join(blocks)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "tiny_convnet + ols: test top-1 error" in out.stdout
    assert "'logit_l2'" in out.stdout
