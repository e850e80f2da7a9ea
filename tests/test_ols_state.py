"""OLS soft-label matrix: accumulation and swap across epochs, for every variant (METHODS.md §1)."""
import pytest
import torch

from softlabels.methods.ols import OnlineLabelSmoothing, ols_soft_labels
from helpers import FakeBatch as Batch, FakeOutput as Out


def probs(logits):
    return torch.softmax(torch.tensor(logits), 1)


# Epoch 1: class 0 twice correct in ONE batch (both must count), class 1 wrong only, class 2 once.
E1_LOGITS = [[3.0, 0.0, 0.0], [2.0, 1.0, 0.0], [2.0, 0.0, 1.0], [0.0, 0.5, 2.0]]
E1_LABELS = [0, 0, 1, 2]
# Epoch 2: only class 1 correct; classes 0 and 2 have no correct sample.
E2_LOGITS = [[0.0, 4.0, 0.0], [0.0, 1.0, 3.0]]
E2_LABELS = [1, 0]


def test_paper_variant_two_epochs():
    m = OnlineLabelSmoothing(3)
    assert torch.allclose(m.soft_label_matrix, torch.full((3, 3), 1 / 3))  # starts uniform
    m.on_step_end(Out(torch.tensor(E1_LOGITS)), Batch(E1_LABELS))
    m.on_epoch_end(0)
    p = probs(E1_LOGITS)
    expected = torch.stack([(p[0] + p[1]) / 2, torch.full((3,), 1 / 3), p[3]])
    assert torch.allclose(m.soft_label_matrix, expected, atol=1e-6)
    assert m.count.sum() == 0 and m.accum.abs().sum() == 0  # accumulators reset
    m.on_step_end(Out(torch.tensor(E2_LOGITS)), Batch(E2_LABELS))
    m.on_epoch_end(1)
    p2 = probs(E2_LOGITS)
    # replaced, not averaged with the previous matrix; empty classes back to uniform
    expected2 = torch.stack([torch.full((3,), 1 / 3), p2[0], torch.full((3,), 1 / 3)])
    assert torch.allclose(m.soft_label_matrix, expected2, atol=1e-6)


def test_accumulation_split_across_steps_equals_one_step():
    a, b = OnlineLabelSmoothing(3), OnlineLabelSmoothing(3)
    a.on_step_end(Out(torch.tensor(E1_LOGITS)), Batch(E1_LABELS))
    b.on_step_end(Out(torch.tensor(E1_LOGITS[:2])), Batch(E1_LABELS[:2]))
    b.on_step_end(Out(torch.tensor(E1_LOGITS[2:])), Batch(E1_LABELS[2:]))
    assert torch.allclose(a.accum, b.accum) and torch.equal(a.count, b.count)
    assert a.count.tolist() == [2.0, 0.0, 1.0]


def test_official_cifar_starts_at_zero_so_first_epoch_is_half_ce():
    m = OnlineLabelSmoothing(3, variant="official_cifar")
    assert m.soft_label_matrix.abs().sum() == 0
    z = torch.tensor(E1_LOGITS)
    terms = m.loss(Out(z), Batch(E1_LABELS))
    total = sum(terms.values())
    assert total.item() == pytest.approx(0.5 * torch.nn.functional.cross_entropy(z, torch.tensor(E1_LABELS)).item(), abs=1e-6)


def test_official_fgvc_weights_and_keep_rule():
    m = OnlineLabelSmoothing(3, variant="official_fgvc")
    assert (m.ce_weight, m.soft_weight, m.keep_threshold) == (1.0, 1.0, 0.88)
    prev = torch.tensor([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.5, 0.3, 0.2]])
    accum = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0], [0.2, 0.2, 0.6]])
    count = torch.tensor([2.0, 0.0, 1.0])
    new = ols_soft_labels(accum, count, prev, keep_threshold=0.88)
    assert torch.allclose(new[0], prev[0])                       # confident row kept
    assert torch.allclose(new[1], torch.full((3,), 1 / 3))       # empty class reset even if confident
    assert torch.allclose(new[2], torch.tensor([0.2, 0.2, 0.6]))  # normal update


def test_update_every_n_steps():
    m = OnlineLabelSmoothing(3, update_every=1)
    m.on_step_end(Out(torch.tensor(E1_LOGITS)), Batch(E1_LABELS))
    p = probs(E1_LOGITS)
    assert torch.allclose(m.soft_label_matrix[2], p[3], atol=1e-6)  # swapped after one step
    before = m.soft_label_matrix.clone()
    m.on_epoch_end(0)  # epoch end does not swap again in this mode
    assert torch.equal(m.soft_label_matrix, before)


def test_single_variant_picks_one_correct_sample():
    torch.manual_seed(0)
    m = OnlineLabelSmoothing(3, single=True)
    m.on_step_end(Out(torch.tensor(E1_LOGITS)), Batch(E1_LABELS))
    m.on_epoch_end(0)
    p = probs(E1_LOGITS)
    row0 = m.soft_label_matrix[0]
    assert torch.allclose(row0, p[0], atol=1e-6) or torch.allclose(row0, p[1], atol=1e-6)
    assert torch.allclose(m.soft_label_matrix[1], torch.full((3,), 1 / 3))


def test_state_dict_round_trip_keeps_matrix():
    m = OnlineLabelSmoothing(3)
    m.on_step_end(Out(torch.tensor(E1_LOGITS)), Batch(E1_LABELS))
    m.on_epoch_end(0)
    m.on_step_end(Out(torch.tensor(E2_LOGITS)), Batch(E2_LABELS))
    m2 = OnlineLabelSmoothing(3)
    m2.load_state_dict(m.state_dict())
    assert torch.equal(m2.soft_label_matrix, m.soft_label_matrix)
    assert torch.equal(m2.accum, m.accum) and torch.equal(m2.count, m.count)
