"""RandAugment / TrivialAugment / RandomErasing (data.auto_augment, data.random_erasing): the
ops, their per-sample seeded draws (independent of world size and workers), both loaders,
config checks and one engine epoch on digits with each option."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from softlabels.cli import main
from softlabels.config import build_config
from softlabels.data import TensorSplit, load_dataset
from softlabels.data.augment import (AUTO_AUGMENT_OPS, AutoAugment, RandomErasing, apply_op,
                                     derived_seeds)
from softlabels.data.loader import TensorLoader
from softlabels.data.prepare import post_crop_augmentations
from softlabels.errors import ConfigError
from test_data_path import epoch, file_loader, make_tree, same

pytestmark = pytest.mark.usefixtures("one_thread")


def gradient_images(n=24, c=3, size=16) -> torch.Tensor:
    """Images with structure (ramps and a per-image offset), so every op changes something."""
    ramp = torch.arange(size, dtype=torch.float32) * (200.0 / (size - 1))
    img = torch.stack([ramp[None, :].expand(size, size), ramp[:, None].expand(size, size),
                       (ramp[None, :] + ramp[:, None]) / 2])[:c]
    img[:, size // 4:size // 2, size // 4:size // 2] += 40  # an edge, for Sharpness
    offs = torch.arange(n, dtype=torch.float32)[:, None, None, None] * 2
    return (img[None] + offs).clamp(0, 255).round().to(torch.uint8)


def tensor_loader(split, **kw):
    opts = dict(train=True, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), device="cpu", seed=3)
    opts.update(kw)
    return TensorLoader(split, 8, **opts)


@pytest.fixture(scope="module")
def split():
    return TensorSplit(gradient_images(), torch.arange(24) % 3)


# ------------------------------------------------------------------------------ the ops
@pytest.mark.parametrize("op", [o for o in AUTO_AUGMENT_OPS if o != "Identity"])
def test_every_op_changes_a_structured_image_and_keeps_shape_and_dtype(op):
    x = gradient_images(4)
    m = {"Posterize": 4, "Solarize": 0.5, "TranslateX": 3, "TranslateY": 3, "Rotate": 20.0}.get(op, 0.5)
    y = apply_op(x, op, m)
    assert y.shape == x.shape and y.dtype == torch.uint8
    assert not torch.equal(y, x), op


def test_op_definitions_move_the_expected_pixels():
    x = gradient_images(2)
    t = apply_op(x, "TranslateX", 3)  # right by 3, zero fill on the left
    assert torch.equal(t[..., 3:], x[..., :-3]) and not t[..., :3].any()
    s = apply_op(x, "Solarize", 0.5)  # pixels >= 127.5 inverted, the rest kept
    assert torch.equal(s, torch.where(x >= 127.5, 255 - x, x))
    p = apply_op(x, "Posterize", 4)
    assert torch.equal(p, x & 0xF0)
    assert torch.equal(apply_op(x, "Identity", 0.0), x)


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_auto_augment_is_a_pure_per_sample_function_of_the_seed(policy):
    aug = AutoAugment(policy, num_ops=2, magnitude=9)
    x = gradient_images(24)
    seeds = torch.arange(24) * 1_000_003 + 11
    y = aug.apply(x, seeds)
    assert torch.equal(y, aug.apply(x, seeds))
    # any subset of the batch gets exactly its rows of the whole batch (what DDP shards see)
    part = torch.tensor([3, 17, 5, 9])
    assert torch.equal(aug.apply(x[part], seeds[part]), y[part])
    changed = (y != x).flatten(1).any(1)
    assert changed.float().mean() > 0.5  # at most the Identity draws stay put
    p = aug.params(seeds)
    assert p["op"].shape == (24, aug.layers) and p["op"].min() >= 0 and p["op"].max() < len(AUTO_AUGMENT_OPS)
    if policy == "randaugment":
        assert (p["bin"] == 9).all()
    else:
        assert p["bin"].min() >= 0 and p["bin"].max() <= 30 and len(np.unique(p["bin"])) > 3
    # identity rows unchanged: a sample whose every layer drew Identity keeps its pixels
    ident = (p["op"] == 0).all(1)
    assert torch.equal(y[torch.from_numpy(ident)], x[torch.from_numpy(ident)])


def test_random_erasing_boxes_are_within_bounds_and_fill_only_the_box():
    n, h, w = 400, 20, 24
    seeds = torch.arange(n) * 7919 + 5
    er = RandomErasing(p=0.5)
    b = er.boxes(seeds, h, w)
    e = b["erase"]
    assert 0.35 < e.mean() < 0.65  # probability p, per sample
    assert (b["top"] >= 0).all() and (b["left"] >= 0).all()
    assert (b["top"] + b["height"] <= h).all() and (b["left"] + b["width"] <= w).all()
    area = b["height"][e] * b["width"][e] / (h * w)
    assert area.min() > 0.0 and area.max() <= 0.33 + 0.1  # scale (0.02, 0.33) up to rounding
    assert (b["height"][e] < h).all() and (b["width"][e] < w).all()
    x = torch.randn(n, 3, h, w) + 5.0  # no natural zeros
    y = er.apply(x, seeds)
    for i in range(0, n, 37):
        t, l, bh, bw = (int(b[k][i]) for k in ("top", "left", "height", "width"))
        inside = torch.zeros(h, w, dtype=torch.bool)
        inside[t:t + bh, l:l + bw] = bool(e[i])
        assert (y[i][:, inside] == 0).all() and torch.equal(y[i][:, ~inside], x[i][:, ~inside])
    assert torch.equal(RandomErasing(p=0.0).apply(x, seeds), x)
    assert RandomErasing(p=1.0).boxes(seeds, h, w)["erase"].mean() > 0.95


# ------------------------------------------------------------------------------ the loaders
def test_tensor_loader_determinism_epochs_and_world_size(split):
    opts = dict(auto_augment=AutoAugment("trivialaugment"), erasing=RandomErasing(0.5),
                views=2, clean=True)
    a, b = epoch(tensor_loader(split, **opts), 1), epoch(tensor_loader(split, **opts), 1)
    same(a, b)
    other = epoch(tensor_loader(split, **opts), 2)
    assert not all(torch.equal(p.x, q.x) for p, q in zip(a, other))
    ranks = [epoch(tensor_loader(split, rank=r, world=2, **opts), 1) for r in (0, 1)]
    for whole, r0, r1 in zip(a, *ranks):
        assert torch.equal(torch.cat([r0.x, r1.x]), whole.x)
        for key in whole.extra:
            assert torch.equal(torch.cat([r0.extra[key], r1.extra[key]]), whole.extra[key])
    plain = epoch(tensor_loader(split, views=2, clean=True), 1)
    for p, q in zip(a, plain):
        assert not torch.equal(p.x, q.x)                                  # ops applied to x …
        assert torch.equal(p.extra["clean_x"], q.extra["clean_x"])        # … not to clean_x
    # evaluation loaders ignore them
    ev = tensor_loader(split, train=False, **opts)
    assert ev.auto_augment is None and ev.erasing is None


def test_file_loader_same_for_workers_cache_and_world(tmp_path):
    from softlabels.data.cache import ResizeRule, open_cache

    tree = make_tree(tmp_path / "tree")
    d = load_dataset("imagefolder", str(tree), {"image_size": 12, "resize": 16})
    cache = open_cache(d.all_paths(), ResizeRule(16), "imagefolder", "auto", progress=False)
    opts = dict(auto_augment=AutoAugment("randaugment", 2, 15), erasing=RandomErasing(0.5), views=2)
    plain = epoch(file_loader(d.train, **opts), 1)
    same(plain, epoch(file_loader(d.train, cache, **opts), 1))
    same(plain, epoch(file_loader(d.train, cache, workers=1, **opts), 1))
    ranks = [epoch(file_loader(d.train, cache, rank=r, world=2, **opts), 1) for r in (0, 1)]
    for whole, r0, r1 in zip(plain, *ranks):
        assert torch.equal(torch.cat([r0.x, r1.x]), whole.x)
        assert torch.equal(torch.cat([r0.extra["view1"], r1.extra["view1"]]), whole.extra["view1"])
    without = epoch(file_loader(d.train, views=2), 1)
    assert any(not torch.equal(p.x, q.x) for p, q in zip(plain, without))
    assert not any(torch.equal(p.x, q.x) for p, q in zip(plain, epoch(file_loader(d.train, **opts), 2)))
    # augment=false trains on the evaluation crop and ignores them
    off = file_loader(d.train, augment=False, **opts)
    assert off.auto_augment is None and off.erasing is None


# ------------------------------------------------------------------------------ config, engine
@pytest.mark.parametrize("override, fragment", [
    ("data.auto_augment=autoaugment", "data.auto_augment"),
    ("data.randaugment_ops=0", "data.randaugment_ops"),
    ("data.randaugment_magnitude=31", "data.randaugment_magnitude"),
    ("data.random_erasing=1.5", "data.random_erasing"),
    ("data.random_erasing=yes", "data.random_erasing"),
])
def test_bad_values_are_one_line_config_errors(override, fragment, capsys):
    with pytest.raises(ConfigError, match=fragment) as err:
        build_config(None, [override])
    assert "\n" not in str(err.value)
    assert main(["train", "--no-progress", override]) != 0
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softlabels: error:") and fragment in lines[0]


def test_config_to_loader_objects():
    cfg = build_config(None, ["data.auto_augment=randaugment", "data.randaugment_ops=3",
                              "data.randaugment_magnitude=12", "data.random_erasing=0.25"])
    made = post_crop_augmentations(cfg.data)
    assert made["auto_augment"] == AutoAugment("randaugment", 3, 12)
    assert made["erasing"].p == 0.25
    assert post_crop_augmentations(build_config(None, []).data) == {"auto_augment": None, "erasing": None}
    off = build_config(None, ["data.auto_augment=trivialaugment", "data.augment=false"])
    assert post_crop_augmentations(off.data) == {"auto_augment": None, "erasing": None}


@pytest.mark.parametrize("option", ["data.auto_augment=randaugment", "data.auto_augment=trivialaugment",
                                    "data.random_erasing=0.5"])
def test_one_engine_epoch_on_digits(option, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--no-progress", "--epochs", "1", "data.name=digits",
            "model.name=resnet8", "train.threads=1", "data.batch_size=128", option]
    assert main(args) == 0
    final = json.loads((out / "final.json").read_text())
    assert 0 <= final["last"]["test"]["top1_error"] <= 100
    assert option.split("=")[1] in (out / "config.yaml").read_text()


def test_derived_roles_differ_from_the_crop_seed():
    s = torch.arange(5)
    from softlabels.data.augment import AUTO_AUGMENT_ROLE, ERASING_ROLE

    a, b = derived_seeds(s, AUTO_AUGMENT_ROLE), derived_seeds(s, ERASING_ROLE)
    assert not torch.equal(a, s) and not torch.equal(a, b)


def test_ops_match_torchvisions_randaugment_definitions():
    """Each op at a signed magnitude equals what torchvision's own RandAugment applies for it
    (its per-op method; skipped where a torchvision version lacks it)."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms.v2 import RandAugment

    ra = RandAugment()
    ref = getattr(ra, "_apply_image_or_video_transform", None)
    if ref is None:
        pytest.skip("this torchvision has no per-op method to compare with")
    x = gradient_images(3)
    magnitudes = {"Identity": [0.0], "AutoContrast": [0.0], "Equalize": [0.0], "Posterize": [5.0],
                  "Solarize": [0.4], "TranslateX": [7.0, -3.0], "TranslateY": [7.0, -3.0]}
    for op in AUTO_AUGMENT_OPS:
        for m in magnitudes.get(op, [0.2, -0.3]):
            want = ref(x, op, m, InterpolationMode.NEAREST, {})
            assert torch.equal(apply_op(x, op, m), want), (op, m)
