"""ONE, On-the-fly Native Ensemble (Lan, Zhu, Gong, NeurIPS 2018): loss terms, gate, ensemble,
teacher detachment, the multi-branch model extension on the ResNet families, digits end to end.

Golden values are computed with ``math`` from the paper's formulas, never through the functions
under test. Tiny inputs and one thread (shared 2-core machine).
"""
import math

import pytest
import torch

from softlabels.config import build_config
from softlabels.engine import checkpoint as ckpt
from softlabels.engine.trainer import Trainer
from softlabels.errors import ConfigError, SoftlabelsError
from softlabels.methods import one
from softlabels.methods.base import build_run_model
from softlabels.methods.one import (NativeEnsemble, ONEGate, OnTheFlyNativeEnsemble, one_ensemble_logits,
                                    one_kl, one_loss, sigmoid_rampup)
from softlabels.models import build_model
from softlabels.models.base import ModelOutput
from softlabels.registry import METHODS

pytestmark = pytest.mark.usefixtures("one_thread")


class Batch:
    def __init__(self, y):
        self.y = torch.as_tensor(y)
        self.extra = {}


# ---------------------------------------------------------------------------- math helpers
def m_log_softmax(row, t=1.0):
    r = [v / t for v in row]
    m = max(r)
    lse = m + math.log(sum(math.exp(v - m) for v in r))
    return [v - lse for v in r]


def m_softmax(row, t=1.0):
    return [math.exp(v) for v in m_log_softmax(row, t)]


# B = 2, K = 3, m = 3 branches, fixed gate weights (rows sum to 1)
Z = [[[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]],
     [[2.0, 1.0, 0.0], [0.5, 0.5, 0.5]],
     [[-0.5, 0.3, 1.5], [1.0, 0.0, -2.0]]]
G = [[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]]
Y = [1, 2]
T = 3.0


def m_ensemble():
    return [[sum(G[b][i] * Z[i][b][k] for i in range(3)) for k in range(3)] for b in range(2)]


def m_terms(eps=0.0):
    ze = m_ensemble()
    ce = sum(-m_log_softmax(Z[i][b])[Y[b]] for i in range(3) for b in range(2)) / 2
    ens = sum(-m_log_softmax(ze[b])[Y[b]] for b in range(2)) / 2
    kl = 0.0
    for i in range(3):
        for b in range(2):
            q = [v + eps for v in m_softmax(ze[b], T)]
            lp = m_log_softmax(Z[i][b], T)
            kl += sum(qk * (math.log(qk) - lpk) for qk, lpk in zip(q, lp)) / 2
    return ce, ens, T * T * kl


def _tensors():
    zs = [torch.tensor(z, dtype=torch.float64) for z in Z]
    return zs, torch.tensor(G, dtype=torch.float64), torch.tensor(Y)


# ---------------------------------------------------------------------------- registration, options
def test_registered_with_reference_and_defaults():
    assert "one" in METHODS.names()
    ref = METHODS.get("one").reference
    assert "On-the-fly Native Ensemble" in ref and "Lan" in ref and "NeurIPS 2018" in ref
    m = METHODS.build("one", {}, where="method.options", num_classes=10)
    assert isinstance(m, OnTheFlyNativeEnsemble)
    assert (m.branches, m.temperature, m.inference, m.variant) == (3, 3.0, "branch", "paper")
    assert m.detach_teacher and m.rampup_epochs == 0.0 and m.target_eps == 0.0 and m.kl_weight() == 1.0
    o = METHODS.build("one", {"variant": "official", "branches": 2}, where="method.options", num_classes=10)
    assert o.rampup_epochs == 80.0 and o.target_eps == 1e-7 and o.branches == 2


@pytest.mark.parametrize("opts, key", [({"branches": 1}, "branches"), ({"temperature": 0}, "temperature"),
                                       ({"inference": "mean"}, "inference"), ({"variant": "x"}, "variant"),
                                       ({"rampup_epochs": -1}, "rampup_epochs")])
def test_bad_options_one_line(opts, key):
    with pytest.raises(ConfigError, match=rf"method\.options\.{key}") as e:
        METHODS.build("one", opts, where="method.options", num_classes=10)
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------- golden values
def test_golden_loss_terms():
    zs, g, y = _tensors()
    ze = one_ensemble_logits(zs, g)
    assert ze.flatten().tolist() == pytest.approx([v for row in m_ensemble() for v in row], rel=1e-12)
    ce, ens, kl = m_terms()
    terms = one_loss(zs, ze, y, temperature=T)
    assert set(terms) == {"ce", "ensemble_ce", "kl"}
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-12)
    assert terms["ensemble_ce"].item() == pytest.approx(ens, rel=1e-12)
    assert terms["kl"].item() == pytest.approx(kl, rel=1e-12)
    # official: target softmax(z_e/T) + 1e-7 (not renormalised), KL weight w
    _, _, kl_off = m_terms(eps=1e-7)
    got = one_loss(zs, ze, y, temperature=T, kl_weight=0.25, target_eps=1e-7)["kl"].item()
    assert got == pytest.approx(0.25 * kl_off, rel=1e-12)
    assert kl_off != pytest.approx(kl, rel=1e-9)
    # m = 2 sub-case: first two branches, gate (0.7, 0.3) / (0.4, 0.6)
    g2 = [[0.7, 0.3], [0.4, 0.6]]
    ze2 = [[sum(g2[b][i] * Z[i][b][k] for i in range(2)) for k in range(3)] for b in range(2)]
    kl2 = sum(sum(q * (math.log(q) - lp) for q, lp in zip(m_softmax(ze2[b], T), m_log_softmax(Z[i][b], T)))
              for i in range(2) for b in range(2)) / 2 * T * T
    got2 = one_kl(zs[:2], one_ensemble_logits(zs[:2], torch.tensor(g2, dtype=torch.float64)), T)
    assert got2.item() == pytest.approx(kl2, rel=1e-12)


def test_method_loss_reads_aux_and_ramps_up():
    zs, g, y = _tensors()
    ze = one_ensemble_logits(zs, g)
    out = ModelOutput(zs[0], torch.zeros(2, 4))
    out.aux = {f"branch{i}": ModelOutput(z, torch.zeros(2, 4)) for i, z in enumerate(zs)}
    out.aux["ensemble"] = ModelOutput(ze, g)
    ce, ens, kl = m_terms()
    paper = OnTheFlyNativeEnsemble(3)
    terms = paper.loss(out, Batch(Y))
    assert sum(terms.values()).item() == pytest.approx(ce + ens + kl, rel=1e-12)
    off = OnTheFlyNativeEnsemble(3, variant="official")
    _, _, kl_off = m_terms(eps=1e-7)
    for epoch, w in ((0, math.exp(-5.0)), (40, math.exp(-1.25)), (80, 1.0), (200, 1.0)):
        off.on_epoch_start(epoch)
        assert off.kl_weight() == pytest.approx(w, rel=1e-12)
        assert off.loss(out, Batch(Y))["kl"].item() == pytest.approx(w * kl_off, rel=1e-12)
    assert sigmoid_rampup(5, 0) == 1.0
    with pytest.raises(SoftlabelsError, match="one: out.aux"):
        paper.loss(ModelOutput(zs[0], torch.zeros(2, 4)), Batch(Y))


# ---------------------------------------------------------------------------- gate, detachment
def test_gate_sums_to_one_and_eval_batchnorm():
    torch.manual_seed(0)
    gate = ONEGate(8, 3)
    h = torch.randn(5, 8, 4, 4)
    g = gate(h)
    assert g.shape == (5, 3) and g.dtype == torch.float32
    assert torch.allclose(g.sum(dim=1), torch.ones(5)) and bool((g >= 0).all())
    # train mode updated the running statistics; eval mode uses them, so a sample's weights do
    # not depend on the rest of the batch
    assert not torch.equal(gate.bn.running_mean, torch.zeros(3))
    gate.eval()
    full = gate(h)
    assert torch.allclose(gate(h[:1]), full[:1], atol=1e-6)
    v = torch.flatten(torch.nn.functional.adaptive_avg_pool2d(h, 1), 1)
    s = (gate.fc(v) - gate.bn.running_mean) / torch.sqrt(gate.bn.running_var + gate.bn.eps)
    manual = torch.softmax(torch.relu(s * gate.bn.weight + gate.bn.bias), dim=1)
    assert torch.allclose(full, manual, atol=1e-6)
    # a one-sample training batch uses the running statistics and leaves them unchanged
    gate.train()
    before = gate.bn.running_mean.clone()
    assert torch.allclose(gate(h[:1]), full[:1], atol=1e-6)
    assert torch.equal(gate.bn.running_mean, before)


def test_teacher_detachment_gradients():
    torch.manual_seed(0)
    zs = [torch.randn(4, 5, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    a = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 1, 4, 2])
    g = torch.softmax(a, dim=1)
    ze = one_ensemble_logits(zs, g)
    # detached (default): the KL gives no gradient to the gate; to each branch T·(p_i − q)/B
    kl = one_kl(zs, ze, T)
    grads = torch.autograd.grad(kl, zs + [a], allow_unused=True)
    assert grads[-1] is None or torch.count_nonzero(grads[-1]) == 0
    q = torch.softmax(ze.detach() / T, dim=1)
    for z, gz in zip(zs, grads[:-1]):
        assert torch.allclose(gz, T * (torch.softmax(z.detach() / T, dim=1) - q) / 4)
    # so in the full loss the gate learns from the ensemble's CE only
    terms = one_loss(zs, ze, y, T)
    g_full = torch.autograd.grad(sum(terms.values()), a, retain_graph=True)[0]
    g_ce = torch.autograd.grad(terms["ensemble_ce"], a, retain_graph=True)[0]
    assert torch.allclose(g_full, g_ce)
    # not detached: the teacher side receives gradient through the KL
    kl_live = one_kl(zs, ze, T, detach_teacher=False)
    assert torch.count_nonzero(torch.autograd.grad(kl_live, a, retain_graph=True)[0]) > 0
    assert kl_live.item() == pytest.approx(kl.item(), rel=1e-12)
    # both sides live: gradcheck of the whole KL
    assert torch.autograd.gradcheck(
        lambda *t: one_kl(t[:3], one_ensemble_logits(t[:3], torch.softmax(t[3], 1)), T, detach_teacher=False),
        tuple(zs) + (a,))


def test_bf16_maths_in_float32():
    zs, g, y = _tensors()
    zb = [z.to(torch.bfloat16) for z in zs]
    ze = one_ensemble_logits(zb, g.to(torch.bfloat16))
    assert ze.dtype == torch.float32
    terms = one_loss(zb, ze, y, T)
    assert all(v.dtype == torch.float32 for v in terms.values())
    ce, ens, kl = m_terms()
    assert terms["ce"].item() == pytest.approx(ce, rel=2e-2)
    assert terms["kl"].item() == pytest.approx(kl, rel=5e-2)


# ---------------------------------------------------------------------------- the model extension
MODELS = [("resnet8", {}, "layer3"), ("resnet18", {"stem": "cifar"}, "layer4"),
          ("preact_resnet18_cskd", {}, "layer4")]


@pytest.mark.parametrize("name, options, last", MODELS)
def test_adapt_model_branches(name, options, last):
    torch.manual_seed(0)
    plain = build_model(name, 5, 3, options)
    method = OnTheFlyNativeEnsemble(5)
    adapted = build_model(name, 5, 3, options)
    method.adapt_model(adapted)
    method.setup(adapted)
    ext = adapted.extension
    assert isinstance(ext, NativeEnsemble) and ext.num_branches == 3
    assert "extension" in adapted.head_modules and "extension" in adapted.fresh_modules
    assert set(ext.branches[0].keys()) == {last, "head"}
    # the extra branches are independently initialised copies, not clones of branch 0
    own = dict(getattr(adapted, last).named_parameters())
    for b in ext.branches:
        for k, p in b[last].named_parameters():
            assert p.shape == own[k].shape
        conv = [k for k in own if k.endswith("conv1.weight")][0]
        assert not torch.equal(b[last].state_dict()[conv], own[conv])
    conv = [k for k in own if k.endswith("conv1.weight")][0]
    assert not torch.equal(ext.branches[0][last].state_dict()[conv], ext.branches[1][last].state_dict()[conv])
    # share the weights: branch 0 + trunk of the adapted model = the plain model
    res = adapted.load_state_dict(plain.state_dict(), strict=False)
    assert not res.unexpected_keys and all(k.startswith("extension.") for k in res.missing_keys)
    x = torch.randn(4, 3, 16, 16)
    plain.eval(), adapted.eval()
    with torch.no_grad():
        p_out, a_out = plain(x, return_features=True), adapted(x, return_features=True)
        assert torch.equal(a_out.logits, p_out.logits) and torch.equal(a_out.embedding, p_out.embedding)
        assert len(a_out.features) == len(p_out.features)
        assert all(torch.equal(u, v) for u, v in zip(a_out.features, p_out.features))
        assert not a_out.aux  # eval, inference: branch → only branch 0 runs
    plain.train(), adapted.train()
    out = adapted(x)
    ref = plain(x)
    assert set(out.aux) == {"branch0", "branch1", "branch2", "ensemble"}
    assert torch.allclose(out.aux["branch0"].logits, ref.logits, atol=1e-5)
    assert torch.equal(out.logits, out.aux["branch0"].logits)
    assert out.embedding.shape == (4, adapted.embedding_dim)
    g = out.aux["ensemble"].embedding
    assert g.shape == (4, 3) and torch.allclose(g.sum(1), torch.ones(4), atol=1e-6)
    manual = sum(g[:, i:i + 1] * out.aux[f"branch{i}"].logits for i in range(3))
    assert torch.allclose(out.aux["ensemble"].logits, manual, atol=1e-5)
    terms = method.loss(out, Batch([0, 1, 2, 3]))
    sum(terms.values()).backward()
    assert ext.gate.fc.weight.grad is not None and ext.branches[1]["head"].weight.grad is not None
    # state_dict round trip into a freshly built (differently initialised) run model
    torch.manual_seed(1)
    again = build_model(name, 5, 3, options)
    OnTheFlyNativeEnsemble(5, inference="ensemble").adapt_model(again)
    assert again.state_dict().keys() == adapted.state_dict().keys()
    again.load_state_dict(adapted.state_dict())
    adapted.eval(), again.eval()
    with torch.no_grad():
        e_out = again(x)
        b_out = adapted(x)
    assert torch.equal(e_out.aux["branch0"].logits, b_out.logits)
    assert torch.allclose(e_out.logits, e_out.aux["ensemble"].logits)
    assert not torch.allclose(e_out.logits, b_out.logits)


def test_kt_resnet50_last_stage_split():
    torch.manual_seed(0)
    model = build_model("kt_resnet50", 4, 3, {"stem": "cifar"}).eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        stages, emb = model.forward_features(x)
        trunk = model.forward_trunk(x)
        last, emb2 = model.forward_last(trunk[-1])
    assert len(trunk) == 3 and torch.equal(last, stages[-1]) and torch.equal(emb, emb2)
    assert model.branch_modules == ("layer4", "neck", "head")
    OnTheFlyNativeEnsemble(4, branches=2).adapt_model(model)
    assert set(model.extension.branches[0].keys()) == {"layer4", "neck", "head"}
    assert model.extension.gate.fc.in_features == 1024
    model.train()
    out = model(torch.randn(3, 3, 8, 8))
    assert out.embedding.shape == (3, 512) and set(out.aux) == {"branch0", "branch1", "ensemble"}


def test_unsupported_model_one_line_error():
    model = build_model("lenet5", 10, 1)
    with pytest.raises(ConfigError, match=r"^model\.name: one .*LeNet") as e:
        OnTheFlyNativeEnsemble(10).adapt_model(model)
    assert "\n" not in str(e.value)
    m = build_model("resnet8", 10, 1)
    OnTheFlyNativeEnsemble(10).adapt_model(m)
    with pytest.raises(ConfigError, match="already installed"):
        OnTheFlyNativeEnsemble(10).adapt_model(m)
    with pytest.raises(ConfigError, match="method.name: one"):
        OnTheFlyNativeEnsemble(10).setup(build_model("resnet8", 10, 1))


@pytest.mark.parametrize("other", ["cskd", "sla_sd", "mixup"])
def test_methods_with_their_own_forward_are_refused_before_training(other):
    from softlabels.config import MethodConfig
    from softlabels.methods.base import build_objective

    with pytest.raises(ConfigError, match=rf"^method\.name: one reads .* {other} replaces") as e:
        build_objective(MethodConfig(name=f"one+{other}"), 10)
    assert "\n" not in str(e.value)
    build_objective(MethodConfig(name="one+ols"), 10)  # methods on the model's logits combine


# ---------------------------------------------------------------------------- end to end
def test_digits_one_trains_checkpoints_and_rebuilds(tmp_path):
    from softlabels.evaluate.run import load_run_model

    args = ["data.name=digits", "model.name=resnet8", "method.name=one", "train.epochs=3", "train.threads=1"]
    cfg = build_config(None, args)
    trainer = Trainer(cfg, tmp_path / "run")
    ext = trainer.model.extension
    opt_ids = {id(p) for grp in trainer.optimizer.param_groups for p in grp["params"]}
    assert all(id(p) in opt_ids for p in ext.parameters())
    final = trainer.fit()
    assert final["last"]["test"]["top1_error"] < 50.0  # chance is 90 %
    tr = trainer.history[-1]["train"]
    assert tr["loss"] == pytest.approx(tr["ce"] + tr["ensemble_ce"] + tr["kl"], rel=1e-5)
    # the branches are part of the saved model
    best, _ = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    assert any(k.startswith("model.extension.branches.1.layer3.") for k in best)
    assert "model.extension.gate.bn.running_mean" in best
    # softlabels eval's rebuild: same keys, same predictions
    k, c = trainer.data.num_classes, trainer.data.in_channels
    rebuilt = build_run_model(cfg, k, c)
    assert rebuilt.state_dict().keys() == trainer.model.state_dict().keys()
    _, _, loaded, _, _ = load_run_model(tmp_path / "run", "last", "cpu")
    x = next(iter(trainer.test_loader)).x
    trainer.model.eval()
    with torch.no_grad():
        assert torch.allclose(loaded(x).logits, trainer.model(x).logits, atol=1e-5)
    # inference: ensemble (ONE-E) evaluates the same weights through the gated ensemble
    cfg_e = build_config(None, args + ["method.options.inference=ensemble"])
    ens = build_run_model(cfg_e, k, c)
    ens.load_state_dict(trainer.model.state_dict())
    ens.eval()
    wrong = n = 0
    with torch.no_grad():
        for batch in trainer.test_loader:
            out = ens(batch.x)
            assert torch.allclose(out.logits, out.aux["ensemble"].logits)
            wrong += int((out.logits.argmax(1) != batch.y).sum())
            n += len(batch.y)
    assert 100.0 * wrong / n < 50.0
