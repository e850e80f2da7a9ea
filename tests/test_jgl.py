"""Joint guided learning: label_refinery, glr, cd, glr_cd (METHODS.md §4).

Golden values are computed with ``math`` straight from the paper's equations, never through the
functions under test.
"""
import math
from types import SimpleNamespace

import pytest
import torch

import softlabels.methods.jgl  # noqa: F401  (registration)
from softlabels.config import build_config
from softlabels.engine.trainer import Trainer
from softlabels.errors import ConfigError
from softlabels.methods.jgl import (ChannelDistillation, GuidedLabelRefinery, JointGuidedLearning,
                                    LabelRefinery, channel_distillation_loss, glr_loss,
                                    guided_kd_loss, label_refinery_loss, official_cd_weights)
from softlabels.models.base import ModelOutput
from softlabels.registry import METHODS
from helpers import FakeBatch as Batch


# ---------------------------------------------------------------------------- math helpers
def m_softmax(row):
    e = [math.exp(v) for v in row]
    s = sum(e)
    return [v / s for v in e]


def m_log_softmax(row):
    lse = math.log(sum(math.exp(v) for v in row))
    return [v - lse for v in row]


def m_soft_ce(row, teacher_row):
    p1, ls = m_softmax(teacher_row), m_log_softmax(row)
    return -sum(a * b for a, b in zip(p1, ls))


def m_gap(fmap):  # fmap: C × H × W nested lists → per-channel means
    return [sum(sum(r) for r in ch) / (len(ch) * len(ch[0])) for ch in fmap]


def m_cd(student, teacher):  # lists of N × C × H × W nested lists (Eq. 7–9)
    total = 0.0
    for s_stage, t_stage in zip(student, teacher):
        n, c = len(s_stage), len(s_stage[0])
        sq = sum((a - b) ** 2 for s_i, t_i in zip(s_stage, t_stage) for a, b in zip(m_gap(s_i), m_gap(t_i)))
        total += sq / (n * c)
    return total


Z = [[1.0, 2.0, 0.0], [0.5, -1.0, 2.0], [0.0, 0.3, -0.4], [2.0, 2.5, 1.0]]
B = [[2.0, 1.0, 0.0], [0.0, 0.0, 3.0], [1.5, 0.0, 0.2], [0.1, 0.0, 0.4]]
Y = [0, 2, 1, 2]  # teacher argmax = 0, 2, 0, 2 → correct on samples 0, 1, 3

# two stages: N=2, C=2, 2×2 maps; then N=2, C=3, 1×2 maps
S1 = [[[[1.0, 2.0], [3.0, 4.0]], [[0.0, -1.0], [1.0, 0.5]]],
      [[[2.0, 2.0], [0.0, 0.0]], [[1.0, 1.0], [1.0, 3.0]]]]
T1 = [[[[0.0, 1.0], [1.0, 2.0]], [[0.5, 0.5], [0.5, 0.5]]],
      [[[4.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 2.0]]]]
S2 = [[[[1.0, 3.0]], [[0.0, 0.0]], [[-2.0, 1.0]]],
      [[[0.5, 0.5]], [[4.0, 2.0]], [[1.0, 1.0]]]]
T2 = [[[[2.0, 2.0]], [[1.0, -1.0]], [[0.0, 0.0]]],
      [[[0.0, 1.0]], [[3.0, 3.0]], [[1.0, 2.0]]]]


def feats(*stages, dtype=torch.float32):
    return [torch.tensor(s, dtype=dtype) for s in stages]


# ---------------------------------------------------------------------------- golden values
def test_label_refinery_golden():
    expected = sum(m_soft_ce(z, b) for z, b in zip(Z, B)) / len(Z)
    got = label_refinery_loss(torch.tensor(Z), torch.tensor(B))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    terms = LabelRefinery(3).loss(ModelOutput(torch.tensor(Z), None), Batch(Y),
                                  [ModelOutput(torch.tensor(B), None)])
    assert list(terms) == ["refinery"] and terms["refinery"].item() == pytest.approx(expected, rel=1e-6)


def test_glr_golden_mixed_correct_and_wrong():
    correct = [max(range(3), key=lambda k: b[k]) == y for b, y in zip(B, Y)]
    assert correct == [True, True, False, True]
    expected = sum(m_soft_ce(z, b) for z, b, c in zip(Z, B, correct) if c) / sum(correct)  # Eq. 3
    got = glr_loss(torch.tensor(Z), torch.tensor(B), torch.tensor(Y))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # the wrong crop gets no gradient at all
    z = torch.tensor(Z, requires_grad=True)
    glr_loss(z, torch.tensor(B), torch.tensor(Y)).backward()
    assert torch.all(z.grad[2] == 0) and torch.all(z.grad[[0, 1, 3]].abs().sum(1) > 0)
    terms = GuidedLabelRefinery(3).loss(ModelOutput(torch.tensor(Z), None), Batch(Y),
                                        [ModelOutput(torch.tensor(B), None)])
    assert terms["glr"].item() == pytest.approx(expected, rel=1e-6)


def test_glr_no_correct_sample_is_zero_with_zero_gradient():
    z = torch.tensor(Z, requires_grad=True)
    wrong = torch.tensor([1, 0, 2, 0])
    loss = glr_loss(z, torch.tensor(B), wrong)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.isfinite(z.grad).all() and torch.all(z.grad == 0)


def test_guided_kd_golden():
    correct = [0, 1, 3]
    expected = 0.0
    for i in correct:
        q, lp = m_softmax(B[i]), m_log_softmax(Z[i])
        expected += sum(qk * (math.log(qk) - lpk) for qk, lpk in zip(q, lp))
    expected /= len(correct)
    got = guided_kd_loss(torch.tensor(Z), torch.tensor(B), torch.tensor(Y))
    assert got.item() == pytest.approx(expected, rel=1e-6)
    # same gradient as GLR at T = 1 (they differ by the teacher entropy only)
    z1, z2 = torch.tensor(Z, requires_grad=True), torch.tensor(Z, requires_grad=True)
    guided_kd_loss(z1, torch.tensor(B), torch.tensor(Y)).backward()
    glr_loss(z2, torch.tensor(B), torch.tensor(Y)).backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6)


def test_channel_distillation_golden():
    expected = m_cd([S1, S2], [T1, T2])
    # stage 1 alone by hand: GAPs S = (2.5, 0.125), (1, 1.5); T = (1, 0.5), (1, 1)
    stage1 = ((2.5 - 1) ** 2 + (0.125 - 0.5) ** 2 + 0 + 0.5 ** 2) / (2 * 2)
    assert m_cd([S1], [T1]) == pytest.approx(stage1)
    got = channel_distillation_loss(feats(S1, S2), feats(T1, T2))
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_channel_distillation_mismatch_errors():
    with pytest.raises(ValueError, match="stage maps"):
        channel_distillation_loss(feats(S1, S2), feats(T1))
    with pytest.raises(ValueError, match="stage 2 has 3 student channels and 2 teacher"):
        channel_distillation_loss(feats(S1, S2), feats(T1, T1))


def _outs():
    out = ModelOutput(torch.tensor(Z[:2]), None, feats(S1, S2))
    teacher = ModelOutput(torch.tensor(B[:2]), None, feats(T1, T2))
    return out, teacher


def test_glr_cd_weighting_eq10():
    out, teacher = _outs()
    y = Y[:2]
    g = sum(m_soft_ce(z, b) for z, b in zip(Z[:2], B[:2])) / 2  # both teacher-correct
    cd = m_cd([S1, S2], [T1, T2])
    m = JointGuidedLearning(3)  # λ = 0.8 (CIFAR-100 / ResNet-18)
    terms = m.loss(out, Batch(y), [teacher])
    assert list(terms) == ["glr", "cd"]
    assert terms["glr"].item() == pytest.approx(0.2 * g, rel=1e-6)
    assert terms["cd"].item() == pytest.approx(0.8 * cd, rel=1e-6)
    terms = JointGuidedLearning(3, lam=0.3).loss(out, Batch(y), [teacher])
    assert terms["glr"].item() == pytest.approx(0.7 * g, rel=1e-6)
    assert terms["cd"].item() == pytest.approx(0.3 * cd, rel=1e-6)
    terms = JointGuidedLearning(3, lam=0.3, glr_weight=1.0, cd_weight=0.5).loss(out, Batch(y), [teacher])
    assert terms["glr"].item() == pytest.approx(g, rel=1e-6)
    assert terms["cd"].item() == pytest.approx(0.5 * cd, rel=1e-6)


def test_cd_method_is_ce_plus_cd():
    out, teacher = _outs()
    ce = sum(-m_log_softmax(z)[y] for z, y in zip(Z[:2], Y[:2])) / 2
    cd = m_cd([S1, S2], [T1, T2])
    terms = ChannelDistillation(3).loss(out, Batch(Y[:2]), [teacher])
    assert terms["ce"].item() == pytest.approx(0.2 * ce, rel=1e-6)
    assert terms["cd"].item() == pytest.approx(0.8 * cd, rel=1e-6)
    terms = ChannelDistillation(3, ce_weight=1.0, cd_weight=2.0).loss(out, Batch(Y[:2]), [teacher])
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert terms["cd"].item() == pytest.approx(2 * cd, rel=1e-6)


# ---------------------------------------------------------------------------- gradient checks
def test_gradcheck_glr_and_cd():
    torch.manual_seed(0)
    z = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, 4, dtype=torch.float64)
    y = torch.cat([b[:3].argmax(1), (b[3:].argmax(1) + 1) % 4])  # 3 correct, 2 wrong
    assert torch.autograd.gradcheck(lambda t: glr_loss(t, b, y), (z,))
    s1 = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    s2 = torch.randn(2, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    t1, t2 = torch.randn(2, 3, 4, 4, dtype=torch.float64), torch.randn(2, 5, 2, 2, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda a, c: channel_distillation_loss([a, c], [t1, t2]), (s1, s2))


# ---------------------------------------------------------------------------- options, setup
def test_option_validation():
    with pytest.raises(ConfigError, match=r"^method\.options\.lam: "):
        METHODS.build("glr_cd", {"lam": 1.5}, where="method.options", num_classes=3)
    with pytest.raises(ConfigError, match=r"^method\.options\.glr_weight: "):
        METHODS.build("glr_cd", {"glr_weight": -1.0}, where="method.options", num_classes=3)
    with pytest.raises(ConfigError, match=r"^method\.options\.cd_weight: "):
        METHODS.build("cd", {"cd_weight": float("nan")}, where="method.options", num_classes=3)
    with pytest.raises(ConfigError, match=r"^method\.options\.warmup_epochs: "):
        METHODS.build("cd", {"warmup_epochs": -1}, where="method.options", num_classes=3)
    with pytest.raises(ConfigError, match=r"^method\.options\.variant: "):
        METHODS.build("glr_cd", {"variant": "official"}, where="method.options", num_classes=3)
    with pytest.raises(ConfigError, match=r"^method\.options\.lam: "):
        METHODS.build("glr_cd", {"lam": "foo"}, where="method.options", num_classes=3)
    for name in ("label_refinery", "glr", "cd", "glr_cd"):
        m = METHODS.build(name, {}, num_classes=3)
        assert m.requires.teachers == 1 and m.requires.features == (name in ("cd", "glr_cd"))


def test_paper_cd_rejects_unequal_channels_and_official_builds_adapters():
    student = SimpleNamespace(stage_channels=(8, 16))
    teacher = SimpleNamespace(stage_channels=(16, 32))
    with pytest.raises(ConfigError, match=r"^method\.options\.variant: .*8/16.*16/32"):
        JointGuidedLearning(3).setup(student, [teacher])
    m = JointGuidedLearning(3, variant="official_cd")
    m.setup(student, [teacher])
    assert [a[0].weight.shape for a in m.adapters] == [(16, 8, 1, 1), (32, 16, 1, 1)]
    assert [a[1].num_features for a in m.adapters] == [16, 32]
    assert isinstance(m.adapters[0][2], torch.nn.ReLU)
    with pytest.raises(ConfigError, match="stages"):
        ChannelDistillation(3, variant="official_cd").setup(student, [SimpleNamespace(stage_channels=(16,))])


# METHODS.md §4 (corrected; issue 9): the authors' CIFAR schedule over 1-based epochs E,
# written out by hand: (CE, guided KD, CD).
CIFAR_BY_HAND = {1: (0.0, 0.0, 6.0), 60: (0.0, 0.0, 5.4), 61: (1.0, 0.1, 5.4), 159: (1.0, 0.1, 5.4),
                 160: (1.0, 0.1, 4.86), 200: (1.0, 0.1, 4.86)}
IMAGENET_BY_HAND = {1: (0.0, 0.0, 6.0), 29: (0.0, 0.0, 6.0), 30: (0.0, 0.0, 5.4), 31: (1.0, 1.0, 5.4),
                    60: (1.0, 1.0, 4.86), 90: (1.0, 1.0, 4.374)}


def test_official_schedule():
    for epoch, expect in CIFAR_BY_HAND.items():
        ce, kd, cd = official_cd_weights(epoch)
        assert (ce, kd) == expect[:2] and cd == pytest.approx(expect[2], rel=1e-12), epoch
    for epoch, expect in IMAGENET_BY_HAND.items():
        ce, kd, cd = official_cd_weights(epoch, "imagenet")
        assert (ce, kd) == expect[:2] and cd == pytest.approx(expect[2], rel=1e-12), epoch
    # short runs: the warm-up and the CD steps can be moved
    assert official_cd_weights(4, warmup_epochs=3, milestones=[2, 4]) == pytest.approx((1.0, 0.1, 4.86))
    # the method reads the trainer's 0-based epoch as E = epoch + 1
    m = JointGuidedLearning(3, variant="official_cd")
    for e, expect in CIFAR_BY_HAND.items():
        m.on_epoch_start(e - 1)
        w = m.weights()
        assert (w["ce"], w["kd"]) == expect[:2] and w["cd"] == pytest.approx(expect[2]), e
        assert int(m.epoch) == e - 1
    c = ChannelDistillation(3, variant="official_cd")
    c.on_epoch_start(60)  # E = 61
    assert c.weights() == pytest.approx({"ce": 1.0, "cd": 5.4})
    # the epoch is checkpointed: a fresh method loading the state resumes the schedule
    fresh = JointGuidedLearning(3, variant="official_cd")
    fresh.load_state_dict(m.state_dict())
    assert fresh.weights() == pytest.approx({"ce": 1.0, "kd": 0.1, "cd": 4.86})


def test_teacher_mode_defaults_and_option():
    assert ChannelDistillation(3, variant="official_cd").requires.teacher_mode == "train"
    assert JointGuidedLearning(3, variant="official_cd").requires.teacher_mode == "train"
    assert JointGuidedLearning(3).requires.teacher_mode == "eval"
    assert JointGuidedLearning(3, variant="official_cd", teacher_mode="eval").requires.teacher_mode == "eval"
    assert LabelRefinery(3).requires.teacher_mode == "eval"
    assert LabelRefinery(3, teacher_mode="train").requires.teacher_mode == "train"
    with pytest.raises(ConfigError, match=r"^method\.options\.teacher_mode: "):
        LabelRefinery(3, teacher_mode="training")


def test_official_cd_terms_and_adapters():
    torch.manual_seed(0)
    student = SimpleNamespace(stage_channels=(2, 3))
    m = JointGuidedLearning(3, variant="official_cd", warmup_epochs=1)
    m.setup(student, [SimpleNamespace(stage_channels=(2, 3))])
    out, teacher = _outs()
    m.on_epoch_start(0)
    terms = m.loss(out, Batch(Y[:2]), [teacher])
    assert list(terms) == ["ce", "kd", "cd"]
    assert terms["ce"].item() == 0.0 and terms["kd"].item() == 0.0
    adapted = [m.adapters[i](f) for i, f in enumerate(out.features)]
    expected = 6.0 * m_cd([a.tolist() for a in adapted], [T1, T2])
    assert terms["cd"].item() == pytest.approx(expected, rel=1e-5)
    terms["cd"].backward()
    assert all(p.grad is not None for p in m.adapters.parameters())
    m.on_epoch_start(1)
    terms = m.loss(out, Batch(Y[:2]), [teacher])
    ce = sum(-m_log_softmax(z)[y] for z, y in zip(Z[:2], Y[:2])) / 2
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-6) and terms["kd"].item() > 0


# ---------------------------------------------------------------------------- end to end
# One thread: on a shared 2-core machine two OpenMP threads spin against other work and run
# several times slower. The trainer sets the count process-wide, so it is restored afterwards.
DIGITS = ["data.name=digits", "model.name=resnet8", "train.epochs=3", "train.threads=1"]


@pytest.fixture(scope="module")
def teacher():
    tr = Trainer(build_config(None, DIGITS + ["method.name=ce"]), None)
    tr.fit()
    return tr.model


def test_official_adapters_reach_the_optimizer(teacher):
    cfg = build_config(None, DIGITS + ["method.name=glr_cd", "method.options.variant=official_cd"])
    tr = Trainer(cfg, None, teachers=[teacher])
    adapters = tr.objective.methods["glr_cd"].adapters
    assert [a[0].weight.shape for a in adapters] == [(16, 16, 1, 1), (32, 32, 1, 1), (64, 64, 1, 1)]
    opt_params = [p for g in tr.optimizer.param_groups for p in g["params"]]
    n_model = len(list(tr.model.parameters()))
    assert len(opt_params) == n_model + 3 * 3  # conv weight, BN weight, BN bias per stage
    ids = {id(p) for p in opt_params}
    assert all(id(p) in ids for p in adapters.parameters())
    assert any(k.startswith("methods.glr_cd.adapters.") for k in tr.objective.state_dict())
    assert "methods.glr_cd.epoch" in tr.objective.state_dict()


@pytest.mark.parametrize("name,options", [
    ("label_refinery", []), ("glr", []), ("cd", []), ("glr_cd", []),
    ("cd", ["method.options.variant=official_cd", "method.options.warmup_epochs=1"]),
    ("glr_cd", ["method.options.variant=official_cd", "method.options.warmup_epochs=1"]),
])
def test_end_to_end_digits_beats_chance(teacher, name, options):
    cfg = build_config(None, DIGITS + [f"method.name={name}"] + options)
    final = Trainer(cfg, None, teachers=[teacher]).fit()
    assert final["last"]["test"]["top1_error"] < 50.0
