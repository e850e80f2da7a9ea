"""Fine-grained sets in their official layouts: ``cub200``, ``dogs`` and ``mit67``.

Layouts (what the official archives unpack to; nothing is downloaded)::

    cub200   ROOT/CUB_200_2011/ (ROOT may also be that folder itself)
                 images.txt               "<image id> <class dir>/<file>.jpg"
                 image_class_labels.txt   "<image id> <class id>"    (class ids 1-based)
                 train_test_split.txt     "<image id> <1 train | 0 test>"
                 classes.txt              "<class id> <class name>"
                 images/<class dir>/<file>.jpg
    dogs     ROOT/Images/<wnid>-<breed>/<file>.jpg          (images.tar)
             ROOT/train_list.mat, ROOT/test_list.mat        (lists.tar; ROOT/lists/ also found)
                 MATLAB files with ``file_list`` (cell array "<wnid>-<breed>/<file>.jpg"),
                 ``annotation_list`` and ``labels`` (1-based)
    mit67    ROOT/Images/<category>/<file>.jpg              (indoorCVPR_09.tar)
             ROOT/TrainImages.txt, ROOT/TestImages.txt      lines "<category>/<file>.jpg"

Labels: CUB class id − 1 (the order of classes.txt); Dogs label − 1 (the sorted breed folders);
MIT67 the sorted category names. Class names are the official names: classes.txt's, the breed
folder names, the category names. All three are read file by file (``ImageFiles``), with
ImageNet's mean/std, ``RandomResizedCrop(image_size)`` + flip for training and
``Resize(resize)`` + ``CenterCrop(image_size)`` for evaluation.

Validation, always: every metadata file parses (a bad line is reported with its file and line
number), ids and labels are consistent and in range, every class has training images, and every
listed image exists (checked by listing each folder once); images are decoded only when loaded,
so a corrupt file is reported then. With ``expect_official`` (default) the class count and split
sizes must also be the official ones, so an incomplete copy stops the run instead of silently
training on part of the data; ``expect_official: false`` accepts subsets.

The helpers at the top are shared with ``imagenet`` and ``tinyimagenet``.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError
from ..registry import DATASETS
from .files import FileOptions, ImageFiles, error_text, file_reader

# --------------------------------------------------------------------------------------------
# Shared helpers


def need_root(root: Optional[str], what: str, layout: str) -> Path:
    """The data root as a Path; DataError when it is not given or not a directory."""
    if root is None:
        raise DataError(f"{what}: no data root given (set data.root); expected {layout}")
    base = Path(root).expanduser()
    if not base.is_dir():
        raise DataError(f"{what}: {base} is not a directory; expected {layout}")
    return base


def read_lines(path: Path, what: str) -> List[Tuple[int, str]]:
    """(line number, stripped text) of the non-blank lines of a text file."""
    try:
        with open(path, "r", encoding="utf-8", errors="replace") as f:
            text = f.read()
    except FileNotFoundError:
        raise DataError(f"{what}: {path} is missing") from None
    except OSError as exc:
        raise DataError(f"{what}: cannot read {path}: {error_text(exc)}") from None
    return [(i, s.strip()) for i, s in enumerate(text.splitlines(), 1) if s.strip()]


def bad_line(what: str, path: Path, lineno: int, expected: str, line: str) -> DataError:
    shown = line if len(line) <= 80 else line[:77] + "..."
    return DataError(f"{what}: {path} line {lineno}: expected {expected}, got {shown!r}")


def parse_int(text: str) -> Optional[int]:
    try:
        return int(text)
    except ValueError:
        return None


def missing_files(paths: Sequence[str]) -> List[str]:
    """The paths that do not exist, found by listing each parent folder once."""
    by_dir: Dict[str, List[str]] = {}
    for p in paths:
        by_dir.setdefault(os.path.dirname(p), []).append(p)
    out = []
    for folder, group in by_dir.items():
        try:
            present = set(os.listdir(folder or "."))
        except OSError:
            present = set()
        out += [p for p in group if os.path.basename(p) not in present]
    return out


def check_listed_exist(what: str, paths: Sequence[str], listed_in: str) -> None:
    """DataError naming the first missing file when any listed image does not exist."""
    gone = missing_files(paths)
    if gone:
        raise DataError(
            f"{what}: {len(gone)} of the {len(paths)} images listed in {listed_in} are "
            f"missing, e.g. {gone[0]} (an incomplete download or extraction?)"
        )


def check_official(
    what: str, expect: bool, found: Dict[str, int], official: Dict[str, int], where: Path
) -> None:
    """With ``expect_official``, the counts (classes, train, test) must be the official ones."""
    if not expect or found == official:
        return
    got = ", ".join(f"{v:,} {k}" for k, v in found.items())
    want = ", ".join(f"{v:,} {k}" for k, v in official.items())
    raise DataError(
        f"{what}: {where} has {got}; the official set has {want} (an incomplete download? "
        f"set data.options.expect_official=false to use a subset)"
    )


def check_every_class_trained(what: str, classes: List[str], train_labels: Iterable[int],
                              where: str) -> None:
    seen = set(int(v) for v in train_labels)
    empty = [c for i, c in enumerate(classes) if i not in seen]
    if empty:
        shown = ", ".join(empty[:5]) + (f" and {len(empty) - 5} more" if len(empty) > 5 else "")
        raise DataError(f"{what}: {len(empty)} class(es) have no training images in {where}: "
                        f"{shown}")


def load_mat(path: Path, what: str) -> dict:
    """``scipy.io.loadmat`` (scipy imported lazily), with one-line DataErrors."""
    try:
        from scipy.io import loadmat
    except ImportError:
        raise DataError(
            f"{what}: reading {path.name} needs scipy, which is not installed (pip install scipy)"
        ) from None
    if not path.is_file():
        raise DataError(f"{what}: {path} is missing")
    try:
        return loadmat(str(path), squeeze_me=False)
    except Exception as exc:  # scipy raises ValueError, MatReadError, OSError, ...
        raise DataError(f"{what}: cannot read MATLAB file {path} ({error_text(exc)})") from None


def mat_scalar(value):
    """Unwrap the nested 1-element arrays scipy returns for MATLAB cells and scalars."""
    while isinstance(value, np.ndarray):
        if value.size != 1:
            return value
        value = value.reshape(-1)[0]
    if isinstance(value, np.generic):
        return value.item()
    return value


def first_synonyms(wnids: Sequence[str], words: Dict[str, str]) -> List[str]:
    """Readable class names: the first synonym of each wnid's words ("tench, Tinca tinca" →
    "tench"), with " (wnid)" appended where two classes share one (ImageNet's two "crane"s);
    the wnid itself when it has no words."""
    first = [(words.get(w) or w).split(",")[0].strip() or w for w in wnids]
    counts: Dict[str, int] = {}
    for n in first:
        counts[n] = counts.get(n, 0) + 1
    return [n if counts[n] == 1 or n == w else f"{n} ({w})" for n, w in zip(first, wnids)]


# --------------------------------------------------------------------------------------------
# CUB-200-2011

CUB_LAYOUT = (
    "the official CUB-200-2011 layout: ROOT/CUB_200_2011/{images.txt,image_class_labels.txt,"
    "train_test_split.txt,classes.txt,images/<class>/<file>.jpg} (ROOT may also be that folder)"
)
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt")


def _id_table(path: Path, what: str, value_desc: str) -> Dict[int, Tuple[int, str]]:
    """``<positive int id> <value>`` lines → {id: (line number, value)}."""
    out: Dict[int, Tuple[int, str]] = {}
    for lineno, line in read_lines(path, what):
        parts = line.split(None, 1)
        key = parse_int(parts[0]) if len(parts) == 2 else None
        if key is None or key < 1:
            raise bad_line(what, path, lineno, f"'<id> <{value_desc}>'", line)
        if key in out:
            raise DataError(f"{what}: {path} line {lineno}: id {key} already on line "
                            f"{out[key][0]}")
        out[key] = (lineno, parts[1].strip())
    if not out:
        raise DataError(f"{what}: {path} is empty")
    return out


@DATASETS.register(
    "cub200",
    "CUB-200-2011 birds, 200 classes, 5,994 train / 5,794 test, official CUB_200_2011 layout "
    "(images.txt, train_test_split.txt, ...), decoded per file",
)
@file_reader
def cub200(
    root: Optional[str] = None,
    expect_official: bool = True,
    *,
    file_options: FileOptions,
) -> ImageFiles:
    """CUB-200-2011 with its official train/test split; ``image_size=448, resize=512`` for the
    fine-grained papers' 448×448 inputs."""
    what = "cub200"
    base = need_root(root, what, CUB_LAYOUT)
    folder = base / "CUB_200_2011" if (base / "CUB_200_2011").is_dir() else base
    missing = [n for n in CUB_FILES if not (folder / n).is_file()]
    if missing:
        raise DataError(f"{what}: {folder} lacks {', '.join(missing)}; expected {CUB_LAYOUT}")
    if not (folder / "images").is_dir():
        raise DataError(f"{what}: {folder} has no images/ folder; expected {CUB_LAYOUT}")

    class_path = folder / "classes.txt"
    class_table = _id_table(class_path, what, "class name")
    ids = sorted(class_table)
    if ids != list(range(1, len(ids) + 1)):
        gap = next(i for i, k in enumerate(ids, 1) if i != k)
        raise DataError(f"{what}: {class_path} numbers its classes 1..{ids[-1]} with class "
                        f"{gap} missing; expected ids 1..N")
    classes = [class_table[k][1] for k in ids]

    images_path = folder / "images.txt"
    labels_path = folder / "image_class_labels.txt"
    split_path = folder / "train_test_split.txt"
    images = _id_table(images_path, what, "class dir/file.jpg")
    labels = _id_table(labels_path, what, "class id")
    split = _id_table(split_path, what, "1 or 0")
    for path, table in ((labels_path, labels), (split_path, split)):
        extra = sorted(set(table) - set(images))
        if extra:
            lineno = table[extra[0]][0]
            raise DataError(f"{what}: {path} line {lineno}: image id {extra[0]} is not in "
                            f"{images_path.name}")
        absent = sorted(set(images) - set(table))
        if absent:
            raise DataError(f"{what}: {path} has no line for image id {absent[0]} "
                            f"({len(absent)} of the {len(images)} ids of {images_path.name} "
                            f"are missing)")

    train_paths, train_labels, test_paths, test_labels = [], [], [], []
    for key in sorted(images):
        lineno, label_text = labels[key]
        label = parse_int(label_text)
        if label is None:
            raise bad_line(what, labels_path, lineno, "'<image id> <class id>'",
                           f"{key} {label_text}")
        if not 1 <= label <= len(classes):
            raise DataError(f"{what}: {labels_path} line {lineno}: class id {label} out of "
                            f"range 1..{len(classes)} ({class_path.name})")
        s_lineno, flag = split[key]
        if flag not in ("0", "1"):
            raise bad_line(what, split_path, s_lineno, "'<image id> <1 or 0>'", f"{key} {flag}")
        path = str(folder / "images" / images[key][1])
        if flag == "1":
            train_paths.append(path)
            train_labels.append(label - 1)
        else:
            test_paths.append(path)
            test_labels.append(label - 1)
    check_every_class_trained(what, classes, train_labels, str(split_path))
    if not test_paths:
        raise DataError(f"{what}: {split_path} marks no image as test (0)")
    check_official(
        what, expect_official,
        {"classes": len(classes), "train": len(train_paths), "test": len(test_paths)},
        {"classes": 200, "train": 5994, "test": 5794}, folder,
    )
    check_listed_exist(what, train_paths + test_paths, str(images_path))
    return file_options.dataset((train_paths, train_labels), (test_paths, test_labels), classes)


# --------------------------------------------------------------------------------------------
# Stanford Dogs

DOGS_LAYOUT = (
    "the official Stanford Dogs layout: ROOT/Images/<wnid>-<breed>/<file>.jpg (images.tar) and "
    "ROOT/{train_list.mat,test_list.mat} (lists.tar; ROOT/lists/ also accepted)"
)


def _dogs_list(path: Path, what: str) -> Tuple[List[str], List[int]]:
    mat = load_mat(path, what)
    for key in ("file_list", "labels"):
        if key not in mat:
            found = ", ".join(sorted(k for k in mat if not k.startswith("__"))[:8])
            raise DataError(f"{what}: {path} has no {key!r} variable (found {found or 'none'})")
    files_raw = np.asarray(mat["file_list"], dtype=object).reshape(-1)
    labels_raw = np.asarray(mat["labels"]).reshape(-1)
    if len(files_raw) != len(labels_raw):
        raise DataError(f"{what}: {path} has {len(files_raw)} file_list entries but "
                        f"{len(labels_raw)} labels")
    files, labels = [], []
    for i, (f, y) in enumerate(zip(files_raw, labels_raw), 1):
        f = mat_scalar(f)
        if not isinstance(f, str) or "/" not in f:
            raise DataError(f"{what}: {path} file_list entry {i} is {f!r}; expected "
                            f"'<wnid>-<breed>/<file>.jpg'")
        y = mat_scalar(y)
        if isinstance(y, bool) or not isinstance(y, (int, float)) or int(y) != y:
            raise DataError(f"{what}: {path} labels entry {i} is {y!r}; expected an integer")
        files.append(f)
        labels.append(int(y))
    if not files:
        raise DataError(f"{what}: {path} lists no images")
    return files, labels


@DATASETS.register(
    "dogs",
    "Stanford Dogs, 120 breeds, 12,000 train / 8,580 test, official Images/ + "
    "train_list.mat/test_list.mat, decoded per file",
)
@file_reader
def dogs(
    root: Optional[str] = None,
    expect_official: bool = True,
    *,
    file_options: FileOptions,
) -> ImageFiles:
    """Stanford Dogs with its official split (lists.tar, read with scipy); ``image_size=448,
    resize=512`` for the fine-grained papers' 448×448 inputs."""
    what = "dogs"
    base = need_root(root, what, DOGS_LAYOUT)
    images = next((base / n for n in ("Images", "images") if (base / n).is_dir()), None)
    if images is None:
        raise DataError(f"{what}: {base} has no Images/ folder; expected {DOGS_LAYOUT}")
    lists = next((d for d in (base, base / "lists")
                  if (d / "train_list.mat").is_file() or (d / "test_list.mat").is_file()), None)
    if lists is None:
        raise DataError(f"{what}: {base} has no train_list.mat or test_list.mat (nor lists/); "
                        f"expected {DOGS_LAYOUT}")
    train_files, train_y = _dogs_list(lists / "train_list.mat", what)
    test_files, test_y = _dogs_list(lists / "test_list.mat", what)

    num_classes = max(train_y + test_y)
    folder_of: Dict[int, str] = {}
    for path, files, ys in ((lists / "train_list.mat", train_files, train_y),
                            (lists / "test_list.mat", test_files, test_y)):
        for i, (f, y) in enumerate(zip(files, ys), 1):
            if y < 1:
                raise DataError(f"{what}: {path} labels entry {i} is {y}; labels are 1-based "
                                f"(1..{num_classes})")
            folder = f.split("/")[0]
            known = folder_of.setdefault(y, folder)
            if known != folder:
                raise DataError(f"{what}: {path} entry {i} ({f}) has label {y}, which other "
                                f"entries give to folder {known}")
    classes = [folder_of.get(k, "") for k in range(1, num_classes + 1)]
    train_labels = [y - 1 for y in train_y]
    unnamed = [str(k) for k in range(1, num_classes + 1) if k not in folder_of]
    if unnamed:  # a label below the maximum that no entry uses: a class without images
        raise DataError(f"{what}: labels run 1..{num_classes} but no image has label(s) "
                        f"{', '.join(unnamed[:5])} in {lists}")
    check_every_class_trained(what, classes, train_labels, str(lists / "train_list.mat"))
    check_official(
        what, expect_official,
        {"classes": num_classes, "train": len(train_files), "test": len(test_files)},
        {"classes": 120, "train": 12000, "test": 8580}, base,
    )
    train_paths = [str(images / f) for f in train_files]
    test_paths = [str(images / f) for f in test_files]
    check_listed_exist(what, train_paths + test_paths, f"{lists}/{{train,test}}_list.mat")
    return file_options.dataset((train_paths, train_labels), (test_paths, [y - 1 for y in test_y]), classes)


# --------------------------------------------------------------------------------------------
# MIT Indoor-67

MIT67_LAYOUT = (
    "the official MIT Indoor-67 layout: ROOT/Images/<category>/<file>.jpg (indoorCVPR_09.tar) "
    "and ROOT/TrainImages.txt, ROOT/TestImages.txt (lines '<category>/<file>.jpg')"
)


def _mit67_list(path: Path, what: str) -> List[Tuple[int, str, str]]:
    out = []
    for lineno, line in read_lines(path, what):
        category, _, name = line.partition("/")
        if not category or not name or name.endswith("/"):
            raise bad_line(what, path, lineno, "'<category>/<file>.jpg'", line)
        out.append((lineno, category, line))
    if not out:
        raise DataError(f"{what}: {path} is empty")
    return out


@DATASETS.register(
    "mit67",
    "MIT Indoor-67 scenes, 67 classes, 5,360 train / 1,340 test, official Images/ + "
    "TrainImages.txt/TestImages.txt, decoded per file",
)
@file_reader
def mit67(
    root: Optional[str] = None,
    expect_official: bool = True,
    *,
    file_options: FileOptions,
) -> ImageFiles:
    """MIT Indoor-67 with the official 80/20-per-class split of TrainImages/TestImages.txt."""
    what = "mit67"
    base = need_root(root, what, MIT67_LAYOUT)
    images = next((d for d in (base / "Images", base / "indoorCVPR_09" / "Images")
                   if d.is_dir()), None)
    if images is None:
        raise DataError(f"{what}: {base} has no Images/ folder; expected {MIT67_LAYOUT}")
    lists = next((d for d in (base, images.parent) if (d / "TrainImages.txt").is_file()), base)
    missing = [n for n in ("TrainImages.txt", "TestImages.txt") if not (lists / n).is_file()]
    if missing:
        raise DataError(f"{what}: {lists} lacks {', '.join(missing)}; expected {MIT67_LAYOUT}")
    train = _mit67_list(lists / "TrainImages.txt", what)
    test = _mit67_list(lists / "TestImages.txt", what)
    classes = sorted({c for _, c, _ in train})
    index = {c: i for i, c in enumerate(classes)}
    for lineno, category, line in test:
        if category not in index:
            raise DataError(f"{what}: {lists / 'TestImages.txt'} line {lineno}: class "
                            f"{category!r} has no training images in TrainImages.txt")
    check_official(
        what, expect_official,
        {"classes": len(classes), "train": len(train), "test": len(test)},
        {"classes": 67, "train": 5360, "test": 1340}, lists,
    )
    train_paths = [str(images / line) for _, _, line in train]
    test_paths = [str(images / line) for _, _, line in test]
    check_listed_exist(what, train_paths + test_paths, f"{lists}/{{Train,Test}}Images.txt")
    return file_options.dataset((train_paths, [index[c] for _, c, _ in train]),
                         (test_paths, [index[c] for _, c, _ in test]), classes)
