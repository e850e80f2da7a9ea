"""``tinyimagenet``: Tiny ImageNet-200 (64×64 colour, 200 classes), held in memory.

Layout (what tiny-imagenet-200.zip unpacks to; ROOT may be that folder or its parent)::

    ROOT/tiny-imagenet-200/
        wnids.txt                          the 200 wnids, one a line
        words.txt                          "<wnid>\\t<words>" (all of WordNet; names come from it)
        train/<wnid>/images/*.JPEG         500 per class (train/<wnid>/<wnid>_boxes.txt unused)
        val/images/*.JPEG                  10,000 images
        val/val_annotations.txt            "<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>"
        test/images/*.JPEG                 unlabelled, not used

The labelled ``val`` images are the test split (what the papers report); the engine carves its
validation split from train. Classes are the sorted wnids (the order torchvision's ImageFolder
gives ``train/``), label i the i-th; names are the first synonym of each wnid's words.

Like CIFAR, the set is small enough to hold whole: every image is decoded once with PIL
(greyscale and CMYK images converted to RGB), resized to ``image_size`` if it differs, and kept
as uint8 N×3×S×S tensors (110,000 × 3 × 64 × 64 = 1.35 GB). Decoding the 110,000 JPEGs takes
about 0.5 ms each (roughly a minute in all) on the 2-core machine the tests run on, so the
decoded tensors are cached (option ``cache``, default true) in one safetensors file per image
size under ``$SOFTLABELS_CACHE`` (default ``$XDG_CACHE_HOME/softlabels`` or
``~/.cache/softlabels``). The file's name is a hash of the image size and of every image's path,
size and modification time, so a changed, added or removed file gives another key and the set is
decoded again; a cache file that cannot be read or has the wrong shapes is ignored and rewritten.
An unwritable cache directory only costs the decode.
``image_size: 32`` gives the 32×32 inputs JGL uses (resized once, then padded crops);
``train_crop: random_resized_crop`` (with ``image_size: 32``) feeds them as CS-KD's code does:
RandomResizedCrop(32) + flip of the 64×64 images for training, the 64×64 images resized to
32×32 for evaluation. FocusNet keeps 64×64. The cache helpers are shared with the file
datasets' decoded cache (``data/cache.py``).

Validation: wnids.txt, words.txt and val_annotations.txt parse (a bad line is reported with its
file and line number), every class has training images, every train folder is in wnids.txt,
every annotated validation image exists and names a listed wnid, and an unreadable image stops
the load naming the file. With ``expect_official`` (default) the 200 classes, 100,000 training
and 10,000 validation images are required, so a truncated download is reported.
"""
from __future__ import annotations

import os
from typing import Dict, List, Literal, Optional, Tuple

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .base import ImageTensors, TensorSplit
from .fgvc import (
    bad_line,
    check_listed_exist,
    check_official,
    first_synonyms,
    need_root,
    read_lines,
)
from .cache import cache_dir, files_key, to_rgb
from .files import error_text
from .imagefolder import IMAGE_EXTENSIONS

# Per-channel mean and std of the training images (0..1 scale), the values commonly used.
TINY_MEAN = (0.4802, 0.4481, 0.3975)
TINY_STD = (0.2302, 0.2265, 0.2262)

LAYOUT = (
    "the official layout: ROOT/tiny-imagenet-200/{wnids.txt,words.txt,train/<wnid>/images/,"
    "val/images/,val/val_annotations.txt} (ROOT may also be that folder itself)"
)


def _decode(paths: List[str], size: int, what: str) -> torch.Tensor:
    """All images as one uint8 N×3×size×size tensor, decoded in one pass.

    (A thread pool was measured to gain nothing: most of PIL's per-image time for such small
    files is spent in Python, holding the GIL.)"""
    from PIL import Image

    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    view = out.numpy()
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im = to_rgb(im)  # greyscale, 16-bit, CMYK, palette → 8-bit RGB
                if im.size != (size, size):
                    im = im.resize((size, size), Image.BILINEAR)
                view[i] = np.asarray(im).transpose(2, 0, 1)
        except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, ...
            raise DataError(f"{what}: cannot read image {path}: {error_text(exc)}") from None
    return out


def _cache_key(what: str, size: int, splits: List[List[str]]) -> str:
    """Hash of the image size and each image's path, byte size and modification time."""
    return files_key(f"{what}|{size}", splits)


def _decode_cached(splits: List[List[str]], size: int, what: str, cache: bool) -> Tuple[torch.Tensor, ...]:
    """``_decode`` of each split, read from / written to the cache when ``cache``."""
    if not cache:
        return tuple(_decode(paths, size, what) for paths in splits)
    from safetensors.torch import load_file, save_file

    path = cache_dir() / f"{what}-{size}px-{_cache_key(what, size, splits)}.safetensors"
    names = [f"split{i}" for i in range(len(splits))]
    try:
        stored = load_file(str(path))
        out = tuple(stored[n] for n in names)
        if all(t.dtype == torch.uint8 and tuple(t.shape) == (len(p), 3, size, size)
               for t, p in zip(out, splits)):
            return out
    except Exception:  # absent, torn or foreign file: decode again
        pass
    out = tuple(_decode(paths, size, what) for paths in splits)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        save_file({n: t.contiguous() for n, t in zip(names, out)}, str(tmp))
        os.replace(tmp, path)
    except OSError:
        pass  # an unwritable cache only costs the next decode
    return out


def decoded_dataset(what: str, train: Tuple[List[str], List[int]], test: Tuple[List[str], List[int]],
                    classes: List[str], size: int, cache: bool, mean: Tuple[float, ...],
                    std: Tuple[float, ...], **augmentation) -> ImageTensors:
    """An in-memory ``ImageTensors`` from ``(paths, labels)`` splits, every image decoded once
    to size×size (through the decoded-tensor cache when ``cache``); ``augmentation``: the
    ImageTensors fields past ``std`` (``train_crop``, ``output_size`` …)."""
    train_x, test_x = _decode_cached([train[0], test[0]], size, what, cache)
    return ImageTensors(TensorSplit.of(train_x, train[1]), TensorSplit.of(test_x, test[1]), classes,
                        mean, std, **augmentation)


@DATASETS.register(
    "tinyimagenet",
    "Tiny ImageNet-200, 64×64 colour, 200 classes, 100k train / 10k val (the test split), "
    "official tiny-imagenet-200 layout, decoded once into memory",
)
def tinyimagenet(
    root: Optional[str] = None,
    image_size: int = 64,
    expect_official: bool = True,
    cache: bool = True,
    train_crop: Literal["pad_crop", "random_resized_crop"] = "pad_crop",
) -> ImageTensors:
    """Tiny ImageNet-200 in memory; ``image_size: 32`` resizes once at load (JGL);
    ``train_crop: random_resized_crop`` keeps the 64×64 images and trains on
    RandomResizedCrop(image_size) + flip of them, evaluating on them resized to image_size
    (CS-KD's code at 32×32); ``cache: false`` decodes every time instead of using the
    decoded-tensor cache."""
    what = "tinyimagenet"
    if train_crop not in ("pad_crop", "random_resized_crop"):
        raise ConfigError(f"data.options.train_crop: expected pad_crop or random_resized_crop, "
                          f"got {train_crop!r}")
    if not 1 <= image_size <= 64:
        raise ConfigError(f"data.options.image_size: must be 1..64 (images are resized once "
                          f"when loaded, never enlarged), got {image_size}")
    base = need_root(root, what, LAYOUT)
    folder = base / "tiny-imagenet-200" if (base / "tiny-imagenet-200").is_dir() else base
    needed = ["wnids.txt", "words.txt", "train", "val/images", "val/val_annotations.txt"]
    missing = [n for n in needed if not (folder / n).exists()]
    if missing:
        raise DataError(f"{what}: {folder} lacks {', '.join(missing)}; expected {LAYOUT}")

    wnids_path = folder / "wnids.txt"
    listed: Dict[str, int] = {}
    for lineno, line in read_lines(wnids_path, what):
        if len(line.split()) != 1:
            raise bad_line(what, wnids_path, lineno, "one wnid", line)
        if line in listed:
            raise DataError(f"{what}: {wnids_path} line {lineno}: {line} already on line "
                            f"{listed[line]}")
        listed[line] = lineno
    if not listed:
        raise DataError(f"{what}: {wnids_path} is empty")
    wnids = sorted(listed)
    index = {w: i for i, w in enumerate(wnids)}

    words: Dict[str, str] = {}
    for _, line in read_lines(folder / "words.txt", what):
        parts = line.split(None, 1)
        if parts[0] in index:
            words[parts[0]] = parts[1] if len(parts) > 1 else ""
    classes = first_synonyms(wnids, words)

    train_dir = folder / "train"
    strays = sorted(e.name for e in os.scandir(train_dir)
                    if e.is_dir() and not e.name.startswith(".") and e.name not in index)
    if strays:
        raise DataError(f"{what}: {train_dir / strays[0]} is not listed in {wnids_path} "
                        f"({len(strays)} such folder(s))")
    train_paths: List[str] = []
    train_labels: List[int] = []
    empty = []
    for label, wnid in enumerate(wnids):
        images = train_dir / wnid / "images"
        try:
            found = sorted(e.name for e in os.scandir(images) if not e.name.startswith(".")
                           and e.name.lower().endswith(IMAGE_EXTENSIONS))
        except OSError:
            found = []
        if not found:
            empty.append(wnid)
        train_paths += [str(images / f) for f in found]
        train_labels += [label] * len(found)
    if empty:
        raise DataError(f"{what}: {len(empty)} class(es) have no training images in "
                        f"{train_dir}/<wnid>/images/: {', '.join(empty[:5])}")

    ann_path = folder / "val" / "val_annotations.txt"
    seen: Dict[str, int] = {}
    test_paths: List[str] = []
    test_labels: List[int] = []
    for lineno, line in read_lines(ann_path, what):
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2 or not parts[0].strip() or not parts[1].strip():
            raise bad_line(what, ann_path, lineno, "'<file>\\t<wnid>\\t<x0>\\t<y0>\\t<x1>\\t<y1>'",
                           line)
        name, wnid = parts[0].strip(), parts[1].strip()
        if wnid not in index:
            raise DataError(f"{what}: {ann_path} line {lineno}: wnid {wnid} is not in "
                            f"{wnids_path.name}")
        if name in seen:
            raise DataError(f"{what}: {ann_path} line {lineno}: {name} already on line "
                            f"{seen[name]}")
        seen[name] = lineno
        test_paths.append(str(folder / "val" / "images" / name))
        test_labels.append(index[wnid])
    if not test_paths:
        raise DataError(f"{what}: {ann_path} is empty")
    check_official(
        what, expect_official,
        {"classes": len(wnids), "train": len(train_paths), "val (test)": len(test_paths)},
        {"classes": 200, "train": 100000, "val (test)": 10000}, folder,
    )
    check_listed_exist(what, test_paths, str(ann_path))

    stored = 64 if train_crop == "random_resized_crop" else image_size
    return decoded_dataset(what, (train_paths, train_labels), (test_paths, test_labels), classes, stored,
                           cache, TINY_MEAN, TINY_STD, train_crop=train_crop,
                           output_size=image_size if train_crop == "random_resized_crop" else None)
