"""FRSKD (Ji et al., CVPR 2021) and its `loss: focus` variant (FocusNet Table 7, OurLoss+FRSKD).

Golden values are computed with ``math`` from the definitions, not through the functions under
test. The end-to-end runs use one thread (shared 2-core machine); the count is restored.
"""
import math
from types import SimpleNamespace

import pytest
import torch

from softlabels.errors import MissingInputError
import torch.nn.functional as F

import softlabels.methods.frskd  # noqa: F401  (registration)
from softlabels.config import build_config
from softlabels.engine import checkpoint as ckpt
from softlabels.engine.trainer import Trainer
from softlabels.errors import ConfigError
from softlabels.methods.focusnet import focus_picking_loss
from softlabels.methods.frskd import (FRSKD, SelfTeacher, attention_map, attention_transfer_loss,
                                      frskd_loss)
from softlabels.methods.kd import kd_kl
from softlabels.models.base import ModelOutput
from softlabels.registry import METHODS
from helpers import FakeBatch as Batch


pytestmark = pytest.mark.usefixtures("one_thread")


def _method(chans=(2, 3), k=4, **options):
    torch.manual_seed(0)
    m = FRSKD(k, **options)
    m.setup(SimpleNamespace(stage_channels=chans))
    return m


def _student(chans=(2, 3), sizes=(4, 2), b=5, k=4, dtype=torch.float32):
    torch.manual_seed(1)
    feats = [torch.randn(b, c, s, s, dtype=dtype).relu().requires_grad_() for c, s in zip(chans, sizes)]
    logits = torch.randn(b, k, dtype=dtype, requires_grad=True)
    y = torch.arange(b) % k
    return feats, logits, y


# ---------------------------------------------------------------------------- feature loss
S = [[[[1.0, 2.0], [3.0, 0.0]], [[0.0, 1.0], [1.0, 2.0]]]]    # 1×2×2×2 student map
T = [[[[1.0, 0.0], [0.0, 1.0]], [[1.0, 1.0], [0.0, -1.0]]]]   # 1×2×2×2 refined map


def test_attention_transfer_by_hand():
    # channel mean of squares at the four positions, then L2-normalised over the positions
    q_s = [(1 + 0) / 2, (4 + 1) / 2, (9 + 1) / 2, (0 + 4) / 2]
    q_t = [(1 + 1) / 2, (0 + 1) / 2, (0 + 0) / 2, (1 + 1) / 2]
    n_s, n_t = math.sqrt(sum(v * v for v in q_s)), math.sqrt(sum(v * v for v in q_t))
    assert n_s == pytest.approx(math.sqrt(35.5)) and n_t == pytest.approx(1.5)
    expected = sum((a / n_s - b / n_t) ** 2 for a, b in zip(q_s, q_t)) / 4  # mean over B·H·W = 4
    s, t = torch.tensor(S), torch.tensor(T)
    assert attention_map(s)[0].tolist() == pytest.approx([v / n_s for v in q_s], rel=1e-6)
    assert attention_transfer_loss([s], [t]).item() == pytest.approx(expected, rel=1e-6)
    # summed over stages; channel counts may differ between the pair
    t3 = torch.cat([t, torch.zeros(1, 1, 2, 2)], dim=1) * math.sqrt(1.5)  # same attention as t
    assert attention_transfer_loss([s, s], [t, t3]).item() == pytest.approx(2 * expected, rel=1e-5)


def test_attention_transfer_gradcheck_and_teacher_constant():
    torch.manual_seed(0)
    s1 = torch.randn(2, 3, 4, 4, dtype=torch.float64, requires_grad=True)
    s2 = torch.randn(2, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    t1 = torch.randn(2, 4, 4, 4, dtype=torch.float64, requires_grad=True)
    t2 = torch.randn(2, 5, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, c: attention_transfer_loss([a, c], [t1, t2]), (s1, s2))
    attention_transfer_loss([s1, s2], [t1, t2]).backward()
    assert t1.grad is None and t2.grad is None


def test_attention_transfer_errors():
    with pytest.raises(ValueError, match="pair one to one"):
        attention_transfer_loss([torch.ones(1, 2, 2, 2)], [])
    with pytest.raises(ValueError, match="spatial size"):
        attention_transfer_loss([torch.ones(1, 2, 2, 2)], [torch.ones(1, 2, 4, 4)])


# ---------------------------------------------------------------------------- self-teacher
@pytest.mark.parametrize("chans,sizes", [((2, 3), (4, 2)), ((4,), (3,)), ((2, 3, 5), (7, 4, 2))])
def test_self_teacher_shapes(chans, sizes):
    st = SelfTeacher(chans, 6, width=8)
    feats = [torch.randn(3, c, s, s) for c, s in zip(chans, sizes)]
    refined, logits = st(feats)
    assert [r.shape for r in refined] == [f.shape for f in feats]
    assert logits.shape == (3, 6)
    with pytest.raises(ValueError, match="stage"):
        st(feats[:-1] + [torch.randn(3, chans[-1] + 1, 2, 2)])


def test_setup_width_default_and_option():
    m = _method(chans=(16, 32, 64))
    assert m.self_teacher.width == 64 and m.self_teacher.fc.in_features == 64
    assert _method(chans=(16, 32, 64), width=24).self_teacher.width == 24
    with pytest.raises(ConfigError, match="stage_channels"):
        FRSKD(3).setup(SimpleNamespace(stage_channels=()))
    with pytest.raises(MissingInputError, match="setup"):
        FRSKD(3).teach([torch.ones(1, 2, 2, 2)])


# ---------------------------------------------------------------------------- the loss
def test_kd_terms_match_their_definitions_and_sum():
    m = _method()
    feats, z, y = _student()
    terms = m.loss(ModelOutput(z, None, feats), Batch(y))
    assert list(terms) == ["ce", "teacher_ce", "kd", "feat"]
    refined, t = m.teach(feats)  # train-mode BN on the same batch: the same outputs
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(z, y).item(), rel=1e-6)
    assert terms["teacher_ce"].item() == pytest.approx(F.cross_entropy(t, y).item(), rel=1e-6)
    assert terms["kd"].item() == pytest.approx(2.0 * kd_kl(z, t, 4.0).item(), rel=1e-6)
    assert terms["feat"].item() == pytest.approx(100.0 * attention_transfer_loss(feats, refined).item(), rel=1e-6)
    # kd_kl by hand for one row: T²·KL(softmax(t/T) ‖ softmax(z/T))
    zi, ti = z[0].tolist(), t[0].tolist()
    q = [math.exp(v / 4) for v in ti]
    q = [v / sum(q) for v in q]
    lp = [v / 4 - math.log(sum(math.exp(w / 4) for w in zi)) for v in zi]
    by_hand = 16 * sum(a * (math.log(a) - b) for a, b in zip(q, lp))
    assert kd_kl(z[:1], t[:1], 4.0).item() == pytest.approx(by_hand, rel=1e-5)
    # options reach the terms
    terms2 = _method(alpha=1.0, beta=3.0, temperature=2.0).loss(ModelOutput(z, None, feats), Batch(y))
    assert terms2["kd"].item() == pytest.approx(kd_kl(z, t, 2.0).item(), rel=1e-6)
    assert terms2["feat"].item() == pytest.approx(3.0 * attention_transfer_loss(feats, refined).item(), rel=1e-6)


def test_gradient_routes():
    m = _method()
    feats, z, y = _student()
    st_params = list(m.self_teacher.parameters())
    for name in ("kd", "feat"):  # distillation terms: the self-teacher is a constant
        m.zero_grad()
        terms = m.loss(ModelOutput(z, None, feats), Batch(y))
        terms[name].backward()
        assert all(p.grad is None or torch.all(p.grad == 0) for p in st_params), name
    m.zero_grad()
    for f in feats:
        f.grad = None
    m.loss(ModelOutput(z, None, feats), Batch(y))["teacher_ce"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in st_params)
    assert all(f.grad is not None and f.grad.abs().sum() > 0 for f in feats)  # joint training
    m2 = _method(detach_inputs=True)
    feats2, z2, y2 = _student()
    m2.loss(ModelOutput(z2, None, feats2), Batch(y2))["teacher_ce"].backward()
    assert all(f.grad is None for f in feats2)


def test_focus_replaces_kd_and_student_ce():
    m = _method(loss="focus")
    feats, z, y = _student()
    terms = m.loss(ModelOutput(z, None, feats), Batch(y))
    assert list(terms) == ["cls", "att", "ent", "teacher_ce", "feat"]
    refined, t = m.teach(feats)
    ref = focus_picking_loss(z, t.detach(), y, detach=True)
    for k in ("cls", "att", "ent"):
        assert terms[k].item() == pytest.approx(ref[k].item(), rel=1e-6)
    assert terms["teacher_ce"].item() == pytest.approx(F.cross_entropy(t, y).item(), rel=1e-6)
    assert terms["feat"].item() == pytest.approx(100.0 * attention_transfer_loss(feats, refined).item(), rel=1e-6)
    # d is detached by default: the student's gradient is that of focus_picking_loss(detach=True)
    z1 = z.detach().clone().requires_grad_()
    sum(m.loss(ModelOutput(z1, None, [f.detach() for f in feats]), Batch(y))[k] for k in ("cls", "att", "ent")).backward()
    z2 = z.detach().clone().requires_grad_()
    sum(focus_picking_loss(z2, t.detach(), y, detach=True).values()).backward()
    z3 = z.detach().clone().requires_grad_()
    sum(focus_picking_loss(z3, t.detach(), y, detach=False).values()).backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6) and not torch.allclose(z1.grad, z3.grad, atol=1e-6)
    # focus options reach the function
    terms = _method(loss="focus", focus_alpha=0.5, focus_beta=2.0, focus_variant="official",
                    focus_detach=False).loss(ModelOutput(z, None, feats), Batch(y))
    ref = focus_picking_loss(z, t.detach(), y, alpha=0.5, beta=2.0, variant="official", detach=False)
    for k in ("cls", "att", "ent"):
        assert terms[k].item() == pytest.approx(ref[k].item(), rel=1e-6)


def test_frskd_loss_function_and_float64():
    feats, z, y = _student(dtype=torch.float64)
    refined = [f.detach() * 2 + 1 for f in feats]
    t = torch.randn_like(z)
    terms = frskd_loss(z, t, feats, refined, y)
    assert all(v.dtype == torch.float64 for v in terms.values())
    assert terms["kd"].item() == pytest.approx(2.0 * kd_kl(z, t, 4.0).item(), rel=1e-9)
    with pytest.raises(ValueError, match="'kd' or 'focus'"):
        frskd_loss(z, t, feats, refined, y, loss="both")


def test_registered_options_and_validation():
    m = METHODS.build("frskd", {}, where="method.options", num_classes=3)
    assert m.requires.features and m.requires.teachers == 0
    assert (m.alpha, m.beta, m.temperature, m.loss_kind, m.focus_detach) == (2.0, 100.0, 4.0, "kd", True)
    for opts, key in [({"loss": "both"}, "loss"), ({"alpha": -1.0}, "alpha"), ({"width": 0}, "width"),
                      ({"temperature": 0.0}, "temperature"), ({"focus_variant": "x"}, "focus_variant"),
                      ({"beta": float("nan")}, "beta"), ({"detach_inputs": 1}, "detach_inputs")]:
        with pytest.raises(ConfigError, match=rf"^method\.options\.{key}: "):
            METHODS.build("frskd", opts, where="method.options", num_classes=3)


def test_missing_features_is_an_error():
    m = _method()
    with pytest.raises(Exception, match="feature maps"):
        m.loss(ModelOutput(torch.zeros(2, 4), None, None), Batch([0, 1]))


# ---------------------------------------------------------------------------- end to end
# The attention-transfer term is a mean over positions, so its strength grows as the maps
# shrink: beta = 100 is FRSKD's value for 32×32 inputs; 8×8 digits have 16× fewer positions at
# every stage, so the CIFAR-equivalent weight is 100 / 16 = 6.25 (docs/methods.md).
DIGITS = ["data.name=digits", "model.name=resnet8", "train.epochs=3", "train.threads=1",
          "method.name=frskd", "method.options.beta=6.25"]


def test_digits_frskd_self_teacher_optimizer_checkpoints(tmp_path):
    trainer = Trainer(build_config(None, DIGITS), tmp_path / "run")
    method = trainer.objective.methods["frskd"]
    # built from resnet8's stages (16/32/64); refined maps have the student's stage shapes
    assert method.self_teacher.stage_channels == (16, 32, 64)
    x = trainer.data.train.images[:4].float()
    with torch.no_grad():
        out = trainer.model(x, return_features=True)
        refined, t = method.teach(out.features)
    assert [r.shape for r in refined] == [f.shape for f in out.features]
    assert [f.shape[1] for f in out.features] == [16, 32, 64] and t.shape == (4, 10)
    # its parameters are optimised
    opt_ids = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
    assert all(id(p) in opt_ids for p in method.self_teacher.parameters())
    n_model = sum(1 for _ in trainer.model.parameters())
    assert len(opt_ids) == n_model + sum(1 for _ in method.self_teacher.parameters())

    final = trainer.fit()
    assert final["last"]["test"]["top1_error"] < 50.0  # chance is 90 %
    for record in trainer.history:  # the optimised loss is the sum of the logged terms
        tr = record["train"]
        assert tr["loss"] == pytest.approx(tr["ce"] + tr["teacher_ce"] + tr["kd"] + tr["feat"], rel=1e-5)
    last, _ = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "last")
    st_keys = {f"method.methods.frskd.self_teacher.{k}" for k in method.self_teacher.state_dict()}
    assert st_keys and st_keys <= set(last)
    best, _ = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "best")
    assert not [k for k in best if k.startswith("method.")]
    assert set(best) == {f"model.{k}" for k in trainer.model.state_dict()}
    # evaluation is the student alone: the model's own head
    assert trainer.evaluate(trainer.test_loader)["top1_error"] == pytest.approx(final["last"]["test"]["top1_error"])


def test_digits_frskd_focus():
    trainer = Trainer(build_config(None, DIGITS + ["method.options.loss=focus"]), None)
    final = trainer.fit()
    assert final["last"]["test"]["top1_error"] < 50.0
    tr = trainer.history[-1]["train"]
    assert {"cls", "att", "ent", "teacher_ce", "feat"} <= set(tr) and "kd" not in tr and "ce" not in tr
    assert tr["loss"] == pytest.approx(tr["cls"] + tr["att"] + tr["ent"] + tr["teacher_ce"] + tr["feat"],
                                       rel=1e-5, abs=1e-6)
