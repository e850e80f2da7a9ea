"""Knowledge distillation: golden values, gradient, and kd + cskd training (CS-KD Table 4)."""
import math

import pytest
import torch

from softlabels.config import build_config
from softlabels.engine import Trainer
from softlabels.losses import kd_kl, kd_loss

Z = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]
B = [[2.0, 1.0, 0.0], [0.5, 0.5, 0.5]]
Y = [1, 2]


def softmax(row, t):
    e = [math.exp(v / t) for v in row]
    s = sum(e)
    return [v / s for v in e]


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_kd_golden(t):
    kl = 0.0
    for z, b in zip(Z, B):
        p, q = softmax(b, t), softmax(z, t)
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    kl = t * t * kl / 2
    assert kd_kl(torch.tensor(Z), torch.tensor(B), t).item() == pytest.approx(kl, abs=1e-6)
    ce = -(math.log(softmax(Z[0], 1)[1]) + math.log(softmax(Z[1], 1)[2])) / 2
    got = kd_loss(torch.tensor(Z), torch.tensor(Y), torch.tensor(B), t, alpha=0.9)
    assert got.item() == pytest.approx(0.1 * ce + 0.9 * kl, abs=1e-6)


def test_kd_gradient_and_constant_teacher():
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 1])
    assert torch.autograd.gradcheck(lambda t: kd_loss(t, y, b, 4.0, 0.9), (z,))
    kd_loss(z, y, b).backward()
    assert b.grad is None or torch.count_nonzero(b.grad) == 0


def test_kd_plus_cskd_trains_on_digits():
    teacher = Trainer(build_config(None, ["data.name=digits", "method.name=ce", "train.epochs=3"]), None)
    teacher.fit()
    cfg = build_config(None, ["data.name=digits", "method.name=kd+cskd", "train.epochs=3"])
    final = Trainer(cfg, None, teachers=[teacher.model]).fit()
    assert final["last"]["test"]["top1_error"] < 50.0


def test_bf16_kd_step_and_fit_leave_autocast_off():
    """Issue 9: the teacher forward used to re-enter the step's torch.autocast instance, whose
    exit then restored the wrong state: autocast stayed on after a bf16 ``kd`` step and fit()."""
    import torch as _torch

    from softlabels.models import build_model

    cfg = build_config(None, ["data.name=synthetic", "data.options.train_size=32", "data.options.test_size=16",
                              "model.name=lenet5", "method.name=kd", "train.epochs=1", "train.precision=bf16",
                              "data.batch_size=16"])
    teacher = build_model("lenet5", 10, 1, {})
    tr = Trainer(cfg, None, teachers=[teacher])
    tr.model.train()
    tr._reset_accumulators()
    tr.train_step(next(iter(tr.train_loader)))
    assert not _torch.is_autocast_enabled("cpu")
    tr.fit()
    assert not _torch.is_autocast_enabled("cpu")
    with tr.autocast:
        with tr.autocast:  # a fresh context per use: nesting is safe
            assert _torch.is_autocast_enabled("cpu")
        assert _torch.is_autocast_enabled("cpu")
    assert not _torch.is_autocast_enabled("cpu")


def test_collapse_reason_criteria():
    from softlabels.engine.collapse import collapse_reason

    y = _torch_arange_labels(100, 10)
    uniform = torch.zeros(100, 10)
    assert "uniform" in collapse_reason(uniform + 1e-4 * torch.randn(100, 10), y, 10)
    constant = torch.zeros(100, 10)
    constant[:, 3] = 5.0
    assert "class 3 for every sample" in collapse_reason(constant, y, 10)
    healthy = torch.nn.functional.one_hot(y, 10).float() * 4  # input-dependent, right
    assert collapse_reason(healthy, y, 10) is None
    noisy = torch.randn(100, 10) * 0.5  # at chance but input-dependent (unlearnable data)
    assert collapse_reason(noisy, y, 10) is None
    assert collapse_reason(uniform[:20], y[:20], 10) is None  # too few samples to judge


def _torch_arange_labels(n, k):
    return torch.arange(n) % k


def test_collapsed_run_stops_with_a_verdict_in_final_json(tmp_path, capsys):
    """A run whose network outputs the same thing for every input is stopped after the epoch,
    with one line naming the method and what to change, and final.json records it."""
    import json

    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", "method.name=kd", "train.epochs=3",
                              "optim.lr=0.000000001", "optim.weight_decay=0.0"])
    from softlabels.models import build_model

    tr = Trainer(cfg, tmp_path / "run", teachers=[build_model("resnet8", 10, 1, {})])
    with torch.no_grad():  # a dead network: the same output, its head's bias, for every input
        tr.model.head.weight.zero_()
    final = tr.fit()
    assert final["collapsed"]["epoch"] == 1 and len(tr.history) == 1
    assert json.loads((tmp_path / "run" / "final.json").read_text())["collapsed"] == final["collapsed"]
    err = capsys.readouterr().err.strip().splitlines()
    line = next(x for x in err if "collapsed" in x)
    assert "method kd" in line and "optim.lr" in line


def test_diverged_run_is_a_verdict_not_a_crash(tmp_path):
    """A non-finite training loss ends the run like a collapse (final.json ``collapsed``), so
    compare and pipelines go on with the next run instead of stopping."""
    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", "method.name=ce", "train.epochs=2"])
    tr = Trainer(cfg, tmp_path / "run")
    with torch.no_grad():
        tr.model.head.bias.fill_(float("nan"))
    final = tr.fit()
    assert final["collapsed"]["epoch"] == 1 and "diverged" in final["collapsed"]["reason"]
    assert (tmp_path / "run" / "final.json").is_file() and len(tr.history) == 1
