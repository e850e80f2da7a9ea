"""Knowledge-transfer ensembles with the orthogonal loss (METHODS.md §5; Zhang et al., ICME 2021,
Eq. 1–6): attention maps, standardisation, OR loss, the official dynamic weight, the N-member
sequential protocol on digits, ensemble evaluation, and the official kt_resnet50 head."""
import math
import warnings

import pytest
import torch

from softlabels.errors import MissingInputError
import torchvision
from torch import nn

import softlabels.methods.orthogonal  # noqa: F401  (registers "orthogonal")
import softlabels.models.kt  # noqa: F401  (registers "kt_resnet50")
from softlabels.config import build_config
from softlabels.engine.trainer import Trainer
from softlabels.errors import CheckpointError, ConfigError, SoftlabelsError
from softlabels.evaluate.ensemble import (
    combine_mean_softmax,
    combine_sum_logits,
    ensemble_metrics,
    ensemble_predictions,
)
from softlabels.methods.base import build_objective
from softlabels.methods.orthogonal import (
    PAPER_EPS,
    OrthogonalTransfer,
    attention_map,
    dynamic_or_weight,
    orthogonal_loss,
    standardize_map,
)
from softlabels.models import load_weights
from softlabels.models.base import ModelOutput
from softlabels.models.kt import KTResNet50
from softlabels.registry import METHODS, MODELS


pytestmark = pytest.mark.usefixtures("one_thread")


class Out:
    def __init__(self, logits=None, features=None):
        self.logits = logits
        self.features = features


class Batch:
    def __init__(self, y):
        self.y = torch.tensor(y)


# ----------------------------------------------------------------------------- by-hand helpers

def hand_map(f):
    """Eq. 1 on nested lists f[c][h][w] (one sample): GAP per channel, weight, average."""
    c_n, h_n, w_n = len(f), len(f[0]), len(f[0][0])
    gap = [sum(sum(row) for row in f[c]) / (h_n * w_n) for c in range(c_n)]
    return [[sum(gap[c] * f[c][h][w] for c in range(c_n)) / c_n for w in range(w_n)] for h in range(h_n)]


def hand_standardize(m, unbiased=False, eps=PAPER_EPS):
    """Eq. 2 on a nested-list map."""
    vals = [v for row in m for v in row]
    mean = sum(vals) / len(vals)
    ss = sum((v - mean) ** 2 for v in vals)
    std = math.sqrt(ss / (len(vals) - 1 if unbiased else len(vals)) + eps)
    return [[(v - mean) / std for v in row] for row in m]


def hand_or(fs, ft, unbiased=False, eps=PAPER_EPS):
    """Eq. 3–5 for one sample: mean over positions of |M̂_t| · max(M̂_s, 0)."""
    ms = hand_standardize(hand_map(fs), unbiased, eps)
    mt = hand_standardize(hand_map(ft), unbiased, eps)
    prods = [abs(t) * max(s, 0.0) for rs, rt in zip(ms, mt) for s, t in zip(rs, rt)]
    return sum(prods) / len(prods)


F_HAND = [[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]  # 1×2×2×2 once batched


# ----------------------------------------------------------------------------- maps and loss

def test_attention_map_by_hand():
    # GAP: channel 0 = (1+2+3+4)/4 = 2.5, channel 1 = (0+1+0+1)/4 = 0.5
    # M = (2.5·F0 + 0.5·F1) / 2 = [[1.25, 2.75], [3.75, 5.25]]
    expected = [[(2.5 * 1 + 0.5 * 0) / 2, (2.5 * 2 + 0.5 * 1) / 2],
                [(2.5 * 3 + 0.5 * 0) / 2, (2.5 * 4 + 0.5 * 1) / 2]]
    assert expected == [[1.25, 2.75], [3.75, 5.25]] == hand_map(F_HAND)
    m = attention_map(torch.tensor([F_HAND], dtype=torch.float64))
    assert m.shape == (1, 2, 2)
    torch.testing.assert_close(m, torch.tensor([expected], dtype=torch.float64))

    # standardisation: mean 3.25, deviations ±2, ±0.5, population var (4+0.25+0.25+4)/4 = 2.125
    dev = [[-2.0, -0.5], [0.5, 2.0]]
    paper = [[d / math.sqrt(2.125 + PAPER_EPS) for d in row] for row in dev]
    official = [[d / math.sqrt(8.5 / 3) for d in row] for row in dev]  # unbiased: 8.5 / (4 − 1)
    for got_row, want_row in zip(hand_standardize(expected), paper):
        assert got_row == pytest.approx(want_row, rel=1e-12)
    torch.testing.assert_close(standardize_map(m), torch.tensor([paper], dtype=torch.float64))
    torch.testing.assert_close(standardize_map(m, unbiased=True, eps=0.0),
                               torch.tensor([official], dtype=torch.float64))
    # the two forms differ by sqrt((n−1)/n) (up to ε)
    ratio = standardize_map(m, unbiased=True, eps=0.0) / standardize_map(m, eps=0.0)
    torch.testing.assert_close(ratio, torch.full_like(ratio, math.sqrt(3 / 4)))
    # per sample: each map of a batch gets zero mean and unit population std
    z = standardize_map(torch.randn(3, 5, 4, dtype=torch.float64) * 7 + 2)
    torch.testing.assert_close(z.mean(dim=(1, 2)), torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(z.std(dim=(1, 2), unbiased=False), torch.ones(3, dtype=torch.float64),
                               atol=1e-6, rtol=1e-6)


def test_or_loss_by_hand():
    # student: 2 channels; teacher: 3 channels (channel counts may differ), 2×2 positions, B = 2
    s = [F_HAND, [[[0.5, 0.1], [0.2, 3.0]], [[1.0, 0.0], [2.0, 0.3]]]]
    t = [[[[4.0, 1.0], [0.0, 2.0]], [[1.0, 1.0], [1.0, 0.0]], [[0.0, 2.0], [0.5, 0.5]]],
         [[[0.0, 0.0], [1.0, 5.0]], [[2.0, 0.0], [0.0, 0.0]], [[1.0, 1.0], [0.0, 1.0]]]]
    st, tt = torch.tensor(s, dtype=torch.float64), torch.tensor(t, dtype=torch.float64)
    # issue 9: both variants use the unbiased std by default (the authors' code); the paper
    # variant keeps its ε, and ``unbiased=False`` gives the population std
    for variant, unbiased, eps in (("paper", True, PAPER_EPS), ("official", True, 0.0), ("paper", False, PAPER_EPS)):
        expected = (hand_or(s[0], t[0], unbiased, eps) + hand_or(s[1], t[1], unbiased, eps)) / 2
        assert expected > 0
        assert orthogonal_loss(st, tt, variant, unbiased).item() == pytest.approx(expected, rel=1e-10)
    # the unbiased std is larger by sqrt(n/(n−1)), n = 4 positions; both maps shrink by
    # sqrt(3/4), so unbiased = population · 3/4 (up to ε)
    ratio = orthogonal_loss(st, tt, "official") / orthogonal_loss(st, tt, "paper", unbiased=False)
    assert ratio.item() == pytest.approx(3 / 4, rel=1e-6)
    paper = orthogonal_loss(st, tt, "paper") / orthogonal_loss(st, tt, "official")
    assert paper.item() == pytest.approx(1.0, rel=1e-6)


def test_orthogonal_maps_give_zero():
    # one channel: M = GAP(F)·F with GAP(F) > 0, so M̂ is the standardised F.
    # teacher F = [2, 2, 3, 1] → M̂_t ∝ [0, 0, 1, −1]; student F = [3, 3, 1, 1] → M̂_s ∝ [1, 1, −1, −1]:
    # the student's positive mass sits exactly where |M̂_t| = 0 (no overlap), so L_OR = 0
    teacher = torch.tensor([[[[2.0, 2.0], [3.0, 1.0]]]], dtype=torch.float64)
    student = torch.tensor([[[[3.0, 3.0], [1.0, 1.0]]]], dtype=torch.float64)
    flipped = torch.tensor([[[[1.0, 1.0], [3.0, 3.0]]]], dtype=torch.float64)
    for variant in ("paper", "official"):
        assert orthogonal_loss(student, teacher, variant).item() == 0.0
        # the same student mass on the teacher's high-response / background regions is penalised
        assert orthogonal_loss(flipped, teacher, variant).item() > 0.5


def test_spatial_mismatch_and_bad_shapes_raise():
    with pytest.raises(ValueError, match=r"spatial sizes differ, student 4×4 vs teacher 2×2"):
        orthogonal_loss(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 2, 2))
    with pytest.raises(ValueError, match="batch"):
        orthogonal_loss(torch.rand(2, 3, 4, 4), torch.rand(3, 3, 4, 4))
    with pytest.raises(ValueError, match="B×C×H×W"):
        orthogonal_loss(torch.rand(2, 3, 4), torch.rand(2, 3, 4))
    with pytest.raises(ValueError, match="variant"):
        orthogonal_loss(torch.rand(2, 3, 4, 4), torch.rand(2, 3, 4, 4), "other")


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_gradcheck_wrt_student_features(variant):
    g = torch.Generator().manual_seed(0)
    student = torch.rand(2, 3, 3, 3, generator=g, dtype=torch.float64).requires_grad_(True)
    teacher = torch.rand(2, 4, 3, 3, generator=g, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda s: orthogonal_loss(s, teacher, variant), (student,))
    # the teacher receives no gradient
    t = teacher.clone().requires_grad_(True)
    orthogonal_loss(student, t, variant).backward()
    assert t.grad is None


def test_constant_maps_are_finite():
    """A constant map (dead features) standardises to 0 in both forms: no NaN, finite grads."""
    for variant in ("paper", "official"):
        s = torch.zeros(2, 3, 4, 4, requires_grad=True)
        t = torch.ones(2, 3, 4, 4)
        loss = orthogonal_loss(s, t, variant)
        loss.backward()
        assert loss.item() == 0.0 and torch.isfinite(s.grad).all()
    one = standardize_map(torch.rand(2, 1, 1), unbiased=True, eps=0.0)  # a single position
    assert torch.equal(one, torch.zeros(2, 1, 1))


# ----------------------------------------------------------------------------- the method

def _fake_outputs(seed=0, k=5, b=4):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, k, generator=g).requires_grad_(True)
    feat = torch.rand(b, 6, 3, 3, generator=g).requires_grad_(True)
    teachers = [Out(features=[torch.rand(b, 2, 6, 6, generator=g), torch.rand(b, 8, 3, 3, generator=g)])
                for _ in range(3)]
    y = torch.randint(0, k, (b,), generator=g).tolist()
    return Out(logits, [torch.rand(b, 2, 6, 6, generator=g), feat]), teachers, Batch(y)


def test_paper_loss_is_ce_plus_mean_alpha_or_of_last_stage():
    out, teachers, batch = _fake_outputs()
    m = OrthogonalTransfer(5, members_before=3, alpha=0.5)
    assert m.requires.teachers == 3 and m.requires.features
    terms = m.loss(out, batch, teachers)
    assert set(terms) == {"ce", "or"}
    torch.testing.assert_close(terms["ce"], nn.functional.cross_entropy(out.logits, batch.y))
    ors = [orthogonal_loss(out.features[-1], t.features[-1]) for t in teachers]
    torch.testing.assert_close(terms["or"], 0.5 * sum(ors) / 3)
    # members_before = 2 uses the first two teachers only; 0 is CE alone, no features needed
    two = OrthogonalTransfer(5, members_before=2).loss(out, batch, teachers)
    torch.testing.assert_close(two["or"], 0.5 * (ors[0] + ors[1]) / 2)
    first = OrthogonalTransfer(5, members_before=0)
    assert first.requires.teachers == 0 and not first.requires.features
    assert set(first.loss(out, batch, ())) == {"ce"}
    with pytest.raises(MissingInputError, match="needs the outputs of 3 teacher model"):
        m.loss(out, batch, teachers[:1])


def test_official_dynamic_weight_is_a_constant():
    out, teachers, batch = _fake_outputs(seed=1)
    m = OrthogonalTransfer(5, members_before=2, variant="official", alpha=123.0)  # alpha ignored
    terms = m.loss(out, batch, teachers)
    or_mean = sum(orthogonal_loss(out.features[-1], t.features[-1], "official") for t in teachers[:2]) / 2
    ce = terms["ce"]
    w = dynamic_or_weight(ce, or_mean, 0.1)
    assert not w.requires_grad
    assert w.item() == pytest.approx(0.1 * ce.item() / or_mean.item(), rel=1e-6)
    # the term's value is α_code·CE ...
    assert terms["or"].item() == pytest.approx(0.1 * ce.item(), rel=1e-6)
    # ... but its gradient is w·∇L_OR (w treated as a constant): none reaches the logits
    g_term = torch.autograd.grad(terms["or"], [out.features[-1], out.logits], allow_unused=True)
    g_or = torch.autograd.grad(or_mean, out.features[-1])[0]
    torch.testing.assert_close(g_term[0], w * g_or)
    assert g_term[1] is None or torch.count_nonzero(g_term[1]) == 0
    # alpha_code option
    terms2 = OrthogonalTransfer(5, members_before=2, variant="official", alpha_code=0.3).loss(out, batch, teachers)
    assert terms2["or"].item() == pytest.approx(0.3 * terms2["ce"].item(), rel=1e-6)


def test_official_zero_or_loss_gives_finite_loss():
    out, _, batch = _fake_outputs(seed=2)
    flat_teacher = Out(features=[None, torch.ones(4, 8, 3, 3)])  # constant map: L_OR = 0 exactly
    m = OrthogonalTransfer(5, members_before=1, variant="official")
    terms = m.loss(out, batch, [flat_teacher])
    assert terms["or"].item() == 0.0
    total = sum(terms.values())
    total.backward()
    assert torch.isfinite(total) and torch.isfinite(out.features[-1].grad).all()
    assert torch.isfinite(out.logits.grad).all()
    assert dynamic_or_weight(torch.tensor(2.0), torch.tensor(0.0)).item() == 0.0


def test_options_are_validated():
    for opts, key in (({"alpha": -0.1}, "alpha"), ({"alpha_code": -1.0}, "alpha_code"),
                      ({"members_before": -1}, "members_before"), ({"variant": "x"}, "variant"),
                      ({"members_before": 1.5}, "members_before"), ({"beta": 1}, "beta")):
        with pytest.raises(ConfigError) as err:
            METHODS.build("orthogonal", opts, where="method.options", num_classes=10)
        msg = str(err.value)
        assert msg.startswith(f"method.options.{key}:") and "\n" not in msg
    with pytest.raises(ConfigError, match=r"^method\.options\.alpha:"):
        OrthogonalTransfer(10, alpha=float("nan"))
    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", "method.name=orthogonal",
                              "method.options.members_before=2"])
    assert build_objective(cfg.method, 10).requires.teachers == 2


def test_trainer_refuses_missing_teachers():
    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", "method.name=orthogonal",
                              "method.options.members_before=2", "train.epochs=1"])
    with pytest.raises(SoftlabelsError, match="needs 2 teacher"):
        Trainer(cfg, None, teachers=[build_model_resnet8()])


def build_model_resnet8():
    from softlabels.models import build_model

    return build_model("resnet8", 10, 1)


# ----------------------------------------------------------------------------- end to end

def _member(n, teachers, extra=()):
    method = "method.name=ce" if n == 1 else "method.name=orthogonal"
    opts = [] if n == 1 else [f"method.options.members_before={n - 1}"]
    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", method, "train.epochs=3",
                              f"train.seed={n}", *opts, *extra])
    trainer = Trainer(cfg, None, teachers=teachers)
    final = trainer.fit()
    return trainer, final


@pytest.fixture(scope="module")
def members():
    """The sequential protocol: member 1 CE, member n orthogonal with members 1..n−1 as teachers."""
    t1, f1 = _member(1, [])
    t2, f2 = _member(2, [t1.model])
    t3, f3 = _member(3, [t1.model, t2.model])
    return (t1, t2, t3), (f1, f2, f3)


def test_three_member_ensemble_on_digits(members):
    (t1, t2, t3), (f1, f2, f3) = members
    for f in (f1, f2, f3):
        assert f["last"]["test"]["top1_error"] < 50.0  # chance is 90 %
    for t in (t2, t3):
        train = t.history[-1]["train"]
        assert set(train) >= {"loss", "ce", "or"} and train["or"] > 0
        assert train["loss"] == pytest.approx(train["ce"] + train["or"], rel=1e-5)
    assert len(t2.teachers) == 1 and len(t3.teachers) == 2

    models = [t1.model, t2.model, t3.model]
    modes = [m.training for m in models]
    res = ensemble_metrics(models, t3.test_loader, 10)
    assert [m.training for m in models] == modes  # each model's mode is restored
    assert set(res) == {"members", "mean_softmax", "sum_logits"}
    assert len(res["members"]) == 3
    keys = {"top1_error", "top5_error", "nll", "ece", "macro_precision", "macro_recall", "macro_f1", "count"}
    for m in res["members"] + [res["mean_softmax"], res["sum_logits"]]:
        assert set(m) == keys and m["count"] == 359.0
    # each member's figures are those its own trainer reports on the test split
    for m, f in zip(res["members"], (f1, f2, f3)):
        assert m["top1_error"] == pytest.approx(f["last"]["test"]["top1_error"])
    worst = max(m["top1_error"] for m in res["members"])
    assert res["mean_softmax"]["top1_error"] <= worst
    assert res["sum_logits"]["top1_error"] <= worst


def test_official_member_trains_one_epoch(members):
    (t1, _, _), _ = members
    t2, f2 = _member(2, [t1.model], extra=["train.epochs=1", "method.options.variant=official"])
    train = t2.history[-1]["train"]
    # the OR term's value is α_code·CE at every step, so also on the epoch average
    assert train["or"] == pytest.approx(0.1 * train["ce"], rel=1e-4)
    assert math.isfinite(f2["last"]["test"]["top1_error"])


# ----------------------------------------------------------------------------- ensemble unit

class _Fixed(nn.Module):
    """Returns a fixed logit table row per input (x holds the row index)."""

    def __init__(self, table):
        super().__init__()
        self.register_buffer("table", torch.tensor(table))

    def forward(self, x, return_features=False):
        assert not self.training and torch.is_inference_mode_enabled()
        z = self.table[x.view(-1).long()]
        return ModelOutput(z, z)


class _B:
    def __init__(self, x, y):
        self.x, self.y = x, y


def test_ensemble_combinations_by_hand():
    a = [[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 3.0]]
    b = [[0.0, 3.0, 0.0], [0.0, 2.0, 0.0], [1.0, 0.0, 0.0]]
    models = [_Fixed(a).eval(), _Fixed(b).train()]
    loader = [_B(torch.tensor([0.0, 1.0]), torch.tensor([0, 1])), _B(torch.tensor([2.0]), torch.tensor([0]))]
    logits, labels = ensemble_predictions(models, loader, "cpu")
    assert torch.equal(labels, torch.tensor([0, 1, 0]))
    assert torch.equal(logits[0], torch.tensor(a)) and torch.equal(logits[1], torch.tensor(b))
    assert not models[0].training and models[1].training  # modes restored
    def sm(row):
        total = sum(math.exp(v) for v in row)
        return [math.exp(v) / total for v in row]

    mean_p = [[(p + q) / 2 for p, q in zip(sm(ra), sm(rb))] for ra, rb in zip(a, b)]
    torch.testing.assert_close(combine_mean_softmax(logits).exp(), torch.tensor(mean_p, dtype=torch.float64))
    torch.testing.assert_close(combine_sum_logits(logits), torch.tensor(a, dtype=torch.float64) + torch.tensor(b))
    res = ensemble_metrics(models, loader, 3, device="cpu")
    # each member errs once (a on sample 2, b on sample 0); on both samples the more confident
    # wrong member wins: mean softmax and summed logits pick class 1 for sample 0 and class 2
    # for sample 2, so each combination errs twice
    assert res["members"][0]["top1_error"] == pytest.approx(100 / 3)
    assert res["members"][1]["top1_error"] == pytest.approx(100 / 3)
    assert res["mean_softmax"]["top1_error"] == pytest.approx(200 / 3)
    assert res["sum_logits"]["top1_error"] == pytest.approx(200 / 3)
    nll = -sum(math.log(mean_p[i][y]) for i, y in enumerate([0, 1, 0])) / 3
    assert res["mean_softmax"]["nll"] == pytest.approx(nll, rel=1e-9)


# ----------------------------------------------------------------------------- kt_resnet50

def test_kt_resnet50_shapes_and_head():
    assert "kt_resnet50" in MODELS.names()
    model = MODELS.build("kt_resnet50", {}, num_classes=7, in_channels=3)
    assert isinstance(model, KTResNet50)
    assert isinstance(model.head, nn.Linear) and (model.head.in_features, model.head.out_features) == (512, 7)
    kinds = [type(m) for m in model.neck]
    assert kinds == [nn.BatchNorm1d, nn.Linear, nn.BatchNorm1d, nn.ELU]
    assert model.neck[0].num_features == 2048 and model.neck[1].out_features == 512
    assert model.embedding_dim == 512 and tuple(model.stage_channels) == (256, 512, 1024, 2048)
    model.eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64), return_features=True)
    assert out.logits.shape == (1, 7) and out.embedding.shape == (1, 512)
    assert [tuple(f.shape) for f in out.features] == [(1, 256, 16, 16), (1, 512, 8, 8), (1, 1024, 4, 4),
                                                      (1, 2048, 2, 2)]
    # global MAX pooling, then the neck; embedding = the ELU output = the head's input
    with torch.no_grad():
        pooled = out.features[-1].amax(dim=(2, 3))
        torch.testing.assert_close(out.embedding, model.neck(pooled))
        torch.testing.assert_close(out.logits, model.head(out.embedding))
    assert out.embedding.min() >= -1.0
    model.train()
    assert model(torch.randn(2, 3, 64, 64)).logits.shape == (2, 7)
    cifar = MODELS.build("kt_resnet50", {"stem": "cifar"}, num_classes=3, in_channels=3).eval()
    with torch.no_grad():
        assert cifar(torch.randn(1, 3, 32, 32), return_features=True).features[-1].shape == (1, 2048, 4, 4)


def test_kt_resnet50_loads_torchvision_trunk(tmp_path):
    torch.manual_seed(0)
    src = torchvision.models.resnet50(weights=None)
    path = tmp_path / "resnet50_imagenet.pth"
    torch.save(src.state_dict(), path)
    model = MODELS.build("kt_resnet50", {}, num_classes=5, in_channels=3)
    neck_before = {k: v.clone() for k, v in model.neck.state_dict().items()}
    head_before = model.head.weight.clone()
    with pytest.warns(UserWarning, match="head weights not loaded"):
        model.load_trunk_weights(path)
    sd = src.state_dict()
    for key in ("conv1.weight", "bn1.running_mean", "layer1.0.conv1.weight", "layer4.2.bn3.weight",
                "layer4.0.downsample.0.weight"):
        assert torch.equal(model.state_dict()[key], sd[key])
    assert all(torch.equal(v, model.neck.state_dict()[k]) for k, v in neck_before.items())
    assert torch.equal(model.head.weight, head_before)
    # the model option does the same at build time
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        built = MODELS.build("kt_resnet50", {"trunk_weights": str(path)}, num_classes=5, in_channels=3)
    assert torch.equal(built.layer3[1].conv2.weight, sd["layer3.1.conv2.weight"])
    # a whole-model load of a torchvision file fills the trunk and keeps the fresh neck (warning) ...
    neck_fresh = {k: v.clone() for k, v in built.neck.state_dict().items()}
    with pytest.warns(UserWarning, match="no weights for neck"):
        load_weights(built, path, name="kt_resnet50")
    assert torch.equal(built.layer2[0].conv1.weight, sd["layer2.0.conv1.weight"])
    assert all(torch.equal(v, built.neck.state_dict()[k]) for k, v in neck_fresh.items())
    # ... while a kt_resnet50 checkpoint round-trips through load_weights
    torch.save(model.state_dict(), tmp_path / "kt.pth")
    again = load_weights(built, tmp_path / "kt.pth")
    assert torch.equal(again.neck[1].weight, model.neck[1].weight)
    assert torch.equal(again.head.weight, model.head.weight)
    # trunk weights of another architecture are an error, as is the ImageNet conv1 into the cifar stem
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="kt_resnet50 trunk"):
        model.load_trunk_weights(tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match="conv1.weight"):
        MODELS.build("kt_resnet50", {"stem": "cifar"}, num_classes=5, in_channels=3).load_trunk_weights(path)
