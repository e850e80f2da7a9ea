"""``imagefolder``: any ``ROOT/{train,val,test}/<class>/<image>`` tree, read file by file.

Class names are the sub-folder names, sorted, and label i is the i-th of them. ``val`` is
optional (the engine carves a validation split from ``train`` when it is missing); ``train``
and ``test`` are required, and every split must have the same class folders. Hidden files and
folders (leading ``.``) and files with other extensions are ignored. Images are decoded only
when loaded (``FileLoader``), so a corrupt file is reported then, naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .files import IMAGENET_MEAN, IMAGENET_STD, FileSplit, ImageFiles, CacheMode, ResizeShape, TrainCrop, check_file_options

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
)
LAYOUT = "ROOT/{train,test}/<class>/<image> (ROOT/val/<class>/ optional; extensions " + \
    ",".join(e[1:] for e in IMAGE_EXTENSIONS) + ")"


def _classes_of(split_dir: Path) -> List[str]:
    try:
        return sorted(
            e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
        )
    except OSError as exc:
        raise DataError(f"imagefolder: cannot list {split_dir}: {exc.strerror or exc}") from None


def _images_of(class_dir: Path) -> List[str]:
    out = []
    try:
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                    out.append(os.path.join(dirpath, f))
    except OSError as exc:
        raise DataError(f"imagefolder: cannot list {class_dir}: {exc.strerror or exc}") from None
    return out


def _read_split(split_dir: Path, classes: List[str]) -> FileSplit:
    paths: List[str] = []
    labels: List[int] = []
    for label, name in enumerate(classes):
        found = _images_of(split_dir / name)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"imagefolder: {split_dir} has no image files; expected {LAYOUT}")
    return FileSplit(paths, torch.tensor(labels, dtype=torch.long))


def _check_same_classes(found: Dict[str, List[str]], root: Path) -> None:
    ref_name = "train"
    ref = set(found[ref_name])
    for name, classes in found.items():
        if set(classes) == ref:
            continue
        only_ref = sorted(ref - set(classes))
        only_here = sorted(set(classes) - ref)
        parts = []
        if only_ref:
            parts.append(f"missing from {name}: {', '.join(only_ref)}")
        if only_here:
            parts.append(f"only in {name}: {', '.join(only_here)}")
        raise DataError(
            f"imagefolder: class folders of {root / name} differ from {root / ref_name} "
            f"({'; '.join(parts)}); every split needs the same <class> folders"
        )


@DATASETS.register(
    "imagefolder",
    "images in ROOT/{train,val,test}/<class>/ folders (any image-classification set, "
    "e.g. ImageNet-style trees), decoded per file",
)
def imagefolder(
    root: Optional[str] = None,
    image_size: int = 224,
    resize: int = 256,
    mean: Tuple[float, float, float] = IMAGENET_MEAN,
    std: Tuple[float, float, float] = IMAGENET_STD,
    train_crop: TrainCrop = "random_resized_crop",
    resize_shape: ResizeShape = "short_side",
    cache: CacheMode = "auto",
) -> ImageFiles:
    """Read a class-folder tree. ``mean``/``std`` default to ImageNet's (RGB, 0..1 scale)."""
    check_file_options(image_size, resize, mean, std, train_crop, resize_shape, cache)
    if root is None:
        raise DataError(f"imagefolder: no data root given; expected {LAYOUT}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"imagefolder: {base} is not a directory; expected {LAYOUT}")
    missing = [s for s in ("train", "test") if not (base / s).is_dir()]
    if missing:
        raise DataError(
            f"imagefolder: {base} has no {' and no '.join(missing)} folder; expected {LAYOUT}"
        )
    names = ["train", "test"] + (["val"] if (base / "val").is_dir() else [])
    found = {name: _classes_of(base / name) for name in names}
    if not found["train"]:
        raise DataError(f"imagefolder: {base / 'train'} has no class folders; expected {LAYOUT}")
    _check_same_classes(found, base)
    classes = found["train"]
    splits = {name: _read_split(base / name, classes) for name in names}
    return ImageFiles(
        train=splits["train"],
        test=splits["test"],
        classes=list(classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        val=splits.get("val"),
        image_size=image_size,
        resize=resize,
        train_crop=train_crop,
        resize_shape=resize_shape,
        cache=cache,
    )
