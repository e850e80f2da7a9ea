"""``imagenet``: ILSVRC-2012 classification (1000 classes), read file by file.

Layout (ROOT may also be the Kaggle download's top folder, whose images are under
``ILSVRC/Data/CLS-LOC/``)::

    ROOT/train/<wnid>/*.JPEG                       ILSVRC2012_img_train.tar, class tars unpacked
    ROOT/val/<wnid>/*.JPEG                         the widely used prepared validation layout
      or ROOT/val/ILSVRC2012_val_00000001.JPEG ... ILSVRC2012_img_val.tar as shipped (flat),
         labelled by either
         ROOT/ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt (line i: the
             1-based ILSVRC2012_ID of ILSVRC2012_val_<i:08d>.JPEG) with .../data/meta.mat
             (``synsets``: ILSVRC2012_ID, WNID, words, ...; read with scipy), or
         ROOT/LOC_val_solution.csv (Kaggle: "ImageId,PredictionString", the string starting
             with the wnid)

The 50,000 validation images are the test split (ILSVRC's labelled test set is not public); the
engine carves its validation split from train. Classes are the sorted wnids of ``train/`` (the
torchvision order), label i the i-th. Class names are readable: the first synonym of the wnid's
words from meta.mat (or Kaggle's LOC_synset_mapping.txt), with " (wnid)" where two classes share
it ("crane"); the wnids when neither file is there.

Validation: every training class has images, every validation folder is a training class, every
flat validation image has a label (a bad ground-truth line is reported with its file and line
number) that names a training class. With ``expect_official`` (default) the 1000 classes,
1,281,167 training and 50,000 validation images are required, and the images the ground truth
lists must all exist, so a truncated download or an interrupted preparation is reported.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from ..errors import DataError
from ..registry import DATASETS
from .fgvc import (
    bad_line,
    check_official,
    first_synonyms,
    load_mat,
    mat_scalar,
    need_root,
    parse_int,
    read_lines,
)
from .files import FileOptions, ImageFiles, error_text, file_reader
from .imagefolder import IMAGE_EXTENSIONS

LAYOUT = (
    "the ILSVRC-2012 layout: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG, or a flat "
    "ROOT/val/*.JPEG with ROOT/ILSVRC2012_devkit_t12/data/{ILSVRC2012_validation_ground_truth.txt,"
    "meta.mat} or ROOT/LOC_val_solution.csv"
)
DEVKIT = Path("ILSVRC2012_devkit_t12") / "data"
GROUND_TRUTH = "ILSVRC2012_validation_ground_truth.txt"
KAGGLE_IMAGES = Path("ILSVRC") / "Data" / "CLS-LOC"


def _scan(folder: Path, what: str) -> Tuple[List[str], List[str]]:
    """(sub-folder names, image file names) of ``folder``, sorted, hidden entries skipped."""
    dirs, files = [], []
    try:
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    dirs.append(e.name)
                elif e.name.lower().endswith(IMAGE_EXTENSIONS):
                    files.append(e.name)
    except OSError as exc:
        raise DataError(f"{what}: cannot list {folder}: {error_text(exc)}") from None
    return sorted(dirs), sorted(files)


def _read_meta(path: Path, what: str) -> Dict[int, Tuple[str, str]]:
    """meta.mat ``synsets`` → {ILSVRC2012_ID: (wnid, words)}."""
    mat = load_mat(path, what)
    synsets = mat.get("synsets")
    names = getattr(getattr(synsets, "dtype", None), "names", None) or ()
    if "ILSVRC2012_ID" not in names or "WNID" not in names:
        raise DataError(f"{what}: {path} has no 'synsets' struct array with ILSVRC2012_ID and "
                        f"WNID fields")
    out: Dict[int, Tuple[str, str]] = {}
    for i, s in enumerate(synsets.reshape(-1), 1):
        key, wnid = mat_scalar(s["ILSVRC2012_ID"]), mat_scalar(s["WNID"])
        words = mat_scalar(s["words"]) if "words" in names else ""
        if isinstance(key, float) and key.is_integer():
            key = int(key)
        if not isinstance(key, int) or not isinstance(wnid, str):
            raise DataError(f"{what}: {path} synsets entry {i} has ILSVRC2012_ID {key!r} and "
                            f"WNID {wnid!r}; expected an integer and a string")
        out[key] = (wnid, words if isinstance(words, str) else "")
    return out


def _read_synset_mapping(path: Path, what: str) -> Dict[str, str]:
    """Kaggle's LOC_synset_mapping.txt: "<wnid> <words>" lines."""
    out = {}
    for _, line in read_lines(path, what):
        parts = line.split(None, 1)
        out[parts[0]] = parts[1] if len(parts) > 1 else ""
    return out


def _ground_truth_labels(gt: Path, meta: Dict[int, Tuple[str, str]], index: Dict[str, int],
                         what: str) -> Dict[str, Tuple[int, Path, int]]:
    """{image stem: (label, file, line)} from the devkit ground truth."""
    out = {}
    for n, (lineno, line) in enumerate(read_lines(gt, what), 1):
        if n != lineno:
            raise DataError(f"{what}: {gt} line {n} is blank; line i must hold the label of "
                            f"ILSVRC2012_val_<i>.JPEG")
        key = parse_int(line)
        if key is None:
            raise bad_line(what, gt, lineno, "an ILSVRC2012_ID (1..1000)", line)
        if key not in meta:
            raise DataError(f"{what}: {gt} line {lineno}: ILSVRC2012_ID {key} out of range "
                            f"(not in meta.mat)")
        wnid = meta[key][0]
        if wnid not in index:
            raise DataError(f"{what}: {gt} line {lineno}: ILSVRC2012_ID {key} is {wnid}, which "
                            f"has no train/{wnid} folder")
        out[f"ILSVRC2012_val_{lineno:08d}"] = (index[wnid], gt, lineno)
    return out


def _kaggle_labels(csv: Path, index: Dict[str, int], what: str
                   ) -> Dict[str, Tuple[int, Path, int]]:
    lines = read_lines(csv, what)
    if not lines or not lines[0][1].replace(" ", "").startswith("ImageId,PredictionString"):
        raise DataError(f"{what}: {csv} does not start with the header "
                        f"'ImageId,PredictionString'")
    out: Dict[str, Tuple[int, Path, int]] = {}
    for lineno, line in lines[1:]:
        image_id, _, pred = line.partition(",")
        tokens = pred.split()
        if not image_id.strip() or not tokens:
            raise bad_line(what, csv, lineno, "'<ImageId>,<wnid> <box> ...'", line)
        image_id = image_id.strip()
        if image_id in out:
            raise DataError(f"{what}: {csv} line {lineno}: {image_id} already on line "
                            f"{out[image_id][2]}")
        if tokens[0] not in index:
            raise DataError(f"{what}: {csv} line {lineno}: wnid {tokens[0]} has no "
                            f"train/{tokens[0]} folder")
        out[image_id] = (index[tokens[0]], csv, lineno)
    return out


def images_root(base: Path) -> Path:
    """The folder holding train/ and val/: ROOT, or the Kaggle download's ILSVRC/Data/CLS-LOC."""
    if not (base / "train").is_dir() and (base / KAGGLE_IMAGES / "train").is_dir():
        return base / KAGGLE_IMAGES
    return base


def _class_images(folder: Path, what: str) -> List[str]:
    _, files = _scan(folder, what)
    prefix = str(folder)  # os.path.join: several times faster than Path for 1.28M files
    return [os.path.join(prefix, f) for f in files]


@DATASETS.register(
    "imagenet",
    "ImageNet ILSVRC-2012, 1000 classes, 1.28M train / 50k val (the test split), train/<wnid>/ "
    "and val/<wnid>/ or flat val + devkit ground truth, decoded per file",
)
@file_reader
def imagenet(
    root: Optional[str] = None,
    expect_official: bool = True,
    *,
    file_options: FileOptions,
) -> ImageFiles:
    """ILSVRC-2012: train/<wnid>/ for training, the validation images as the test split."""
    what = "imagenet"
    base = need_root(root, what, LAYOUT)
    images = images_root(base)
    missing = [s for s in ("train", "val") if not (images / s).is_dir()]
    if missing:
        raise DataError(f"{what}: {images} has no {' and no '.join(missing)} folder; "
                        f"expected {LAYOUT}")

    wnids, _ = _scan(images / "train", what)
    if not wnids:
        raise DataError(f"{what}: {images / 'train'} has no class folders; expected {LAYOUT}")
    index = {w: i for i, w in enumerate(wnids)}
    train_paths: List[str] = []
    train_labels: List[int] = []
    empty = []
    for label, wnid in enumerate(wnids):
        found = _class_images(images / "train" / wnid, what)
        if not found:
            empty.append(wnid)
        train_paths += found
        train_labels += [label] * len(found)
    if empty:
        raise DataError(f"{what}: {len(empty)} class folder(s) of {images / 'train'} have no "
                        f"images: {', '.join(empty[:5])}")

    # metadata sits in ROOT; for ROOT = <kaggle>/ILSVRC/Data/CLS-LOC also in <kaggle>/
    meta_dirs = [base]
    if base.resolve().parts[-3:] == KAGGLE_IMAGES.parts:
        meta_dirs.append(base.resolve().parents[2])
    devkit = base / DEVKIT
    csv = next((d / "LOC_val_solution.csv" for d in meta_dirs
                if (d / "LOC_val_solution.csv").is_file()), None)
    meta: Optional[Dict[int, Tuple[str, str]]] = None
    val_dir = images / "val"
    val_dirs, val_files = _scan(val_dir, what)
    test_paths: List[str] = []
    test_labels: List[int] = []
    if val_dirs:
        if val_files:
            raise DataError(f"{what}: {val_dir} has both class folders and {len(val_files)} "
                            f"loose images (e.g. {val_files[0]}); an interrupted preparation? "
                            f"expected either val/<wnid>/ folders or a flat val/")
        strange = [d for d in val_dirs if d not in index]
        if strange:
            raise DataError(f"{what}: {val_dir / strange[0]} is not a class of "
                            f"{images / 'train'} ({len(strange)} such folder(s))")
        for wnid in val_dirs:
            found = _class_images(val_dir / wnid, what)
            test_paths += found
            test_labels += [index[wnid]] * len(found)
    else:
        if (devkit / GROUND_TRUTH).is_file():
            meta = _read_meta(devkit / "meta.mat", what)
            labels = _ground_truth_labels(devkit / GROUND_TRUTH, meta, index, what)
            source = devkit / GROUND_TRUTH
        elif csv is not None:
            labels = _kaggle_labels(csv, index, what)
            source = csv
        else:
            raise DataError(
                f"{what}: {val_dir} is flat (no <wnid> folders) but neither {devkit / GROUND_TRUTH}"
                f" nor {base / 'LOC_val_solution.csv'} is there to label it; expected {LAYOUT}"
            )
        by_stem = {Path(f).stem: f for f in val_files}
        unlabelled = [f for f in val_files if Path(f).stem not in labels]
        if unlabelled:
            raise DataError(f"{what}: validation image {val_dir / unlabelled[0]} has no label in "
                            f"{source} ({len(unlabelled)} such image(s))")
        absent = [s for s in sorted(labels) if s not in by_stem]
        if expect_official and absent:
            raise DataError(f"{what}: {len(absent)} of the {len(labels)} images listed in "
                            f"{source} are missing from {val_dir}, e.g. {absent[0]}.JPEG (an "
                            f"incomplete download or extraction?)")
        for stem in sorted(by_stem):
            test_paths.append(str(val_dir / by_stem[stem]))
            test_labels.append(labels[stem][0])
    if not test_paths:
        raise DataError(f"{what}: {val_dir} has no images; expected {LAYOUT}")
    check_official(
        what, expect_official,
        {"classes": len(wnids), "train": len(train_paths), "val (test)": len(test_paths)},
        {"classes": 1000, "train": 1281167, "val (test)": 50000}, images,
    )

    words: Dict[str, str] = {}
    if meta is None and (devkit / "meta.mat").is_file():
        try:
            import scipy.io  # noqa: F401  (only for names here: without scipy, fall back)
        except ImportError:
            pass
        else:
            meta = _read_meta(devkit / "meta.mat", what)
    if meta is not None:
        words = {w: t for w, t in meta.values()}
    else:
        mapping = next((d / "LOC_synset_mapping.txt" for d in meta_dirs
                        if (d / "LOC_synset_mapping.txt").is_file()), None)
        if mapping is not None:
            words = _read_synset_mapping(mapping, what)
    classes = first_synonyms(wnids, words)
    return file_options.dataset((train_paths, train_labels), (test_paths, test_labels), classes)
