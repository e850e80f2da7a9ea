"""One contract for every registered method (issue 9), parametrised over METHODS.names(), so a new
method cannot skip it: it builds with its defaults, gives finite named terms whose sum
back-propagates, round-trips its state_dict, equals its plain function in softlabels.losses on
the same tensors, takes one engine step on CPU, and composes with ``ols`` where it allows it.
Also: options are checked the same way by the registry and by a direct constructor call, every
loss computes in at least float32 for bf16 inputs outside autocast, and a missing teacher,
feature map or view is one MissingInputError."""
from __future__ import annotations

import copy
import typing

import pytest
import torch

import softlabels.losses as L
from softlabels.config import build_config
from softlabels.data.base import Batch
from softlabels.engine.trainer import Trainer
from softlabels.errors import ConfigError, MissingInputError
from softlabels.methods import Objective
from softlabels.methods.base import Method
from softlabels.models import build_model
from softlabels.registry import METHODS, Range, option_hints

K, B, SIZE = 4, 8, 16


def _model():
    return build_model("resnet8", K, 3, {})


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, 3, SIZE, SIZE, generator=g)
    y = torch.arange(B) % K
    extra = {"partner_x": torch.randn(B, 3, SIZE, SIZE, generator=g), "partner_y": y.clone(),
             "partner_index": torch.arange(B), "clean_x": torch.randn(B, 3, SIZE, SIZE, generator=g),
             "view1": torch.randn(B, 3, SIZE, SIZE, generator=g)}
    return Batch(x, y, torch.arange(B), extra)


def _setup(name, seed=0):
    """A method with its defaults, its student and (where it uses them) one frozen teacher."""
    torch.manual_seed(seed)
    method = METHODS.build(name, {}, num_classes=K)
    model = _model()
    method.adapt_model(model)
    req = method.requires
    teachers = []
    if req.teachers or req.uses_teachers:
        t = _model()
        teachers = [t.train() if req.teacher_mode == "train" else t.eval()]
    method.setup(model, teachers)
    return method, model, teachers


def _forward(method, model, teachers, batch):
    obj = Objective({"m": method})
    out = obj.forward_batch(model, batch, method.requires.features)
    with torch.no_grad():
        t_out = [t(batch.x, return_features=method.requires.features) for t in teachers]
    return out, t_out


def _sum(terms):
    return sum(terms.values())


# ----------------------------------------------------------------- the plain function of each method
def _kd(m, o, b, t):
    return L.kd_loss(o.logits, b.y, t[0].logits, m.temperature, m.alpha)


PLAIN = {
    "ce": lambda m, o, b, t: L.cross_entropy(o.logits, b.y),
    "ls": lambda m, o, b, t: L.label_smoothing_loss(o.logits, b.y, m.epsilon),
    "ols": lambda m, o, b, t: L.ols_loss(o.logits, b.y, m.soft_label_matrix, m.ce_weight, m.soft_weight),
    "cskd": lambda m, o, b, t: L.cskd_loss(o.logits, b.y, o.aux["partner"].logits, m.temperature, m.lam),
    "cskd_e": lambda m, o, b, t: L.cskd_e_loss(o.logits, b.y, o.aux["partner"].logits, o.aux["clean"].logits,
                                               m.temperature, m.lam, m.lam_e),
    "focusnet": lambda m, o, b, t: _sum(L.focus_picking_loss(o.logits, t[0].logits, b.y, m.alpha, m.beta,
                                                             m.variant, m.detach)),
    "label_refinery": lambda m, o, b, t: L.label_refinery_loss(o.logits, t[0].logits),
    "glr": lambda m, o, b, t: L.glr_loss(o.logits, t[0].logits, b.y),
    "cd": lambda m, o, b, t: m.class_weight * L.cross_entropy(o.logits, b.y)
    + m.cd_weight * L.channel_distillation_loss(o.features, t[0].features),
    "glr_cd": lambda m, o, b, t: m.class_weight * L.glr_loss(o.logits, t[0].logits, b.y)
    + m.cd_weight * L.channel_distillation_loss(o.features, t[0].features),
    "orthogonal": lambda m, o, b, t: L.cross_entropy(o.logits, b.y)
    + m.alpha * L.orthogonal_loss(o.features[-1], t[0].features[-1]),
    "kd": _kd,
    "maxent": lambda m, o, b, t: L.maxent_loss(o.logits, b.y, m.beta),
    "focal": lambda m, o, b, t: L.focal_loss(o.logits, b.y, m.gamma),
    "sce": lambda m, o, b, t: L.sce_loss(o.logits, b.y, m.alpha, m.beta, m.log_clamp),
    "bootstrap_soft": lambda m, o, b, t: L.bootstrap_soft_loss(o.logits, b.y, m.beta),
    "bootstrap_hard": lambda m, o, b, t: L.bootstrap_hard_loss(o.logits, b.y, m.beta),
    "disturb_label": lambda m, o, b, t: L.cross_entropy(o.logits, L.disturb_labels(b.y, K, m.alpha)),
    "pairwise_confusion": lambda m, o, b, t: L.pairwise_confusion_loss(o.logits, b.y, m.lam),
    # its loss updates the head's scale s in place: CE of the cosines (logits / s_old) times the new s
    "adacos": lambda m, o, b, t: L.cross_entropy(o.logits / SCALE_BEFORE[0] * m._head.s, b.y),
    "virtual_softmax": lambda m, o, b, t: L.virtual_softmax_loss(o.logits, o.embedding, m._head.weight, b.y),
    "mixup": lambda m, o, b, t: L.mixup_loss(o.logits, b.y, b.extra["mix_lambda"], b.extra["mix_index"]),
    "mixup_cskd": lambda m, o, b, t: L.mixup_cskd_loss(o.logits, b.y, o.aux["partner"].logits,
                                                       b.extra["mix_lambda"], b.extra["mix_index"],
                                                       m.temperature, m.lam),
    "cutmix": lambda m, o, b, t: L.mixup_loss(o.logits, b.y, b.extra["mix_lambda"], b.extra["mix_index"]),
    "cutout": lambda m, o, b, t: L.cross_entropy(o.logits, b.y),
    "ddgsd": lambda m, o, b, t: L.ddgsd_loss(o.logits, o.aux["view1"].logits, b.y, o.embedding,
                                             o.aux["view1"].embedding, m.temperature, m.lam, m.mmd),
    "tfkd_self": lambda m, o, b, t: L.tfkd_self_loss(o.logits, b.y, t[0].logits, m.temperature, m.alpha),
    "tfkd_reg": lambda m, o, b, t: L.tfkd_reg_loss(o.logits, b.y, m.alpha, m.temperature, m.correct_prob),
    "byot": lambda m, o, b, t: _sum(L.byot_loss(m.auxiliary_outputs(o.features)[1], o.logits, b.y,
                                                m.auxiliary_outputs(o.features)[0], o.features[-1],
                                                m.temperature, m.alpha, m.lam)),
    "frskd": lambda m, o, b, t: _sum(L.frskd_loss(o.logits, m.teach(o.features)[1], o.features,
                                                  m.teach(o.features)[0], b.y, m.alpha, m.beta, m.temperature)),
    "sla_sd": lambda m, o, b, t: L.sla_sd_loss(o.logits, o.aux["joint"].logits, b.y, m.temperature, m.lam, m.beta),
    "dropmax": lambda m, o, b, t: _sum(L.dropmax_loss(*m._head.branches(o.embedding), b.y, m.temperature, m.eps,
                                                      m.kl_weight, m.aux_weight, m.entropy_weight, m.posterior)),
    "one": lambda m, o, b, t: _sum(L.one_loss([o.aux[f"branch{i}"].logits for i in range(m.branches)],
                                              o.aux["ensemble"].logits, b.y, m.temperature, m.kl_weight())),
}

NAMES = METHODS.names()
SCALE_BEFORE = [None]


def test_every_method_has_a_plain_function():
    assert set(PLAIN) == set(NAMES), "add the new method's plain function to PLAIN"


@pytest.mark.parametrize("name", NAMES)
def test_contract(name):
    method, model, teachers = _setup(name)
    batch = _batch()
    out, t_out = _forward(method, model, teachers, batch)
    SCALE_BEFORE[0] = getattr(model.head, "s", torch.ones(())).detach().clone()
    torch.manual_seed(123)
    terms = method.loss(out, batch, t_out)
    assert terms and all(torch.is_tensor(v) and v.dim() == 0 and torch.isfinite(v) for v in terms.values())
    total = _sum(terms)
    # the method equals its plain function on the same tensors (same random draws)
    torch.manual_seed(123)
    with torch.no_grad():
        expected = PLAIN[name](method, out, batch, t_out)
    torch.testing.assert_close(total.detach().double(), expected.detach().double(), rtol=1e-5, atol=1e-6)
    total.backward()
    grads = [p.grad for p in list(model.parameters()) + list(method.parameters()) if p.requires_grad]
    assert any(g is not None and torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)
    # state_dict round trip into a freshly built instance
    fresh, fresh_model, _ = _setup(name, seed=1)
    fresh.load_state_dict(method.state_dict(), strict=True)
    for k, v in method.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[k], v)


def _engine_cfg(name, extra=()):
    return build_config(None, ["data.name=synthetic", "data.options.num_classes=4", "data.options.image_size=16",
                               "data.options.channels=3", "data.options.train_size=16",
                               "data.options.test_size=8", "model.name=resnet8", f"method.name={name}",
                               "data.batch_size=8", "train.epochs=1", *extra])


@pytest.mark.parametrize("name", NAMES)
def test_one_engine_step_on_cpu(name):
    cfg = _engine_cfg(name)
    req = METHODS.build(name, {}, num_classes=K).requires
    teachers = [_model()] if (req.teachers or req.uses_teachers) else []
    tr = Trainer(cfg, teachers=teachers)
    tr.model.train()
    tr._reset_accumulators()
    terms = tr.train_step(next(iter(tr.train_loader)))
    assert terms and all(torch.isfinite(v) for v in terms.values())
    for t in tr.teachers:  # the trainer runs the teachers in the mode the method declares
        assert t.training == (req.teacher_mode == "train")


@pytest.mark.parametrize("name", NAMES)
def test_composition_with_ols(name):
    if name == "ols":
        pytest.skip("ols with itself is not a sum")
    method = METHODS.build(name, {}, num_classes=K)
    obj = Objective({"ols": METHODS.build("ols", {}, num_classes=K), name: method})
    model = _model()
    obj.adapt_model(model)
    req = obj.requires
    teachers = [_model().eval()] if (req.teachers or req.uses_teachers) else []
    obj.setup(model, teachers)
    batch = _batch()
    out = obj.forward_batch(model, batch, req.features)
    with torch.no_grad():
        t_out = [t(batch.x, return_features=req.features) for t in teachers]
    terms = obj.loss(out, batch, t_out)
    assert "ols/ce" in terms and any(k.startswith(f"{name}/") for k in terms)
    _sum(terms).backward()


# ----------------------------------------------------------------- mixed labels (issue 14)
# Methods with the default forward can be summed with mixup/cutmix; their label-consuming terms must
# read the labels through functional.label_terms, so that on a batch mixed with (λ, π) the loss is
# λ·loss(y) + (1−λ)·loss(y[π]). adacos is left out: its in-loss scale update uses the dominant label.
MIXABLE = [n for n in NAMES if n != "adacos" and METHODS.get(n).factory.forward_batch is Method.forward_batch
           and not METHODS.get(n).factory.needs_model_forward]
LABEL_FREE = {"label_refinery"}


@pytest.mark.parametrize("name", MIXABLE)
def test_label_terms_see_the_mixed_labels(name):
    method, model, teachers = _setup(name)
    batch = _batch()
    out, t_out = _forward(method, model, teachers, batch)
    lam, perm = 0.3, torch.tensor([1, 2, 3, 0, 5, 6, 7, 4])      # every pair has two labels
    mixed = Batch(batch.x, batch.y, batch.index, dict(batch.extra))
    L.record_mix(mixed, lam, perm)
    swapped = Batch(batch.x, batch.y[perm], batch.index, dict(batch.extra))
    torch.manual_seed(123)
    with torch.no_grad():
        got = _sum(copy.deepcopy(method).loss(out, mixed, t_out))
    torch.manual_seed(123)   # the same random draws, in the same order (disturb_label)
    with torch.no_grad():
        a = _sum(copy.deepcopy(method).loss(out, batch, t_out))
        b = _sum(copy.deepcopy(method).loss(out, swapped, t_out))
    torch.testing.assert_close(got.double(), (lam * a + (1 - lam) * b).double(), rtol=1e-5, atol=1e-6)
    # the check has teeth: the loss depends on the labels (label_refinery uses none)
    assert torch.allclose(a, b) == (name in LABEL_FREE)


# ----------------------------------------------------------------- options: declared once, checked everywhere
def _ranged_options():
    for name in NAMES:
        cls = METHODS.get(name).factory
        for key, ann in option_hints(cls).items():
            rng, base = None, float
            args = typing.get_args(ann)
            for a in (ann, *args):
                if typing.get_origin(a) is typing.Annotated:
                    base = typing.get_args(a)[0]
                    rng = next((r for r in typing.get_args(a)[1:] if isinstance(r, Range)), rng)
            if rng is not None and rng.low is not None:
                yield name, key, base(rng.low - 1)


RANGED = list(_ranged_options())


def test_options_declare_ranges():
    assert len(RANGED) >= 40


@pytest.mark.parametrize("name,key,bad", RANGED)
def test_out_of_range_option_is_one_config_error_both_ways(name, key, bad):
    with pytest.raises(ConfigError, match=rf"^method\.options\.{key}: expected a finite number"):
        METHODS.build(name, {key: bad}, where="method.options", num_classes=K)
    with pytest.raises(ConfigError, match=rf"^method\.options\.{key}: expected a finite number"):
        METHODS.get(name).factory(K, **{key: bad})
    if isinstance(bad, float):
        with pytest.raises(ConfigError, match=rf"^method\.options\.{key}: "):
            METHODS.get(name).factory(K, **{key: float("nan")})


def test_wrong_type_and_literal_rejected_by_constructor():
    cls = METHODS.get("kd").factory
    with pytest.raises(ConfigError, match=r"^method\.options\.temperature: expected float"):
        cls(K, temperature="hot")
    with pytest.raises(ConfigError, match=r"^method\.options\.teacher_mode: expected one of"):
        cls(K, teacher_mode="frozen")
    assert isinstance(cls(K, temperature=2).temperature, float)  # an int given for a float


def test_no_per_file_option_checkers_left():
    import softlabels.methods.base as base

    assert not hasattr(base, "option_number")
    assert all(getattr(METHODS.get(n).factory.__init__, "_checks_options", False) for n in NAMES)


# ----------------------------------------------------------------- one error type for a missing input
@pytest.mark.parametrize("name", [n for n in NAMES if METHODS.build(n, {}, num_classes=K).requires.teachers])
def test_missing_teacher_is_missing_input_error(name):
    method, model, teachers = _setup(name)
    batch = _batch()
    out, _ = _forward(method, model, teachers, batch)
    with pytest.raises(MissingInputError, match=f"method {name}"):
        method.loss(out, batch, [])


@pytest.mark.parametrize("name,key", [("cskd", "partner_x"), ("cskd_e", "clean_x"), ("ddgsd", "view1"),
                                      ("mixup_cskd", "partner_x")])
def test_missing_view_is_missing_input_error(name, key):
    method, model, _ = _setup(name)
    batch = _batch()
    del batch.extra[key]
    with pytest.raises(MissingInputError, match=key):
        Objective({"m": method}).forward_batch(model, batch, False)


@pytest.mark.parametrize("name", ["cd", "glr_cd", "orthogonal", "byot", "frskd"])
def test_missing_features_is_missing_input_error(name):
    method, model, teachers = _setup(name)
    batch = _batch()
    out = model(batch.x)  # no stage maps
    with torch.no_grad():
        t_out = [t(batch.x, return_features=True) for t in teachers]
    with pytest.raises(MissingInputError):
        method.loss(out, batch, t_out)


# ----------------------------------------------------------------- one dtype rule
BF16_CASES = {
    "cross_entropy": lambda z, y, b: L.cross_entropy(z, y),
    "soft_cross_entropy": lambda z, y, b: L.soft_cross_entropy(z, torch.softmax(b.float(), 1)),
    "tempered_kl": lambda z, y, b: L.tempered_kl(z, b, 4.0),
    "kd_loss": lambda z, y, b: L.kd_loss(z, y, b),
    "ols_loss": lambda z, y, b: L.ols_loss(z, y, torch.full((K, K), 1.0 / K)),
    "label_smoothing_loss": lambda z, y, b: L.label_smoothing_loss(z, y),
    "cskd_loss": lambda z, y, b: L.cskd_loss(z, y, b),
    "maxent_loss": lambda z, y, b: L.maxent_loss(z, y),
    "sce_loss": lambda z, y, b: L.sce_loss(z, y),
    "focal_loss": lambda z, y, b: L.focal_loss(z, y),
    "glr_loss": lambda z, y, b: L.glr_loss(z, b, y),
    "label_refinery_loss": lambda z, y, b: L.label_refinery_loss(z, b),
    "mixup_loss": lambda z, y, b: L.mixup_loss(z, y, 0.3, torch.arange(len(y)).flip(0)),
    "tfkd_reg_loss": lambda z, y, b: L.tfkd_reg_loss(z, y),
    "pairwise_confusion_loss": lambda z, y, b: L.pairwise_confusion_loss(z, y, 1.0),
    "focus_picking_loss": lambda z, y, b: _sum(L.focus_picking_loss(z, b, y)),
}


@pytest.mark.parametrize("fn", sorted(BF16_CASES))
def test_losses_compute_in_float32_for_bf16_inputs_outside_autocast(fn):
    g = torch.Generator().manual_seed(0)
    z = (torch.randn(64, K, generator=g) * 3).bfloat16()
    b = (torch.randn(64, K, generator=g) * 3).bfloat16()
    y = torch.randint(0, K, (64,), generator=g)
    assert not torch.is_autocast_enabled("cpu")
    got = BF16_CASES[fn](z, y, b)
    want = BF16_CASES[fn](z.double(), y, b.double())
    assert got.dtype == torch.float32
    assert abs(got.item() - want.item()) <= 1e-6 * max(1.0, abs(want.item()))


def test_teacher_mode_train_runs_a_private_copy_in_train_mode():
    """official_cd runs its teacher in train mode (the authors' code): the trainer gives the
    method a copy, so BatchNorm statistics updates never reach the caller's teacher model."""
    cfg = _engine_cfg("glr_cd", ["method.options.variant=official_cd"])
    teacher = _model().eval()
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    tr = Trainer(cfg, teachers=[teacher])
    assert tr.teachers[0] is not teacher and tr.teachers[0].training
    assert not any(p.requires_grad for p in tr.teachers[0].parameters())
    tr.model.train()
    tr._reset_accumulators()
    tr.train_step(next(iter(tr.train_loader)))
    assert not teacher.training
    for k, v in teacher.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert any(not torch.equal(v, tr.teachers[0].state_dict()[k]) for k, v in before.items()
               if k.endswith("running_mean"))
    eval_tr = Trainer(_engine_cfg("glr_cd"), teachers=[teacher])
    assert eval_tr.teachers[0] is teacher and not teacher.training


def test_teacher_mode_must_agree_in_a_sum():
    with pytest.raises(ConfigError, match=r"^method\.options\.teacher_mode: "):
        Objective({"kd": METHODS.build("kd", {}, num_classes=K),
                   "glr_cd": METHODS.build("glr_cd", {"variant": "official_cd"}, num_classes=K)})
