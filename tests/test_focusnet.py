"""FocusNet focus-picking loss (METHODS.md §3): golden values by hand, gradients, options and an
end-to-end run on digits with a CE-trained baseline as the frozen teacher."""
import math

import pytest
import torch

from softlabels.config import MethodConfig, build_config
from softlabels.engine import Trainer
from softlabels.engine import checkpoint as ckpt
from softlabels.errors import ConfigError, MissingInputError, SoftlabelsError
from softlabels.methods import build_objective
from softlabels.methods.focusnet import (FocusNet, focus_picking_loss, multi_warm_labels,
                                         reweighted_log_probs)
from softlabels.models import build_model
from softlabels.models.base import ModelOutput
from softlabels.registry import METHODS


# ---------------------------------------------------------------------------------- by hand
pytestmark = pytest.mark.usefixtures("one_thread")


Z = [[1.0, 2.0, 0.5], [0.2, -0.3, 1.1]]
B = [[0.8, -0.2, 0.3], [-1.0, -0.8, -0.1]]  # row 2: no positive baseline logit
Y = [0, 1]
K = 3


def softmax_row(row):
    m = max(row)
    e = [math.exp(v - m) for v in row]
    s = sum(e)
    return [v / s for v in e]


def log_softmax_row(row):
    lse = math.log(sum(math.exp(v) for v in row))
    return [v - lse for v in row]


def warm_by_hand(b, y, variant):
    if variant == "paper":
        mask = [1.0 if v > 0 else 0.0 for v in b]  # Eq. 4
    else:
        mask = [1.0 if q > 1 / len(b) else 0.0 for q in softmax_row([v / 2 for v in b])]
    mask[y] = 1.0  # Eq. 5: min(1, l′ + Y)
    return [m / sum(mask) for m in mask]  # Eq. 6


def terms_by_hand(z_rows, b_rows, ys, variant, alpha=1.0, beta=1.0):
    eps = 0.1 if variant == "official" else 0.0
    cls = att = ent = 0.0
    for z, b, y in zip(z_rows, b_rows, ys):
        p, q = softmax_row(z), softmax_row(b)
        d = [pk - qk for pk, qk in zip(p, q)]  # Eq. 8
        log_yhat = log_softmax_row([zk + dk for zk, dk in zip(z, d)])  # Eq. 7
        target = [(1 - eps) * (k == y) + eps / len(z) for k in range(len(z))]
        cls += -sum(t * lv for t, lv in zip(target, log_yhat))  # Eq. 9
        l = warm_by_hand(b, y, variant)
        ls = log_softmax_row(z)
        att += -sum(lk * lv for lk, lv in zip(l, ls))  # Eq. 10
        ent += -sum(pk * lv for pk, lv in zip(p, ls))  # Eq. 11
    n = len(z_rows)
    return {"cls": cls / n, "att": alpha * att / n, "ent": -beta * ent / n}


def flat(rows):
    return [v for row in rows for v in row]


def t(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


def test_multi_warm_label_paper_by_hand():
    l = multi_warm_labels(t(B), torch.tensor(Y), "paper")
    # row 1: b > 0 at classes 0 and 2, true class 0 → {0, 2}; row 2: no positive logit → true class only
    assert l.flatten().tolist() == pytest.approx([0.5, 0.0, 0.5, 0.0, 1.0, 0.0])
    assert l.flatten().tolist() == pytest.approx(flat(warm_by_hand(b, y, "paper") for b, y in zip(B, Y)))


def test_multi_warm_label_official_by_hand():
    l = multi_warm_labels(t(B, torch.float64), torch.tensor(Y), "official")
    # row 1: softmax(b/2) = [.419, .254, .326] → only class 0 > 1/3 (the true class)
    # row 2: softmax(b/2) = [.272, .301, .427] → class 2, plus the true class 1
    assert l.dtype == torch.float64
    assert l.flatten().tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0, 0.5, 0.5])
    assert l.flatten().tolist() == pytest.approx(flat(warm_by_hand(b, y, "official") for b, y in zip(B, Y)))
    # a flat baseline has no class above 1/K: the true class only
    uniform = multi_warm_labels(torch.full((1, 4), -2.0, dtype=torch.float64), torch.tensor([3]), "official")
    assert uniform.tolist() == [[0.0, 0.0, 0.0, 1.0]]


def test_multi_warm_label_rows_sum_to_one_and_include_true_class():
    b, y = torch.randn(64, 10) * 3, torch.randint(0, 10, (64,))
    for variant in ("paper", "official"):
        l = multi_warm_labels(b, y, variant)
        assert torch.allclose(l.sum(1), torch.ones(64))
        assert (l.gather(1, y[:, None]) > 0).all()
        nz = l > 0  # equal weights on the warm classes
        assert torch.allclose(l[nz], (1.0 / nz.sum(1, keepdim=True).float()).expand_as(l)[nz])


def test_golden_paper_variant():
    expected = terms_by_hand(Z, B, Y, "paper")
    got = focus_picking_loss(t(Z), t(B), torch.tensor(Y))
    assert set(got) == {"cls", "att", "ent"}
    for k in expected:
        assert got[k].dtype == torch.float32
        assert got[k].item() == pytest.approx(expected[k], abs=1e-6), k
    # the numbers themselves (hand values of the formulas above)
    assert expected["cls"] == pytest.approx(2.0181993, abs=1e-6)  # rows: 1.98049, 2.05597
    assert expected["att"] == pytest.approx(1.8085307, abs=1e-6)  # rows: 1.71439, 1.90269
    assert expected["ent"] == pytest.approx(-0.9194127, abs=1e-6)


def test_golden_weights_alpha_beta():
    expected = terms_by_hand(Z, B, Y, "paper", alpha=0.3, beta=2.0)
    got = focus_picking_loss(t(Z), t(B), torch.tensor(Y), alpha=0.3, beta=2.0)
    for k in expected:
        assert got[k].item() == pytest.approx(expected[k], abs=1e-6), k


def test_golden_official_variant_float64():
    expected = terms_by_hand(Z, B, Y, "official")
    got = focus_picking_loss(t(Z), t(B), torch.tensor(Y), variant="official")
    # L_cls and R_att are computed in float64 from float32 logits; the entropy is not
    assert got["cls"].dtype == torch.float64 and got["att"].dtype == torch.float64
    assert got["ent"].dtype == torch.float32
    assert got["cls"].item() == pytest.approx(expected["cls"], abs=1e-7)
    assert got["att"].item() == pytest.approx(expected["att"], abs=1e-7)
    assert got["ent"].item() == pytest.approx(expected["ent"], abs=1e-6)
    assert expected["cls"] == pytest.approx(1.9588484, abs=1e-6)
    assert expected["att"] == pytest.approx(1.3335307, abs=1e-6)
    # the variants really differ (smoothed target, other mask)
    paper = terms_by_hand(Z, B, Y, "paper")
    assert abs(paper["cls"] - expected["cls"]) > 1e-2 and abs(paper["att"] - expected["att"]) > 1e-2
    # the float64 intermediate exposed for it
    log_yhat = reweighted_log_probs(t(Z, torch.float64), t(B, torch.float64))
    assert log_yhat.dtype == torch.float64
    by_hand = [log_softmax_row([zk + pk - qk for zk, pk, qk in zip(z, softmax_row(z), softmax_row(b))])
               for z, b in zip(Z, B)]
    assert log_yhat.flatten().tolist() == pytest.approx(flat(by_hand), abs=1e-12)
    # and the official terms at float64 precision on float64 inputs
    exact = focus_picking_loss(t(Z, torch.float64), t(B, torch.float64), torch.tensor(Y), variant="official")
    assert exact["cls"].item() == pytest.approx(expected["cls"], abs=1e-12)
    assert exact["att"].item() == pytest.approx(expected["att"], abs=1e-12)


def test_official_float64_terms_survive_bf16_autocast():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = focus_picking_loss(t(Z).bfloat16(), t(B).bfloat16(), torch.tensor(Y), variant="official")
    assert got["cls"].dtype == torch.float64 and got["att"].dtype == torch.float64
    assert got["ent"].dtype == torch.float32


def test_reweight_off_is_plain_ce_and_d_zero_reduces_to_ce():
    z, y = t(Z), torch.tensor(Y)
    plain = focus_picking_loss(z, t(B), y, reweight=False)["cls"]
    assert plain.item() == pytest.approx(torch.nn.functional.cross_entropy(z, y).item(), abs=1e-6)
    # a baseline equal to the model gives d = 0: ŷ = softmax(z)
    same = focus_picking_loss(z, z.clone(), y)["cls"]
    assert same.item() == pytest.approx(plain.item(), abs=1e-6)


def test_easy_samples_get_smaller_cls_than_hard_ones():
    """Eq. 13 / Fig. 3: with the same logits, a sample the baseline finds easier (d_t < 0) costs more."""
    z, y = t([[2.0, 1.0, 0.0]]), torch.tensor([0])
    confident_baseline = t([[6.0, 0.0, 0.0]])  # q_t > p_t: d_t < 0 → hard sample
    unsure_baseline = t([[0.0, 0.0, 0.0]])  # q_t < p_t: d_t > 0 → easy sample
    hard = focus_picking_loss(z, confident_baseline, y)["cls"]
    easy = focus_picking_loss(z, unsure_baseline, y)["cls"]
    plain = focus_picking_loss(z, unsure_baseline, y, reweight=False)["cls"]
    assert hard > plain > easy


# ---------------------------------------------------------------------------------- gradients
def _total(z, b, y, **kw):
    return sum(focus_picking_loss(z, b, y, **kw).values())


def test_gradcheck_paper():
    torch.manual_seed(0)
    z = torch.randn(4, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 4])
    assert torch.autograd.gradcheck(lambda x: _total(x, b, y), (z,))
    # each term on its own, and the re-weighted log-probabilities (all outputs)
    for key in ("cls", "att", "ent"):
        assert torch.autograd.gradcheck(lambda x: focus_picking_loss(x, b, y)[key], (z,))
    assert torch.autograd.gradcheck(lambda x: reweighted_log_probs(x, b), (z,))


def test_gradcheck_paper_detached():
    """With detach=True the loss is, around z0, L(z; d(z0)): gradcheck the function with d held
    at d(z0), then check autograd's detach=True gradient at z0 against finite differences of it."""
    torch.manual_seed(0)
    z0 = torch.randn(4, 5, dtype=torch.float64)
    b = torch.randn(4, 5, dtype=torch.float64)
    y = torch.tensor([0, 3, 1, 4])
    d0 = torch.softmax(z0, 1) - torch.softmax(b, 1)

    def frozen(x):  # the loss with d replaced by the constant d0
        terms = focus_picking_loss(x, b, y, reweight=False)
        cls = -torch.log_softmax(x + d0, 1).gather(1, y[:, None]).mean()
        return cls + terms["att"] + terms["ent"]

    assert torch.autograd.gradcheck(frozen, (z0.clone().requires_grad_(True),))
    z = z0.clone().requires_grad_(True)
    _total(z, b, y, detach=True).backward()
    eps, numeric = 1e-6, torch.zeros_like(z0)
    for idx in range(z0.numel()):
        e = torch.zeros(z0.numel(), dtype=torch.float64)
        e[idx] = eps
        e = e.view_as(z0)
        numeric.view(-1)[idx] = (frozen(z0 + e) - frozen(z0 - e)) / (2 * eps)
    assert torch.allclose(z.grad, numeric, atol=1e-7)


def test_gradcheck_official():
    torch.manual_seed(1)
    z = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 4, dtype=torch.float64)
    y = torch.tensor([2, 0, 1])
    assert torch.autograd.gradcheck(lambda x: _total(x, b, y, variant="official"), (z,))


def test_detach_equals_constant_d():
    torch.manual_seed(2)
    z0 = torch.randn(6, 4, dtype=torch.float64)
    b = torch.randn(6, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 3, 0, 1])

    z = z0.clone().requires_grad_(True)
    _total(z, b, y, detach=True).backward()

    zc = z0.clone().requires_grad_(True)
    d_const = (torch.softmax(z0, 1) - torch.softmax(b, 1))  # no graph: a constant
    log_yhat = torch.log_softmax(zc + d_const, 1)
    cls = -log_yhat.gather(1, y[:, None]).mean()
    l = multi_warm_labels(b, y)
    ls = torch.log_softmax(zc, 1)
    manual = cls - (l * ls).sum(1).mean() + (ls.exp() * ls).sum(1).mean()
    manual.backward()
    assert torch.allclose(z.grad, zc.grad, atol=1e-12)

    # not detached (the default): the gradient through d is there and differs
    zn = z0.clone().requires_grad_(True)
    _total(zn, b, y).backward()
    assert not torch.allclose(zn.grad, z.grad, atol=1e-6)


def test_baseline_gets_no_gradient():
    z = torch.randn(3, 4, requires_grad=True)
    b = torch.randn(3, 4, requires_grad=True)
    _total(z, b, torch.tensor([0, 1, 2])).backward()
    assert b.grad is None and z.grad is not None


# ---------------------------------------------------------------------------------- the Method
class _Batch:
    def __init__(self, y):
        self.y = torch.tensor(y)


def test_registered_and_requires_one_teacher():
    assert "focusnet" in METHODS
    obj = build_objective(MethodConfig(name="focusnet"), 3)
    assert obj.requires.teachers == 1
    assert len(list(obj.parameters())) == 0 and len(obj.state_dict()) == 0  # nothing to save


def test_method_terms_match_function_and_ablation_switches():
    out, teach = ModelOutput(t(Z), t(Z)), [ModelOutput(t(B), t(B))]
    full = FocusNet(3).loss(out, _Batch(Y), teach)
    expected = terms_by_hand(Z, B, Y, "paper")
    assert set(full) == {"cls", "att", "ent"}
    for k in expected:
        assert full[k].item() == pytest.approx(expected[k], abs=1e-6)
    # Table 10 rows: L_cls; L_cls + R_ent; L_cls + R_att; and the CE baseline
    assert set(FocusNet(3, use_att=False, use_ent=False).loss(out, _Batch(Y), teach)) == {"cls"}
    assert set(FocusNet(3, use_att=False).loss(out, _Batch(Y), teach)) == {"cls", "ent"}
    assert set(FocusNet(3, use_ent=False).loss(out, _Batch(Y), teach)) == {"cls", "att"}
    ce = FocusNet(3, use_att=False, use_ent=False, use_reweight=False).loss(out, _Batch(Y), teach)
    assert ce["cls"].item() == pytest.approx(torch.nn.functional.cross_entropy(t(Z), torch.tensor(Y)).item(), abs=1e-6)
    off = FocusNet(3, variant="official").loss(out, _Batch(Y), teach)
    assert off["cls"].item() == pytest.approx(terms_by_hand(Z, B, Y, "official")["cls"], abs=1e-7)
    # smoothing overrides the variant's default
    sm = FocusNet(3, variant="official", smoothing=0.0).loss(out, _Batch(Y), teach)
    assert sm["cls"].item() == pytest.approx(
        focus_picking_loss(t(Z).double(), t(B).double(), torch.tensor(Y))["cls"].item(), abs=1e-7)


def test_method_without_teacher_or_wrong_classes_is_one_line_error():
    out = ModelOutput(t(Z), t(Z))
    with pytest.raises(MissingInputError, match="focusnet needs the outputs of 1 teacher"):
        FocusNet(3).loss(out, _Batch(Y), [])
    with pytest.raises(SoftlabelsError, match="4 classes"):
        FocusNet(3).loss(out, _Batch(Y), [ModelOutput(torch.zeros(2, 4), torch.zeros(2, 4))])


@pytest.mark.parametrize("options,key", [
    ({"alpha": -1.0}, "alpha"),
    ({"beta": float("nan")}, "beta"),
    ({"alpha": float("inf")}, "alpha"),
    ({"variant": "both"}, "variant"),
    ({"smoothing": 1.0}, "smoothing"),
    ({"detach": True, "use_reweight": False}, "detach"),
    ({"use_att": 1}, "use_att"),
    ({"gamma": 1.0}, "gamma"),
])
def test_bad_options_are_config_errors(options, key):
    with pytest.raises(ConfigError, match=rf"^method\.options\.{key}:") as exc:
        build_objective(MethodConfig(name="focusnet", options=options), 3)
    assert "\n" not in str(exc.value)


def test_config_accepts_options():
    cfg = build_config(None, ["method.name=focusnet", "method.options.variant=official",
                              "method.options.detach=true", "method.options.alpha=2",
                              "method.options.use_ent=false"])
    m = build_objective(cfg.method, 10).methods["focusnet"]
    assert (m.variant, m.detach, m.alpha, m.use_ent) == ("official", True, 2.0, False)


# ---------------------------------------------------------------------------------- end to end
def _digits(method, epochs, *extra):
    return build_config(None, ["data.name=digits", "model.name=resnet8", f"method.name={method}",
                               f"train.epochs={epochs}", "train.threads=1", *extra])


@pytest.fixture(scope="module")
def baseline_model():
    trainer = Trainer(_digits("ce", 3), None)
    trainer.fit()
    return trainer.model


def _count(state):
    return sum(v.numel() for v in state.values())


@pytest.mark.slow
def test_digits_focusnet_with_ce_baseline(tmp_path, baseline_model):
    before = {k: v.clone() for k, v in baseline_model.state_dict().items()}
    trainer = Trainer(_digits("focusnet", 3), tmp_path / "run", teachers=[baseline_model])
    final = trainer.fit()
    assert final["last"]["test"]["top1_error"] < 50.0  # chance is 90 %
    assert set(final["last"]["test"]) and "cls" in trainer.history[-1]["train"]
    # the baseline stayed frozen
    after = baseline_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # the checkpoint is one branch: exactly the tensors of one resnet8
    best, _ = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    one = build_model("resnet8", 10, 1).state_dict()
    assert set(best) == {f"model.{k}" for k in one}
    assert _count(best) == _count(one)
    last, _ = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    assert not [k for k in last if k.startswith("method.")]  # no teacher copy in the method state
    n_params = sum(p.numel() for p in trainer.model.parameters())
    assert n_params == sum(p.numel() for p in build_model("resnet8", 10, 1).parameters())
    opt_params = sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"])
    assert opt_params == n_params  # the baseline is not optimised


@pytest.mark.slow
def test_digits_focusnet_with_poorly_trained_baseline():
    # "poorly trained": 1 epoch at a constant learning rate (paper Fig. 4, Table 9)
    poor = Trainer(_digits("ce", 1, "schedule.name=constant"), None)
    poor.fit()
    final = Trainer(_digits("focusnet", 3, "method.options.variant=official"), None,
                    teachers=[poor.model]).fit()
    assert final["last"]["test"]["top1_error"] < 50.0
