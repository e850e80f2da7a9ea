"""Baselines Tf-KD (tfkd_self, tfkd_reg; Yuan et al., CVPR 2020) and BYOT (Zhang et al., ICCV 2019).

Golden values are computed with ``math`` from the papers' formulas, never through the functions
under test.
"""
import math

import pytest
import torch
import torch.nn.functional as F

import softlabels.methods.byot  # noqa: F401  (registration)
import softlabels.methods.tfkd  # noqa: F401  (registration)
from softlabels.config import build_config
from softlabels.engine import checkpoint as ckpt
from softlabels.engine.trainer import Trainer
from softlabels.errors import ConfigError
from softlabels.methods.byot import (BeYourOwnTeacher, byot_classifier_loss, byot_hint, byot_loss,
                                     make_byot_heads)
from softlabels.methods.kd import kd_loss
from softlabels.methods.tfkd import (TeacherFreeRegularization, TeacherFreeSelfKD, architecture_mismatch,
                                     tfkd_reg_kl, tfkd_reg_loss, tfkd_self_loss,
                                     virtual_teacher_distribution)
from softlabels.models import build_model
from softlabels.models.base import ModelOutput
from softlabels.registry import METHODS
from helpers import FakeBatch as Batch


# ---------------------------------------------------------------------------- math helpers
def m_softmax(row, t=1.0):
    e = [math.exp(v / t) for v in row]
    s = sum(e)
    return [v / s for v in e]


def m_kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)


def m_ce(row, y):
    return -math.log(m_softmax(row)[y])


Z = [[1.0, 2.0, 0.5], [0.0, -1.0, 2.0]]   # student / shallow logits
B = [[2.0, 1.0, 0.0], [0.5, 0.5, 0.5]]    # teacher / deepest logits
Y = [1, 2]


def m_virtual(y, k, a):
    return [a if j == y else (1 - a) / (k - 1) for j in range(k)]


def m_soften(dist, t):  # softmax(log p / T) = p^(1/T) / Σ p^(1/T)
    w = [v ** (1.0 / t) for v in dist]
    return [v / sum(w) for v in w]


# ---------------------------------------------------------------------------- tfkd_reg
def test_virtual_teacher_distribution_golden():
    d = virtual_teacher_distribution(torch.tensor([1, 0, 3]), 4, 0.9)
    expected = [[0.9 if j == y else 0.1 / 3 for j in range(4)] for y in (1, 0, 3)]
    assert torch.allclose(d, torch.tensor(expected))
    assert torch.allclose(d.sum(1), torch.ones(3))
    d = virtual_teacher_distribution(torch.tensor([2]), 3)  # default a = 0.99
    assert d.tolist()[0] == pytest.approx([0.005, 0.005, 0.99])


@pytest.mark.parametrize("t,alpha,a", [(2.0, 0.3, 0.9), (20.0, 0.1, 0.99), (1.0, 1.0, 0.95)])
def test_tfkd_reg_paper_golden(t, alpha, a):
    kl = 0.0
    for z, y in zip(Z, Y):
        target = m_soften(m_virtual(y, 3, a), t)
        kl += m_kl(target, m_softmax(z, t))
    kl = t * t * kl / 2
    ce = (m_ce(Z[0], Y[0]) + m_ce(Z[1], Y[1])) / 2
    z = torch.tensor(Z, dtype=torch.float64)  # T² = 400 amplifies float32 rounding
    got = tfkd_reg_kl(z, torch.tensor(Y), t, a)
    assert got.item() == pytest.approx(kl, rel=1e-6)
    loss = tfkd_reg_loss(z, torch.tensor(Y), alpha, t, a)
    assert loss.item() == pytest.approx((1 - alpha) * ce + alpha * kl, rel=1e-6)
    terms = TeacherFreeRegularization(3, alpha=alpha, temperature=t, correct_prob=a).loss(
        ModelOutput(z, None), Batch(Y))
    assert list(terms) == (["kl"] if alpha == 1.0 else ["ce", "kl"])
    assert sum(terms.values()).item() == pytest.approx((1 - alpha) * ce + alpha * kl, rel=1e-6)


def test_tfkd_reg_defaults_and_softening():
    # defaults: α = 0.1, T = 20, a = 0.99; the softened virtual teacher keeps its argmax and is flatter
    m = TeacherFreeRegularization(3)
    assert (m.alpha, m.temperature, m.correct_prob, m.variant) == (0.1, 20.0, 0.99, "paper")
    ce = (m_ce(Z[0], Y[0]) + m_ce(Z[1], Y[1])) / 2
    kl = 400 * sum(m_kl(m_soften(m_virtual(y, 3, 0.99), 20), m_softmax(z, 20)) for z, y in zip(Z, Y)) / 2
    got = tfkd_reg_loss(torch.tensor(Z, dtype=torch.float64), torch.tensor(Y))
    assert got.item() == pytest.approx(0.9 * ce + 0.1 * kl, rel=1e-6)
    soft = m_soften(m_virtual(0, 3, 0.99), 20)
    assert soft[0] > soft[1] == pytest.approx(soft[2]) and soft[0] < 0.99


def test_tfkd_reg_official_golden():
    # the released code: multiplier · KLDivLoss('mean' over B·K)(log_softmax(z), softmax(p^d / T))
    t, alpha, a, mult = 20.0, 0.1, 0.99, 100.0
    kl_elem = 0.0
    for z, y in zip(Z, Y):
        kl_elem += m_kl(m_softmax(m_virtual(y, 3, a), t), m_softmax(z))
    kl_elem /= 2 * 3
    ce = (m_ce(Z[0], Y[0]) + m_ce(Z[1], Y[1])) / 2
    got = tfkd_reg_loss(torch.tensor(Z), torch.tensor(Y), alpha, t, a, "official", mult)
    assert got.item() == pytest.approx((1 - alpha) * ce + alpha * mult * kl_elem, rel=1e-6)


def test_gradcheck_tfkd_reg():
    torch.manual_seed(0)
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 4, 2, 2])
    assert torch.autograd.gradcheck(lambda t: tfkd_reg_loss(t, y, 0.3, 4.0, 0.9), (z,))
    assert torch.autograd.gradcheck(lambda t: tfkd_reg_loss(t, y, 0.3, 4.0, 0.9, "official", 10.0), (z,))


# ---------------------------------------------------------------------------- tfkd_self
def test_tfkd_self_equals_kd_with_its_defaults():
    m = TeacherFreeSelfKD(3)
    assert (m.temperature, m.alpha, m.same_architecture, m.variant) == (6.0, 0.95, True, "paper")
    z, b, y = torch.tensor(Z, dtype=torch.float64), torch.tensor(B, dtype=torch.float64), torch.tensor(Y)
    kd = kd_loss(z, y, b, temperature=6.0, alpha=0.95)
    # golden with math: 0.05·CE + 0.95·36·KL(softmax(b/6) ‖ softmax(z/6))
    kl = 36 * sum(m_kl(m_softmax(bb, 6), m_softmax(zz, 6)) for zz, bb in zip(Z, B)) / 2
    ce = (m_ce(Z[0], Y[0]) + m_ce(Z[1], Y[1])) / 2
    assert kd.item() == pytest.approx(0.05 * ce + 0.95 * kl, rel=1e-6)
    assert tfkd_self_loss(z, y, b).item() == pytest.approx(kd.item(), rel=1e-7)
    terms = m.loss(ModelOutput(z, None), Batch(Y), [ModelOutput(b, None)])
    assert list(terms) == ["ce", "kl"]
    assert sum(terms.values()).item() == pytest.approx(kd.item(), rel=1e-7)
    # official: the KL is scaled by multiplier / K (the code's KLDivLoss also averages over K)
    off = tfkd_self_loss(z, y, b, variant="official", multiplier=50.0)
    assert off.item() == pytest.approx(0.05 * ce + 0.95 * (50.0 / 3) * kl, rel=1e-6)


def test_tfkd_self_architecture_check():
    r8, r8b, r20 = (build_model(n, 10, 1) for n in ("resnet8", "resnet8", "resnet20"))
    assert architecture_mismatch(r8, r8b) is None
    assert "parameter tensors" in architecture_mismatch(r8, r20)
    assert "CifarResNet" in architecture_mismatch(r8, build_model("lenet5", 10, 1))
    assert "parameter head.weight is 10x64 in the student and 5x64" in architecture_mismatch(
        r8, build_model("resnet8", 5, 1))
    TeacherFreeSelfKD(10).setup(r8, [r8b])
    TeacherFreeSelfKD(10, same_architecture=False).setup(r8, [r20])
    with pytest.raises(ConfigError) as e:
        TeacherFreeSelfKD(10).setup(r8, [])
    assert "\n" not in str(e.value)


def test_tfkd_self_mismatch_raises_one_line_config_error():
    teacher = build_model("resnet20", 10, 1)
    cfg = build_config(None, DIGITS + ["method.name=tfkd_self"])
    with pytest.raises(ConfigError, match=r"^model\.name: tfkd_self .*same_architecture=false$") as e:
        Trainer(cfg, None, teachers=[teacher])
    assert "\n" not in str(e.value)


def test_option_validation():
    for name, opts, key in [("tfkd_self", {"alpha": 1.5}, "alpha"), ("tfkd_self", {"temperature": 0.0}, "temperature"),
                            ("tfkd_reg", {"correct_prob": 1.0}, "correct_prob"),
                            ("tfkd_reg", {"variant": "code"}, "variant"), ("byot", {"lam": -1.0}, "lam"),
                            ("byot", {"alpha": -0.1}, "alpha"), ("byot", {"hint_reduction": "max"}, "hint_reduction")]:
        with pytest.raises(ConfigError, match=rf"^method\.options\.{key}: "):
            METHODS.build(name, opts, where="method.options", num_classes=10)
    assert METHODS.build("tfkd_self", {}, num_classes=10).requires.teachers == 1
    assert METHODS.build("tfkd_reg", {}, num_classes=10).requires.teachers == 0
    req = METHODS.build("byot", {}, num_classes=10).requires
    assert req.features and req.teachers == 0
    for name in ("tfkd_self", "tfkd_reg", "byot"):
        assert METHODS.get(name).reference


# ---------------------------------------------------------------------------- byot: functions
# two samples, 2 channels, 1×2 maps
FI = [[[[1.0, 0.0]], [[2.0, 1.0]]], [[[0.5, 0.5]], [[0.0, 3.0]]]]
FC = [[[[0.0, 0.0]], [[1.0, 1.0]]], [[[1.5, 0.5]], [[2.0, 1.0]]]]
Z2 = [[0.0, 1.0, 1.0], [1.0, 0.0, -2.0]]  # a second shallow classifier


def m_hint(fi, fc):  # per-sample squared L2 norm, batch mean
    tot = 0.0
    for a, b in zip(fi, fc):
        tot += sum((x - w) ** 2 for ca, cb in zip(a, b) for ra, rb in zip(ca, cb) for x, w in zip(ra, rb))
    return tot / len(fi)


def m_byot_terms(z_rows, t, alpha, lam, fi=None):
    ce = sum(m_ce(z, y) for z, y in zip(z_rows, Y)) / 2
    kl = t * t * sum(m_kl(m_softmax(b, t), m_softmax(z, t)) for z, b in zip(z_rows, B)) / 2
    out = {"ce": (1 - alpha) * ce, "kl": alpha * kl}
    if fi is not None:
        out["hint"] = lam * m_hint(fi, FC)
    return out


def test_byot_hint_golden():
    # sample 0: 1 + 0 + 1 + 0 = 2; sample 1: 1 + 0 + 4 + 4 = 9 → mean 5.5
    assert m_hint(FI, FC) == pytest.approx(5.5)
    assert byot_hint(torch.tensor(FI), torch.tensor(FC)).item() == pytest.approx(5.5)
    assert byot_hint(torch.tensor(FI), torch.tensor(FC), "mean").item() == pytest.approx(11 / 8)
    with pytest.raises(ValueError, match="same shape"):
        byot_hint(torch.tensor(FI), torch.tensor(FC)[:, :1])


@pytest.mark.parametrize("t,alpha,lam", [(3.0, 0.3, 0.03), (1.0, 0.5, 1.0)])
def test_byot_classifier_loss_golden(t, alpha, lam):
    expected = m_byot_terms(Z, t, alpha, lam, FI)
    got = byot_classifier_loss(torch.tensor(Z), torch.tensor(B), torch.tensor(Y), torch.tensor(FI),
                               torch.tensor(FC), t, alpha, lam)
    assert list(got) == ["ce", "kl", "hint"]
    for k in expected:
        assert got[k].item() == pytest.approx(expected[k], rel=1e-6), k
    no_t2 = byot_classifier_loss(torch.tensor(Z), torch.tensor(B), torch.tensor(Y), temperature=t, alpha=alpha,
                                 t_squared=False)
    assert "hint" not in no_t2 and no_t2["kl"].item() == pytest.approx(expected["kl"] / (t * t), rel=1e-6)


def test_byot_loss_composition_and_defaults():
    # two shallow classifiers (Z with FI, Z2 with FC + 1), the deepest B: defaults T=3, α=0.3, λ=0.03
    fi2 = [[[[v + 1.0 for v in r] for r in c] for c in s] for s in FC]
    t1, t2 = m_byot_terms(Z, 3.0, 0.3, 0.03, FI), m_byot_terms(Z2, 3.0, 0.3, 0.03, fi2)
    deep_ce = sum(m_ce(b, y) for b, y in zip(B, Y)) / 2
    got = byot_loss([torch.tensor(Z), torch.tensor(Z2)], torch.tensor(B), torch.tensor(Y),
                    [torch.tensor(FI), torch.tensor(fi2)], torch.tensor(FC))
    assert list(got) == ["ce", "aux_ce", "kl", "hint"]
    assert got["ce"].item() == pytest.approx(deep_ce, rel=1e-6)
    assert got["aux_ce"].item() == pytest.approx(t1["ce"] + t2["ce"], rel=1e-6)
    assert got["kl"].item() == pytest.approx(t1["kl"] + t2["kl"], rel=1e-6)
    assert got["hint"].item() == pytest.approx(0.03 * (5.5 + 4.0), rel=1e-6)  # FC+1 vs FC: 4 ones per sample
    total = deep_ce + sum(t1.values()) + sum(t2.values())
    assert sum(got.values()).item() == pytest.approx(total, rel=1e-6)


def test_byot_deepest_is_a_constant_teacher():
    # only CE(z_C, y) reaches the deepest logits; the deepest map gets no gradient at all
    zc = torch.tensor(B, requires_grad=True)
    fc = torch.tensor(FC, requires_grad=True)
    terms = byot_loss([torch.tensor(Z, requires_grad=True)], zc, torch.tensor(Y),
                      [torch.tensor(FI, requires_grad=True)], fc)
    sum(terms.values()).backward()
    ref = torch.tensor(B, requires_grad=True)
    F.cross_entropy(ref, torch.tensor(Y)).backward()
    assert torch.allclose(zc.grad, ref.grad)
    assert fc.grad is None or torch.count_nonzero(fc.grad) == 0


def test_gradcheck_byot():
    torch.manual_seed(0)
    z1 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    zc = torch.randn(3, 4, dtype=torch.float64)
    f1 = torch.randn(3, 2, 2, 2, dtype=torch.float64, requires_grad=True)
    fc = torch.randn(3, 2, 2, 2, dtype=torch.float64)
    y = torch.tensor([1, 3, 0])

    def total(a, b, f):
        return sum(byot_loss([a, b], zc, y, [f, f * 0.5], fc).values())

    assert torch.autograd.gradcheck(total, (z1, z2, f1))


# ---------------------------------------------------------------------------- byot: modules
def test_byot_heads_shapes_for_every_resnet_family():
    heads = make_byot_heads((16, 32, 64), 10)
    assert len(heads) == 2 and [h.fc.weight.shape for h in heads] == [(10, 64), (10, 64)]
    assert [len(h.bottleneck) for h in heads] == [2, 1]
    torch.manual_seed(0)
    for name, opts, size in [("resnet8", {}, 8), ("resnet18", {"stem": "cifar"}, 9),
                             ("resnet50", {}, 33), ("preact_resnet18_cskd", {}, 12)]:
        model = build_model(name, 5, 1, opts).eval()
        m = BeYourOwnTeacher(5)
        m.setup(model)
        assert len(m.aux) == len(model.stage_channels) - 1
        with torch.no_grad():
            out = model(torch.randn(2, 1, size, size), return_features=True)
            feats, logits = m.auxiliary_outputs(out.features)
        assert all(f.shape == out.features[-1].shape for f in feats), name
        assert all(z.shape == (2, 5) for z in logits)
    with pytest.raises(ConfigError, match=r"^model\.name: byot .*LeNet") as e:
        BeYourOwnTeacher(5).setup(build_model("lenet5", 5, 1))
    assert "\n" not in str(e.value)


# ---------------------------------------------------------------------------- end to end
# One thread: on a shared 2-core machine two OpenMP threads spin against other work and run
# several times slower. The trainer sets the count process-wide, so it is restored afterwards.
DIGITS = ["data.name=digits", "model.name=resnet8", "train.epochs=3", "train.threads=1"]


@pytest.fixture(scope="module")
def byot_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("byot")
    tr = Trainer(build_config(None, DIGITS + ["method.name=byot"]), run_dir)
    heads = tr.objective.methods["byot"].aux
    opt_ids = {id(p) for g in tr.optimizer.param_groups for p in g["params"]}
    final = tr.fit()
    return tr, run_dir, heads, opt_ids, final


def test_byot_heads_are_optimised_and_checkpointed(byot_run):
    tr, run_dir, heads, opt_ids, _ = byot_run
    assert len(heads) == 2  # resnet8: 3 stages → 2 auxiliary classifiers
    assert [len(h.bottleneck) for h in heads] == [2, 1]
    assert heads[0].bottleneck[0][0].weight.shape == (16, 1, 3, 3)    # depthwise 3×3, stride 2
    assert heads[0].bottleneck[1][5].weight.shape == (64, 32, 1, 1)   # 32 → 64 pointwise
    assert heads[1].bottleneck[0][5].weight.shape == (64, 32, 1, 1)
    assert all(h.fc.weight.shape == (10, 64) for h in heads)
    assert all(id(p) in opt_ids for p in heads.parameters())
    assert len(opt_ids) == len(list(tr.model.parameters())) + len(list(heads.parameters()))
    last, _ = ckpt.load_checkpoint(run_dir / "checkpoints" / "last")
    aux_keys = [k for k in last if k.startswith("method.methods.byot.aux.")]
    assert len(aux_keys) == len(heads.state_dict())
    assert torch.equal(last["method.methods.byot.aux.1.fc.weight"], heads[1].fc.weight.detach().cpu())
    best, _ = ckpt.load_checkpoint(run_dir / "checkpoints" / "best")
    assert best and all(k.startswith("model.") for k in best)
    # the model itself is unchanged: the deepest classifier is its own head
    assert not any("aux" in k for k in tr.model.state_dict())


def test_byot_resume_restores_the_heads(byot_run):
    tr, run_dir, heads, _, _ = byot_run
    resumed = Trainer(build_config(None, DIGITS + ["method.name=byot"]), run_dir, resume=True)
    assert resumed.start_epoch == 3
    mine, theirs = resumed.objective.methods["byot"].aux.state_dict(), heads.state_dict()
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k].cpu()) for k in mine)


def test_byot_trains_on_digits(byot_run):
    tr, _, _, _, final = byot_run
    assert final["last"]["test"]["top1_error"] < 50.0
    assert {"ce", "aux_ce", "kl", "hint"} <= set(tr.history[-1]["train"])


def test_tfkd_reg_trains_on_digits():
    final = Trainer(build_config(None, DIGITS + ["method.name=tfkd_reg"]), None).fit()
    assert final["last"]["test"]["top1_error"] < 50.0


def test_tfkd_self_trains_on_digits():
    teacher = Trainer(build_config(None, DIGITS + ["method.name=ce"]), None)
    teacher.fit()
    final = Trainer(build_config(None, DIGITS + ["method.name=tfkd_self"]), None, teachers=[teacher.model]).fit()
    assert final["last"]["test"]["top1_error"] < 50.0
