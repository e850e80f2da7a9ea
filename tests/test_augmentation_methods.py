"""Augmentation baselines: mixup, Mixup + CS-KD, Cutout and DDGSD against hand computation,
their forward passes (what the network sees), gradients, composition and end-to-end training."""
import math

import pytest
import torch
from torch import nn

from helpers import ref_kl, ref_softmax
import softlabels.methods  # noqa: F401  (registers ols, cskd … for the sums below)
import softlabels.methods.augmentation  # noqa: F401  (registration)
from softlabels.config import MethodConfig, build_config
from softlabels.data.base import Batch
from softlabels.engine import Trainer
from softlabels.errors import ConfigError
from softlabels.methods.augmentation import (DDGSD, Cutout, Mixup, MixupCSKD, apply_cutout,
                                             cutout_mask, ddgsd_kl, ddgsd_loss, linear_mmd, mix,
                                             mixup_cskd_loss, mixup_loss, sample_mixup)
from softlabels.methods.base import build_objective
from softlabels.models.base import ModelOutput

LOGITS = [[2.0, 0.5, -1.0], [0.1, 0.3, 1.7], [-0.4, 1.2, 0.2]]
OTHER = [[1.0, 1.0, 0.0], [-0.5, 0.2, 2.5], [0.3, -0.7, 0.9]]
LABELS = [0, 2, 1]
PERM = [2, 0, 1]


# ------------------------------------------------------------------------------ helpers
_softmax = ref_softmax


def _ce(rows, labels):
    return sum(-math.log(_softmax(r)[y]) for r, y in zip(rows, labels)) / len(rows)


def _kl(target_rows, rows, t):
    """T²·mean_i KL(softmax(target_i/T) ‖ softmax(row_i/T))."""
    return ref_kl(rows, target_rows, t)


class Recorder(nn.Module):
    """A linear classifier on the flattened image that keeps every input it is given."""

    def __init__(self, dim, k=3):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(dim, k)
        self.seen = []

    def forward(self, x, return_features=False):
        self.seen.append(x.detach().clone())
        emb = x.flatten(1)
        return ModelOutput(self.lin(emb), emb, [x] if return_features else None)


def _batch(n=3, c=2, h=4, w=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Batch(x=torch.randn(n, c, h, w, generator=g), y=torch.tensor(LABELS[:n]),
                 index=torch.arange(n))


# ------------------------------------------------------------------------------ mixup
@pytest.mark.parametrize("lam", [0.3, 0.8])
def test_mixup_loss_matches_hand_computation(lam):
    z, y, idx = torch.tensor(LOGITS), torch.tensor(LABELS), torch.tensor(PERM)
    ref = lam * _ce(LOGITS, LABELS) + (1 - lam) * _ce(LOGITS, [LABELS[i] for i in PERM])
    assert mixup_loss(z, y, lam, idx).item() == pytest.approx(ref, rel=1e-6)
    assert mixup_loss(z, y, torch.tensor(lam), idx).item() == pytest.approx(ref, rel=1e-6)
    # λ = 1 is plain cross-entropy, whatever the permutation
    assert mixup_loss(z, y, 1.0, idx).item() == pytest.approx(_ce(LOGITS, LABELS), rel=1e-6)


def test_mixup_forward_mixes_inputs_and_records_draws():
    batch = _batch()
    x0 = batch.x.clone()
    net = Recorder(x0[0].numel())
    method = Mixup(3)
    method.sample = lambda n: (0.3, torch.tensor(PERM))
    out = method.forward_batch(net, batch, False)
    expected = 0.3 * x0 + 0.7 * x0[torch.tensor(PERM)]
    torch.testing.assert_close(net.seen[0], expected)
    torch.testing.assert_close(batch.x, expected)          # teachers of a sum see the mixed images
    torch.testing.assert_close(batch.extra["unmixed_x"], x0)
    assert batch.extra["mix_lambda"].dim() == 0
    assert batch.extra["mix_lambda"].item() == pytest.approx(0.3)
    assert batch.extra["mix_index"].tolist() == PERM
    z = out.logits.detach().tolist()
    ref = 0.3 * _ce(z, LABELS) + 0.7 * _ce(z, [LABELS[i] for i in PERM])
    terms = method.loss(out, batch)
    assert list(terms) == ["ce"] and terms["ce"].item() == pytest.approx(ref, rel=1e-5)
    torch.testing.assert_close(mix(x0, 1.0, torch.tensor(PERM)), x0)


def test_mixup_sampling_is_seeded_and_alpha_zero_disables_it():
    torch.manual_seed(3)
    a = sample_mixup(1.0, 8)
    torch.manual_seed(3)
    b = sample_mixup(1.0, 8)
    assert a[0] == b[0] and torch.equal(a[1], b[1])
    assert 0.0 < a[0] < 1.0 and sorted(a[1].tolist()) == list(range(8))
    lam, idx = sample_mixup(0.0, 5)
    assert lam == 1.0 and idx.tolist() == list(range(5))
    torch.manual_seed(0)
    draws = torch.tensor([sample_mixup(1.0, 2)[0] for _ in range(2000)])
    assert abs(draws.mean().item() - 0.5) < 0.03        # Beta(1, 1) = uniform
    assert abs(draws.var().item() - 1 / 12) < 0.01


def test_options_are_checked():
    with pytest.raises(ConfigError, match="alpha"):
        Mixup(3, alpha=-1.0)
    with pytest.raises(ConfigError, match="temperature"):
        MixupCSKD(3, temperature=0.0)
    with pytest.raises(ConfigError, match="size"):
        Cutout(3, size=0)
    with pytest.raises(ConfigError, match="mmd"):
        DDGSD(3, mmd=-1.0)
    with pytest.raises(ConfigError, match="size"):
        build_objective(MethodConfig(name="cutout", options={"size": 2.5}), 3)


# ------------------------------------------------------------------------------ mixup + CS-KD
def test_mixup_cskd_mixes_partners_with_the_same_draws():
    batch = _batch()
    g = torch.Generator().manual_seed(7)
    partner = torch.randn(batch.x.shape, generator=g)
    batch.extra["partner_x"] = partner.clone()
    x0 = batch.x.clone()
    net = Recorder(x0[0].numel())
    method = MixupCSKD(3, temperature=2.0, lam=1.5)
    assert method.requires.pairs
    lam, perm = 0.25, torch.tensor(PERM)
    method.sample = lambda n: (lam, perm)
    out = method.forward_batch(net, batch, False)
    assert len(net.seen) == 1                               # one joint forward
    mixed_a = lam * x0 + (1 - lam) * x0[perm]
    mixed_p = lam * partner + (1 - lam) * partner[perm]    # partner j with partner of anchor perm[j]
    torch.testing.assert_close(net.seen[0], torch.cat([mixed_a, mixed_p]))
    torch.testing.assert_close(batch.extra["partner_x"], mixed_p)
    torch.testing.assert_close(batch.extra["unmixed_partner_x"], partner)
    assert not out.aux["partner"].logits.requires_grad      # the partner side is a constant

    za, zp = out.logits.detach().tolist(), out.aux["partner"].logits.tolist()
    ce = lam * _ce(za, LABELS) + (1 - lam) * _ce(za, [LABELS[i] for i in PERM])
    cls = 1.5 * _kl(zp, za, 2.0)
    terms = method.loss(out, batch)
    assert terms["ce"].item() == pytest.approx(ce, rel=1e-5)
    assert terms["cls"].item() == pytest.approx(cls, rel=1e-5)
    total = mixup_cskd_loss(out.logits, batch.y, out.aux["partner"].logits, lam, perm, 2.0, 1.5)
    assert total.item() == pytest.approx(ce + cls, rel=1e-5)


def test_mixup_cskd_hand_case_on_fixed_logits():
    z, zp = torch.tensor(LOGITS), torch.tensor(OTHER)
    y, idx = torch.tensor(LABELS), torch.tensor(PERM)
    ref = 0.6 * _ce(LOGITS, LABELS) + 0.4 * _ce(LOGITS, [LABELS[i] for i in PERM]) + _kl(OTHER, LOGITS, 4.0)
    assert mixup_cskd_loss(z, y, zp, 0.6, idx).item() == pytest.approx(ref, rel=1e-5)


# ------------------------------------------------------------------------------ cutout
def _square(cy, cx, size, h, w):
    """The expected mask of one image, by loops."""
    m = torch.zeros(h, w, dtype=torch.bool)
    for r in range(cy - size // 2, cy - size // 2 + size):
        for c in range(cx - size // 2, cx - size // 2 + size):
            if 0 <= r < h and 0 <= c < w:
                m[r, c] = True
    return m


def test_cutout_mask_is_the_clipped_square():
    cy, cx = torch.tensor([0, 7, 3, 4, 6]), torch.tensor([0, 5, 3, 8 - 1, 1])
    for size in (3, 4):
        mask = cutout_mask(cy, cx, size, 8, 8)
        for b in range(5):
            assert torch.equal(mask[b], _square(int(cy[b]), int(cx[b]), size, 8, 8)), (size, b)
    # border centre: the square is clipped, rows/cols 0..1 only
    m = cutout_mask(torch.tensor([0]), torch.tensor([0]), 4, 8, 8)[0]
    assert m.sum().item() == 4 and m[:2, :2].all()
    # interior centre: exactly size² pixels
    assert cutout_mask(torch.tensor([4]), torch.tensor([4]), 4, 8, 8).sum().item() == 16
    # a square larger than the image removes everything
    assert cutout_mask(torch.tensor([2]), torch.tensor([5]), 16, 8, 8).all()


def test_cutout_forward_zeroes_exactly_the_square_in_every_channel():
    batch = _batch(n=2, c=3, h=8, w=8)
    x0 = batch.x.clone()
    net = Recorder(x0[0].numel())
    method = Cutout(3, size=4)
    cy, cx = torch.tensor([0, 7]), torch.tensor([6, 2])
    method.sample = lambda n, h, w: (cy, cx)
    out = method.forward_batch(net, batch, False)
    for b in range(2):
        m = _square(int(cy[b]), int(cx[b]), 4, 8, 8)
        assert (net.seen[0][b][:, m] == 0).all()
        torch.testing.assert_close(net.seen[0][b][:, ~m], x0[b][:, ~m])
    torch.testing.assert_close(batch.x, net.seen[0])
    torch.testing.assert_close(batch.extra["uncut_x"], x0)
    assert batch.extra["cutout_cy"].tolist() == [0, 7]
    terms = method.loss(out, batch)
    assert terms["ce"].item() == pytest.approx(_ce(out.logits.tolist(), LABELS[:2]), rel=1e-5)
    assert Cutout(3, size=4, ce=False).loss(out, batch) == {}
    torch.testing.assert_close(apply_cutout(x0, torch.zeros(2, 8, 8, dtype=torch.bool)), x0)


def test_ols_plus_cutout_is_pure_augmentation():
    obj = build_objective(MethodConfig(name="ols+cutout", options={"cutout": {"ce": False, "size": 4}}), 3)
    assert obj._forward_owner is obj.methods["cutout"]
    batch = _batch(n=3, c=1, h=8, w=8)
    out = obj.forward_batch(Recorder(64), batch, False)
    terms = obj.loss(out, batch)
    assert terms and all(k.startswith("ols/") for k in terms)


# ------------------------------------------------------------------------------ DDGSD
def test_ddgsd_consistency_matches_hand_computation():
    a, b = torch.tensor(LOGITS), torch.tensor(OTHER)
    for t in (1.0, 3.0):
        ref = _kl(OTHER, LOGITS, t) + _kl(LOGITS, OTHER, t)
        assert ddgsd_kl(a, b, t).item() == pytest.approx(ref, rel=1e-5)
        assert ddgsd_kl(a, b, t, detach=False).item() == pytest.approx(ref, rel=1e-5)
    assert ddgsd_kl(a, a.clone(), 3.0).item() == pytest.approx(0.0, abs=1e-6)
    fa, fb = torch.tensor([[1.0, 2.0], [3.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])
    # means (2, 1) and (0.5, 1): squared distance 2.25
    assert linear_mmd(fa, fb).item() == pytest.approx(2.25)
    total = ddgsd_loss(a, b, torch.tensor(LABELS), torch.tensor(LOGITS), torch.tensor(OTHER),
                       temperature=3.0, lam=2.0, mmd=0.5)
    mean_a = [sum(c) / 3 for c in zip(*LOGITS)]
    mean_b = [sum(c) / 3 for c in zip(*OTHER)]
    mmd = sum((u - v) ** 2 for u, v in zip(mean_a, mean_b))
    ref = (_ce(LOGITS, LABELS) + _ce(OTHER, LABELS) + 2.0 * (_kl(OTHER, LOGITS, 3.0) + _kl(LOGITS, OTHER, 3.0))
           + 0.5 * mmd)
    assert total.item() == pytest.approx(ref, rel=1e-5)


def test_ddgsd_gradients():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    b = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, y: ddgsd_kl(x, y, 3.0, detach=False), (a, b))
    fa = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    fb = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    assert torch.autograd.gradcheck(linear_mmd, (fa, fb))
    # detached targets: d/dz_a T²·KL(q_b ‖ p_a) = T·(p_a − q_b)/B, and symmetrically for z_b
    t = 3.0
    ddgsd_kl(a, b, t, detach=True).backward()
    pa, pb = torch.softmax(a.detach() / t, 1), torch.softmax(b.detach() / t, 1)
    torch.testing.assert_close(a.grad, t * (pa - pb) / 4)
    torch.testing.assert_close(b.grad, t * (pb - pa) / 4)


def test_ddgsd_forward_uses_both_views():
    batch = _batch()
    g = torch.Generator().manual_seed(5)
    view1 = torch.randn(batch.x.shape, generator=g)
    batch.extra["view1"] = view1
    net = Recorder(batch.x[0].numel())
    method = DDGSD(3)
    assert method.requires.views == 2
    out = method.forward_batch(net, batch, True)
    assert len(net.seen) == 1                               # one forward over both views
    torch.testing.assert_close(net.seen[0], torch.cat([batch.x, view1]))
    assert out.logits.shape == (3, 3) and out.aux["view1"].logits.shape == (3, 3)
    assert out.aux["view1"].logits.requires_grad and out.features[0].shape[0] == 3
    torch.testing.assert_close(out.aux["view1"].logits, net.lin(view1.flatten(1)))
    terms = method.loss(out, batch)
    assert set(terms) == {"ce", "ce_view1", "kl", "mmd"}
    z0, z1 = out.logits.tolist(), out.aux["view1"].logits.tolist()
    assert terms["kl"].item() == pytest.approx(_kl(z1, z0, 3.0) + _kl(z0, z1, 3.0), rel=1e-5)
    assert terms["ce_view1"].item() == pytest.approx(_ce(z1, LABELS), rel=1e-5)
    assert "mmd" not in DDGSD(3, mmd=0.0).loss(out, batch)
    sum(terms.values()).backward()
    assert net.lin.weight.grad is not None


# ------------------------------------------------------------------------------ end to end
E2E = ["data.name=digits", "model.name=resnet8", "train.threads=1", "train.epochs=3"]


@pytest.fixture
def restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name,options,term", [
    ("mixup", [], "ce"),
    ("mixup_cskd", [], "cls"),
    ("cutout", ["method.options.size=4"], "ce"),
    ("ddgsd", [], "kl"),
    ("ols+cutout", ["method.options.cutout.ce=false", "method.options.cutout.size=4"], "ols/soft"),
    ("cutmix", ["method.options.prob=0.5"], "ce"),
    ("ols+cutmix", ["method.options.cutmix.ce=false", "method.options.cutmix.prob=0.5"], "ols/soft"),
])
def test_digits_end_to_end(name, options, term, restore_threads):
    trainer = Trainer(build_config(None, E2E + [f"method.name={name}"] + options), None)
    final = trainer.fit()
    assert final["last"]["test"]["top1_error"] < 50.0  # chance is 90 %
    train = trainer.history[-1]["train"]
    assert term in train and math.isfinite(train[term])
    if name.startswith("ols+"):
        assert not [k for k in train if not k.startswith("ols/") and "/" in k]
