"""AdaCos and Virtual Softmax: hand-computed values, gradients, save/load and digits training."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import softlabels.methods.heads  # noqa: F401  (registration)
from softlabels.config import build_config
from softlabels.engine import Trainer
from softlabels.errors import ConfigError
from softlabels.methods.base import build_objective, build_run_model
from softlabels.methods.heads import (AdaCos, CosineHead, adacos_dynamic_scale,
                                      adacos_initial_scale, cosine_logits, virtual_softmax_logits,
                                      virtual_softmax_loss)
from helpers import FakeBatch as Batch, FakeOutput as Out, assert_reloaded_like_trained


pytestmark = pytest.mark.usefixtures("one_thread")


def _digits(method, *extra):
    return build_config(None, ["data.name=digits", "model.name=resnet8", f"method.name={method}",
                               "train.epochs=3", "train.threads=1", *extra])


# ----------------------------------------------------------------------------------- AdaCos
def test_adacos_initial_scale():
    assert adacos_initial_scale(10) == pytest.approx(math.sqrt(2) * math.log(9), abs=1e-12)
    m = AdaCos(10)
    assert m.initial_scale == pytest.approx(3.1073, abs=1e-4)
    model = nn.Module()
    model.head = nn.Linear(5, 10)
    m.adapt_model(model)
    assert isinstance(model.head, CosineHead)
    assert float(model.head.s) == pytest.approx(math.sqrt(2) * math.log(9), abs=1e-6)
    assert model.head.out_features == 10 and model.head.in_features == 5
    assert set(dict(model.named_parameters())) == {"head.weight"}  # no bias


COS = [[0.9, 0.1, -0.2], [0.3, 0.6, 0.0], [0.2, -0.1, 0.8], [0.5, 0.4, 0.1]]
Y = [0, 1, 2, 1]


def _hand_scale(cos, y, s):
    b = sum(sum(math.exp(s * c) for k, c in enumerate(row) if k != yi) for row, yi in zip(cos, y)) / len(y)
    angles = sorted(math.acos(row[yi]) for row, yi in zip(cos, y))
    n = len(angles)
    med = angles[n // 2] if n % 2 else (angles[n // 2 - 1] + angles[n // 2]) / 2
    return math.log(b) / math.cos(min(math.pi / 4, med))


@pytest.mark.parametrize("rows", [4, 3])  # even and odd batch (median of 2 middle / middle angle)
def test_adacos_dynamic_update_by_hand(rows):
    s0 = adacos_initial_scale(3)
    cos, y = COS[:rows], Y[:rows]
    want = _hand_scale(cos, y, s0)
    got = adacos_dynamic_scale(torch.tensor(cos, dtype=torch.float64), torch.tensor(y), s0)
    assert got.item() == pytest.approx(want, rel=1e-10)
    # explicit two-sample cases: the median angle below pi/4 is used as it is, above pi/4 it is
    # clamped to pi/4
    sharp = [[0.99, 0.0, 0.1], [0.1, 0.95, 0.0]]
    b = (math.exp(2 * 0.0) + math.exp(2 * 0.1) + math.exp(2 * 0.1) + math.exp(2 * 0.0)) / 2
    med = (math.acos(0.99) + math.acos(0.95)) / 2
    got = adacos_dynamic_scale(torch.tensor(sharp, dtype=torch.float64), torch.tensor([0, 1]), 2.0)
    assert got.item() == pytest.approx(math.log(b) / math.cos(med), rel=1e-10)
    wide = [[0.3, 0.0, 0.1], [0.1, 0.5, -0.4]]
    b = (math.exp(2 * 0.0) + math.exp(2 * 0.1) + math.exp(2 * 0.1) + math.exp(2 * -0.4)) / 2
    got = adacos_dynamic_scale(torch.tensor(wide, dtype=torch.float64), torch.tensor([0, 1]), 2.0)
    assert got.item() == pytest.approx(math.log(b) / math.cos(math.pi / 4), rel=1e-10)


def test_adacos_loss_updates_scale_then_uses_it():
    method = AdaCos(3)
    model = nn.Module()
    model.head = nn.Linear(4, 3)
    method.adapt_model(model)
    method.setup(model)
    head = model.head
    torch.manual_seed(0)
    x = torch.randn(4, 4)
    y = torch.tensor(Y)
    s0 = float(head.s)
    logits = head(x)
    cos = (logits / s0).detach()
    want_s = _hand_scale(cos.tolist(), Y, s0)
    ce = method.loss(Out(logits, x), Batch(Y))["ce"]
    assert float(head.s) == pytest.approx(want_s, rel=1e-5)
    assert ce.item() == pytest.approx(F.cross_entropy(cos * want_s, y).item(), rel=1e-5)
    ce.backward()  # the in-place scale update leaves the graph valid
    assert head.weight.grad is not None and torch.isfinite(head.weight.grad).all()
    # evaluation mode: no update
    head.eval()
    before = float(head.s)
    method.loss(Out(head(x), x), Batch(Y))
    assert float(head.s) == before


def test_cosine_head_forward_by_hand():
    torch.manual_seed(1)
    head = CosineHead(3, 2, scale=2.5)
    x = torch.randn(2, 3, dtype=torch.float64)
    w = head.weight.detach().double()
    got = head.double()(x)
    for i in range(2):
        xn = math.sqrt(sum(v * v for v in x[i].tolist()))
        for k in range(2):
            wn = math.sqrt(sum(v * v for v in w[k].tolist()))
            dot = sum(a * b for a, b in zip(x[i].tolist(), w[k].tolist()))
            assert got[i, k].item() == pytest.approx(2.5 * dot / (xn * wn), rel=1e-12)
    assert torch.allclose(got, cosine_logits(x, w, 2.5))


def test_adacos_fixed_scale_and_options():
    method = AdaCos(3, dynamic=False, scale=7.0)
    model = nn.Module()
    model.head = nn.Linear(4, 3)
    method.adapt_model(model)
    method.setup(model)
    x = torch.randn(5, 4)
    y = [0, 1, 2, 0, 1]
    logits = model.head(x)
    ce = method.loss(Out(logits, x), Batch(y))["ce"]
    assert float(model.head.s) == 7.0
    assert ce.item() == pytest.approx(F.cross_entropy(logits, torch.tensor(y)).item(), rel=1e-6)
    with pytest.raises(ConfigError, match="method.options.scale"):
        AdaCos(2)
    with pytest.raises(ConfigError, match="method.options.scale"):
        AdaCos(10, scale=-1.0)
    with pytest.raises(ConfigError, match="method.options.dynamic"):
        build_objective(build_config(None, ["method.name=adacos", "method.options.dynamic=3"]).method, 10)


def test_adacos_trains_reloads_and_evaluates(tmp_path):
    from softlabels.evaluate.run import evaluate_run
    from softlabels.pipeline import load_model_from_run

    run = tmp_path / "run"
    trainer = Trainer(_digits("adacos"), run)
    head = trainer.model.head
    assert isinstance(head, CosineHead)
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(head.weight) in opt_params
    assert "head.s" in trainer.model.state_dict()
    s0 = float(head.s)
    final = trainer.fit()
    assert final["best"]["test"]["top1_error"] < 50.0
    assert float(head.s) != s0  # the scale was updated in training

    model = load_model_from_run(run, "last")
    assert isinstance(model.head, CosineHead)
    assert float(model.head.s) == float(head.s)
    assert_reloaded_like_trained(trainer, model)

    result = evaluate_run(run)
    assert result["top1_error"] == pytest.approx(final["best"]["test"]["top1_error"], abs=1e-9)
    assert result["nll"] == pytest.approx(final["best"]["test"]["nll"], rel=1e-5)


def _dist_worker(rank, world, init, cos, y, out):
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        part = slice(0, 3) if rank == 0 else slice(3, None)  # unequal shards
        s = adacos_dynamic_scale(cos[part], y[part], 3.0)
        torch.save(s, f"{out}.{rank}")
    finally:
        dist.destroy_process_group()


def test_adacos_scale_uses_the_global_batch_under_ddp(tmp_path):
    import torch.multiprocessing as mp

    cos = torch.tensor(COS + [[0.1, 0.2, 0.3]], dtype=torch.float64)
    y = torch.tensor(Y + [0])
    out = str(tmp_path / "s")
    # fork: the workers need not import torch again (spawn takes ~40 s on 2 cores)
    mp.start_processes(_dist_worker, args=(2, f"file://{tmp_path / 'init'}", cos, y, out), nprocs=2,
                       start_method="fork")
    want = adacos_dynamic_scale(cos, y, 3.0).item()
    assert want == pytest.approx(_hand_scale(cos.tolist(), y.tolist(), 3.0), rel=1e-10)
    for r in range(2):
        assert torch.load(f"{out}.{r}").item() == pytest.approx(want, rel=1e-12)


# --------------------------------------------------------------------------- Virtual Softmax
def test_virtual_softmax_logits_and_ce_by_hand():
    w = [[1.0, 2.0, 0.0], [0.0, -1.0, 3.0]]
    x = [[0.5, -1.0, 2.0], [1.0, 1.0, 1.0]]
    y = [1, 0]
    z = [[sum(a * b for a, b in zip(xi, wk)) for wk in w] for xi in x]
    norm = lambda v: math.sqrt(sum(t * t for t in v))  # noqa: E731
    virtual = [norm(w[1]) * norm(x[0]), norm(w[0]) * norm(x[1])]
    got = virtual_softmax_logits(torch.tensor(z), torch.tensor(x), torch.tensor(w), torch.tensor(y))
    assert got.shape == (2, 3)
    for i in range(2):
        assert got[i, :2].tolist() == pytest.approx(z[i], abs=1e-6)
        assert got[i, 2].item() == pytest.approx(virtual[i], rel=1e-6)
        assert got[i, 2].item() >= got[i, y[i]].item()  # the virtual logit bounds the true one
    ce = 0.0
    for i in range(2):
        row = z[i] + [virtual[i]]
        ce += -(row[y[i]] - math.log(sum(math.exp(v) for v in row)))
    loss = virtual_softmax_loss(torch.tensor(z), torch.tensor(x), torch.tensor(w), torch.tensor(y))
    assert loss.item() == pytest.approx(ce / 2, rel=1e-6)


def test_virtual_softmax_gradcheck():
    torch.manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 2, 1, 2])
    assert torch.autograd.gradcheck(lambda a, b: virtual_softmax_loss(a @ b.t(), a, b, y), (x, w))


def test_virtual_softmax_model_and_evaluation_logits():
    cfg = _digits("virtual_softmax")
    model = build_run_model(cfg, 10, 1)
    head = model.head
    assert type(head) is nn.Linear and head.bias is None
    assert "head.bias" not in model.state_dict()
    method = build_objective(cfg.method, 10).methods["virtual_softmax"]
    method.setup(model)
    assert method._head is head  # a reference, not a copy
    x = torch.randn(3, 1, 8, 8)
    model.eval()
    with torch.no_grad():
        out = model(x)
        assert torch.allclose(out.logits, F.linear(out.embedding, head.weight), atol=1e-6)
        terms = method.loss(out, Batch([1, 2, 3]))
        want = virtual_softmax_loss(out.logits, out.embedding, head.weight, torch.tensor([1, 2, 3]))
        assert terms["ce"].item() == pytest.approx(want.item(), rel=1e-6)
    # bias kept on request: the evaluation logits are the untouched linear head's
    cfg_b = _digits("virtual_softmax", "method.options.bias=true")
    model_b = build_run_model(cfg_b, 10, 1).eval()
    assert model_b.head.bias is not None
    with torch.no_grad():
        out = model_b(x)
        assert torch.allclose(out.logits, model_b.head(out.embedding))
    # with a cosine head (adacos) it refuses in setup
    both = build_objective(_digits("virtual_softmax+adacos").method, 10)
    m = build_run_model(_digits("virtual_softmax+adacos"), 10, 1)
    with pytest.raises(ConfigError, match="virtual_softmax needs a linear"):
        both.setup(m)


def test_virtual_softmax_trains_on_digits(tmp_path):
    trainer = Trainer(_digits("virtual_softmax"), None)
    opt_params = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert id(trainer.model.head.weight) in opt_params
    final = trainer.fit()
    assert final["best"]["test"]["top1_error"] < 50.0
