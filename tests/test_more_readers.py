"""Readers added for issue 12: Oxford Flowers-102, Stanford Cars, FGVC-Aircraft, Imagewoof and
ImageNet Dogs, each on a tiny fixture written in its official layout, with the errors they
report and the input-protocol options they pass on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import expect_config_error, expect_data_error
from softlabels.data import ImageFiles, ImageTensors, load_dataset
from softlabels.data.imagenet_dogs import DOG_WNIDS
from softlabels.registry import DATASETS
from test_official_readers import COLOURS, SUBSET, check_file_loader, write_image

scipy_io = pytest.importorskip("scipy.io")

NEW = ("flowers102", "stanford_cars", "fgvc_aircraft", "imagewoof", "imagenet_dogs")
SMALL = {**SUBSET, "image_size": 8, "resize": 10}


def test_registered_with_descriptions():
    for name in NEW:
        desc = DATASETS.get(name).description
        assert desc and "\n" not in desc


@pytest.mark.parametrize("name", NEW)
def test_common_root_errors(tmp_path, name):
    expect_data_error(lambda: load_dataset(name, None, None), "data.root")
    expect_data_error(lambda: load_dataset(name, str(tmp_path / "nowhere"), None), "not a directory")
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"colour": 1}), "data.options.colour")


@pytest.mark.parametrize("name", ["flowers102", "stanford_cars", "fgvc_aircraft", "imagewoof"])
def test_input_protocol_options_are_checked(tmp_path, name):
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"train_crop": "random_crop"}),
                        "data.options.train_crop")
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"resize_shape": "long_side"}),
                        "data.options.resize_shape")
    expect_config_error(lambda: load_dataset(name, str(tmp_path), {"image_size": 64, "resize": 32}),
                        "data.options.resize")


# --------------------------------------------------------------------------------------------
# Flowers-102: 3 classes, 12 images; image i (1-based) is of class (i - 1) % 3 + 1

def make_flowers(root: Path, n: int = 12, trn=(1, 2, 3), val=(4, 5, 6), tst=tuple(range(7, 13)),
                 images: bool = True) -> Path:
    labels = [(i - 1) % 3 + 1 for i in range(1, n + 1)]
    if images:
        for i in range(1, n + 1):
            write_image(root / "jpg" / f"image_{i:05d}.jpg", COLOURS[labels[i - 1] - 1])
    else:
        (root / "jpg").mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(str(root / "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    scipy_io.savemat(str(root / "setid.mat"), {k: np.array([list(v)], dtype=np.uint16)
                                               for k, v in (("trnid", trn), ("valid", val), ("tstid", tst))})
    return root


def test_flowers_splits(tmp_path):
    root = make_flowers(tmp_path)
    d = load_dataset("flowers102", str(root), {**SMALL, "train_crop": "resize_random_crop",
                                               "resize_shape": "square"})
    assert isinstance(d, ImageFiles) and d.val is None
    assert (d.train_crop, d.resize_shape) == ("resize_random_crop", "square")
    assert d.classes == ["1", "2", "3"] and (len(d.train), len(d.test)) == (6, 6)
    assert d.train.labels.tolist() == [0, 1, 2, 0, 1, 2]
    assert d.train.paths[3] == str(root / "jpg" / "image_00004.jpg")
    check_file_loader(d, d.test)
    d = load_dataset("flowers102", str(root), {**SMALL, "split": "train"})
    assert (len(d.train), len(d.val), len(d.test)) == (3, 3, 6)
    assert d.val.paths[0].endswith("image_00004.jpg")
    assert (d.train_crop, d.resize_shape) == ("random_resized_crop", "short_side")  # the defaults
    # torchvision's flowers-102/ folder is found too
    nested = make_flowers(tmp_path / "tv" / "flowers-102")
    assert len(load_dataset("flowers102", str(tmp_path / "tv"), SMALL).train) == 6
    assert nested.is_dir()


def test_flowers_official_counts(tmp_path):
    """The official 8,189 images: only listed, never decoded, so empty files do."""
    root = make_flowers(tmp_path, n=8189, trn=range(1, 1021), val=range(1021, 2041),
                        tst=range(2041, 8190), images=False)
    for i in range(1, 8190):
        (root / "jpg" / f"image_{i:05d}.jpg").touch()
    expect_data_error(lambda: load_dataset("flowers102", str(root)), "3 classes", "102 classes")
    labels = [(i - 1) % 102 + 1 for i in range(1, 8190)]
    scipy_io.savemat(str(root / "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    d = load_dataset("flowers102", str(root))
    assert (len(d.classes), len(d.train), len(d.test)) == (102, 2040, 6149)
    d = load_dataset("flowers102", str(root), {"split": "train"})
    assert (len(d.train), len(d.val), len(d.test)) == (1020, 1020, 6149)


def test_flowers_errors(tmp_path):
    expect_data_error(lambda: load_dataset("flowers102", str(tmp_path)), "no jpg/ folder")
    root = make_flowers(tmp_path / "a", tst=(7, 8, 99))
    expect_data_error(lambda: load_dataset("flowers102", str(root), SMALL), "tstid", "99", "outside 1..12")
    root = make_flowers(tmp_path / "b", val=(3, 4))
    expect_data_error(lambda: load_dataset("flowers102", str(root), SMALL), "image 3", "trnid", "valid")
    root = make_flowers(tmp_path / "c")
    (root / "setid.mat").unlink()
    expect_data_error(lambda: load_dataset("flowers102", str(root), SMALL), "setid.mat", "missing")
    root = make_flowers(tmp_path / "d")
    (root / "jpg" / "image_00009.jpg").unlink()
    expect_data_error(lambda: load_dataset("flowers102", str(root), SMALL), "image_00009.jpg", "1 of the 12")
    scipy_io.savemat(str(root / "setid.mat"), {"trnid": np.array([[1]]), "tstid": np.array([[2]])})
    expect_data_error(lambda: load_dataset("flowers102", str(root), SMALL), "'valid'")
    expect_data_error(lambda: load_dataset("flowers102", str(make_flowers(tmp_path / "e"))),
                      "official set has 102 classes", "expect_official=false")


# --------------------------------------------------------------------------------------------
# Stanford Cars: 3 classes, 6 train and 3 test images

CAR_FIELDS = ["bbox_x1", "bbox_y1", "bbox_x2", "bbox_y2", "class", "fname"]


def write_cars_annos(path: Path, rows, with_class: bool = True) -> None:
    fields = CAR_FIELDS if with_class else [f for f in CAR_FIELDS if f != "class"]
    ann = np.zeros((1, len(rows)), dtype=[(f, object) for f in fields])
    for i, (fname, cls) in enumerate(rows):
        values = {"bbox_x1": 1, "bbox_y1": 2, "bbox_x2": 8, "bbox_y2": 9, "class": cls, "fname": fname}
        ann[0, i] = tuple(np.array([[values[f]]], dtype=np.uint16) if f != "fname" else fname for f in fields)
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy_io.savemat(str(path), {"annotations": ann})


def make_cars(root: Path, test_in_devkit: bool = False) -> Path:
    train = [(f"{i:05d}.jpg", i % 3 + 1) for i in range(1, 7)]
    test = [(f"{i:05d}.jpg", i % 3 + 1) for i in range(1, 4)]
    for split, rows in (("cars_train", train), ("cars_test", test)):
        for fname, cls in rows:
            write_image(root / split / fname, COLOURS[cls - 1])
    write_cars_annos(root / "devkit" / "cars_train_annos.mat", train)
    write_cars_annos(root / ("devkit" if test_in_devkit else "") / "cars_test_annos_withlabels.mat", test)
    names = np.empty((1, 3), dtype=object)
    names[0, :] = ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    scipy_io.savemat(str(root / "devkit" / "cars_meta.mat"), {"class_names": names})
    return root


def test_cars(tmp_path):
    root = make_cars(tmp_path)
    d = load_dataset("stanford_cars", str(root), SMALL)
    assert d.classes == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012", "Acura TL Sedan 2012"]
    assert (len(d.train), len(d.test)) == (6, 3)
    assert d.train.labels.tolist() == [1, 2, 0, 1, 2, 0]
    assert d.test.paths[0] == str(root / "cars_test" / "00001.jpg")
    check_file_loader(d, d.test)
    check_file_loader(d, d.train)
    root = make_cars(tmp_path / "devkit_test", test_in_devkit=True)
    (root / "devkit" / "cars_meta.mat").unlink()  # names are optional
    assert load_dataset("stanford_cars", str(root), SMALL).classes == ["1", "2", "3"]


def test_cars_errors(tmp_path):
    expect_data_error(lambda: load_dataset("stanford_cars", str(tmp_path)), "cars_train/", "devkit/")
    root = make_cars(tmp_path / "a")
    (root / "cars_test_annos_withlabels.mat").unlink()
    write_cars_annos(root / "devkit" / "cars_test_annos.mat", [("00001.jpg", 1)], with_class=False)
    expect_data_error(lambda: load_dataset("stanford_cars", str(root), SMALL), "cars_test_annos_withlabels.mat")
    write_cars_annos(root / "cars_test_annos_withlabels.mat", [("00001.jpg", 1)], with_class=False)
    expect_data_error(lambda: load_dataset("stanford_cars", str(root), SMALL), "'fname' and 'class'")
    root = make_cars(tmp_path / "b")
    (root / "cars_train" / "00002.jpg").unlink()
    expect_data_error(lambda: load_dataset("stanford_cars", str(root), SMALL), "00002.jpg", "cars_train_annos.mat")
    expect_data_error(lambda: load_dataset("stanford_cars", str(make_cars(tmp_path / "c"))),
                      "196 classes", "8,144 train", "8,041 test")


# --------------------------------------------------------------------------------------------
# FGVC-Aircraft: 4 variants, two of them Cessnas (one class at level variant_first_word)

VARIANTS = ["707-320", "A300B4", "Cessna 172", "Cessna 208"]


def make_aircraft(root: Path) -> Path:
    data = root / "fgvc-aircraft-2013b" / "data"
    rows = {"train": [], "val": [], "test": []}
    n = 0
    for v, variant in enumerate(VARIANTS):
        for part in ("train", "val", "test"):
            n += 1
            rows[part].append(f"{n:07d} {variant}")
            write_image(data / "images" / f"{n:07d}.jpg", COLOURS[min(v, 2)])
    for part, lines in rows.items():
        (data / f"images_variant_{part}.txt").write_text("\n".join(lines) + "\n")
    (data / "images_variant_trainval.txt").write_text("\n".join(rows["train"] + rows["val"]) + "\n")
    (data / "variants.txt").write_text("\n".join(reversed(VARIANTS)) + "\n")  # the class order
    return root


def test_aircraft(tmp_path):
    root = make_aircraft(tmp_path)
    d = load_dataset("fgvc_aircraft", str(root), SMALL)
    assert d.classes == list(reversed(VARIANTS)) and d.val is None
    assert (len(d.train), len(d.test)) == (8, 4)
    assert d.test.labels.tolist() == [3, 2, 1, 0]
    assert d.test.paths[0] == str(root / "fgvc-aircraft-2013b" / "data" / "images" / "0000003.jpg")
    d = load_dataset("fgvc_aircraft", str(root / "fgvc-aircraft-2013b"), {**SMALL, "split": "train"})
    assert (len(d.train), len(d.val), len(d.test)) == (4, 4, 4)
    d = load_dataset("fgvc_aircraft", str(root), {**SMALL, "level": "variant_first_word"})
    assert d.classes == ["707-320", "A300B4", "Cessna"]
    assert d.test.labels.tolist() == [0, 1, 2, 2]
    expect_data_error(lambda: load_dataset("fgvc_aircraft", str(root), {"level": "variant_first_word"}),
                      "3 classes", "90 classes", "6,667 trainval")


def test_aircraft_errors(tmp_path):
    expect_data_error(lambda: load_dataset("fgvc_aircraft", str(tmp_path)), "data/images/")
    root = make_aircraft(tmp_path / "a")
    data = root / "fgvc-aircraft-2013b" / "data"
    (data / "images_variant_val.txt").unlink()
    expect_data_error(lambda: load_dataset("fgvc_aircraft", str(root), {**SMALL, "split": "train"}),
                      "images_variant_val.txt")
    (data / "images_variant_test.txt").write_text("0000003 707-320\n0000099 Boeing 777\n")
    expect_data_error(lambda: load_dataset("fgvc_aircraft", str(root), SMALL), "line 2", "Boeing 777")
    (data / "images_variant_test.txt").write_text("0000001 707-320\n")
    expect_data_error(lambda: load_dataset("fgvc_aircraft", str(root), SMALL), "0000001", "trainval", "test")
    (data / "images_variant_test.txt").write_text("0000003\n")
    expect_data_error(lambda: load_dataset("fgvc_aircraft", str(root), SMALL), "line 1", "variant name")
    (data / "images_variant_test.txt").write_text("0000077 707-320\n")
    expect_data_error(lambda: load_dataset("fgvc_aircraft", str(root), SMALL), "0000077.jpg", "missing")


# --------------------------------------------------------------------------------------------
# Imagewoof: 3 of its wnids (expect_official off), 2 train and 1 val image each

WOOF = ["n02086240", "n02087394", "n02088364"]


def make_woof(root: Path) -> Path:
    for c, wnid in enumerate(WOOF):
        for k in range(2):
            write_image(root / "train" / wnid / f"{wnid}_{k}.JPEG", COLOURS[c])
        write_image(root / "val" / wnid / f"ILSVRC2012_val_{c:08d}.JPEG", COLOURS[c])
    return root


def test_imagewoof(tmp_path):
    make_woof(tmp_path / "imagewoof2-320")
    d = load_dataset("imagewoof", str(tmp_path), SMALL)
    assert d.classes == ["Shih-Tzu", "Rhodesian ridgeback", "beagle"] and d.val is None
    assert (len(d.train), len(d.test)) == (6, 3) and d.test.labels.tolist() == [0, 1, 2]
    check_file_loader(d, d.test)
    expect_data_error(lambda: load_dataset("imagewoof", str(tmp_path)), "10 classes", "9,025 train", "3,929")
    write_image(tmp_path / "imagewoof2-320" / "train" / "n01440764" / "x.JPEG")
    expect_data_error(lambda: load_dataset("imagewoof", str(tmp_path)), "n01440764", "not one of the 10")
    write_image(tmp_path / "imagewoof2-320" / "val" / "n09999999" / "x.JPEG")
    expect_data_error(lambda: load_dataset("imagewoof", str(tmp_path), SMALL), "n09999999", "not a class")
    expect_data_error(lambda: load_dataset("imagewoof", str(tmp_path / "imagewoof2-320" / "train")),
                      "no train/ and val/")


# --------------------------------------------------------------------------------------------
# ImageNet Dogs: an ImageNet tree with two dog classes and a non-dog class

def make_imagenet_with_dogs(root: Path) -> Path:
    classes = [("n01440764", (9, 9, 9)), (DOG_WNIDS[0], COLOURS[0]), (DOG_WNIDS[-1], COLOURS[1])]
    for wnid, colour in classes:
        for k in range(2):
            write_image(root / "train" / wnid / f"{wnid}_{k}.JPEG", colour, size=(20, 14))
        write_image(root / "val" / wnid / f"ILSVRC2012_val_{k:08d}_{wnid}.JPEG", colour)
    return root


def test_dog_class_list():
    # the standard (sorted-wnid) ImageNet order's classes 151..268: Chihuahua ... Mexican hairless
    assert len(DOG_WNIDS) == 118 and DOG_WNIDS[0] == "n02085620" and DOG_WNIDS[-1] == "n02113978"
    timm = pytest.importorskip("timm")
    synsets = Path(timm.__file__).parent / "data" / "_info" / "imagenet_synsets.txt"
    if synsets.is_file():
        order = sorted(synsets.read_text().split())
        assert tuple(order[151:269]) == DOG_WNIDS


def test_imagenet_dogs(tmp_path):
    root = make_imagenet_with_dogs(tmp_path / "in")
    d = load_dataset("imagenet_dogs", str(root), {"image_size": 8, "expect_official": False})
    assert isinstance(d, ImageTensors)
    assert d.classes == [DOG_WNIDS[0], DOG_WNIDS[-1]]  # no devkit: the wnids are the names
    assert d.train.images.shape == (4, 3, 8, 8) and d.train.images.dtype == torch.uint8
    assert d.train.labels.tolist() == [0, 0, 1, 1] and d.test.labels.tolist() == [0, 1]
    red = d.train.images[0].float().mean((1, 2))
    assert red[0] > 200 and red[1] < 50  # class 0 is the red one
    # the second load comes from the decoded-tensor cache and is identical
    again = load_dataset("imagenet_dogs", str(root), {"image_size": 8, "expect_official": False})
    assert torch.equal(again.train.images, d.train.images)
    expect_data_error(lambda: load_dataset("imagenet_dogs", str(root), {"image_size": 8}),
                      "118 classes", "147,873 train", "5,900")
    expect_config_error(lambda: load_dataset("imagenet_dogs", str(root), {"image_size": 0}),
                        "data.options.image_size")
    (tmp_path / "nodogs" / "train" / "n01440764").mkdir(parents=True)
    expect_data_error(lambda: load_dataset("imagenet_dogs", str(tmp_path / "nodogs")), "none of the 118")
