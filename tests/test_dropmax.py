"""DropMax (Lee et al., NeurIPS 2018): masked softmax, concrete masks, KL, auxiliary and entropy
terms, the DropMax head, options, and training on digits (ResNet-8) and LeNet-5.

Golden values are computed with ``math`` from the definitions, not through the functions under
test. End-to-end runs use one thread (shared 2-core machine).
"""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import softlabels.methods.dropmax  # noqa: F401  (registration)
from softlabels.config import build_config
from softlabels.engine import checkpoint as ckpt
from softlabels.engine.trainer import Trainer
from softlabels.errors import ConfigError
from softlabels.methods.base import build_objective, build_run_model
from softlabels.methods.dropmax import (DropMax, DropMaxHead, dropmax_aux, dropmax_ce, dropmax_kl, dropmax_logits,
                                        dropmax_loss, dropmax_neg_entropy, dropmax_posterior_logits,
                                        sample_retain_mask)
from softlabels.registry import METHODS
from helpers import FakeBatch as Batch, FakeOutput as Out, assert_reloaded_like_trained

pytestmark = pytest.mark.usefixtures("one_thread")


# B = 2, K = 3: class logits o, retain logits a_rho, posterior-branch logits a_r, labels
O = [[1.0, 2.0, 0.5], [0.3, -0.7, 1.2]]
A_RHO = [[0.4, -1.1, 2.0], [-0.3, 0.8, 1.5]]
A_R = [[0.2, 0.9, -1.4], [1.1, -0.6, 0.3]]
Y = [0, 2]
Z = [[1.0, 0.0, 0.7], [0.25, 0.0, 1.0]]  # a fixed mask, target entries 1, one class dropped each


def _sig(a):
    return 1.0 / (1.0 + math.exp(-a))


def _t(rows):
    return torch.tensor(rows, dtype=torch.float64)


def _hand_ce(o, z, y, eps):
    total = 0.0
    for oi, zi, t in zip(o, z, y):
        num = (zi[t] + eps) * math.exp(oi[t])
        den = sum((zk + eps) * math.exp(ok) for zk, ok in zip(zi, oi))
        total += -math.log(num / den)
    return total / len(y)


def _hand_kl(a_rho, a_q, y):
    total = 0.0
    for ai, qi, t in zip(a_rho, a_q, y):
        for k, (a, b) in enumerate(zip(ai, qi)):
            rho, q = _sig(a), _sig(b)
            if k == t:
                total += -math.log(rho)  # KL(δ_1 ‖ Ber(ρ)) = −log ρ
            else:
                total += q * math.log(q / rho) + (1 - q) * math.log((1 - q) / (1 - rho))
    return total / len(y)


def _hand_aux(a_r, y):
    total = 0.0
    for ai, t in zip(a_r, y):
        for k, a in enumerate(ai):
            r = _sig(a)
            total += -math.log(r) if k == t else -math.log(1 - r)
    return total / len(y)


def _hand_neg_entropy(a_rho):
    total = 0.0
    for ai in a_rho:
        for a in ai:
            p = _sig(a)
            total += p * math.log(p) + (1 - p) * math.log(1 - p)
    return total / len(a_rho)


def test_registered_with_reference():
    assert "dropmax" in METHODS.names()
    entry = METHODS.get("dropmax")
    assert "DropMax" in entry.reference and "Lee" in entry.reference and "2018" in entry.reference
    m = METHODS.build("dropmax", {"temperature": 0.5, "posterior": "direct"}, where="method.options",
                      num_classes=3)
    assert isinstance(m, DropMax) and m.temperature == 0.5 and m.posterior == "direct"
    d = DropMax(3)
    assert (d.temperature, d.eps, d.kl_weight, d.aux_weight, d.entropy_weight, d.posterior) == (
        0.1, 1e-20, 1.0, 1.0, 1.0, "residual")
    import importlib

    assert importlib.import_module("softlabels.methods.dropmax") is softlabels.methods.dropmax


@pytest.mark.parametrize("eps", [1e-20, 0.05])
def test_golden_fixed_mask(eps):
    o, a_rho, a_r, y, z = _t(O), _t(A_RHO), _t(A_R), torch.tensor(Y), _t(Z)
    ce = _hand_ce(O, Z, Y, eps)
    assert dropmax_ce(o, z, y, eps).item() == pytest.approx(ce, rel=1e-12)
    # residual posterior (authors' code): a_q = a_rho + a_r in value
    a_q_res = [[a + b for a, b in zip(r1, r2)] for r1, r2 in zip(A_RHO, A_R)]
    kl_res, kl_dir = _hand_kl(A_RHO, a_q_res, Y), _hand_kl(A_RHO, A_R, Y)
    aux, neg_ent = _hand_aux(A_R, Y), _hand_neg_entropy(A_RHO)
    assert neg_ent < 0  # −H(ρ)
    for posterior, kl in (("residual", kl_res), ("direct", kl_dir)):
        a_q = dropmax_posterior_logits(a_rho, a_r, posterior)
        assert dropmax_kl(a_rho, a_q, y).item() == pytest.approx(kl, rel=1e-12)
        terms = dropmax_loss(o, a_rho, a_r, y, eps=eps, kl_weight=0.5, aux_weight=2.0, entropy_weight=0.25,
                             posterior=posterior, mask=z)
        assert set(terms) == {"ce", "kl", "aux", "neg_ent"}
        assert terms["ce"].item() == pytest.approx(ce, rel=1e-12)
        assert terms["kl"].item() == pytest.approx(0.5 * kl, rel=1e-12)
        assert terms["aux"].item() == pytest.approx(2.0 * aux, rel=1e-12)
        assert terms["neg_ent"].item() == pytest.approx(0.25 * neg_ent, rel=1e-12)
        total = sum(terms.values()).item()
        assert total == pytest.approx(ce + 0.5 * kl + 2.0 * aux + 0.25 * neg_ent, rel=1e-12)
    assert dropmax_aux(a_r, y).item() == pytest.approx(aux, rel=1e-12)
    assert dropmax_neg_entropy(a_rho).item() == pytest.approx(neg_ent, rel=1e-12)
    # explicit numbers for sample 0 (eps ignored): z = (1, 0, 0.7), o = (1, 2, 0.5), target 0
    if eps == 1e-20:
        want0 = -math.log(math.exp(1.0) / (math.exp(1.0) + 0.7 * math.exp(0.5)))
        got0 = dropmax_ce(o[:1], z[:1], y[:1], eps).item()
        assert got0 == pytest.approx(want0, rel=1e-12)
        assert got0 == pytest.approx(0.3539, abs=1e-4)  # log(1 + 0.7·e^−0.5)


@pytest.mark.parametrize("eps", [1e-20, 0.05])
def test_golden_test_time_logits(eps):
    o, a_rho = _t(O), _t(A_RHO)
    got = dropmax_logits(o, a_rho, eps)
    probs = F.softmax(got, dim=1)
    for i in range(2):
        w = [(_sig(a) + eps) * math.exp(v) for a, v in zip(A_RHO[i], O[i])]
        for k in range(3):
            assert got[i, k].item() == pytest.approx(O[i][k] + math.log(_sig(A_RHO[i][k]) + eps), rel=1e-12)
            assert probs[i, k].item() == pytest.approx(w[k] / sum(w), rel=1e-12)
    # a retain logit so negative that ρ underflows: log(ρ + ε) is log ε, finite
    far = dropmax_logits(torch.zeros(1, 2), torch.tensor([[-200.0, 0.0]]))
    assert far[0, 0].item() == pytest.approx(math.log(1e-20), rel=1e-6)


def test_concrete_sample_by_hand_and_target_never_dropped():
    tau = 0.1
    a_q = _t([[0.3, -0.8, 1.5, -2.0], [2.0, 0.1, -0.4, 0.7]])
    y = torch.tensor([1, 3])
    z = sample_retain_mask(a_q, y, tau, generator=torch.Generator().manual_seed(7))
    u = torch.rand(2, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64).tolist()
    for i in range(2):
        for k in range(4):
            if k == y[i]:
                assert z[i, k].item() == 1.0
            else:
                s = (a_q[i, k].item() + math.log(u[i][k]) - math.log(1 - u[i][k])) / tau
                assert z[i, k].item() == pytest.approx(_sig(s), rel=1e-10, abs=1e-300)
    # the CE of the loss uses this very sample (same generator state)
    o, a_r = _t([[0.5, -0.2, 0.9, 0.0], [1.0, 0.3, -0.5, 0.2]]), a_q  # direct posterior: a_q = a_r
    terms = dropmax_loss(o, torch.zeros_like(o), a_r, y, temperature=tau, posterior="direct",
                         generator=torch.Generator().manual_seed(7))
    assert terms["ce"].item() == pytest.approx(_hand_ce(o.tolist(), z.tolist(), y.tolist(), 1e-20), rel=1e-10)

    # every target entry is exactly 1, even when q says "drop everything"
    y = torch.arange(50) % 4
    z = sample_retain_mask(torch.full((50, 4), -30.0), y)
    assert torch.equal(z[torch.arange(50), y], torch.ones(50))
    others = z.clone()
    others[torch.arange(50), y] = 0.0
    assert others.max().item() < 1e-6
    # the target's masked term is (1 + ε)·exp(o_y): with all others dropped, the CE is ≈ 0
    terms = dropmax_loss(torch.randn(50, 4), torch.zeros(50, 4), torch.full((50, 4), -30.0), y,
                         posterior="direct")
    assert terms["ce"].item() < 1e-5


def test_concrete_masks_follow_q_and_torch_seed():
    q = torch.tensor([[0.9, 0.2, 0.5]]).expand(20000, 3)
    y = torch.zeros(20000, dtype=torch.long)
    torch.manual_seed(3)
    z = sample_retain_mask(torch.logit(q), y)
    assert z[:, 0].eq(1).all()
    means = z[:, 1:].mean(dim=0)  # τ = 0.1: nearly binary, mean ≈ q
    assert means.tolist() == pytest.approx([0.2, 0.5], abs=0.02)
    torch.manual_seed(3)
    assert torch.equal(sample_retain_mask(torch.logit(q), y), z)


def test_gradients_and_stop_gradient():
    torch.manual_seed(0)
    o = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    a_rho = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    a_r = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 3, 1])
    z = torch.rand(3, 4, dtype=torch.float64).scatter(1, y[:, None], 1.0)
    def fixed(o_, p_, r_, posterior="direct"):
        return sum(dropmax_loss(o_, p_, r_, y, eps=0.01, posterior=posterior, mask=z).values())

    def sampled(o_, p_, r_, posterior="direct"):
        return sum(dropmax_loss(o_, p_, r_, y, temperature=0.5, posterior=posterior,
                                generator=torch.Generator().manual_seed(1)).values())

    assert torch.autograd.gradcheck(fixed, (o, a_rho, a_r))
    assert torch.autograd.gradcheck(sampled, (o, a_rho, a_r))
    # residual form: a stop-gradient on a_rho inside q, so finite differences match w.r.t. o
    # and a_r only
    for fn in (fixed, sampled):
        assert torch.autograd.gradcheck(lambda o_, r_: fn(o_, a_rho.detach(), r_, "residual"), (o, a_r))
    # the masked CE reaches the posterior branch through the sample (reparameterisation), but
    # in the residual form not the retain logits (a_q = sg(a_rho) + a_r)
    ce = dropmax_loss(o, a_rho, a_r, y, generator=torch.Generator().manual_seed(1))["ce"]
    g_o, g_rho, g_r = torch.autograd.grad(ce, (o, a_rho, a_r), allow_unused=True)
    assert g_rho is None or torch.count_nonzero(g_rho) == 0
    assert torch.count_nonzero(g_r) > 0 and torch.count_nonzero(g_o) > 0
    # the KL reaches a_rho through ρ only; its gradient w.r.t. a_rho is that of KL with q fixed
    kl = dropmax_kl(a_rho, dropmax_posterior_logits(a_rho, a_r), y)
    g_rho = torch.autograd.grad(kl, a_rho)[0]
    kl_fixed_q = dropmax_kl(a_rho, (a_rho + a_r).detach(), y)
    assert torch.allclose(g_rho, torch.autograd.grad(kl_fixed_q, a_rho)[0])


def test_low_precision_inputs_give_float32_terms():
    o, a_rho, a_r = (torch.tensor(v, dtype=torch.bfloat16) for v in (O, A_RHO, A_R))
    terms = dropmax_loss(o, a_rho, a_r, torch.tensor(Y), generator=torch.Generator().manual_seed(0))
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in terms.values())
    assert dropmax_logits(o, a_rho).dtype == torch.float32


def test_head_replaces_linear_and_predicts_at_test_time():
    torch.manual_seed(0)
    model = nn.Module()
    model.head = nn.Linear(5, 3)
    old_w, old_b = model.head.weight.detach().clone(), model.head.bias.detach().clone()
    method = DropMax(3)
    method.adapt_model(model)
    method.setup(model)
    head = model.head
    assert isinstance(head, DropMaxHead) and (head.in_features, head.out_features) == (5, 3)
    assert torch.equal(head.logits.weight, old_w) and torch.equal(head.logits.bias, old_b)
    assert set(model.state_dict()) == {f"head.{layer}.{p}" for layer in ("logits", "retain", "posterior")
                                       for p in ("weight", "bias")}
    assert not list(method.parameters())  # the head is the model's, not the method's
    x = torch.randn(4, 5)
    head.eval()
    with torch.no_grad():
        o, a_rho, _ = head.branches(x)
        probs = F.softmax(head(x), dim=1)
        rho = torch.sigmoid(a_rho)
        want = (rho + 1e-20) * o.exp()
        assert torch.allclose(probs, want / want.sum(dim=1, keepdim=True), atol=1e-6)
    # training: the loss recomputes the branches from the embedding; all three layers learn
    head.train()
    terms = method.loss(Out(head(x), x), Batch([0, 1, 2, 1]))
    assert set(terms) == {"ce", "kl", "aux", "neg_ent"}
    sum(terms.values()).backward()
    for layer in (head.logits, head.retain, head.posterior):
        assert layer.weight.grad is not None and torch.count_nonzero(layer.weight.grad) > 0


def test_options_and_errors_are_one_line():
    bad = [({"temperature": 0}, "temperature"), ({"eps": 0.0}, "eps"), ({"eps": -1e-3}, "eps"),
           ({"kl_weight": -1}, "kl_weight"), ({"aux_weight": float("nan")}, "aux_weight"),
           ({"entropy_weight": float("inf")}, "entropy_weight"), ({"posterior": "both"}, "posterior")]
    for opts, key in bad:
        with pytest.raises(ConfigError, match=rf"^method\.options\.{key}:") as e:
            DropMax(3, **opts)
        assert len(str(e.value).splitlines()) == 1
    for arg, key in (("method.options.posterior=both", "posterior"), ("method.options.temperature=-1", "temperature"),
                     ("method.options.tau=0.2", "tau")):
        with pytest.raises(ConfigError, match=rf"^method\.options\.{key}:") as e:
            build_objective(build_config(None, ["method.name=dropmax", arg]).method, 10)
        assert len(str(e.value).splitlines()) == 1
    model = nn.Module()
    model.head = nn.Sequential(nn.Linear(4, 3))
    with pytest.raises(ConfigError, match=r"^method\.name: dropmax"):
        DropMax(3).adapt_model(model)
    model.head = nn.Linear(4, 3)
    with pytest.raises(ConfigError, match=r"^method\.name: dropmax"):
        DropMax(3).setup(model)  # adapt_model was not called


def _train_args(*extra):
    return ["method.name=dropmax", "train.threads=1", *extra]


def test_digits_resnet8_trains_checkpoints_and_reloads(tmp_path):
    from softlabels.evaluate.run import evaluate_run
    from softlabels.pipeline import load_model_from_run

    run = tmp_path / "run"
    cfg = build_config(None, _train_args("data.name=digits", "model.name=resnet8", "train.epochs=3"))
    trainer = Trainer(cfg, run)
    head = trainer.model.head
    assert isinstance(head, DropMaxHead)
    opt_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_ids for p in head.parameters())
    final = trainer.fit()
    assert final["last"]["test"]["top1_error"] < 50.0  # chance is 90 %
    tr = trainer.history[-1]["train"]
    assert tr["loss"] == pytest.approx(tr["ce"] + tr["kl"] + tr["aux"] + tr["neg_ent"], rel=1e-5, abs=1e-6)
    best, meta = ckpt.load_checkpoint(run / "checkpoints" / "best")
    keys = {k[len("model."):] for k in best if k.startswith("model.")}
    assert {f"head.{layer}.weight" for layer in ("logits", "retain", "posterior")} <= keys
    rebuilt = build_run_model(cfg, int(meta["num_classes"]), int(meta["in_channels"]))
    assert set(rebuilt.state_dict()) == keys
    # `softlabels eval` path: the reloaded model is the trained one, predictions o + log(ρ + ε)
    model = load_model_from_run(run, "last")
    assert isinstance(model.head, DropMaxHead)
    x = assert_reloaded_like_trained(trainer, model)
    with torch.no_grad():
        out = trainer.model(x)
        o, a_rho, _ = trainer.model.head.branches(out.embedding)
        assert torch.allclose(out.logits, o + torch.log(torch.sigmoid(a_rho) + 1e-20), atol=1e-5)
    result = evaluate_run(run)
    assert result["top1_error"] == pytest.approx(final["best"]["test"]["top1_error"], abs=1e-9)


def test_lenet5_runs(tmp_path):
    cfg = build_config(None, _train_args("data.name=synthetic", "data.options.train_size=128",
                                         "data.options.test_size=32", "data.batch_size=64",
                                         "model.name=lenet5", "train.epochs=1"))
    trainer = Trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.model.head, DropMaxHead) and trainer.model.head.in_features == 84
    trainer.fit()
    tr = trainer.history[-1]["train"]
    assert all(math.isfinite(tr[k]) for k in ("loss", "ce", "kl", "aux", "neg_ent"))
