"""Readers of the official layouts of CUB-200-2011, Stanford Dogs, MIT Indoor-67, ImageNet and
Tiny ImageNet: tiny fixtures written in each exact layout, and every error they report."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import expect_config_error, expect_data_error
from softlabels.data import FileLoader, ImageFiles, ImageTensors, load_dataset
from softlabels.errors import ConfigError, DataError
from softlabels.registry import DATASETS

scipy_io = pytest.importorskip("scipy.io")

NEW = ("cub200", "dogs", "mit67", "imagenet", "tinyimagenet")
COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]  # class i is a solid image of colour i
SUBSET = {"expect_official": False}


def write_image(path: Path, colour=(255, 0, 0), size=(12, 10), mode="RGB", fmt="JPEG") -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.new("RGB", size, colour)
    if mode != "RGB":
        im = im.convert(mode)
    im.save(path, fmt)
    return path


def colour_class(batch_x: torch.Tensor, mean, std) -> torch.Tensor:
    """The class (0 red, 1 green, 2 blue) each normalised image of a batch shows."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (batch_x.cpu() * s + m).mean(dim=(2, 3)).argmax(1)


def check_file_loader(d: ImageFiles, split) -> None:
    loader = FileLoader(split, 4, train=False, image_size=d.image_size, resize=d.resize,
                        mean=d.mean, std=d.std)
    seen = []
    for b in loader:
        assert b.x.shape[1:] == (3, d.image_size, d.image_size) and b.x.dtype == torch.float32
        assert torch.equal(b.y, split.labels[b.index])
        assert torch.equal(colour_class(b.x, d.mean, d.std), b.y)
        seen.append(b.index)
    assert torch.equal(torch.cat(seen), torch.arange(len(split)))


def test_registered_with_descriptions():
    for name in NEW:
        assert name in DATASETS
        desc = DATASETS.get(name).description
        assert desc and "\n" not in desc


@pytest.mark.parametrize("name", NEW)
def test_common_root_errors(tmp_path, name):
    expect_data_error(lambda: load_dataset(name, None, None), "data.root")
    nowhere = tmp_path / "nowhere"
    expect_data_error(lambda: load_dataset(name, str(nowhere), None), nowhere, "not a directory")
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"expect_official": "yes"}),
                        "data.options.expect_official")
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"colour": 1}),
                        "data.options.colour")
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"image_size": 0}),
                        "data.options.image_size")


@pytest.mark.parametrize("name", ["cub200", "dogs", "mit67", "imagenet", "imagefolder"])
def test_size_and_normalisation_options(tmp_path, name):
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"image_size": 64,
                                                                   "resize": 32}),
                        "data.options.resize")
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"std": [0.5, 0.0, 0.5]}),
                        "data.options.std")
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"mean": [0.5, 0.5]}),
                        "data.options.mean")


def test_normalisation_options_reach_the_dataset(tmp_path):
    """The orthogonal paper's official code normalises with 0.5/0.5 instead of ImageNet's values."""
    make_cub(tmp_path)
    ds = load_dataset("cub200", str(tmp_path), {**SUBSET, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5]})
    assert ds.mean == (0.5, 0.5, 0.5) and ds.std == (0.5, 0.5, 0.5)
    assert load_dataset("cub200", str(tmp_path), SUBSET).mean == (0.485, 0.456, 0.406)


# --------------------------------------------------------------------------------------------
# CUB-200-2011

CUB_CLASSES = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]


def make_cub(parent: Path) -> Path:
    """3 classes × 3 images (ids 1..9, class-major); the last image of each class is test."""
    folder = parent / "CUB_200_2011"
    folder.mkdir(parents=True)
    (folder / "classes.txt").write_text(
        "".join(f"{i} {c}\n" for i, c in enumerate(CUB_CLASSES, 1)))
    images, labels, split = [], [], []
    for c, name in enumerate(CUB_CLASSES):
        for k in range(3):
            key = 3 * c + k + 1
            rel = f"{name}/{name.split('.')[1]}_{k:04d}_{key}.jpg"
            write_image(folder / "images" / rel, COLOURS[c])
            images.append(f"{key} {rel}\n")
            labels.append(f"{key} {c + 1}\n")
            split.append(f"{key} {0 if k == 2 else 1}\n")
    (folder / "images.txt").write_text("".join(images))
    (folder / "image_class_labels.txt").write_text("".join(labels))
    (folder / "train_test_split.txt").write_text("".join(split))
    (folder / "bounding_boxes.txt").write_text("".join(f"{i} 0 0 5 5\n" for i in range(1, 10)))
    return folder


def test_cub_reads_official_layout(tmp_path):
    folder = make_cub(tmp_path / "data")
    for root in (tmp_path / "data", folder):  # the parent or the CUB_200_2011 folder itself
        d = load_dataset("cub200", str(root), SUBSET)
        assert isinstance(d, ImageFiles) and d.val is None
        assert d.classes == CUB_CLASSES and d.num_classes == 3
        assert (len(d.train), len(d.test)) == (6, 3)
        assert d.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
        assert d.test.labels.tolist() == [0, 1, 2]
        assert d.train.paths[0] == str(folder / "images" / CUB_CLASSES[0] /
                                       "Black_footed_Albatross_0000_1.jpg")
        assert (d.image_size, d.resize) == (224, 256)
        assert d.mean == pytest.approx((0.485, 0.456, 0.406))
    d = load_dataset("cub200", str(folder), {"image_size": 8, "resize": 10, **SUBSET})
    assert (d.image_size, d.resize) == (8, 10)
    check_file_loader(d, d.train)
    check_file_loader(d, d.test)
    expect_data_error(lambda: load_dataset("cub200", str(folder), None),
                      "3 classes, 6 train, 3 test", "200 classes, 5,994 train, 5,794 test",
                      "data.options.expect_official=false")


def test_cub_errors(tmp_path):
    expect_data_error(lambda: load_dataset("cub200", str(tmp_path), SUBSET), "images.txt",
                      "classes.txt", "CUB_200_2011")

    def fresh(name):
        return make_cub(tmp_path / name)

    def load(folder):
        return lambda: load_dataset("cub200", str(folder), SUBSET)

    f = fresh("no_classes")
    (f / "classes.txt").unlink()
    expect_data_error(load(f), f, "lacks classes.txt")

    f = fresh("bad_line")
    lines = (f / "images.txt").read_text().splitlines()
    lines[1] = "two 001.Black_footed_Albatross/x.jpg"
    (f / "images.txt").write_text("\n".join(lines) + "\n")
    expect_data_error(load(f), f / "images.txt", "line 2", "'two ")

    f = fresh("duplicate")
    with open(f / "image_class_labels.txt", "a") as fh:
        fh.write("4 1\n")
    expect_data_error(load(f), f / "image_class_labels.txt", "line 10", "id 4 already on line 4")

    f = fresh("out_of_range")
    (f / "image_class_labels.txt").write_text(
        (f / "image_class_labels.txt").read_text().replace("5 2\n", "5 7\n"))
    expect_data_error(load(f), f / "image_class_labels.txt", "line 5", "class id 7 out of range",
                      "1..3")

    f = fresh("not_int")
    (f / "image_class_labels.txt").write_text(
        (f / "image_class_labels.txt").read_text().replace("5 2\n", "5 two\n"))
    expect_data_error(load(f), f / "image_class_labels.txt", "line 5")

    f = fresh("flag")
    (f / "train_test_split.txt").write_text(
        (f / "train_test_split.txt").read_text().replace("8 1\n", "8 2\n"))
    expect_data_error(load(f), f / "train_test_split.txt", "line 8", "1 or 0")

    f = fresh("short_labels")
    lines = (f / "image_class_labels.txt").read_text().splitlines()
    (f / "image_class_labels.txt").write_text("\n".join(lines[:-2]) + "\n")
    expect_data_error(load(f), f / "image_class_labels.txt", "no line for image id 8")

    f = fresh("unknown_id")
    with open(f / "train_test_split.txt", "a") as fh:
        fh.write("12 1\n")
    expect_data_error(load(f), f / "train_test_split.txt", "line 10", "image id 12")

    f = fresh("class_gap")
    (f / "classes.txt").write_text("1 a\n2 b\n4 d\n")
    expect_data_error(load(f), f / "classes.txt", "class 3 missing")

    f = fresh("untrained")
    split = (f / "train_test_split.txt").read_text()
    split = split.replace("7 1\n", "7 0\n").replace("8 1\n", "8 0\n")
    (f / "train_test_split.txt").write_text(split)
    expect_data_error(load(f), "no training images", CUB_CLASSES[2])

    f = fresh("missing_image")
    gone = f / "images" / CUB_CLASSES[1] / "Laysan_Albatross_0001_5.jpg"
    gone.unlink()
    expect_data_error(load(f), "1 of the 9 images listed", f / "images.txt", gone)

    f = fresh("no_images_dir")
    import shutil

    shutil.rmtree(f / "images")
    expect_data_error(load(f), f, "no images/ folder")


# --------------------------------------------------------------------------------------------
# Stanford Dogs

BREEDS = ["n02085620-Chihuahua", "n02085782-Japanese_spaniel", "n02085936-Maltese_dog"]


def write_dogs_list(path: Path, files, labels) -> None:
    """A list .mat as in lists.tar: N×1 cell arrays of char and an N×1 double ``labels``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    file_list = np.empty((len(files), 1), dtype=object)
    annotation_list = np.empty((len(files), 1), dtype=object)
    for i, f in enumerate(files):
        file_list[i, 0] = f
        annotation_list[i, 0] = f[: -len(".jpg")]
    scipy_io.savemat(str(path), {
        "file_list": file_list,
        "annotation_list": annotation_list,
        "labels": np.asarray(labels, dtype=np.float64).reshape(-1, 1),
    })


def make_dogs(root: Path, lists_dir: str = "") -> Path:
    """3 breeds; 3 train + 1 test images each."""
    train, test = [], []
    for c, breed in enumerate(BREEDS):
        wnid = breed.split("-")[0]
        for k in range(4):
            rel = f"{breed}/{wnid}_{100 + k}.jpg"
            write_image(root / "Images" / rel, COLOURS[c], size=(14, 9))
            (test if k == 3 else train).append((rel, c + 1))
    lists = root / lists_dir if lists_dir else root
    write_dogs_list(lists / "train_list.mat", *zip(*train))
    write_dogs_list(lists / "test_list.mat", *zip(*test))
    write_dogs_list(lists / "file_list.mat", *zip(*(train + test)))
    (root / "Annotation").mkdir()
    return root


def test_dogs_reads_official_layout(tmp_path):
    for lists_dir in ("", "lists"):  # lists.tar unpacked into ROOT, or into ROOT/lists/
        root = make_dogs(tmp_path / (lists_dir or "flat"), lists_dir)
        d = load_dataset("dogs", str(root), {"image_size": 8, "resize": 9, **SUBSET})
        assert isinstance(d, ImageFiles) and d.val is None
        assert d.classes == BREEDS
        assert (len(d.train), len(d.test)) == (9, 3)
        assert d.train.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
        assert d.test.labels.tolist() == [0, 1, 2]
        assert d.test.paths[1] == str(root / "Images" / BREEDS[1] / "n02085782_103.jpg")
        check_file_loader(d, d.train)
    d = load_dataset("dogs", str(root), SUBSET)
    assert (d.image_size, d.resize) == (224, 256)
    expect_data_error(lambda: load_dataset("dogs", str(root), None),
                      "3 classes, 9 train, 3 test", "120 classes, 12,000 train, 8,580 test")


def test_dogs_errors(tmp_path, monkeypatch):
    def load(root):
        return lambda: load_dataset("dogs", str(root), SUBSET)

    expect_data_error(load(tmp_path), tmp_path, "no Images/ folder")
    root = make_dogs(tmp_path / "no_lists", "lists")
    for f in (root / "lists").iterdir():
        f.unlink()
    expect_data_error(load(root), "train_list.mat", "lists.tar")

    root = make_dogs(tmp_path / "no_test", "lists")
    (root / "lists" / "test_list.mat").unlink()
    expect_data_error(load(root), root / "lists" / "test_list.mat", "missing")

    root = make_dogs(tmp_path / "corrupt")
    (root / "train_list.mat").write_bytes(b"this is not a MATLAB file at all" * 10)
    expect_data_error(load(root), "cannot read MATLAB file", root / "train_list.mat")

    root = make_dogs(tmp_path / "no_labels")
    scipy_io.savemat(str(root / "test_list.mat"), {"file_list": np.array([["x/y.jpg"]],
                                                                        dtype=object)})
    expect_data_error(load(root), root / "test_list.mat", "no 'labels' variable", "file_list")

    root = make_dogs(tmp_path / "lengths")
    write_dogs_list(root / "test_list.mat", [f"{BREEDS[0]}/n02085620_103.jpg"], [1])
    scipy_io.savemat(str(root / "test_list.mat"), {
        "file_list": np.array([[f"{BREEDS[0]}/n02085620_103.jpg"]], dtype=object),
        "labels": np.array([[1.0], [2.0]])})
    expect_data_error(load(root), "1 file_list entries but 2 labels")

    root = make_dogs(tmp_path / "zero")
    write_dogs_list(root / "test_list.mat", [f"{BREEDS[0]}/n02085620_103.jpg"], [0])
    expect_data_error(load(root), root / "test_list.mat", "entry 1", "1-based")

    root = make_dogs(tmp_path / "fractional")
    write_dogs_list(root / "test_list.mat", [f"{BREEDS[0]}/n02085620_103.jpg"], [1.5])
    expect_data_error(load(root), root / "test_list.mat", "labels entry 1", "integer")

    root = make_dogs(tmp_path / "inconsistent")
    write_dogs_list(root / "test_list.mat", [f"{BREEDS[0]}/n02085620_103.jpg"], [2])
    expect_data_error(load(root), "label 2", BREEDS[1], "n02085620_103.jpg")

    root = make_dogs(tmp_path / "untrained")
    write_dogs_list(root / "test_list.mat", [f"{BREEDS[0]}/n02085620_103.jpg",
                                             "n02086240-Shih-Tzu/n02086240_1.jpg"], [1, 4])
    expect_data_error(load(root), "no training images", "n02086240-Shih-Tzu")

    root = make_dogs(tmp_path / "gap")
    write_dogs_list(root / "test_list.mat", ["n02086240-Shih-Tzu/n02086240_1.jpg"], [5])
    expect_data_error(load(root), "labels run 1..5", "4")

    root = make_dogs(tmp_path / "missing")
    (root / "Images" / BREEDS[2] / "n02085936_101.jpg").unlink()
    expect_data_error(load(root), "1 of the 12 images listed", "n02085936_101.jpg")

    root = make_dogs(tmp_path / "no_scipy")
    monkeypatch.setitem(sys.modules, "scipy.io", None)
    expect_data_error(load(root), "needs scipy", "train_list.mat")


# --------------------------------------------------------------------------------------------
# MIT Indoor-67

SCENES = ["airport_inside", "bakery", "bar"]


def make_mit67(root: Path, nested: bool = False) -> Path:
    """3 categories × (2 train + 1 test); lists written in non-sorted order with CRLF endings."""
    images = root / ("indoorCVPR_09/Images" if nested else "Images")
    train, test = [], []
    for c in (2, 0, 1):
        for k in range(3):
            rel = f"{SCENES[c]}/{SCENES[c]}_{k}.jpg"
            write_image(images / rel, COLOURS[c], size=(10, 16))
            (test if k == 2 else train).append(rel)
    write_image(images / "bar" / "unlisted.jpg", COLOURS[2])
    (root / "TrainImages.txt").write_bytes(("\r\n".join(train) + "\r\n").encode())
    (root / "TestImages.txt").write_text("\n".join(test) + "\n\n")
    return root


def test_mit67_reads_official_layout(tmp_path):
    for nested in (False, True):
        root = make_mit67(tmp_path / f"m{nested}", nested)
        d = load_dataset("mit67", str(root), {"image_size": 8, "resize": 8, **SUBSET})
        assert isinstance(d, ImageFiles) and d.val is None
        assert d.classes == SCENES
        assert (len(d.train), len(d.test)) == (6, 3)
        assert d.train.labels.tolist() == [2, 2, 0, 0, 1, 1]  # list order, sorted-name labels
        assert d.test.labels.tolist() == [2, 0, 1]
        images = root / ("indoorCVPR_09/Images" if nested else "Images")
        assert d.test.paths[0] == str(images / "bar" / "bar_2.jpg")
        check_file_loader(d, d.test)
    expect_data_error(lambda: load_dataset("mit67", str(root), None),
                      "3 classes, 6 train, 3 test", "67 classes, 5,360 train, 1,340 test")


def test_mit67_errors(tmp_path):
    def load(root):
        return lambda: load_dataset("mit67", str(root), SUBSET)

    expect_data_error(load(tmp_path), tmp_path, "no Images/ folder", "TrainImages.txt")
    root = make_mit67(tmp_path / "no_test")
    (root / "TestImages.txt").unlink()
    expect_data_error(load(root), "lacks TestImages.txt")

    root = make_mit67(tmp_path / "bad_line")
    with open(root / "TestImages.txt", "a") as fh:
        fh.write("no_category.jpg\n")
    expect_data_error(load(root), root / "TestImages.txt", "line 5", "no_category.jpg")

    root = make_mit67(tmp_path / "untrained")
    with open(root / "TestImages.txt", "a") as fh:
        fh.write("casino/casino_1.jpg\n")
    expect_data_error(load(root), "line 5", "'casino' has no training images")

    root = make_mit67(tmp_path / "empty")
    (root / "TrainImages.txt").write_text("\n")
    expect_data_error(load(root), root / "TrainImages.txt", "empty")

    root = make_mit67(tmp_path / "missing")
    (root / "Images" / "bakery" / "bakery_1.jpg").unlink()
    expect_data_error(load(root), "1 of the 9 images listed", "bakery_1.jpg")


# --------------------------------------------------------------------------------------------
# ImageNet

WNIDS = ["n01440764", "n02012849", "n03126707"]  # sorted; ILSVRC ids below are not in this order
WORDS = {"n01440764": "tench, Tinca tinca", "n02012849": "crane",
         "n03126707": "crane", "n00001740": "entity"}
ILSVRC_ID = {"n02012849": 1, "n03126707": 2, "n01440764": 3, "n00001740": 4}
# the 6 validation images: ILSVRC2012_val_0000000<i>.JPEG is of class VAL_CLASS[i - 1]
VAL_CLASS = [1, 2, 0, 0, 2, 1]


def write_meta(path: Path) -> None:
    """devkit data/meta.mat: a struct array ``synsets`` (3 leaves and one inner node)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
              "wordnet_height", "num_train_images"]
    synsets = np.zeros((len(ILSVRC_ID), 1), dtype=[(f, object) for f in fields])
    for wnid, key in ILSVRC_ID.items():
        leaf = wnid != "n00001740"
        synsets[key - 1, 0] = (
            np.array([[key]], dtype=np.uint16), wnid, WORDS[wnid], "a gloss",
            np.array([[0 if leaf else 3]], dtype=np.uint16),
            np.zeros((1, 0)) if leaf else np.array([[1, 2, 3]], dtype=np.uint16),
            np.array([[0 if leaf else 2]], dtype=np.uint16), np.array([[2]], dtype=np.uint16))
    scipy_io.savemat(str(path), {"synsets": synsets})


def make_imagenet(root: Path, val: str = "folders", images: Path = None) -> Path:
    """train/<wnid>/ with 2 images per class; val in ``folders`` (val/<wnid>/), ``devkit`` (flat
    + ground truth + meta.mat) or ``kaggle`` (flat + LOC_val_solution.csv) layout."""
    images = images or root
    for c, wnid in enumerate(WNIDS):
        for k in range(2):
            write_image(images / "train" / wnid / f"{wnid}_{k + 10}.JPEG", COLOURS[c])
    for i, c in enumerate(VAL_CLASS, 1):
        name = f"ILSVRC2012_val_{i:08d}.JPEG"
        sub = WNIDS[c] if val == "folders" else ""
        write_image(images / "val" / sub / name, COLOURS[c], size=(9, 13))
    if val == "devkit":
        data = root / "ILSVRC2012_devkit_t12" / "data"
        write_meta(data / "meta.mat")
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{ILSVRC_ID[WNIDS[c]]}\n" for c in VAL_CLASS))
    if val == "kaggle":
        rows = [f"ILSVRC2012_val_{i:08d},{WNIDS[c]} 1 2 30 40 {WNIDS[c]} 5 6 7 8"
                for i, c in enumerate(VAL_CLASS, 1)]
        rows[2], rows[4] = rows[4], rows[2]  # the CSV is not in file order
        (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" +
                                                   "\n".join(rows) + "\n")
        (root / "LOC_synset_mapping.txt").write_text(
            "".join(f"{w} {WORDS[w]}\n" for w in WNIDS))
    return root


def test_imagenet_val_folders(tmp_path):
    root = make_imagenet(tmp_path / "in")
    d = load_dataset("imagenet", str(root), {"image_size": 8, "resize": 12, **SUBSET})
    assert isinstance(d, ImageFiles) and d.val is None
    assert d.classes == WNIDS  # no devkit or synset mapping: the wnids
    assert (len(d.train), len(d.test)) == (6, 6)
    assert d.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert d.test.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert d.test.paths[0] == str(root / "val" / WNIDS[0] / "ILSVRC2012_val_00000003.JPEG")
    check_file_loader(d, d.test)
    # a devkit next to it supplies the names only
    write_meta(root / "ILSVRC2012_devkit_t12" / "data" / "meta.mat")
    d = load_dataset("imagenet", str(root), SUBSET)
    assert d.classes == ["tench", "crane (n02012849)", "crane (n03126707)"]
    assert (d.image_size, d.resize) == (224, 256)
    expect_data_error(lambda: load_dataset("imagenet", str(root), None),
                      "3 classes, 6 train, 6 val (test)",
                      "1,000 classes, 1,281,167 train, 50,000 val (test)")


def test_imagenet_flat_val_with_devkit(tmp_path):
    root = make_imagenet(tmp_path / "in", "devkit")
    d = load_dataset("imagenet", str(root), {"image_size": 8, "resize": 8, **SUBSET})
    assert d.classes == ["tench", "crane (n02012849)", "crane (n03126707)"]
    assert len(d.test) == 6
    assert d.test.labels.tolist() == VAL_CLASS  # file order, labels through meta.mat
    assert d.test.paths[0] == str(root / "val" / "ILSVRC2012_val_00000001.JPEG")
    check_file_loader(d, d.test)
    # the ground truth lists more images than val holds: a truncated download
    gt = root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    with open(gt, "a") as fh:
        fh.write("1\n3\n")
    assert len(load_dataset("imagenet", str(root), SUBSET).test) == 6
    expect_data_error(lambda: load_dataset("imagenet", str(root), None),
                      "2 of the 8 images listed", "ILSVRC2012_val_00000007.JPEG")


def test_imagenet_kaggle_layout(tmp_path):
    top = tmp_path / "imagenet-object-localization-challenge"
    make_imagenet(top, "kaggle", images=top / "ILSVRC" / "Data" / "CLS-LOC")
    write_image(top / "ILSVRC" / "Data" / "CLS-LOC" / "test" / "ILSVRC2012_test_00000001.JPEG")
    for root in (top, top / "ILSVRC" / "Data" / "CLS-LOC"):
        d = load_dataset("imagenet", str(root), {"image_size": 8, "resize": 8, **SUBSET})
        assert d.classes == ["tench", "crane (n02012849)", "crane (n03126707)"]
        assert d.test.labels.tolist() == VAL_CLASS
        assert (len(d.train), len(d.test)) == (6, 6)
    check_file_loader(d, d.test)


def test_imagenet_errors(tmp_path):
    def load(root):
        return lambda: load_dataset("imagenet", str(root), SUBSET)

    expect_data_error(load(tmp_path), "no train and no val folder", "ILSVRC2012_devkit_t12")
    root = make_imagenet(tmp_path / "empty_class")
    (root / "train" / "n09999999").mkdir()
    expect_data_error(load(root), "no images", "n09999999")

    root = make_imagenet(tmp_path / "mixed")
    write_image(root / "val" / "ILSVRC2012_val_00000099.JPEG")
    expect_data_error(load(root), "both class folders and 1 loose images",
                      "interrupted preparation")

    root = make_imagenet(tmp_path / "strange")
    write_image(root / "val" / "n09999999" / "ILSVRC2012_val_00000099.JPEG")
    expect_data_error(load(root), root / "val" / "n09999999", "not a class")

    root = make_imagenet(tmp_path / "unlabelled")
    for f in (root / "val").glob("*/*.JPEG"):
        f.rename(root / "val" / f.name)
    for wnid in WNIDS:
        (root / "val" / wnid).rmdir()
    expect_data_error(load(root), "flat", "ILSVRC2012_validation_ground_truth.txt",
                      "LOC_val_solution.csv")

    gt_rel = Path("ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt")
    root = make_imagenet(tmp_path / "bad_gt", "devkit")
    (root / gt_rel).write_text("1\n2\nthree\n")
    expect_data_error(load(root), root / gt_rel, "line 3", "'three'")

    root = make_imagenet(tmp_path / "gt_range", "devkit")
    (root / gt_rel).write_text("1\n2\n3\n3\n2\n9\n")
    expect_data_error(load(root), root / gt_rel, "line 6", "ILSVRC2012_ID 9 out of range")

    root = make_imagenet(tmp_path / "gt_inner", "devkit")
    (root / gt_rel).write_text("1\n2\n3\n3\n2\n4\n")
    expect_data_error(load(root), root / gt_rel, "line 6", "n00001740", "no train/n00001740")

    root = make_imagenet(tmp_path / "gt_short", "devkit")
    (root / gt_rel).write_text("1\n2\n3\n3\n2\n")
    expect_data_error(load(root), "ILSVRC2012_val_00000006.JPEG", "no label", root / gt_rel)

    root = make_imagenet(tmp_path / "gt_blank", "devkit")
    (root / gt_rel).write_text("1\n\n3\n3\n2\n1\n")
    expect_data_error(load(root), root / gt_rel, "line 2 is blank")

    root = make_imagenet(tmp_path / "no_meta", "devkit")
    (root / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    expect_data_error(load(root), "meta.mat", "missing")

    root = make_imagenet(tmp_path / "meta_fields", "devkit")
    scipy_io.savemat(str(root / "ILSVRC2012_devkit_t12" / "data" / "meta.mat"),
                     {"other": np.zeros((2, 2))})
    expect_data_error(load(root), "meta.mat", "'synsets' struct array")

    root = make_imagenet(tmp_path / "csv_header", "kaggle")
    csv = root / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace("ImageId,PredictionString", "id,pred"))
    expect_data_error(load(root), csv, "header")

    root = make_imagenet(tmp_path / "csv_wnid", "kaggle")
    csv = root / "LOC_val_solution.csv"
    csv.write_text(csv.read_text().replace(f"00000002,{WNIDS[2]}", "00000002,n07777777"))
    expect_data_error(load(root), csv, "line 3", "n07777777")

    root = make_imagenet(tmp_path / "csv_line", "kaggle")
    with open(root / "LOC_val_solution.csv", "a") as fh:
        fh.write("ILSVRC2012_val_00000007\n")
    expect_data_error(load(root), "line 8", "ILSVRC2012_val_00000007")


# --------------------------------------------------------------------------------------------
# Tiny ImageNet

TINY = ["n02124075", "n01443537", "n04067472"]  # wnids.txt order; sorted: 1443537, 2124075, ...
TINY_SORTED = sorted(TINY)
TINY_WORDS = {"n01443537": "goldfish, Carassius auratus", "n02124075": "Egyptian cat",
              "n04067472": "reel", "n00001740": "entity"}


def make_tiny(parent: Path) -> Path:
    """2 train images per class, 4 annotated val images, one unlabelled test image; one train
    image greyscale, one CMYK."""
    folder = parent / "tiny-imagenet-200"
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(TINY) + "\n")
    (folder / "words.txt").write_text("".join(f"{w}\t{t}\n" for w, t in TINY_WORDS.items()))
    for c, wnid in enumerate(TINY_SORTED):
        boxes = []
        for k in range(2):
            name = f"{wnid}_{k}.JPEG"
            mode = "L" if (c, k) == (1, 1) else "CMYK" if (c, k) == (2, 1) else "RGB"
            write_image(folder / "train" / wnid / "images" / name, COLOURS[c], (64, 64), mode)
            boxes.append(f"{name}\t0\t0\t63\t63\n")
        (folder / "train" / wnid / f"{wnid}_boxes.txt").write_text("".join(boxes))
    ann = []
    for i, c in enumerate([2, 0, 1, 0]):
        write_image(folder / "val" / "images" / f"val_{i}.JPEG", COLOURS[c], (64, 64))
        ann.append(f"val_{i}.JPEG\t{TINY_SORTED[c]}\t1\t2\t60\t61\n")
    (folder / "val" / "val_annotations.txt").write_text("".join(ann))
    write_image(folder / "test" / "images" / "test_0.JPEG", (9, 9, 9), (64, 64))
    return folder


def test_tinyimagenet_reads_official_layout(tmp_path):
    folder = make_tiny(tmp_path / "data")
    for root in (tmp_path / "data", folder):
        d = load_dataset("tinyimagenet", str(root), SUBSET)
        assert isinstance(d, ImageTensors) and d.val is None
        assert d.classes == ["goldfish", "Egyptian cat", "reel"]
        assert d.train.images.dtype == torch.uint8 and d.train.images.shape == (6, 3, 64, 64)
        assert d.test.images.shape == (4, 3, 64, 64)
        assert d.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
        assert d.test.labels.tolist() == [2, 0, 1, 0]
        assert (d.num_classes, d.in_channels, d.image_size) == (3, 3, 64)
        assert (d.crop_padding, d.hflip) == (4, True)
        assert d.mean == pytest.approx((0.4802, 0.4481, 0.3975))
    # solid colours survive JPEG: each image's strongest channel is its class's colour
    assert torch.equal(d.test.images.float().mean(dim=(2, 3)).argmax(1), d.test.labels)
    coloured = [0, 1, 2, 4, 5]  # train image 3 is greyscale; 5 was saved as CMYK
    strongest = d.train.images[coloured].float().mean(dim=(2, 3)).argmax(1)
    assert torch.equal(strongest, d.train.labels[coloured])
    grey = d.train.images[3].float()
    assert torch.allclose(grey[0], grey[1], atol=1) and torch.allclose(grey[1], grey[2], atol=1)
    small = load_dataset("tinyimagenet", str(folder), {"image_size": 32, **SUBSET})
    assert small.train.images.shape == (6, 3, 32, 32) and small.image_size == 32
    assert torch.equal(small.test.labels, d.test.labels)
    expect_data_error(lambda: load_dataset("tinyimagenet", str(folder), None),
                      "3 classes, 6 train, 4 val (test)",
                      "200 classes, 100,000 train, 10,000 val (test)")
    expect_config_error(lambda: load_dataset("tinyimagenet", str(folder), {"image_size": 65}),
                        "data.options.image_size", "1..64")
    expect_config_error(lambda: load_dataset("tinyimagenet", str(folder), {"resize": 70}),
                        "data.options.resize", "unknown option")


def test_tinyimagenet_decoded_tensors_are_cached_and_invalidated(tmp_path, monkeypatch):
    import os

    from softlabels.data import tinyimagenet as tiny

    cache = tmp_path / "cache"
    monkeypatch.setenv("SOFTLABELS_CACHE", str(cache))
    folder = make_tiny(tmp_path / "data")
    decoded = []
    real_decode = tiny._decode
    monkeypatch.setattr(tiny, "_decode", lambda paths, *a: decoded.append(len(paths)) or real_decode(paths, *a))

    first = load_dataset("tinyimagenet", str(folder), SUBSET)
    assert decoded == [6, 4] and len(list(cache.glob("tinyimagenet-64px-*.safetensors"))) == 1
    again = load_dataset("tinyimagenet", str(folder), SUBSET)
    assert decoded == [6, 4]  # served from the cache, identical
    assert torch.equal(again.train.images, first.train.images) and torch.equal(again.test.images, first.test.images)
    load_dataset("tinyimagenet", str(folder), {**SUBSET, "image_size": 32})
    assert decoded == [6, 4, 6, 4] and len(list(cache.glob("*.safetensors"))) == 2  # one file per size

    # a changed image (new content and time) is a new key: decoded again, and the new pixels show
    changed = folder / "val" / "images" / "val_0.JPEG"
    write_image(changed, (0, 0, 255), (64, 64))
    os.utime(changed, ns=(1, 1))
    fresh = load_dataset("tinyimagenet", str(folder), SUBSET)
    assert decoded[-2:] == [6, 4]
    assert int(fresh.test.images[0].float().mean(dim=(1, 2)).argmax()) == 2

    # a torn cache file is ignored and rewritten
    for f in cache.glob("tinyimagenet-64px-*.safetensors"):
        f.write_bytes(b"not a safetensors file")
    n = len(decoded)
    assert torch.equal(load_dataset("tinyimagenet", str(folder), SUBSET).test.images, fresh.test.images)
    assert len(decoded) == n + 2
    load_dataset("tinyimagenet", str(folder), SUBSET)
    assert len(decoded) == n + 2

    # cache: false neither reads nor writes
    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path / "off"))
    load_dataset("tinyimagenet", str(folder), {**SUBSET, "cache": False})
    assert not (tmp_path / "off").exists() and len(decoded) == n + 4


def test_tinyimagenet_errors(tmp_path):
    def load(folder):
        return lambda: load_dataset("tinyimagenet", str(folder), SUBSET)

    expect_data_error(load(tmp_path), "wnids.txt", "val/val_annotations.txt")

    def fresh(name):
        return make_tiny(tmp_path / name)

    f = fresh("no_ann")
    (f / "val" / "val_annotations.txt").unlink()
    expect_data_error(load(f), f, "lacks val/val_annotations.txt")

    f = fresh("bad_wnid_line")
    (f / "wnids.txt").write_text("n02124075\nn01443537 n04067472\n")
    expect_data_error(load(f), f / "wnids.txt", "line 2")

    f = fresh("dup_wnid")
    (f / "wnids.txt").write_text("\n".join(TINY + [TINY[0]]) + "\n")
    expect_data_error(load(f), f / "wnids.txt", "line 4", "already on line 1")

    f = fresh("stray")
    (f / "wnids.txt").write_text("\n".join(TINY[:2]) + "\n")
    expect_data_error(load(f), f / "train" / "n04067472", "not listed")

    f = fresh("untrained")
    for img in (f / "train" / "n04067472" / "images").iterdir():
        img.unlink()
    expect_data_error(load(f), "no training images", "n04067472")

    f = fresh("bad_ann")
    with open(f / "val" / "val_annotations.txt", "a") as fh:
        fh.write("val_9.JPEG\n")
    expect_data_error(load(f), f / "val" / "val_annotations.txt", "line 5", "val_9.JPEG")

    f = fresh("ann_wnid")
    with open(f / "val" / "val_annotations.txt", "a") as fh:
        fh.write("val_9.JPEG\tn07777777\t0\t0\t1\t1\n")
    expect_data_error(load(f), "line 5", "wnid n07777777 is not in wnids.txt")

    f = fresh("ann_dup")
    with open(f / "val" / "val_annotations.txt", "a") as fh:
        fh.write(f"val_0.JPEG\t{TINY[0]}\t0\t0\t1\t1\n")
    expect_data_error(load(f), "line 5", "val_0.JPEG already on line 1")

    f = fresh("missing_val")
    (f / "val" / "images" / "val_2.JPEG").unlink()
    expect_data_error(load(f), "1 of the 4 images listed", "val_2.JPEG")

    f = fresh("corrupt")
    bad = f / "train" / TINY_SORTED[1] / "images" / f"{TINY_SORTED[1]}_0.JPEG"
    bad.write_bytes(b"not a jpeg")
    expect_data_error(load(f), "cannot read image", bad)
