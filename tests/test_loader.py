"""The in-memory loader: batched crop/flip, determinism per (seed, epoch), DDP shards, val carve."""
import torch

from softlabels.data.augment import CropFlip, crop_flip, normalize
from softlabels.data.base import TensorSplit
from softlabels.data.loader import TensorLoader, shard_bounds
from softlabels.data.prepare import stratified_holdout


def test_crop_flip_against_explicit_indexing():
    torch.manual_seed(0)
    x = torch.randint(0, 256, (5, 3, 6, 7), dtype=torch.uint8)
    pad = 2
    dy, dx = torch.tensor([0, 4, 2, 1, 3]), torch.tensor([4, 0, 2, 3, 1])
    flip = torch.tensor([False, True, True, False, True])
    out = crop_flip(x, pad, dy, dx, flip)
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    for b in range(5):
        want = padded[b, :, dy[b]:dy[b] + 6, dx[b]:dx[b] + 7]
        if flip[b]:
            want = want.flip(-1)
        assert torch.equal(out[b], want), b


def test_crop_with_centre_offset_and_no_flip_is_identity():
    x = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    centre = torch.full((3,), 4)
    assert torch.equal(crop_flip(x, 4, centre, centre, torch.zeros(3, dtype=torch.bool)), x)


def test_normalize():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    out = normalize(x, (0.5,), (0.25,))
    assert torch.allclose(out, torch.tensor([[[[-2.0, 2.0]]]]))


def _split(n=50, k=5):
    g = torch.Generator().manual_seed(1)
    return TensorSplit(torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8),
                       torch.arange(n) % k)


def _loader(split, **kw):
    base = dict(batch_size=16, train=True, mean=(0.5,), std=(0.25,), device="cpu", seed=3,
                augment=CropFlip(1, True))
    base.update(kw)
    return TensorLoader(split, **base)


def test_same_epoch_same_batches_other_epoch_differs():
    split = _split()
    a, b = _loader(split), _loader(split)
    a.set_epoch(2), b.set_epoch(2)
    for ba, bb in zip(a, b):
        assert torch.equal(ba.x, bb.x) and torch.equal(ba.index, bb.index)
    b.set_epoch(3)
    assert not torch.equal(next(iter(a)).index, next(iter(b)).index)


def test_every_sample_once_per_epoch_with_its_label():
    split = _split()
    loader = _loader(split, augment=None)
    seen = torch.cat([b.index for b in loader])
    assert sorted(seen.tolist()) == list(range(50))
    for b in loader:
        assert torch.equal(b.y, split.labels[b.index])
    assert len(loader) == 4  # 16+16+16+2: the short last batch is kept


def test_ddp_shards_reassemble_the_single_process_batch():
    split = _split()  # 50 samples in global batches of 15: 15, 15, 15, 5 (5 split 2+2+1)
    single = list(_loader(split, batch_size=15))
    ranks = [list(_loader(split, batch_size=15, rank=r, world=3)) for r in range(3)]
    assert [len(b) for b in single] == [15, 15, 15, 5]
    for i, whole in enumerate(single):
        parts = [ranks[r][i] for r in range(3)]
        assert torch.equal(torch.cat([p.index for p in parts]), whole.index)
        assert torch.equal(torch.cat([p.x for p in parts]), whole.x)  # same crops and flips


def test_eval_loader_shards_are_contiguous_and_cover():
    split = _split(n=23)
    got = []
    for r in range(3):
        loader = TensorLoader(split, 4, train=False, mean=(0.5,), std=(0.25,), device="cpu", rank=r, world=3)
        got += torch.cat([b.index for b in loader]).tolist()
    assert got == list(range(23))
    assert [shard_bounds(23, r, 3) for r in range(3)] == [(0, 8), (8, 16), (16, 23)]


def test_stratified_holdout_takes_the_fraction_of_every_class():
    labels = torch.tensor([0] * 30 + [1] * 10 + [2] * 5)
    keep, hold = stratified_holdout(labels, 0.2, seed=0)
    assert sorted(torch.cat([keep, hold]).tolist()) == list(range(45))
    assert torch.bincount(labels[hold]).tolist() == [6, 2, 1]
    again, _ = stratified_holdout(labels, 0.2, seed=0)
    assert torch.equal(keep, again)
