"""Dataset readers: tiny fixtures in the exact official layouts, and every layout error."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import expect_config_error, expect_data_error
from softlabels.data import (
    FileLoader,
    FileSplit,
    ImageFiles,
    ImageTensors,
    load_dataset,
)
from softlabels.data import digits as digits_mod
from softlabels.data.idx import FASHION_CLASSES, FASHION_MNIST_DEBIAN_ROOT
from softlabels.errors import ConfigError, DataError
from softlabels.registry import DATASETS


def test_registered_names():
    for name in ("digits", "mnist", "fashion-mnist", "cifar10", "cifar100", "imagefolder"):
        assert name in DATASETS
        desc = DATASETS.get(name).description
        assert desc and "\n" not in desc


# --------------------------------------------------------------------------------------------
# digits


def _documented_split(labels: np.ndarray) -> np.ndarray:
    """The split rule as written in the digits docstring, re-implemented independently."""
    order = np.random.default_rng(0).permutation(len(labels))
    test = np.zeros(len(labels), dtype=bool)
    for c in range(10):
        taken = 0
        quota = int(round(0.2 * int((labels == c).sum())))
        for i in order:
            if labels[i] == c and taken < quota:
                test[i] = True
                taken += 1
    return test


def test_digits_sizes_split_and_determinism():
    d = load_dataset("digits", None, None)
    assert isinstance(d, ImageTensors)
    assert len(d.train) + len(d.test) == 1797
    assert (len(d.train), len(d.test)) == (1438, 359)
    assert d.val is None
    assert d.train.images.dtype == torch.uint8 and d.train.images.shape[1:] == (1, 8, 8)
    assert d.train.labels.dtype == torch.int64
    assert d.classes == [str(i) for i in range(10)]
    assert (d.num_classes, d.in_channels, d.image_size) == (10, 1, 8)
    assert (d.crop_padding, d.hflip) == (1, False)
    total = torch.bincount(torch.cat([d.train.labels, d.test.labels]), minlength=10)
    test = torch.bincount(d.test.labels, minlength=10)
    for c in range(10):
        assert test[c].item() == round(0.2 * total[c].item())
    again = load_dataset("digits", "/ignored", {})
    assert torch.equal(again.train.images, d.train.images)
    assert torch.equal(again.test.labels, d.test.labels)


def test_digits_asset_matches_sklearn_and_documented_split():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    ref = sklearn_datasets.load_digits()
    with np.load(digits_mod.ASSET) as f:
        images, labels, test_mask = f["images"], f["labels"], f["test_mask"]
    expected = np.rint(ref.images * 255.0 / 16.0).astype(np.uint8)[:, None]
    assert np.array_equal(images, expected)
    assert np.array_equal(labels, ref.target.astype(np.int64))
    assert np.array_equal(test_mask, _documented_split(labels))
    d = load_dataset("digits", None, None)
    assert torch.equal(d.test.images, torch.from_numpy(expected[test_mask]))
    assert torch.equal(d.train.labels, torch.from_numpy(labels[~test_mask]))


def test_digits_mean_std_recomputed():
    d = load_dataset("digits", None, None)
    x = d.train.images.double() / 255.0
    assert d.mean[0] == pytest.approx(x.mean().item(), abs=1e-6)
    assert d.std[0] == pytest.approx(x.std(unbiased=False).item(), abs=1e-6)


def test_digits_damaged_asset(tmp_path, monkeypatch):
    bad = tmp_path / "digits.npz"
    bad.write_bytes(b"not a zip")
    monkeypatch.setattr(digits_mod, "ASSET", bad)
    monkeypatch.setattr(digits_mod._load_asset, "__defaults__", (bad,))
    expect_data_error(lambda: digits_mod.digits(), bad)
    monkeypatch.setattr(digits_mod._load_asset, "__defaults__", (tmp_path / "none.npz",))
    expect_data_error(lambda: digits_mod.digits(), tmp_path / "none.npz")


# --------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST (IDX)


def write_idx(path: Path, array: np.ndarray, gz: bool = True) -> Path:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    payload = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    payload += struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wb") as f:
            f.write(payload)
    else:
        path.write_bytes(payload)
    return path


def make_idx_tree(root: Path, n_train=6, n_test=4, gz=True) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 50, size=(n, 28, 28), dtype=np.uint8)
        images[:, 3, 5] = 200 + np.arange(n)  # a known pixel per image: row 3, column 5
        labels = (np.arange(n) * 3 % 10).astype(np.uint8)
        out[prefix] = (images, labels)
        out[prefix + "-images"] = write_idx(root / f"{prefix}-images-idx3-ubyte", images, gz)
        out[prefix + "-labels"] = write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, gz)
    return out


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_idx(tmp_path, gz):
    written = make_idx_tree(tmp_path / "mnist", gz=gz)
    d = load_dataset("mnist", str(tmp_path / "mnist"), None)
    assert d.train.images.shape == (6, 1, 28, 28) and d.test.images.shape == (4, 1, 28, 28)
    assert d.train.images.dtype == torch.uint8 and d.train.labels.dtype == torch.int64
    images, labels = written["train"]
    assert torch.equal(d.train.images[:, 0], torch.from_numpy(images))
    assert d.train.images[2, 0, 3, 5].item() == 202
    assert d.train.labels.tolist() == labels.tolist()
    assert d.test.labels.tolist() == written["t10k"][1].tolist()
    assert d.classes == [str(i) for i in range(10)]
    assert (d.crop_padding, d.hflip, d.in_channels, d.image_size) == (2, False, 1, 28)
    assert d.val is None


def test_mnist_torchvision_raw_folder(tmp_path):
    make_idx_tree(tmp_path / "MNIST" / "raw", gz=False)
    d = load_dataset("mnist", str(tmp_path), None)
    assert len(d.train) == 6


def test_fashion_mnist_fixture(tmp_path):
    make_idx_tree(tmp_path / "fm")
    d = load_dataset("fashion-mnist", str(tmp_path / "fm"), None)
    assert d.classes == FASHION_CLASSES and len(d.classes) == 10
    assert d.classes[0] == "T-shirt/top" and d.classes[9] == "Ankle boot"
    assert (d.crop_padding, d.hflip) == (2, True)


@pytest.mark.skipif(not os.path.isdir(FASHION_MNIST_DEBIAN_ROOT),
                    reason="Debian package dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_default_root():
    d = load_dataset("fashion-mnist", None, None)
    assert (len(d.train), len(d.test)) == (60000, 10000)
    assert torch.bincount(d.test.labels).tolist() == [1000] * 10


def test_mnist_errors(tmp_path):
    expect_data_error(lambda: load_dataset("mnist", None, None), "data.root")
    missing = tmp_path / "nowhere"
    expect_data_error(lambda: load_dataset("mnist", str(missing), None), missing, "idx3")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_data_error(lambda: load_dataset("mnist", str(empty), None), empty, "idx3")

    root = tmp_path / "m"
    w = make_idx_tree(root)
    w["t10k-labels"].unlink()
    expect_data_error(lambda: load_dataset("mnist", str(root), None), root,
                      "t10k-labels-idx1-ubyte")

    root = tmp_path / "truncated"
    w = make_idx_tree(root)
    blob = w["train-images"].read_bytes()
    w["train-images"].write_bytes(blob[: len(blob) // 2])  # cut gzip stream
    expect_data_error(lambda: load_dataset("mnist", str(root), None), w["train-images"])

    root = tmp_path / "short"
    w = make_idx_tree(root, gz=False)
    blob = w["train-images"].read_bytes()
    w["train-images"].write_bytes(blob[:-10])  # valid file, missing pixels
    expect_data_error(lambda: load_dataset("mnist", str(root), None), w["train-images"],
                      "truncated")

    root = tmp_path / "garbage"
    w = make_idx_tree(root, gz=False)
    w["t10k-images"].write_bytes(b"\x89PNG garbage that is not IDX")
    expect_data_error(lambda: load_dataset("mnist", str(root), None), w["t10k-images"],
                      "magic")

    root = tmp_path / "notgzip"
    w = make_idx_tree(root)
    w["train-labels"].write_bytes(b"plain bytes, not gzip")
    expect_data_error(lambda: load_dataset("mnist", str(root), None), w["train-labels"])

    root = tmp_path / "counts"
    w = make_idx_tree(root)
    write_idx(root / "train-labels-idx1-ubyte", np.zeros(5, np.uint8))  # 5 labels, 6 images
    expect_data_error(lambda: load_dataset("mnist", str(root), None), "5 labels", "6 images")


def test_unknown_option_is_config_error():
    with pytest.raises(ConfigError, match="data.options.size"):
        load_dataset("mnist", "/x", {"size": 3})


# --------------------------------------------------------------------------------------------
# CIFAR


def _pickle(path: Path, obj) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def _rows(n: int, offset: int) -> np.ndarray:
    data = np.zeros((n, 3072), dtype=np.uint8)
    for k in range(n):
        # channel-major row: index c*1024 + h*32 + w → image[c, h, w]
        data[k, 1 * 1024 + 2 * 32 + 7] = offset + k  # green, row 2, column 7
        data[k, 2 * 1024 + 31 * 32 + 0] = 255  # blue, row 31, column 0
    return data


def make_cifar10(parent: Path, per_batch=2, n_test=3, names=None) -> Path:
    folder = parent / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i in range(1, 6):
        labels = [(i + k) % 10 for k in range(per_batch)]
        _pickle(folder / f"data_batch_{i}", {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": labels,
            b"data": _rows(per_batch, 10 * i),
            b"filenames": [b"x.png"] * per_batch,
        })
    _pickle(folder / "test_batch", {
        b"labels": [9, 0, 5][:n_test], b"data": _rows(n_test, 100), b"filenames": [],
    })
    names = names or [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog",
                      b"horse", b"ship", b"truck"]
    _pickle(folder / "batches.meta", {
        b"label_names": names, b"num_cases_per_batch": per_batch, b"num_vis": 3072,
    })
    return folder


def make_cifar100(parent: Path, n_fine=100) -> Path:
    folder = parent / "cifar-100-python"
    folder.mkdir(parents=True)
    for split, n in (("train", 4), ("test", 2)):
        _pickle(folder / split, {
            b"filenames": [b"f.png"] * n,
            b"fine_labels": np.array([99, 0, 42, 7][:n]).tolist(),
            b"coarse_labels": [19, 0, 3, 1][:n],
            b"data": _rows(n, 50 if split == "train" else 60),
        })
    _pickle(folder / "meta", {
        b"fine_label_names": [f"fine{i}".encode() for i in range(n_fine)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    })
    return folder


SUBSET = {"expect_official": False}  # the fixtures hold a few images, not 50,000 / 10,000


@pytest.mark.parametrize("use_parent", [True, False])
def test_cifar10_reads_pickles(tmp_path, use_parent):
    folder = make_cifar10(tmp_path)
    d = load_dataset("cifar10", str(tmp_path if use_parent else folder), SUBSET)
    assert d.train.images.shape == (10, 3, 32, 32) and d.test.images.shape == (3, 3, 32, 32)
    assert d.train.images.dtype == torch.uint8 and d.train.labels.dtype == torch.int64
    assert d.train.images[3, 1, 2, 7].item() == 21  # batch 2, second image
    assert d.train.images[3, 2, 31, 0].item() == 255
    assert d.train.images[3].sum().item() == 21 + 255
    assert d.test.images[2, 1, 2, 7].item() == 102
    assert d.train.labels.tolist() == [(i + k) % 10 for i in range(1, 6) for k in range(2)]
    assert d.test.labels.tolist() == [9, 0, 5]
    assert d.classes[0] == "airplane" and d.classes[9] == "truck" and d.num_classes == 10
    assert (d.crop_padding, d.hflip, d.in_channels, d.image_size) == (4, True, 3, 32)
    assert len(d.mean) == 3 and len(d.std) == 3


def test_cifar100_fine_and_coarse(tmp_path):
    make_cifar100(tmp_path)
    d = load_dataset("cifar100", str(tmp_path), SUBSET)
    assert d.num_classes == 100 and d.classes[42] == "fine42"
    assert d.train.labels.tolist() == [99, 0, 42, 7] and d.test.labels.tolist() == [99, 0]
    assert d.train.images[1, 1, 2, 7].item() == 51
    c = load_dataset("cifar100", str(tmp_path / "cifar-100-python"), {"labels": "coarse", **SUBSET})
    assert c.num_classes == 20 and c.train.labels.tolist() == [19, 0, 3, 1]
    with pytest.raises(ConfigError):
        load_dataset("cifar100", str(tmp_path), {"labels": "medium"})


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_cifar_errors(tmp_path):
    expect_data_error(lambda: load_dataset("cifar10", None, None), "data.root")
    nowhere = tmp_path / "nowhere"
    expect_data_error(lambda: load_dataset("cifar10", str(nowhere), None), nowhere,
                      "cifar-10-batches-py")
    empty = tmp_path / "empty"
    empty.mkdir()
    expect_data_error(lambda: load_dataset("cifar10", str(empty), None), empty,
                      "data_batch_1..5")
    expect_data_error(lambda: load_dataset("cifar100", str(empty), None), empty,
                      "cifar-100-python")

    folder = make_cifar10(tmp_path / "missing")
    (folder / "data_batch_4").unlink()
    expect_data_error(lambda: load_dataset("cifar10", str(folder), None), folder, "data_batch_4")

    folder = make_cifar10(tmp_path / "truncated")
    blob = (folder / "data_batch_3").read_bytes()
    (folder / "data_batch_3").write_bytes(blob[: len(blob) // 2])
    expect_data_error(lambda: load_dataset("cifar10", str(folder), None),
                      folder / "data_batch_3")

    folder = make_cifar10(tmp_path / "garbage")
    (folder / "test_batch").write_bytes(b"\x00\x01garbage")
    expect_data_error(lambda: load_dataset("cifar10", str(folder), None), folder / "test_batch")

    folder = make_cifar10(tmp_path / "evil")
    _pickle(folder / "test_batch", {b"data": _Evil(), b"labels": []})
    msg = expect_data_error(lambda: load_dataset("cifar10", str(folder), None),
                            folder / "test_batch")
    assert "refusing" in msg

    folder = make_cifar10(tmp_path / "classes", names=[b"a"] * 9)
    expect_data_error(lambda: load_dataset("cifar10", str(folder), None),
                      folder / "batches.meta", "9 classes", "expected 10")

    folder = make_cifar10(tmp_path / "count")
    _pickle(folder / "data_batch_2", {b"data": _rows(2, 0), b"labels": [1, 2, 3]})
    expect_data_error(lambda: load_dataset("cifar10", str(folder), None),
                      folder / "data_batch_2", "3 labels")

    folder = make_cifar10(tmp_path / "types")
    _pickle(folder / "data_batch_5", {b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]})
    expect_data_error(lambda: load_dataset("cifar10", str(folder), None),
                      folder / "data_batch_5", "uint8")

    folder = make_cifar10(tmp_path / "range")
    _pickle(folder / "data_batch_1", {b"data": _rows(2, 0), b"labels": [1, 10]})
    expect_data_error(lambda: load_dataset("cifar10", str(folder), None), folder, "0..9")

    folder = make_cifar100(tmp_path / "c100", n_fine=99)
    expect_data_error(lambda: load_dataset("cifar100", str(folder), None), folder / "meta",
                      "expected 100")


# --------------------------------------------------------------------------------------------
# imagefolder + FileLoader

CLASSES = ["cat", "dog", "emu"]
COLOURS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "emu": (0, 0, 255)}


def make_tree(root: Path, counts=None, val=True, size=(20, 14)) -> Path:
    from PIL import Image

    counts = counts or {"train": 4, "val": 1, "test": 2}
    for split, n in counts.items():
        if split == "val" and not val:
            continue
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                ext = "png" if k % 2 == 0 else "JPG"
                mode = "RGB" if k % 3 else "L"
                colour = COLOURS[name] if mode == "RGB" else 128
                Image.new(mode, size, colour).save(folder / f"{k}.{ext}",
                                                   format="PNG" if ext == "png" else "JPEG")
            (folder / "notes.txt").write_text("not an image")
    return root


def test_imagefolder_reads_tree(tmp_path):
    root = make_tree(tmp_path / "tree")
    d = load_dataset("imagefolder", str(root), {"image_size": 8, "resize": 10})
    assert isinstance(d, ImageFiles)
    assert d.classes == CLASSES and d.num_classes == 3 and d.in_channels == 3
    assert (len(d.train), len(d.val), len(d.test)) == (12, 3, 6)
    assert d.train.labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4
    assert all(Path(p).parent.name == CLASSES[y] for p, y in zip(d.train.paths, d.train.labels))
    assert (d.image_size, d.resize) == (8, 10)
    assert d.mean == pytest.approx((0.485, 0.456, 0.406))
    sub = d.train.subset(torch.tensor([0, 5]))
    assert isinstance(sub, FileSplit) and len(sub) == 2 and sub.labels.tolist() == [0, 1]
    no_val = load_dataset("imagefolder", str(make_tree(tmp_path / "nv", val=False)), None)
    assert no_val.val is None and (no_val.image_size, no_val.resize) == (224, 256)


def test_imagefolder_errors(tmp_path):
    expect_data_error(lambda: load_dataset("imagefolder", None, None), "ROOT/{train,test}")
    nowhere = tmp_path / "nowhere"
    expect_data_error(lambda: load_dataset("imagefolder", str(nowhere), None), nowhere)

    root = make_tree(tmp_path / "no_test", counts={"train": 1})
    expect_data_error(lambda: load_dataset("imagefolder", str(root), None), root, "no test")

    root = make_tree(tmp_path / "mismatch", counts={"train": 1, "test": 1})
    (root / "test" / "emu").rename(root / "test" / "owl")
    expect_data_error(lambda: load_dataset("imagefolder", str(root), None),
                      root / "test", "missing from test: emu", "only in test: owl")

    root = make_tree(tmp_path / "val_mismatch", counts={"train": 1, "val": 1, "test": 1})
    (root / "val" / "yak").mkdir()
    expect_data_error(lambda: load_dataset("imagefolder", str(root), None), root / "val", "yak")

    root = tmp_path / "no_images"
    for split in ("train", "test"):
        (root / split / "cat").mkdir(parents=True)
    expect_data_error(lambda: load_dataset("imagefolder", str(root), None),
                      root / "train", "no image files")

    with pytest.raises(ConfigError):
        load_dataset("imagefolder", str(tmp_path), {"image_size": 300, "resize": 256})
    with pytest.raises(ConfigError):
        load_dataset("imagefolder", str(tmp_path), {"mean": [0.5, 0.5]})


def _loader(split, batch_size, **kw):
    opts = dict(train=True, image_size=8, resize=10, mean=(0.5, 0.5, 0.5),
                std=(0.25, 0.25, 0.25), device="cpu", seed=3)
    opts.update(kw)
    return FileLoader(split, batch_size, **opts)


def test_file_loader_batches(tmp_path):
    d = load_dataset("imagefolder", str(make_tree(tmp_path / "t")), {"image_size": 8})
    train = _loader(d.train, 4)
    assert len(train) == 3
    batches = list(train)
    assert len(batches) == 3
    for b in batches:
        assert b.x.shape == (4, 3, 8, 8) and b.x.dtype == torch.float32
        assert b.y.dtype == torch.int64 and torch.equal(b.y, d.train.labels[b.index])
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(12))
    # solid-colour images: a normalised pixel is (v/255 - 0.5) / 0.25, so red cat = (2, -2, -2)
    first = batches[0]
    for x, y, i in zip(first.x, first.y, first.index):
        if y == 0 and i % 4 in (1, 2):  # RGB files (k % 3 != 0) of class cat
            assert torch.allclose(x[:, 4, 4], torch.tensor([2.0, -2.0, -2.0]), atol=0.05)

    # same epoch → same order and crops; another epoch → another order
    again = list(_loader(d.train, 4))
    assert all(torch.equal(a.x, b.x) and torch.equal(a.index, b.index)
               for a, b in zip(batches, again))
    other = _loader(d.train, 4)
    other.set_epoch(1)
    assert not torch.equal(torch.cat([b.index for b in other]), seen)

    test = _loader(d.test, 4, train=False, channels_last=True)
    tb = list(test)
    assert len(test) == 2 and [len(b) for b in tb] == [4, 2]
    assert torch.cat([b.index for b in tb]).tolist() == list(range(6))
    assert tb[0].x.shape == (4, 3, 8, 8)
    assert tb[0].x.is_contiguous(memory_format=torch.channels_last)

    with pytest.raises(ConfigError):
        _loader(d.train, 5, world=2)


def test_file_loader_ddp_shards(tmp_path):
    d = load_dataset("imagefolder", str(make_tree(tmp_path / "t")), {"image_size": 8})
    for epoch in (0, 2):
        single = _loader(d.train, 6)
        ranks = [_loader(d.train, 6, rank=r, world=2) for r in (0, 1)]
        for loader in [single] + ranks:
            loader.set_epoch(epoch)
        assert len(single) == len(ranks[0]) == len(ranks[1]) == 2
        for full, r0, r1 in zip(single, *ranks):
            assert len(r0) == len(r1) == 3
            assert not set(r0.index.tolist()) & set(r1.index.tolist())
            assert torch.equal(torch.cat([r0.index, r1.index]), full.index)
            # every sample gets the same crop/flip as in the single-process run
            assert torch.equal(torch.cat([r0.x, r1.x]), full.x)

    evals = [_loader(d.test, 4, train=False, rank=r, world=2) for r in (0, 1)]
    idx = [torch.cat([b.index for b in loader]).tolist() for loader in evals]
    assert idx == [[0, 1, 2], [3, 4, 5]]
    odd = [_loader(d.test, 5, train=False, rank=r, world=2) for r in (0, 1)]  # 2 per rank
    assert [[len(b) for b in loader] for loader in odd] == [[2, 1], [2, 1]]


@pytest.mark.parametrize("workers", [0, 1])
def test_file_loader_corrupt_image(tmp_path, workers):
    root = make_tree(tmp_path / "t", counts={"train": 2, "test": 1})
    bad = root / "train" / "dog" / "0.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    d = load_dataset("imagefolder", str(root), {"image_size": 8})
    loader = _loader(d.train, 6, workers=workers)
    expect_data_error(lambda: list(loader), bad)
    loader = _loader(d.train.subset([0, 1, 4, 5]), 2, train=False, workers=workers)
    assert sum(len(b) for b in loader) == 4  # the other files are fine
