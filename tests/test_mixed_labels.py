"""Mixed labels carried in the batch (issue 14): CutMix, and every label-consuming term of a sum
with a mixing method (``kd+mixup``, ``ls+mixup``, ``ols+cutmix``) trained on the mixed labels
λ·L(z, y) + (1−λ)·L(z, y[π]), checked against hand computation on fixed tensors with a fixed λ;
CutMix's box area against λ; OLS's accumulation by the dominant label; one engine step each."""
import math

import pytest
import torch
from torch import nn

import softlabels.losses as L
from helpers import ref_kl, ref_softmax
from softlabels.config import MethodConfig, build_config
from softlabels.data.base import Batch
from softlabels.engine import Trainer
from softlabels.errors import ConfigError
from softlabels.methods.augmentation import CutMix, apply_cutmix, cutmix_box, cutmix_lambda, sample_cutmix
from softlabels.methods.base import build_objective
from softlabels.methods.functional import dominant_labels, label_terms, record_mix, targets_of
from softlabels.models.base import ModelOutput

K = 3
LABELS = [0, 2, 1]
PERM = [2, 0, 1]
TEACHER = [[1.0, 1.0, 0.0], [-0.5, 0.2, 2.5], [0.3, -0.7, 0.9]]


def _ce(rows, labels, eps=0.0):
    """mean_i −Σ_k q_ik log p_ik with q = (1−ε)·onehot + ε/K."""
    total = 0.0
    for r, y in zip(rows, labels):
        p = ref_softmax(r)
        total += sum(-((1 - eps) * (k == y) + eps / len(r)) * math.log(p[k]) for k in range(len(r)))
    return total / len(rows)


def _soft_ce(rows, targets):
    return sum(-sum(q * math.log(p) for q, p in zip(t, ref_softmax(r))) for r, t in zip(rows, targets)) / len(rows)


class Linear(nn.Module):
    """A linear classifier on the flattened image (fixed weights)."""

    def __init__(self, dim, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.lin = nn.Linear(dim, K)

    def forward(self, x, return_features=False):
        emb = x.flatten(1)
        return ModelOutput(self.lin(emb), emb, [x] if return_features else None)


def _batch(h=4, w=4):
    g = torch.Generator().manual_seed(1)
    return Batch(x=torch.randn(3, 2, h, w, generator=g), y=torch.tensor(LABELS), index=torch.arange(3))


def _mixed_labels():
    return [LABELS[i] for i in PERM]


# ------------------------------------------------------------------------------ the helpers
def test_targets_and_label_terms_unmixed_and_mixed():
    batch = _batch()
    ((y, w),) = targets_of(batch)
    assert y.tolist() == LABELS and w == 1.0
    z = torch.tensor(TEACHER)
    assert label_terms(lambda y: L.cross_entropy(z, y), batch).item() == pytest.approx(_ce(TEACHER, LABELS))
    record_mix(batch, 0.3, torch.tensor(PERM))
    (ya, wa), (yb, wb) = targets_of(batch)
    assert ya.tolist() == LABELS and yb.tolist() == _mixed_labels()
    assert wa.item() == pytest.approx(0.3) and wb.item() == pytest.approx(0.7)
    ref = 0.3 * _ce(TEACHER, LABELS) + 0.7 * _ce(TEACHER, _mixed_labels())
    assert label_terms(lambda y: L.cross_entropy(z, y), batch).item() == pytest.approx(ref, rel=1e-6)
    # for CE it is CE against the mixed one-hot target
    soft = 0.3 * nn.functional.one_hot(ya, K) + 0.7 * nn.functional.one_hot(yb, K)
    assert L.soft_cross_entropy(z, soft.float()).item() == pytest.approx(ref, rel=1e-6)
    # dicts of terms are mixed term by term
    d = label_terms(lambda y: {"a": L.cross_entropy(z, y), "b": z.sum() * 0 + 2.0}, batch)
    assert d["a"].item() == pytest.approx(ref, rel=1e-6) and d["b"].item() == pytest.approx(2.0)
    assert dominant_labels(batch).tolist() == _mixed_labels()       # λ = 0.3 < ½
    record_mix(batch, 0.6, torch.tensor(PERM))
    assert dominant_labels(batch).tolist() == LABELS


# ------------------------------------------------------------------------------ the three sums
def _run(name, options, sample, h=4, w=4):
    obj = build_objective(MethodConfig(name=name, options=options), K)
    mixer = obj._forward_owner
    mixer.sample = sample
    batch = _batch(h, w)
    out = obj.forward_batch(Linear(batch.x[0].numel()), batch, False)
    return obj, batch, out


def test_kd_plus_mixup_kd_ce_sees_the_mixed_labels():
    lam = 0.3
    obj, batch, out = _run("kd+mixup", {"kd": {"alpha": 0.4, "temperature": 2.0}},
                           lambda n: (lam, torch.tensor(PERM)))
    teacher = ModelOutput(torch.tensor(TEACHER), None, None)
    terms = obj.loss(out, batch, [teacher])
    z = out.logits.detach().tolist()
    mixed_ce = lam * _ce(z, LABELS) + (1 - lam) * _ce(z, _mixed_labels())
    assert terms["kd/ce"].item() == pytest.approx(0.6 * mixed_ce, rel=1e-5)
    assert terms["kd/kl"].item() == pytest.approx(0.4 * ref_kl(z, TEACHER, 2.0), rel=1e-5)
    assert terms["mixup/ce"].item() == pytest.approx(mixed_ce, rel=1e-5)
    # not the first label alone
    assert abs(terms["kd/ce"].item() - 0.6 * _ce(z, LABELS)) > 1e-3


def test_ls_plus_mixup_smoothed_target_is_mixed():
    lam, eps = 0.8, 0.2
    obj, batch, out = _run("ls+mixup", {"ls": {"epsilon": eps}, "mixup": {"ce": False}},
                           lambda n: (lam, torch.tensor(PERM)))
    terms = obj.loss(out, batch)
    assert list(terms) == ["ls/ls"]                                  # mixup with ce: false adds nothing
    z = out.logits.detach().tolist()
    ref = lam * _ce(z, LABELS, eps) + (1 - lam) * _ce(z, _mixed_labels(), eps)
    assert terms["ls/ls"].item() == pytest.approx(ref, rel=1e-5)
    # = CE against (1−ε)·(λ·Y + (1−λ)·Y[π]) + ε/K
    target = [[(1 - eps) * (lam * (k == a) + (1 - lam) * (k == b)) + eps / K for k in range(K)]
              for a, b in zip(LABELS, _mixed_labels())]
    assert terms["ls/ls"].item() == pytest.approx(_soft_ce(z, target), rel=1e-5)


def test_ols_plus_cutmix_uses_mixed_rows_and_dominant_label():
    box = (0, 3, 0, 4)                                   # 12 of 16 pixels replaced: λ = 0.25
    lam = cutmix_lambda(box, 4, 4)
    assert lam == pytest.approx(0.25)
    obj, batch, out = _run("ols+cutmix", {"cutmix": {"ce": False}},
                           lambda n, h, w: (lam, torch.tensor(PERM), box))
    ols = obj.methods["ols"]
    s = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]])
    ols.soft_label_matrix.copy_(s)
    terms = obj.loss(out, batch)
    assert sorted(terms) == ["ols/ce", "ols/soft"]
    z = out.logits.detach().tolist()
    ya, yb = LABELS, _mixed_labels()
    assert terms["ols/ce"].item() == pytest.approx(
        0.5 * (lam * _ce(z, ya) + (1 - lam) * _ce(z, yb)), rel=1e-5)      # Eq. 3 on mixed labels
    rows = s.tolist()
    assert terms["ols/soft"].item() == pytest.approx(
        0.5 * (lam * _soft_ce(z, [rows[y] for y in ya]) + (1 - lam) * _soft_ce(z, [rows[y] for y in yb])),
        rel=1e-5)                                                           # Eq. 4 on mixed rows
    # Eq. 5 on a mixed batch: a prediction counts for its dominant label (here y[π], λ < ½)
    logits = torch.full((3, K), -5.0)
    logits[torch.arange(3), torch.tensor(yb)] = 5.0                     # argmax = dominant label
    obj.on_step_end(ModelOutput(logits, None, None), batch)
    assert ols.count.tolist() == [1.0, 1.0, 1.0]
    probs = torch.softmax(logits, dim=1)
    torch.testing.assert_close(ols.accum[torch.tensor(yb)], probs)


def test_ols_accumulates_the_first_label_when_it_dominates():
    obj, batch, out = _run("ols+mixup", {}, lambda n: (0.7, torch.tensor(PERM)))
    ols = obj.methods["ols"]
    logits = torch.full((3, K), -5.0)
    logits[torch.arange(3), torch.tensor(_mixed_labels())] = 5.0   # right for y[π], wrong for y
    obj.on_step_end(ModelOutput(logits, None, None), batch)
    assert ols.count.sum().item() == 0.0                              # dominant label y: none correct


# ------------------------------------------------------------------------------ cutmix itself
@pytest.mark.parametrize("lam", [0.1, 0.37, 0.5, 0.9])
def test_cutmix_box_area_matches_lambda(lam):
    h = w = 32
    top, bottom, left, right = cutmix_box(lam, h, w, 16, 16)          # centred: not clipped
    side = int(h * math.sqrt(1 - lam))
    assert (bottom - top, right - left) == (side, side)
    assert cutmix_lambda((top, bottom, left, right), h, w) == pytest.approx(1 - side * side / (h * w))
    assert abs(cutmix_lambda((top, bottom, left, right), h, w) - lam) < 2 * math.sqrt(1 - lam) / h + 1e-9
    # at a corner the box is clipped and λ follows the actual area
    box = cutmix_box(lam, h, w, 0, 0)
    assert box[0] == 0 and box[2] == 0
    assert cutmix_lambda(box, h, w) == pytest.approx(1 - (box[1] * box[3]) / (h * w))


def test_sampled_lambda_is_the_pasted_fraction():
    torch.manual_seed(5)
    x = torch.zeros(4, 1, 16, 16)
    x[1::2] = 1.0
    index = None
    for _ in range(5):
        lam, index, box = sample_cutmix(1.0, 4, 16, 16)
        mixed = apply_cutmix(x, index, box)
        changed = (mixed != x).float().mean(dim=(1, 2, 3))
        # pixels taken from the partner: exactly the box; where the partner differs, 1 − λ of them
        differs = x.flatten(1)[:, 0] != x[index].flatten(1)[:, 0]
        for i in range(4):
            assert changed[i].item() == pytest.approx((1 - lam) if differs[i] else 0.0)
    assert sample_cutmix(0.0, 4, 16, 16)[0] == 1.0


def test_cutmix_forward_records_the_batch_form():
    batch = _batch(4, 4)
    x0 = batch.x.clone()
    method = CutMix(K)
    method.sample = lambda n, h, w: (0.75, torch.tensor(PERM), (1, 3, 1, 3))
    out = method.forward_batch(Linear(32), batch, False)
    assert batch.extra["mix_lambda"].item() == pytest.approx(0.75)
    assert batch.extra["mix_index"].tolist() == PERM
    assert batch.extra["cutmix_box"].tolist() == [1, 3, 1, 3]
    torch.testing.assert_close(batch.extra["unmixed_x"], x0)
    expected = x0.clone()
    expected[:, :, 1:3, 1:3] = x0[torch.tensor(PERM)][:, :, 1:3, 1:3]
    torch.testing.assert_close(batch.x, expected)
    z = out.logits.detach().tolist()
    ref = 0.75 * _ce(z, LABELS) + 0.25 * _ce(z, _mixed_labels())
    assert method.loss(out, batch)["ce"].item() == pytest.approx(ref, rel=1e-5)


def test_prob_zero_leaves_the_batch_unmixed():
    batch = _batch()
    x0 = batch.x.clone()
    CutMix(K, prob=0.0).forward_batch(Linear(32), batch, False)
    torch.testing.assert_close(batch.x, x0)
    assert batch.extra["mix_lambda"].item() == 1.0
    with pytest.raises(ConfigError, match="prob"):
        CutMix(K, prob=1.5)


# ------------------------------------------------------------------------------ engine
@pytest.mark.parametrize("name,extra", [
    ("kd+mixup", []),
    ("ls+mixup", ["method.options.mixup.ce=false"]),
    ("ols+cutmix", ["method.options.cutmix.ce=false"]),
    ("cutmix", ["method.options.prob=0.5"]),
])
def test_one_engine_step_on_cpu(name, extra):
    from softlabels.models import build_model

    cfg = build_config(None, ["data.name=synthetic", "data.options.num_classes=4", "data.options.image_size=16",
                              "data.options.channels=3", "data.options.train_size=16",
                              "data.options.test_size=8", "model.name=resnet8", f"method.name={name}",
                              "data.batch_size=8", "train.epochs=1", *extra])
    teachers = [build_model("resnet8", 4, 3, {})] if name.startswith("kd") else []
    tr = Trainer(cfg, teachers=teachers)
    tr.model.train()
    tr._reset_accumulators()
    batch = next(iter(tr.train_loader))
    terms = tr.train_step(batch)
    assert terms and all(torch.isfinite(v) for v in terms.values())
    assert "mix_lambda" in batch.extra


def test_training_accuracy_of_a_mixed_batch_is_lambda_weighted():
    """The epoch's train top-1 error counts a mixed sample λ·[pred = y] + (1−λ)·[pred = y[π]]
    (not [pred = y] alone, which would call a correct guess of the pasted label wrong)."""
    cfg = build_config(None, ["data.name=synthetic", "data.options.num_classes=3", "data.options.image_size=4",
                              "data.options.channels=2", "data.options.train_size=8", "data.options.test_size=4",
                              "model.name=resnet8", "method.name=cutmix", "data.batch_size=4", "train.epochs=1",
                              "data.val_fraction=0"])
    tr = Trainer(cfg)
    tr._reset_accumulators()
    batch = _batch()
    record_mix(batch, 0.3, torch.tensor(PERM))
    # predictions: sample 0 → y[π]₀ = 1 (pasted label), 1 → y₁ = 2 (own label), 2 → 0 (neither)
    logits = torch.tensor([[0.0, 5.0, 0.0], [0.0, 0.0, 5.0], [5.0, 0.0, 0.0]])
    out = ModelOutput(logits, logits, None)
    loss = torch.zeros(())
    tr._accumulate(out, batch, {"ce": loss}, loss)
    tr._term_names = ["loss", "ce"]
    stats = tr._train_stats()
    correct = 0.7 + 0.3 + 0.0          # (1−λ) for sample 0, λ for sample 1
    assert stats["top1_error"] == pytest.approx(100.0 * (1 - correct / 3))
    # unmixed: plain [pred = y]
    tr._reset_accumulators()
    plain = _batch()
    tr._accumulate(out, plain, {"ce": loss}, loss)
    assert tr._train_stats()["top1_error"] == pytest.approx(100.0 * (1 - 1 / 3))
