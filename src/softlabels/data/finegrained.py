"""More sets in their official layouts: ``flowers102``, ``stanford_cars``, ``fgvc_aircraft``
(OLS's fine-grained table) and ``imagewoof`` (FocusNet). All are read file by file
(``ImageFiles``), like the readers of :mod:`.fgvc`, whose shared helpers they use; nothing is
downloaded.

Layouts::

    flowers102     ROOT/jpg/image_00001.jpg … image_08189.jpg    (102flowers.tgz)
                   ROOT/imagelabels.mat                          ``labels``: 1×8189, classes 1..102
                   ROOT/setid.mat                                ``trnid``, ``valid``, ``tstid``:
                                                                 1-based image numbers
                   (ROOT may also hold these in flowers-102/, torchvision's folder name)
    stanford_cars  ROOT/cars_train/<fname>.jpg, ROOT/cars_test/<fname>.jpg
                   ROOT/devkit/cars_train_annos.mat              ``annotations``: fname, class, bbox
                   ROOT/cars_test_annos_withlabels.mat           the test labels (also found in devkit/)
                   ROOT/devkit/cars_meta.mat                     ``class_names`` (optional: names)
    fgvc_aircraft  ROOT/fgvc-aircraft-2013b/data/ (ROOT may also be that folder or its parent)
                       images/<id>.jpg
                       images_variant_{train,val,trainval,test}.txt   "<id> <variant name>"
                       variants.txt                                   the 100 names (class order)
    imagewoof      ROOT/train/<wnid>/*.JPEG, ROOT/val/<wnid>/*.JPEG   (imagewoof2*.tgz; ROOT may
                   also be the parent of imagewoof2/, imagewoof2-320/ or imagewoof2-160/)

Splits (option ``split`` where there is an official validation set):

- flowers102: ``trainval`` (default, what OLS trains on: trnid + valid = 2,040 images, test tstid
  = 6,149; the engine carves its validation split from train) or ``train`` (trnid = 1,020 for
  training, valid = 1,020 as the official validation split, tstid for test). The OLS authors'
  list file (fine-grained/data/flowers/train_list.txt in their repository) has 1,020 lines, one
  official 1,020-image split, although their paper's table says 2,040: choose ``train`` to
  train on 1,020 images.
- fgvc_aircraft: ``trainval`` (default: 6,667 / test 3,333) or ``train`` (3,334, with val 3,333
  as the validation split). ``level: variant`` (default) is the official 100-class variant
  level; ``level: variant_first_word`` reproduces OLS's "90 classes": the OLS authors' list
  files (fine-grained/data/fgvc-aircraft-2013b/{trainval,test}_list.txt) label the variant
  split by the **first word** of each variant name, which merges Cessna 172/208/525/560, Fokker
  50/70/100 and the pairs BAE 146-200/-300, ERJ 135/145, Falcon 900/2000, Gulfstream IV/V and
  Saab 340/2000: 100 − 10 = 90 classes over the same 6,667 / 3,333 images (counted from their
  files: classes of 266, 200 and five of 133 training images).
- stanford_cars: 8,144 train / 8,041 test, 196 classes; imagewoof: train 9,025 / val 3,929
  (the val folder is the test split), 10 classes.

Labels: flowers the 1-based class − 1 (class names "1" … "102", the archive has no names);
cars the annotation's class − 1 (names from cars_meta.mat, else "1" … "196"); aircraft the
order of variants.txt (else the sorted names); imagewoof the sorted wnids, named after the
breeds. Every reader checks its files parse, ids and labels are in range, splits do not
overlap, every class has training images and every listed image exists; with
``expect_official`` (default) also the official class and image counts.

``train_crop`` / ``resize_shape``: the input protocol, ``cache``: the decoded-image cache, passed on
to ``ImageFiles``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Literal, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from ..registry import DATASETS
from .fgvc import (
    bad_line,
    check_every_class_trained,
    check_listed_exist,
    check_official,
    load_mat,
    mat_scalar,
    need_root,
    read_lines,
)
from .files import FileOptions, ImageFiles, file_reader
from .imagenet import _class_images, _scan


def _mat_ints(mat: dict, key: str, path: Path, what: str) -> List[int]:
    """A MATLAB numeric vector ``key`` as a list of ints (one-line DataError otherwise)."""
    if key not in mat:
        found = ", ".join(sorted(k for k in mat if not k.startswith("__"))[:8])
        raise DataError(f"{what}: {path} has no {key!r} variable (found {found or 'none'})")
    values = np.asarray(mat[key]).reshape(-1)
    if values.dtype.kind not in "iuf":
        raise DataError(f"{what}: {path} variable {key!r} is not numeric")
    out = []
    for i, v in enumerate(values.tolist(), 1):
        if int(v) != v:
            raise DataError(f"{what}: {path} {key} entry {i} is {v!r}; expected an integer")
        out.append(int(v))
    return out


def _disjoint(what: str, named: Dict[str, Sequence], where: Path) -> None:
    seen: Dict[object, str] = {}
    for name, items in named.items():
        for item in items:
            if item in seen:
                raise DataError(f"{what}: {where}: image {item} is in both {seen[item]} and {name}")
            seen[item] = name


# --------------------------------------------------------------------------------------------
# Oxford Flowers-102

FLOWERS_LAYOUT = (
    "the official Oxford Flowers-102 layout: ROOT/jpg/image_00001.jpg ... (102flowers.tgz), "
    "ROOT/imagelabels.mat and ROOT/setid.mat (ROOT/flowers-102/ also accepted)"
)


@DATASETS.register(
    "flowers102",
    "Oxford Flowers-102, 102 classes, train+val 2,040 (split trainval, OLS) or train 1,020 + val "
    "1,020 / test 6,149, official jpg/ + imagelabels.mat + setid.mat, decoded per file",
)
@file_reader
def flowers102(
    root: Optional[str] = None,
    split: Literal["trainval", "train"] = "trainval",
    expect_official: bool = True,
    *,
    file_options: FileOptions,
) -> ImageFiles:
    """split: trainval (train on trnid + valid, OLS) or train (trnid; valid is the validation split)."""
    what = "flowers102"
    base = need_root(root, what, FLOWERS_LAYOUT)
    folder = base / "flowers-102" if (base / "flowers-102").is_dir() else base
    if not (folder / "jpg").is_dir():
        raise DataError(f"{what}: {folder} has no jpg/ folder; expected {FLOWERS_LAYOUT}")
    labels_path, setid_path = folder / "imagelabels.mat", folder / "setid.mat"
    labels = _mat_ints(load_mat(labels_path, what), "labels", labels_path, what)
    setid = load_mat(setid_path, what)
    ids = {k: _mat_ints(setid, k, setid_path, what) for k in ("trnid", "valid", "tstid")}
    n = len(labels)
    for key, values in ids.items():
        bad = [v for v in values if not 1 <= v <= n]
        if bad:
            raise DataError(f"{what}: {setid_path} {key} lists image {bad[0]}, outside 1..{n} "
                            f"(the images of {labels_path.name})")
        if not values:
            raise DataError(f"{what}: {setid_path} {key} is empty")
    _disjoint(what, ids, setid_path)
    num_classes = max(labels)
    if min(labels) < 1:
        raise DataError(f"{what}: {labels_path} has label {min(labels)}; labels are 1-based")
    classes = [str(k) for k in range(1, num_classes + 1)]

    def part(key_list):
        image_ids = [i for key in key_list for i in ids[key]]
        return ([str(folder / "jpg" / f"image_{i:05d}.jpg") for i in image_ids],
                [labels[i - 1] - 1 for i in image_ids])

    train = part(("trnid", "valid") if split == "trainval" else ("trnid",))
    val = None if split == "trainval" else part(("valid",))
    test = part(("tstid",))
    check_every_class_trained(what, classes, train[1], str(setid_path))
    found = {"classes": num_classes, "train": len(train[0])}
    official = {"classes": 102, "train": 2040 if split == "trainval" else 1020}
    if val is not None:
        found["val"], official["val"] = len(val[0]), 1020
    found["test"], official["test"] = len(test[0]), 6149
    check_official(what, expect_official, found, official, folder)
    check_listed_exist(what, train[0] + (val[0] if val else []) + test[0], str(setid_path))
    return file_options.dataset(train, test, classes, val=val)


# --------------------------------------------------------------------------------------------
# Stanford Cars

CARS_LAYOUT = (
    "the Stanford Cars devkit layout: ROOT/cars_train/, ROOT/cars_test/, "
    "ROOT/devkit/cars_train_annos.mat, ROOT/cars_test_annos_withlabels.mat (or in devkit/), "
    "ROOT/devkit/cars_meta.mat"
)


def _cars_annotations(path: Path, what: str) -> List[Tuple[str, int]]:
    """(fname, 1-based class) of each entry of a cars_*_annos*.mat ``annotations`` array."""
    mat = load_mat(path, what)
    ann = mat.get("annotations")
    names = getattr(getattr(ann, "dtype", None), "names", None) or ()
    if "fname" not in names or "class" not in names:
        raise DataError(f"{what}: {path} has no 'annotations' struct array with 'fname' and 'class' "
                        f"fields (the test file without labels, cars_test_annos.mat, cannot be used)")
    out = []
    for i, a in enumerate(ann.reshape(-1), 1):
        fname, cls = mat_scalar(a["fname"]), mat_scalar(a["class"])
        if isinstance(cls, float) and cls.is_integer():
            cls = int(cls)
        if not isinstance(fname, str) or not fname or isinstance(cls, bool) or not isinstance(cls, int):
            raise DataError(f"{what}: {path} annotation {i} has fname {fname!r} and class {cls!r}; "
                            f"expected a file name and an integer class")
        out.append((fname, cls))
    if not out:
        raise DataError(f"{what}: {path} has no annotations")
    return out


@DATASETS.register(
    "stanford_cars",
    "Stanford Cars, 196 classes, 8,144 train / 8,041 test, devkit layout (cars_train/, cars_test/, "
    "annotation .mat files), decoded per file",
)
@file_reader
def stanford_cars(
    root: Optional[str] = None,
    expect_official: bool = True,
    *,
    file_options: FileOptions,
) -> ImageFiles:
    """Stanford Cars with its official split; the test labels come from
    cars_test_annos_withlabels.mat."""
    what = "stanford_cars"
    base = need_root(root, what, CARS_LAYOUT)
    missing = [d for d in ("cars_train", "cars_test", "devkit") if not (base / d).is_dir()]
    if missing:
        raise DataError(f"{what}: {base} has no {', '.join(d + '/' for d in missing)}; expected {CARS_LAYOUT}")
    train_ann = base / "devkit" / "cars_train_annos.mat"
    test_ann = next((p for p in (base / "cars_test_annos_withlabels.mat",
                                 base / "devkit" / "cars_test_annos_withlabels.mat") if p.is_file()), None)
    if test_ann is None:
        raise DataError(f"{what}: {base} has no cars_test_annos_withlabels.mat (the test labels; "
                        f"also looked in devkit/); expected {CARS_LAYOUT}")
    train = _cars_annotations(train_ann, what)
    test = _cars_annotations(test_ann, what)
    num_classes = max(c for _, c in train + test)
    for path, entries in ((train_ann, train), (test_ann, test)):
        low = [c for _, c in entries if c < 1]
        if low:
            raise DataError(f"{what}: {path} has class {low[0]}; classes are 1-based")
    meta = base / "devkit" / "cars_meta.mat"
    classes = [str(k) for k in range(1, num_classes + 1)]
    if meta.is_file():
        raw = load_mat(meta, what).get("class_names")
        names = [mat_scalar(v) for v in np.asarray(raw, dtype=object).reshape(-1)] if raw is not None else []
        if len(names) < num_classes or not all(isinstance(v, str) for v in names):
            raise DataError(f"{what}: {meta} has {len(names)} class_names for {num_classes} classes")
        classes = [str(v) for v in names[:num_classes]]
    train_labels = [c - 1 for _, c in train]
    check_every_class_trained(what, classes, train_labels, str(train_ann))
    check_official(
        what, expect_official,
        {"classes": num_classes, "train": len(train), "test": len(test)},
        {"classes": 196, "train": 8144, "test": 8041}, base,
    )
    train_paths = [str(base / "cars_train" / f) for f, _ in train]
    test_paths = [str(base / "cars_test" / f) for f, _ in test]
    check_listed_exist(what, train_paths, str(train_ann))
    check_listed_exist(what, test_paths, str(test_ann))
    return file_options.dataset((train_paths, train_labels), (test_paths, [c - 1 for _, c in test]), classes)


# --------------------------------------------------------------------------------------------
# FGVC-Aircraft

AIRCRAFT_LAYOUT = (
    "the official FGVC-Aircraft layout: ROOT/fgvc-aircraft-2013b/data/{images/<id>.jpg,"
    "images_variant_{train,val,trainval,test}.txt,variants.txt} (ROOT may also be that folder "
    "or its data/ folder)"
)
AIRCRAFT_OFFICIAL = {"train": 3334, "val": 3333, "trainval": 6667, "test": 3333}


def _aircraft_list(path: Path, what: str) -> List[Tuple[int, str, str]]:
    """(line number, image id, variant name) of an images_variant_*.txt file."""
    out = []
    for lineno, line in read_lines(path, what):
        parts = line.split(None, 1)
        if len(parts) != 2:
            raise bad_line(what, path, lineno, "'<image id> <variant name>'", line)
        out.append((lineno, parts[0], parts[1].strip()))
    if not out:
        raise DataError(f"{what}: {path} is empty")
    return out


@DATASETS.register(
    "fgvc_aircraft",
    "FGVC-Aircraft 2013b, variant level: 100 classes, trainval 6,667 / test 3,333 (or train + val), "
    "official data/images + images_variant_*.txt; level variant_first_word = OLS's 90 classes",
)
@file_reader
def fgvc_aircraft(
    root: Optional[str] = None,
    split: Literal["trainval", "train"] = "trainval",
    level: Literal["variant", "variant_first_word"] = "variant",
    expect_official: bool = True,
    *,
    file_options: FileOptions,
) -> ImageFiles:
    """split: trainval (6,667 training images) or train (3,334; val is the validation split);
    level: variant (100 classes) or variant_first_word (OLS's 90)."""
    what = "fgvc_aircraft"
    base = need_root(root, what, AIRCRAFT_LAYOUT)
    folder = next((d for d in (base / "fgvc-aircraft-2013b" / "data", base / "data", base)
                   if (d / "images").is_dir()), None)
    if folder is None:
        raise DataError(f"{what}: {base} has no data/images/ folder; expected {AIRCRAFT_LAYOUT}")
    parts = ("trainval", "test") if split == "trainval" else ("train", "val", "test")
    lists = {p: folder / f"images_variant_{p}.txt" for p in parts}
    missing = [path.name for path in lists.values() if not path.is_file()]
    if missing:
        raise DataError(f"{what}: {folder} lacks {', '.join(missing)}; expected {AIRCRAFT_LAYOUT}")
    entries = {p: _aircraft_list(path, what) for p, path in lists.items()}
    _disjoint(what, {p: [i for _, i, _ in e] for p, e in entries.items()}, folder)

    def label_name(variant: str) -> str:
        return variant.split()[0] if level == "variant_first_word" else variant

    train_key = parts[0]
    names = sorted({label_name(v) for _, _, v in entries[train_key]})
    if level == "variant" and (folder / "variants.txt").is_file():
        listed = [line for _, line in read_lines(folder / "variants.txt", what)]
        if set(listed) >= set(names):  # the official class order
            names = [v for v in listed if v in set(names)]
    index = {c: i for i, c in enumerate(names)}
    split_data = {}
    for p, rows in entries.items():
        paths, labels = [], []
        for lineno, image_id, variant in rows:
            name = label_name(variant)
            if name not in index:
                raise DataError(f"{what}: {lists[p]} line {lineno}: variant {variant!r} has no "
                                f"training images in {lists[train_key].name}")
            paths.append(str(folder / "images" / f"{image_id}.jpg"))
            labels.append(index[name])
        split_data[p] = (paths, labels)
    classes = list(names)
    check_every_class_trained(what, classes, split_data[train_key][1], str(lists[train_key]))
    found = {"classes": len(classes)}
    official = {"classes": 100 if level == "variant" else 90}
    for p in parts:
        found[p], official[p] = len(split_data[p][0]), AIRCRAFT_OFFICIAL[p]
    check_official(what, expect_official, found, official, folder)
    for p in parts:
        check_listed_exist(what, split_data[p][0], str(lists[p]))
    val = split_data.get("val")
    return file_options.dataset(split_data[train_key], split_data["test"], classes, val=val)


# --------------------------------------------------------------------------------------------
# Imagewoof

IMAGEWOOF_CLASSES = {
    "n02086240": "Shih-Tzu", "n02087394": "Rhodesian ridgeback", "n02088364": "beagle",
    "n02089973": "English foxhound", "n02093754": "Border terrier", "n02096294": "Australian terrier",
    "n02099601": "golden retriever", "n02105641": "Old English sheepdog", "n02111889": "Samoyed",
    "n02115641": "dingo",
}
IMAGEWOOF_LAYOUT = (
    "the Imagewoof layout as distributed: ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG "
    "(ROOT may also be the parent of imagewoof2/, imagewoof2-320/ or imagewoof2-160/)"
)


@DATASETS.register(
    "imagewoof",
    "Imagewoof (fast.ai), 10 ImageNet dog breeds, train 9,025 / val 3,929 (the test split), "
    "train/<wnid>/ + val/<wnid>/ as distributed, decoded per file",
)
@file_reader
def imagewoof(
    root: Optional[str] = None,
    expect_official: bool = True,
    *,
    file_options: FileOptions,
) -> ImageFiles:
    """Imagewoof (imagewoof2, any of its three sizes): val/ is the test split."""
    what = "imagewoof"
    base = need_root(root, what, IMAGEWOOF_LAYOUT)
    folder = next((d for d in (base, base / "imagewoof2", base / "imagewoof2-320", base / "imagewoof2-160")
                   if (d / "train").is_dir() and (d / "val").is_dir()), None)
    if folder is None:
        raise DataError(f"{what}: {base} has no train/ and val/ folders; expected {IMAGEWOOF_LAYOUT}")
    wnids, _ = _scan(folder / "train", what)
    if not wnids:
        raise DataError(f"{what}: {folder / 'train'} has no class folders; expected {IMAGEWOOF_LAYOUT}")
    val_wnids, _ = _scan(folder / "val", what)
    strange = [w for w in val_wnids if w not in wnids]
    if strange:
        raise DataError(f"{what}: {folder / 'val' / strange[0]} is not a class of {folder / 'train'}")
    if expect_official:
        foreign = [w for w in wnids if w not in IMAGEWOOF_CLASSES]
        if foreign:
            raise DataError(f"{what}: {folder / 'train' / foreign[0]} is not one of the 10 Imagewoof "
                            f"classes (set data.options.expect_official=false for another subset)")
    split_data = {}
    for part in ("train", "val"):
        paths, labels = [], []
        for label, wnid in enumerate(wnids):
            found = _class_images(folder / part / wnid, what) if (folder / part / wnid).is_dir() else []
            paths += found
            labels += [label] * len(found)
        split_data[part] = (paths, labels)
    classes = [IMAGEWOOF_CLASSES.get(w, w) for w in wnids]
    check_every_class_trained(what, classes, split_data["train"][1], str(folder / "train"))
    if not split_data["val"][0]:
        raise DataError(f"{what}: {folder / 'val'} has no images; expected {IMAGEWOOF_LAYOUT}")
    check_official(
        what, expect_official,
        {"classes": len(wnids), "train": len(split_data["train"][0]), "val (test)": len(split_data["val"][0])},
        {"classes": 10, "train": 9025, "val (test)": 3929}, folder,
    )
    return file_options.dataset(split_data["train"], split_data["val"], classes)
