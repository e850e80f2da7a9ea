"""``imagefolder``: any ``ROOT/{train,val,test}/<class>/<image>`` tree, read file by file.

Class names are the sub-folder names, sorted, and label i is the i-th of them. ``train`` is
required, and so is ``test``, except that a tree with only ``train`` and ``val`` (as Imagewoof
and Imagenette are distributed) uses ``val`` as its test split. Otherwise ``val`` is optional
(the engine carves a validation split from ``train`` when it is missing). Every split must have
the same class folders, and a class folder without images is refused, naming it (a class that
never trains, or is never tested), unless ``allow_empty_classes: true``. Hidden files and
folders (leading ``.``) and files with other extensions are ignored. Images are decoded only
when loaded (``FileLoader``), so a corrupt file is reported then, naming the file.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional

import torch

from ..errors import ConfigError, DataError
from ..registry import DATASETS
from .files import FileOptions, FileSplit, ImageFiles, file_reader

IMAGE_EXTENSIONS = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm",
)
LAYOUT = "ROOT/{train,test}/<class>/<image> (ROOT/val/<class>/ optional, and the test split " \
    "when there is no test/; extensions " + ",".join(e[1:] for e in IMAGE_EXTENSIONS) + ")"


def _classes_of(split_dir: Path) -> List[str]:
    try:
        return sorted(
            e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
        )
    except OSError as exc:
        raise DataError(f"imagefolder: cannot list {split_dir}: {exc.strerror or exc}") from None


def _images_of(class_dir: Path) -> List[str]:
    out = []
    visited = set()  # (device, inode) of every folder walked: one reached twice is read once
    top = os.path.realpath(class_dir)
    try:
        for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
            real = os.path.realpath(dirpath)
            if dirpath != str(class_dir) and (real == top or top.startswith(real.rstrip(os.sep) + os.sep)):
                raise DataError(f"imagefolder: {dirpath} links back to {real}, which holds it (a "
                                "symbolic-link cycle); remove the link")
            st = os.stat(dirpath)
            if (st.st_dev, st.st_ino) in visited:
                dirnames[:] = []
                continue
            visited.add((st.st_dev, st.st_ino))
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for f in sorted(filenames):
                if not f.startswith(".") and f.lower().endswith(IMAGE_EXTENSIONS):
                    out.append(os.path.join(dirpath, f))
    except OSError as exc:
        raise DataError(f"imagefolder: cannot list {class_dir}: {exc.strerror or exc}") from None
    return out


def _read_split(split_dir: Path, classes: List[str], allow_empty: bool) -> FileSplit:
    paths: List[str] = []
    labels: List[int] = []
    empty: List[str] = []
    for label, name in enumerate(classes):
        found = _images_of(split_dir / name)
        if not found:
            empty.append(name)
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise DataError(f"imagefolder: {split_dir} has no image files; expected {LAYOUT}")
    if empty and not allow_empty:
        shown = ", ".join(str(split_dir / n) for n in empty[:3])
        more = f" and {len(empty) - 3} more" if len(empty) > 3 else ""
        raise DataError(
            f"imagefolder: {len(empty)} class folder(s) hold no images: {shown}{more} (a class "
            f"with no image; set data.options.allow_empty_classes=true to keep them)"
        )
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
    "images in ROOT/{train,val,test}/<class>/ folders, or ROOT/{train,val}/ with val as the "
    "test split (any image-classification set, e.g. ImageNet-style trees, Imagewoof), decoded "
    "per file",
)
@file_reader
def imagefolder(
    root: Optional[str] = None,
    allow_empty_classes: bool = False,
    *,
    file_options: FileOptions,
) -> ImageFiles:
    """Read a class-folder tree. ``mean``/``std`` default to ImageNet's (RGB, 0..1 scale);
    ``allow_empty_classes`` accepts class folders without images."""
    if root is None:
        raise DataError(f"imagefolder: no data root given; expected {LAYOUT}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"imagefolder: {base} is not a directory; expected {LAYOUT}")
    has = {s: (base / s).is_dir() for s in ("train", "val", "test")}
    missing = [s for s in ("train", "test") if not has[s] and not (s == "test" and has["val"])]
    if missing:
        raise DataError(
            f"imagefolder: {base} has no {' and no '.join(missing)} folder; expected {LAYOUT}"
        )
    # folder name → split; with train/ and val/ only, val/ is the test split
    folders = {"train": "train", "test": "test" if has["test"] else "val"}
    if has["test"] and has["val"]:
        folders["val"] = "val"
    found = {folder: _classes_of(base / folder) for folder in folders.values()}
    if not found["train"]:
        raise DataError(f"imagefolder: {base / 'train'} has no class folders; expected {LAYOUT}")
    _check_same_classes(found, base)
    classes = found["train"]
    splits = {split: _read_split(base / folder, classes, allow_empty_classes)
              for split, folder in folders.items()}
    return file_options.dataset(splits["train"], splits["test"], classes, val=splits.get("val"))
