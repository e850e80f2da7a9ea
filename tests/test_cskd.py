"""CS-KD and CS-KD-E (Yun et al., CVPR 2020): the loss against hand computation, gradients, the
forward passes of both variants (BatchNorm behaviour), the class-pair sampler, composition and
end-to-end training."""
import math

import pytest
import torch
from torch import nn

from helpers import ref_kl, ref_softmax
import softlabels.methods.cskd  # noqa: F401  (registration)
from softlabels.config import MethodConfig, build_config
from softlabels.data.augment import CropFlip
from softlabels.data.base import Batch, TensorSplit
from softlabels.data.loader import ClassPairBatches, TensorLoader, epoch_generator
from softlabels.engine import Trainer
from softlabels.errors import ConfigError
from softlabels.methods.base import Method, Objective, Requires, build_objective
from softlabels.methods.cskd import (ClassWiseSelfKD, ClassWiseSelfKDE, cskd_e_loss, cskd_kl,
                                     cskd_loss)
from softlabels.methods.ols import OnlineLabelSmoothing
from softlabels.models import build_model

ANCHOR = [[2.0, 0.5, -1.0], [0.1, 0.3, 1.7]]
PARTNER = [[1.0, 1.0, 0.0], [-0.5, 0.2, 2.5]]
LABELS = [0, 2]


# ------------------------------------------------------------------------------ hand computation
_softmax = ref_softmax


def _ref_kl(anchor, partner, t):
    """T² · mean_i Σ_k q_ik (log q_ik − log p_ik), q from the partner, p from the anchor."""
    return ref_kl(anchor, partner, t)


def _ref_ce(anchor, labels):
    return sum(-math.log(_softmax(a, 1.0)[y]) for a, y in zip(anchor, labels)) / len(anchor)


@pytest.mark.parametrize("t", [1.0, 4.0])
def test_kl_and_loss_match_hand_computation(t):
    a, b, y = torch.tensor(ANCHOR), torch.tensor(PARTNER), torch.tensor(LABELS)
    kl = _ref_kl(ANCHOR, PARTNER, t)
    ce = _ref_ce(ANCHOR, LABELS)
    assert cskd_kl(a, b, t).item() == pytest.approx(kl, rel=1e-5)
    assert cskd_loss(a, y, b, temperature=t, lam=1.0).item() == pytest.approx(ce + kl, rel=1e-5)
    assert cskd_loss(a, y, b, temperature=t, lam=3.0).item() == pytest.approx(ce + 3 * kl, rel=1e-5)
    assert cskd_loss(a, y, b, temperature=t, lam=0.0).item() == pytest.approx(ce, rel=1e-5)
    # identical predictions: no class-wise penalty
    assert cskd_kl(a, a.clone(), t).item() == pytest.approx(0.0, abs=1e-6)
    # CS-KD-E: the consistency term is the same KL with the clean prediction as the target
    clean = [[1.5, 0.0, -0.5], [0.0, 0.0, 1.0]]
    want = ce + 2 * kl + 0.5 * _ref_kl(ANCHOR, clean, t)
    got = cskd_e_loss(a, y, b, torch.tensor(clean), temperature=t, lam=2.0, lam_e=0.5)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_three_samples_float64_exact():
    anchor = [[0.3, -1.2, 2.2, 0.0], [1.0, 1.0, 1.0, 1.0], [-3.0, 4.0, 0.5, 0.2]]
    partner = [[0.0, 0.0, 3.0, -1.0], [2.0, -2.0, 0.0, 0.0], [-1.0, 2.5, 0.5, 0.9]]
    got = cskd_kl(torch.tensor(anchor, dtype=torch.float64), torch.tensor(partner, dtype=torch.float64), 4.0)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(_ref_kl(anchor, partner, 4.0), rel=1e-12)


def test_low_precision_logits_are_upcast():
    a = torch.tensor(ANCHOR, dtype=torch.bfloat16)
    b = torch.tensor(PARTNER, dtype=torch.float16)
    out = cskd_kl(a, b, 4.0)
    assert out.dtype == torch.float32
    assert out.item() == pytest.approx(_ref_kl(a.float().tolist(), b.float().tolist(), 4.0), rel=1e-5)


def test_gradcheck_and_partner_gets_no_gradient():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 5, generator=g, dtype=torch.float64)
    y = torch.tensor([0, 4, 2])
    assert torch.autograd.gradcheck(lambda z: cskd_kl(z, b, 4.0), (a,))
    assert torch.autograd.gradcheck(lambda z: cskd_loss(z, y, b, 1.0, 2.0), (a,))
    b.requires_grad_(True)
    cskd_loss(a, y, b, 4.0, 1.0).backward()
    assert b.grad is None and a.grad is not None


# ------------------------------------------------------------------------------ forward passes
class Counting(nn.Module):
    """Records every forward call: batch size, grad mode and train mode."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.calls = []

    def forward(self, x, return_features=False):
        self.calls.append((x.shape[0], torch.is_grad_enabled(), self.model.training))
        return self.model(x, return_features=return_features)


def _bn_steps(model):
    return {n: int(b) for n, b in model.named_buffers() if n.endswith("num_batches_tracked")}


def _batch(b=4, clean=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    batch = Batch(x=torch.randn(b, 1, 8, 8, generator=g), y=torch.arange(b) % 3, index=torch.arange(b))
    batch.extra["partner_x"] = torch.randn(b, 1, 8, 8, generator=g)
    batch.extra["partner_y"] = batch.y.clone()
    batch.extra["partner_index"] = torch.arange(b) + b
    if clean:
        batch.extra["clean_x"] = torch.randn(b, 1, 8, 8, generator=g)
    return batch


def _model():
    torch.manual_seed(0)
    return build_model("resnet8", 3, 1).train()


@pytest.mark.parametrize("features", [False, True])
def test_paper_forward_is_one_joint_pass(features):
    model, batch = _model(), _batch(4)
    net = Counting(model)
    before = _bn_steps(model)
    out = ClassWiseSelfKD(3).forward_batch(net, batch, features)
    assert net.calls == [(8, True, True)]
    assert all(v == before[k] + 1 for k, v in _bn_steps(model).items())
    partner = out.aux["partner"]
    assert out.logits.shape == (4, 3) and partner.logits.shape == (4, 3)
    assert out.logits.requires_grad and not partner.logits.requires_grad
    assert out.embedding.shape[0] == 4 and partner.embedding.shape[0] == 4
    if features:
        assert [f.shape[0] for f in out.features] == [4, 4, 4]
        assert all(not f.requires_grad for f in partner.features)
    else:
        assert out.features is None and partner.features is None
    # the halves are the joint pass's (train-mode BN: statistics over all 8 samples)
    with torch.no_grad():
        joint = model(torch.cat([batch.x, batch.extra["partner_x"]])).logits
    torch.testing.assert_close(out.logits.detach(), joint[:4])
    torch.testing.assert_close(partner.logits, joint[4:])


def test_official_forward_partner_pass_no_grad_in_train_mode():
    model, batch = _model(), _batch(4)
    net = Counting(model)
    before = _bn_steps(model)
    method = ClassWiseSelfKD(3, variant="official")
    out = method.forward_batch(net, batch, False)
    assert net.calls == [(4, True, True), (4, False, True)]
    assert all(v == before[k] + 2 for k, v in _bn_steps(model).items())
    assert out.logits.requires_grad and not out.aux["partner"].logits.requires_grad
    # the partner pass normalises with the partner batch's own statistics
    with torch.no_grad():
        alone = model(batch.extra["partner_x"]).logits
    torch.testing.assert_close(out.aux["partner"].logits, alone)
    loss = sum(method.loss(out, batch).values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_cskd_e_forwards():
    batch = _batch(4, clean=True)
    model = _model()
    net = Counting(model)
    before = _bn_steps(model)
    out = ClassWiseSelfKDE(3).forward_batch(net, batch, False)
    assert net.calls == [(12, True, True)]
    assert all(v == before[k] + 1 for k, v in _bn_steps(model).items())
    assert out.logits.shape == (4, 3) and out.logits.requires_grad
    assert not out.aux["clean"].logits.requires_grad and out.aux["clean"].logits.shape == (4, 3)
    terms = ClassWiseSelfKDE(3, lam_e=2.0).loss(out, batch)
    assert set(terms) == {"ce", "cls", "consistency"}
    torch.testing.assert_close(terms["consistency"],
                               2.0 * cskd_kl(out.logits, out.aux["clean"].logits, 4.0))

    model = _model()
    net = Counting(model)
    before = _bn_steps(model)
    out = ClassWiseSelfKDE(3, variant="official").forward_batch(net, batch, False)
    assert net.calls == [(4, True, True), (4, False, True), (4, False, True)]
    assert all(v == before[k] + 3 for k, v in _bn_steps(model).items())


def test_loss_terms_use_anchors_only():
    model, batch = _model(), _batch(4)
    m = ClassWiseSelfKD(3, temperature=1.0, lam=2.0)
    out = m.forward_batch(model, batch, False)
    terms = m.loss(out, batch)
    assert set(terms) == {"ce", "cls"}
    want = cskd_loss(out.logits, batch.y, out.aux["partner"].logits, temperature=1.0, lam=2.0)
    torch.testing.assert_close(terms["ce"] + terms["cls"], want)


# ------------------------------------------------------------------------------ options
def test_requires_and_options():
    assert ClassWiseSelfKD(3).requires == Requires(pairs=True)
    assert ClassWiseSelfKD(3, variant="official").requires == Requires(pairs=True, pairs_include_self=True)
    assert ClassWiseSelfKDE(3).requires == Requires(pairs=True, clean=True)
    obj = build_objective(MethodConfig(name="cskd", options={"variant": "official", "lam": 3}), 10)
    assert obj.requires.pairs_include_self and obj.methods["cskd"].lam == 3.0
    for opts, key in [({"temperature": 0}, "temperature"), ({"temperature": -1.0}, "temperature"),
                      ({"lam": -0.5}, "lam"), ({"temperature": "4"}, "temperature"),
                      ({"lam": True}, "lam"), ({"lam": float("nan")}, "lam")]:
        with pytest.raises(ConfigError, match=rf"^method\.options\.{key}:"):
            build_objective(MethodConfig(name="cskd", options=opts), 10)
    with pytest.raises(ConfigError, match=r"^method\.options\.lam_e:"):
        build_objective(MethodConfig(name="cskd_e", options={"lam_e": -1.0}), 10)
    with pytest.raises(ConfigError, match=r"^method\.options\.variant:"):
        build_objective(MethodConfig(name="cskd", options={"variant": "authors"}), 10)
    with pytest.raises(ConfigError):  # both define their own forward
        build_objective(MethodConfig(name="cskd+cskd_e"), 10)


# ------------------------------------------------------------------------------ composition
class FakeTeacherMethod(Method):
    """Stands in for KD: a teacher-based loss on ``out.logits`` (not registered)."""

    requires = Requires(teachers=1)

    def loss(self, out, batch, teachers=()):
        assert out.logits.shape == teachers[0].logits.shape
        return {"kl": cskd_kl(out.logits, teachers[0].logits, 4.0)}


def test_composition_sees_anchor_outputs_only():
    model, batch = _model(), _batch(4)
    ols = OnlineLabelSmoothing(3)
    obj = Objective({"kd": FakeTeacherMethod(3), "cskd": ClassWiseSelfKD(3), "ols": ols})
    assert obj.requires == Requires(teachers=1, pairs=True)
    out = obj.forward_batch(model, batch, False)
    assert out.logits.shape == (4, 3)
    with torch.no_grad():
        teacher = [model(batch.x)]
    terms = obj.loss(out, batch, teacher)
    assert set(terms) == {"kd/kl", "cskd/ce", "cskd/cls", "ols/ce", "ols/soft"}
    sum(terms.values()).backward()
    obj.on_step_end(out.detach(), batch)
    assert 0 <= float(ols.count.sum()) <= 4


# ------------------------------------------------------------------------------ the sampler
def _labels():
    # class sizes 1, 2, 3, 7 and 12: a singleton, small classes, a large one
    sizes = [1, 2, 3, 7, 12]
    y = torch.cat([torch.full((s,), c) for c, s in enumerate(sizes)])
    return y[torch.randperm(len(y), generator=torch.Generator().manual_seed(1))]


@pytest.mark.parametrize("include_self", [False, True])
def test_pair_sampler_invariants(include_self):
    y = _labels()
    sampler = ClassPairBatches(y, batch_size=8, include_self=include_self)
    assert len(sampler) == math.ceil(len(y) / 8)
    self_pairs, seen_partners = 0, {}
    for epoch in range(30):
        pairs = list(sampler.batches(epoch_generator(0, epoch)))
        assert all(p.shape[1] == 2 for p in pairs) and len(pairs) == len(sampler)
        pairs = torch.cat(pairs)
        anchors, partners = pairs[:, 0], pairs[:, 1]
        assert sorted(anchors.tolist()) == list(range(len(y)))  # each sample an anchor once
        assert torch.equal(y[anchors], y[partners])              # same class
        counts = torch.bincount(y)[y[anchors]]
        same = anchors == partners
        assert bool(same[counts == 1].all())                     # singleton: its own partner
        if not include_self:
            assert not bool(same[counts > 1].any())
        self_pairs += int(same[counts > 1].sum())
        for a, p in zip(anchors.tolist(), partners.tolist()):
            seen_partners.setdefault(a, set()).add(p)
    if include_self:
        assert self_pairs > 0
    # over many epochs every allowed partner turns up (uniform over the class)
    for a, got in seen_partners.items():
        members = set((y == y[a]).nonzero().flatten().tolist())
        if len(members) <= 3:
            assert got == (members if include_self or len(members) == 1 else members - {a})


def _split(n=37):
    g = torch.Generator().manual_seed(3)
    images = torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8)
    return TensorSplit(images, torch.arange(n) % 5)


@pytest.mark.parametrize("include_self", [False, True])
def test_pair_loader_shards_equal_single_process(include_self):
    split = _split()

    def batches(rank, world):
        loader = TensorLoader(split, 10, train=True, mean=(0.5,), std=(0.25,), device="cpu", seed=7,
                              augment=CropFlip(2, True), rank=rank, world=world, clean=True,
                              sampler=ClassPairBatches(split.labels, 10, include_self))
        loader.set_epoch(2)
        return list(loader)

    single = batches(0, 1)
    shards = [batches(r, 2) for r in range(2)]
    assert len(single) == len(shards[0]) == len(shards[1]) == 4
    for i, whole in enumerate(single):
        a, b = shards[0][i], shards[1][i]
        assert not set(a.index.tolist()) & set(b.index.tolist())
        assert torch.equal(torch.cat([a.index, b.index]), whole.index)
        for key in ("partner_x", "partner_y", "partner_index", "clean_x"):
            torch.testing.assert_close(torch.cat([a.extra[key], b.extra[key]]), whole.extra[key])
        torch.testing.assert_close(torch.cat([a.x, b.x]), whole.x)
        assert torch.equal(whole.extra["partner_y"], whole.y)
        assert torch.equal(split.labels[whole.extra["partner_index"]], whole.y)


# ------------------------------------------------------------------------------ end to end
# One intra-op thread: on a shared 2-core machine more threads spin against other processes and
# a 3-epoch run goes from ~5 s to ~50 s. The fixture puts the thread count back afterwards.
E2E = ["data.name=digits", "model.name=resnet8", "train.threads=1"]


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", ["cskd", "cskd_e", "cskd+ols"])
def test_digits_end_to_end(name, restore_threads):
    cfg = build_config(None, E2E + [f"method.name={name}", "train.epochs=3"])
    trainer = Trainer(cfg, None)
    final = trainer.fit()
    assert final["last"]["test"]["top1_error"] < 50.0  # chance is 90 %
    train = trainer.history[-1]["train"]
    prefix = "cskd/" if "+" in name else ""
    assert f"{prefix}cls" in train and train[f"{prefix}cls"] > 0
    if name == "cskd_e":
        assert "consistency" in train


def test_official_variant_trains_one_epoch(restore_threads):
    cfg = build_config(None, E2E + ["method.name=cskd", "method.options.variant=official", "train.epochs=1"])
    trainer = Trainer(cfg, None)
    assert trainer.train_loader.sampler.include_self
    before = _bn_steps(trainer.model)
    trainer.fit()
    steps = len(trainer.train_loader)
    assert all(v == before[k] + 2 * steps for k, v in _bn_steps(trainer.model).items())
