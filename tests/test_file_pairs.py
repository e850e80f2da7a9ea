"""File datasets supply what methods ask for: class pairs, extra views, clean copies.

The fixture's images carry their identity in the red channel (one constant value per file,
which no crop, flip or resize changes) and horizontal/vertical ramps in green/blue (which every
crop and flip changes), so a test can tell which file an augmented image came from and whether
two augmentations differ. PNG only, so the pixel values are exact.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from softlabels.data import FileLoader, TensorSplit, load_dataset
from softlabels.data.loader import ClassPairBatches, TensorLoader, epoch_generator, shard_bounds
from softlabels.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["cat", "dog", "emu"]
TRAIN = {"cat": 5, "dog": 3, "emu": 1}  # a large class, a small one, a singleton
EXTRAS = ("view1", "view2", "clean_x", "partner_x", "partner_y", "partner_index")


def make_tree(root: Path, train=None, size=20) -> Path:
    from PIL import Image

    counts = {"train": train or TRAIN, "val": {c: 1 for c in CLASSES}, "test": {c: 1 for c in CLASSES}}
    file_id = 0
    for split, per_class in counts.items():
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(per_class[name]):
                pixels = np.zeros((size, size, 3), dtype=np.uint8)
                pixels[..., 0] = 10 + 7 * file_id                       # identity
                pixels[..., 1] = (np.arange(size) * 255 // (size - 1))[None, :]  # ramp →
                pixels[..., 2] = (np.arange(size) * 255 // (size - 1))[:, None]  # ramp ↓
                Image.fromarray(pixels).save(folder / f"{k}.png")
                file_id += 1
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = make_tree(tmp_path_factory.mktemp("files") / "tree")
    return load_dataset("imagefolder", str(root), {"image_size": 8, "resize": 10})


def loader(split, batch_size=4, *, include_self=None, **kw):
    """mean 0, std 1: a normalised pixel is v/255, so round(255·x) is the stored value."""
    opts = dict(train=True, image_size=8, resize=10, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                device="cpu", seed=5)
    opts.update(kw)
    if include_self is not None:
        opts["sampler"] = ClassPairBatches(split.labels, batch_size, include_self)
    return FileLoader(split, batch_size, **opts)


def run(loader_, epoch=0):
    loader_.set_epoch(epoch)
    return list(loader_)


def red(split):
    """Each file's identity value, by position in the split."""
    from PIL import Image

    values = []
    for path in split.paths:
        with Image.open(path) as im:
            values.append(im.getpixel((0, 0))[0])
    return torch.tensor(values)


def identity(x: torch.Tensor) -> torch.Tensor:
    """The red value of each image of a batch; asserts it is constant over the image."""
    r = (x[:, 0] * 255).round()
    assert torch.equal(r.amin(dim=(1, 2)), r.amax(dim=(1, 2)))
    return r[:, 0, 0].long()


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert list(p.extra) == list(q.extra)
        for key in ("x", "y", "index"):
            assert torch.equal(getattr(p, key), getattr(q, key)), key
        for key in p.extra:
            assert torch.equal(p.extra[key], q.extra[key]), key


# ------------------------------------------------------------------------------ class pairs
@pytest.mark.parametrize("include_self", [False, True])
def test_pairs_are_the_class_pair_samplers_and_come_from_the_right_files(data, include_self):
    split, ids = data.train, red(data.train)
    labels = split.labels
    sizes = torch.bincount(labels)[labels]
    self_pairs = 0
    for epoch in (0, 1, 2):
        batches = run(loader(split, 4, include_self=include_self), epoch)
        # the global batches are exactly ClassPairBatches' on stream 0 of the epoch generator
        expected = list(ClassPairBatches(labels, 4, include_self).batches(epoch_generator(5, epoch)))
        assert len(batches) == len(expected) == 3 and [len(b) for b in batches] == [4, 4, 1]
        for b, pairs in zip(batches, expected):
            assert list(b.extra) == ["partner_x", "partner_y", "partner_index"]
            assert torch.equal(b.index, pairs[:, 0]) and torch.equal(b.extra["partner_index"], pairs[:, 1])
            assert torch.equal(b.y, labels[b.index])
            assert torch.equal(b.extra["partner_y"], b.y)
            assert torch.equal(labels[b.extra["partner_index"]], b.y)
            assert b.extra["partner_x"].shape == b.x.shape == (len(b), 3, 8, 8)
            # the anchor and the partner images are decoded from their own files
            assert torch.equal(identity(b.x), ids[b.index])
            assert torch.equal(identity(b.extra["partner_x"]), ids[b.extra["partner_index"]])
            same = b.index == b.extra["partner_index"]
            assert bool(same[sizes[b.index] == 1].all())  # a singleton is its own partner
            if not include_self:
                assert not bool(same[sizes[b.index] > 1].any())
            self_pairs += int(same[sizes[b.index] > 1].sum())
            # a partner that is its anchor is still augmented independently
            for k in same.nonzero().flatten().tolist():
                assert not torch.equal(b.x[k], b.extra["partner_x"][k])
        anchors = torch.cat([b.index for b in batches])
        assert sorted(anchors.tolist()) == list(range(len(split)))  # each sample once per epoch
    assert (self_pairs > 0) == include_self


@pytest.mark.parametrize("include_self", [False, True])
def test_same_contract_as_the_tensor_loader(data, include_self):
    """Same labels, seed, epoch and batch: the in-memory loader forms the same pairs, with the
    same extra keys in the same order and dtypes."""
    split = data.train
    images = torch.zeros(len(split), 3, 8, 8, dtype=torch.uint8)
    tensor = TensorLoader(TensorSplit(images, split.labels), 4, train=True, mean=(0, 0, 0), std=(1, 1, 1),
                          device="cpu", seed=5, views=2, clean=True,
                          sampler=ClassPairBatches(split.labels, 4, include_self))
    files = loader(split, 4, include_self=include_self, views=2, clean=True)
    for epoch in (0, 3):
        tensor.set_epoch(epoch)
        tb, fb = list(tensor), run(files, epoch)
        assert len(tensor) == len(files) == len(tb) == len(fb)
        for t, f in zip(tb, fb):
            assert list(t.extra) == list(f.extra) == ["view1", "clean_x", "partner_x", "partner_y",
                                                      "partner_index"]
            for key in ("index", "y"):
                assert torch.equal(getattr(t, key), getattr(f, key))
            for key in ("partner_y", "partner_index"):
                assert torch.equal(t.extra[key], f.extra[key])
            for key in f.extra:
                assert f.extra[key].dtype == t.extra[key].dtype and f.extra[key].shape[0] == len(f)


# ------------------------------------------------------------------------------ views, clean
def test_views_are_independent_augmentations_of_the_same_file(data):
    split, ids = data.train, red(data.train)
    plain = run(loader(split, 3))
    batches = run(loader(split, 3, views=3))
    assert len(batches) == len(plain) == 3
    differ = 0
    for b, p in zip(batches, plain):
        assert list(b.extra) == ["view1", "view2"]
        # extra views do not change batch.x
        assert torch.equal(b.x, p.x) and torch.equal(b.index, p.index)
        views = [b.x, b.extra["view1"], b.extra["view2"]]
        for v in views:
            assert v.shape == (3, 3, 8, 8)
            assert torch.equal(identity(v), ids[b.index])  # every view from the anchor's file
        for k in range(len(b)):
            differ += sum(not torch.equal(views[i][k], views[j][k]) for i, j in ((0, 1), (0, 2), (1, 2)))
    assert differ >= 20  # of 27 pairs of views: random resized crops and flips rarely coincide


def test_clean_copy_is_the_eval_transform_of_the_file(data):
    from PIL import Image
    from torchvision.transforms import v2

    split = data.train
    eval_tf = v2.Compose([v2.Resize(10, antialias=True), v2.CenterCrop(8), v2.PILToTensor()])
    batches = run(loader(split, 3, clean=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)))
    mean = torch.tensor([0.5, 0.4, 0.3]).view(3, 1, 1)
    std = torch.tensor([0.2, 0.25, 0.3]).view(3, 1, 1)
    evaluated = {int(b.index[k]): b.x[k]
                 for b in run(loader(split, 3, train=False, mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3)))
                 for k in range(len(b))}
    for b in batches:
        assert list(b.extra) == ["clean_x"]
        for k, i in enumerate(b.index.tolist()):
            with Image.open(split.paths[i]) as im:
                expected = (eval_tf(im.convert("RGB")).float() / 255.0 - mean) / std
            torch.testing.assert_close(b.extra["clean_x"][k], expected)
            torch.testing.assert_close(b.extra["clean_x"][k], evaluated[i])
        assert not torch.equal(b.x, b.extra["clean_x"])


def test_without_augmentation_training_images_are_the_eval_transform(data):
    """``data.augment=false``: training batches are the evaluation images (in the training order)."""
    split = data.train
    evaluated = {int(b.index[k]): b.x[k] for b in run(loader(split, 3, train=False)) for k in range(len(b))}
    for aug in (False, True):
        seen = [(int(i), b.x[k]) for b in run(loader(split, 3, augment=aug)) for k, i in enumerate(b.index)]
        same = [torch.equal(x, evaluated[i]) for i, x in seen]
        assert all(same) if not aug else not all(same)


def test_hflip_false_never_mirrors(data):
    """RandomResizedCrop only: with the green/blue ramps of the fixture, a mirrored image would have a
    decreasing green ramp along the width."""
    def mirrored(flip):
        green = torch.cat([b.x[:, 1] for e in range(3) for b in run(loader(data.train, 4, hflip=flip), e)])
        return (green[:, :, -1] < green[:, :, 0]).any(dim=1)

    assert not mirrored(False).any()
    assert mirrored(True).any()


def test_each_file_is_decoded_once_per_step(data, monkeypatch):
    import PIL.Image

    opened = []
    real_open = PIL.Image.open
    monkeypatch.setattr(PIL.Image, "open", lambda path, *a, **k: opened.append(path) or real_open(path, *a, **k))
    split = data.train
    files = loader(split, 4, include_self=True, views=3, clean=True)
    steps = 0
    for epoch in range(4):
        files.set_epoch(epoch)
        for b in files:
            used = set(b.index.tolist()) | set(b.extra["partner_index"].tolist())
            assert sorted(opened) == sorted(split.paths[i] for i in used)  # each once, no other
            opened.clear()
            steps += 1
    assert steps == 12


# ------------------------------------------------------------------------------ determinism
def test_deterministic_per_seed_epoch_and_independent_of_workers(data):
    split = data.train
    opts = dict(include_self=False, views=2, clean=True)
    first = run(loader(split, 4, **opts), epoch=1)
    assert_same_batches(first, run(loader(split, 4, **opts), epoch=1))
    assert_same_batches(first, run(loader(split, 4, workers=2, **opts), epoch=1))
    other = run(loader(split, 4, **opts), epoch=2)
    assert not torch.equal(torch.cat([b.index for b in first]), torch.cat([b.index for b in other]))
    reseeded = run(loader(split, 4, seed=6, **opts), epoch=1)
    assert not all(torch.equal(a.x, b.x) for a, b in zip(first, reseeded))
    # the same plan the loader reports
    files = loader(split, 4, **opts)
    plan, partners = files.plan(1), files.partner_plan(1)
    assert [[i for i, _ in step] for step in plan] == [b.index.tolist() for b in first]
    assert [[i for i, _ in step] for step in partners] == [b.extra["partner_index"].tolist() for b in first]
    # no sampler: no partners; 9 samples in batches of 4: the short last batch is kept
    assert loader(split, 4).partner_plan(0) == [[], [], []]


# ------------------------------------------------------------------------------ DDP
@pytest.mark.parametrize("include_self", [False, True])
def test_two_ranks_cover_the_single_process_batch(data, include_self):
    split = data.train
    opts = dict(include_self=include_self, views=2, clean=True)
    for epoch in (0, 4):
        single = run(loader(split, 6, **opts), epoch)
        ranks = [run(loader(split, 6, rank=r, world=2, **opts), epoch) for r in (0, 1)]
        assert [len(b) for b in single] == [6, 3]
        assert [len(b) for b in ranks[0]] == [3, 2] and [len(b) for b in ranks[1]] == [3, 1]
        for whole, r0, r1 in zip(single, *ranks):
            lo, hi = shard_bounds(len(whole), 0, 2)
            assert torch.equal(r0.index, whole.index[lo:hi])
            assert not set(r0.index.tolist()) & set(r1.index.tolist())
            for key in ("x", "y", "index"):
                assert torch.equal(torch.cat([getattr(r0, key), getattr(r1, key)]), getattr(whole, key))
            for key in ("view1", "clean_x", "partner_x", "partner_y", "partner_index"):
                assert torch.equal(torch.cat([r0.extra[key], r1.extra[key]]), whole.extra[key]), key


def test_a_last_batch_shorter_than_the_ranks_is_skipped(data):
    split = data.train  # 9 samples in global batches of 4: 4, 4, 1
    single = loader(split, 4, include_self=False)
    ranks = [loader(split, 4, include_self=False, rank=r, world=2) for r in (0, 1)]
    assert len(single) == 3 and len(ranks[0]) == len(ranks[1]) == 2
    whole = run(single, 1)
    parts = [run(r, 1) for r in ranks]
    assert [len(b) for p in parts for b in p] == [2, 2, 2, 2]
    for k in range(2):
        assert torch.equal(torch.cat([parts[0][k].index, parts[1][k].index]), whole[k].index)
        assert torch.equal(torch.cat([parts[0][k].extra["partner_x"], parts[1][k].extra["partner_x"]]),
                           whole[k].extra["partner_x"])


# ------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_file_in_a_partner_slot_is_one_line_naming_it(tmp_path, workers):
    root = make_tree(tmp_path / "t")
    d = load_dataset("imagefolder", str(root), {"image_size": 8, "resize": 10})
    bad = root / "train" / "cat" / "3.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    position = d.train.paths.index(str(bad))
    files = loader(d.train, 4, include_self=False, workers=workers)
    # an epoch whose first step with the bad file has it only as a partner
    for epoch in range(50):
        steps = zip(files.plan(epoch), files.partner_plan(epoch))
        hits = [(k, [i for i, _ in a], [i for i, _ in p]) for k, (a, p) in enumerate(steps)
                if position in [i for i, _ in a] + [i for i, _ in p]]
        k, anchors, partners = hits[0]
        if position in partners and position not in anchors:
            break
    else:
        pytest.fail("no epoch puts the bad file in a partner slot first")
    files.set_epoch(epoch)
    got = []
    with pytest.raises(DataError) as info:
        for b in files:
            got.append(b)
    msg = str(info.value)
    assert "\n" not in msg and str(bad) in msg and "cannot read image" in msg
    assert len(got) == k  # the steps before it loaded


def test_options_are_checked_and_evaluation_ignores_them(data):
    split = data.train
    with pytest.raises(ConfigError, match="views"):
        loader(split, 4, views=0)
    with pytest.raises(ConfigError, match="sampler"):
        FileLoader(split, 6, train=True, image_size=8, resize=10, mean=(0, 0, 0), std=(1, 1, 1),
                   sampler=ClassPairBatches(split.labels, 4))
    evaluation = loader(split, 4, train=False, include_self=False, views=2, clean=True)
    assert evaluation.sampler is None and evaluation.views == 1 and not evaluation.clean
    assert all(not b.extra for b in evaluation)


# ------------------------------------------------------------------------------ end to end
@pytest.mark.parametrize("name,options,term", [
    ("cskd", [], "cls"),
    ("cskd", ["method.options.variant=official"], "cls"),
    ("cskd_e", [], "consistency"),
    ("ddgsd", [], "kl"),
])
def test_trainer_runs_on_an_image_folder(tmp_path, name, options, term):
    import math

    from softlabels.config import build_config
    from softlabels.engine.trainer import Trainer

    root = make_tree(tmp_path / "tree", train={c: 4 for c in CLASSES}, size=20)
    cfg = build_config(None, [
        "data.name=imagefolder", f"data.root={root}", "data.options.image_size=16",
        "data.options.resize=18", "data.batch_size=4", "data.eval_batch_size=8",
        "model.name=resnet8", f"method.name={name}", "train.epochs=1", "train.threads=1",
        "train.device=cpu"] + options)
    trainer = Trainer(cfg, tmp_path / "run")
    assert isinstance(trainer.train_loader, FileLoader)
    if name.startswith("cskd"):
        assert isinstance(trainer.train_loader.sampler, ClassPairBatches)
        assert trainer.train_loader.sampler.include_self == bool(options)
    assert trainer.train_loader.views == (2 if name == "ddgsd" else 1)
    assert trainer.train_loader.clean == (name == "cskd_e")
    assert trainer.val_loader.sampler is None and not trainer.val_loader.clean
    final = trainer.fit()
    train = trainer.history[-1]["train"]
    assert term in train and math.isfinite(train[term])
    assert math.isfinite(final["last"]["test"]["top1_error"])
