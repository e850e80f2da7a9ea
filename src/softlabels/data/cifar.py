"""``cifar10`` and ``cifar100``: the official "python version" pickle batches.

Layouts (ROOT may be the parent folder or the batches folder itself)::

    ROOT/cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}
    ROOT/cifar-100-python/{train, test, meta}

Each batch is a pickled dict: ``b"data"`` an N×3072 uint8 array (1024 red, then 1024 green,
then 1024 blue values, rows in order), and ``b"labels"`` (CIFAR-10) or ``b"fine_labels"`` /
``b"coarse_labels"`` (CIFAR-100). The meta file names the classes (``b"label_names"``,
``b"fine_label_names"``, ``b"coarse_label_names"``). Official splits: 50,000 train / 10,000
test; neither has a validation split. With ``expect_official`` (default) the counts must be the
official ones (every class trained, 50,000 / 10,000 images), so a partial but well-formed set
stops with one line; ``expect_official: false`` accepts subsets (the structure is still checked).

Security: unpickling can run arbitrary code, so these files must come from a trusted source
(the official archive). As a second line of defence they are read with an unpickler that only
resolves the few globals a pickled NumPy array needs and refuses everything else, and every
value read is type-checked before use.
"""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import List, Literal, Optional, Tuple

import numpy as np
import torch

from ..errors import DataError
from ..registry import DATASETS
from .base import ImageTensors, TensorSplit
from .fgvc import check_official, need_root
from .files import error_text

# Per-channel mean and (population) std of the training images on the 0..1 scale.
CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)

CIFAR10_LAYOUT = (
    "the official python layout: ROOT/cifar-10-batches-py/{data_batch_1..5,test_batch,"
    "batches.meta} (ROOT may also be that folder itself)"
)
CIFAR100_LAYOUT = (
    "the official python layout: ROOT/cifar-100-python/{train,test,meta} "
    "(ROOT may also be that folder itself)"
)


def _allowed_globals() -> dict:
    # Pickled ndarrays reduce to _reconstruct(ndarray, shape, dtype) + setstate; under NumPy 1
    # the module is numpy.core.multiarray, under NumPy 2 numpy._core.multiarray. Protocol-2
    # pickles written by Python 3 encode bytes through _codecs.encode; protocol 5 (NumPy >= 1.16)
    # rebuilds arrays with numeric._frombuffer. The functions are taken from live arrays rather
    # than imported by name, so no private NumPy module is imported here.
    import codecs

    reconstruct = np.ndarray((0,)).__reduce__()[0]
    frombuffer = np.zeros(1).__reduce_ex__(5)[0]
    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,
    }


class _ArrayUnpickler(pickle.Unpickler):
    _allowed = None

    def find_class(self, module: str, name: str):
        if _ArrayUnpickler._allowed is None:
            _ArrayUnpickler._allowed = _allowed_globals()
        try:
            return _ArrayUnpickler._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing global {module}.{name} (only NumPy arrays are expected)"
            ) from None


def _load_pickle(path: Path, what: str) -> dict:
    """Like ``pickle.load(f, encoding="bytes")`` restricted to dicts of arrays/bytes/lists."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, encoding="bytes").load()
    except FileNotFoundError:
        raise DataError(f"{what}: {path} is missing") from None
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from a bad file
        raise DataError(f"{what}: cannot unpickle {path} ({error_text(exc)})") from None
    if not isinstance(obj, dict):
        raise DataError(f"{what}: {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def _get(d: dict, key: bytes, path: Path, what: str):
    if key in d:
        return d[key]
    skey = key.decode()  # tolerate files re-pickled by Python 3 with str keys
    if skey in d:
        return d[skey]
    keys = ", ".join(sorted(repr(k) for k in d)[:8])
    raise DataError(f"{what}: {path} has no {key!r} entry (found {keys})")


def _read_batch(path: Path, label_key: bytes, what: str) -> Tuple[np.ndarray, np.ndarray]:
    d = _load_pickle(path, what)
    data = _get(d, b"data", path, what)
    labels = _get(d, label_key, path, what)
    if not (isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == 3072):
        desc = f"{data.dtype} array {data.shape}" if isinstance(data, np.ndarray) else \
            type(data).__name__
        raise DataError(f"{what}: {path} b'data' is a {desc}; expected a uint8 N×3072 array")
    if isinstance(labels, np.ndarray):
        labels_ok = labels.ndim == 1 and np.issubdtype(labels.dtype, np.integer)
    else:
        labels_ok = isinstance(labels, (list, tuple)) and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels
        )
    if not labels_ok:
        raise DataError(f"{what}: {path} {label_key!r} is not a list of integer labels")
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) != len(data):
        raise DataError(
            f"{what}: {path} has {len(data)} images but {len(labels)} labels"
        )
    return data, labels


def _read_names(path: Path, key: bytes, count: int, what: str) -> List[str]:
    names = _get(_load_pickle(path, what), key, path, what)
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, (bytes, str)) for n in names):
        raise DataError(f"{what}: {path} {key!r} is not a list of class names")
    if len(names) != count:
        raise DataError(
            f"{what}: {path} {key!r} lists {len(names)} classes; expected {count}"
        )
    return [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]


def _split(batches: List[Tuple[np.ndarray, np.ndarray]], num_classes: int, what: str,
           where: Path) -> TensorSplit:
    data = np.concatenate([b[0] for b in batches])
    labels = np.concatenate([b[1] for b in batches])
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(
            f"{what}: labels in {where} range {labels.min()}..{labels.max()}; expected "
            f"0..{num_classes - 1}"
        )
    # rows are channel-major: 3 planes of 32×32, so a plain reshape gives N×C×H×W
    images = torch.from_numpy(np.ascontiguousarray(data.reshape(-1, 3, 32, 32)))
    return TensorSplit(images, torch.from_numpy(labels))


CIFAR_TRAIN, CIFAR_TEST = 50_000, 10_000


def _dataset(what: str, expect: bool, folder: Path, classes: List[str], train: Tuple[list, Path],
             test: Tuple[list, Path], mean: Tuple[float, ...], std: Tuple[float, ...]) -> ImageTensors:
    """The ImageTensors of the read ``(batches, where)`` of each split, the labels checked
    against the classes and, with ``expect``, the counts against the official ones."""
    num_classes = len(classes)
    train_split = _split(train[0], num_classes, what, train[1])
    test_split = _split(test[0], num_classes, what, test[1])
    found = {"classes": len(torch.unique(train_split.labels)), "train": len(train_split.labels),
             "test": len(test_split.labels)}
    official = {"classes": num_classes, "train": CIFAR_TRAIN, "test": CIFAR_TEST}
    check_official(what, expect, found, official, folder)
    return ImageTensors(train_split, test_split, classes, mean, std)


def _locate(root: Optional[str], folder: str, marker: str, what: str, layout: str) -> Path:
    base = need_root(root, what, layout)
    if (base / folder).is_dir():
        return base / folder
    if (base / marker).exists():
        return base
    raise DataError(f"{what}: {base} has no {folder}/ folder and no {marker}; expected {layout}")


@DATASETS.register(
    "cifar10",
    "CIFAR-10, 32×32 colour, 10 classes, 50k train / 10k test, official python batches "
    "(cs.toronto.edu/~kriz/cifar.html)",
)
def cifar10(root: Optional[str] = None, expect_official: bool = True) -> ImageTensors:
    """CIFAR-10; ``expect_official: false`` accepts a subset (see the module docstring)."""
    what = "cifar10"
    folder = _locate(root, "cifar-10-batches-py", "data_batch_1", what, CIFAR10_LAYOUT)
    needed = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]
    missing = [n for n in needed if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{what}: {folder} lacks {', '.join(missing)}; expected {CIFAR10_LAYOUT}"
        )
    classes = _read_names(folder / "batches.meta", b"label_names", 10, what)
    train = [_read_batch(folder / f"data_batch_{i}", b"labels", what) for i in range(1, 6)]
    test = [_read_batch(folder / "test_batch", b"labels", what)]
    return _dataset(what, expect_official, folder, classes, (train, folder), (test, folder / "test_batch"),
                    CIFAR10_MEAN, CIFAR10_STD)


@DATASETS.register(
    "cifar100",
    "CIFAR-100, 32×32 colour, 100 fine (or 20 coarse) classes, 50k train / 10k test, official "
    "python files (cs.toronto.edu/~kriz/cifar.html)",
)
def cifar100(
    root: Optional[str] = None, labels: Literal["fine", "coarse"] = "fine",
    expect_official: bool = True,
) -> ImageTensors:
    """CIFAR-100 with its 100 fine labels (``labels: coarse`` for the 20 superclasses);
    ``expect_official: false`` accepts a subset."""
    what = "cifar100"
    folder = _locate(root, "cifar-100-python", "train", what, CIFAR100_LAYOUT)
    missing = [n for n in ("train", "test", "meta") if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"{what}: {folder} lacks {', '.join(missing)}; expected {CIFAR100_LAYOUT}"
        )
    count = 100 if labels == "fine" else 20
    label_key = f"{labels}_labels".encode()
    classes = _read_names(folder / "meta", f"{labels}_label_names".encode(), count, what)
    train = _read_batch(folder / "train", label_key, what)
    test = _read_batch(folder / "test", label_key, what)
    return _dataset(what, expect_official, folder, classes, ([train], folder / "train"),
                    ([test], folder / "test"), CIFAR100_MEAN, CIFAR100_STD)
