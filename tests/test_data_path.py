"""The decoded cache, the input protocols, one loader plan for both kinds of dataset, 16-bit
images, and the seeded box transforms."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from softlabels.config import build_config
from softlabels.data import FileLoader, TensorSplit, load_dataset
from softlabels.data.augment import CenterCrop, RandomCrop, Resize, ResizedCrop, uniforms
from softlabels.data.base import ImageTensors
from softlabels.data.cache import ResizeRule, decode_image, open_cache, to_rgb
from softlabels.data.loader import TensorLoader
from softlabels.data.prepare import build_loaders, prepare_data
from softlabels.errors import ConfigError, DataError

pytestmark = pytest.mark.usefixtures("one_thread")

CLASSES = ["a", "b"]


def make_tree(root: Path, n_train=5, sizes=((30, 22), (22, 30), (26, 26))) -> Path:
    """Images of varying size and aspect; pixel (r, g, b) = (identity, column ramp, row ramp)."""
    from PIL import Image

    file_id = 0
    for split, n in (("train", n_train), ("test", 2)):
        for c in CLASSES:
            folder = root / split / c
            folder.mkdir(parents=True)
            for k in range(n):
                w, h = sizes[file_id % len(sizes)]
                px = np.zeros((h, w, 3), dtype=np.uint8)
                px[..., 0] = 10 + 9 * file_id
                px[..., 1] = (np.arange(w) * 255 // (w - 1))[None, :]
                px[..., 2] = (np.arange(h) * 255 // (h - 1))[:, None]
                Image.fromarray(px).save(folder / f"{k}.png")
                file_id += 1
    return root


def file_loader(split, cache=None, **kw):
    opts = dict(train=True, image_size=12, resize=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                device="cpu", seed=4)
    batch_size = kw.pop("batch_size", 4)
    opts.update(kw)
    return FileLoader(split, batch_size, cache=cache, **opts)


def epoch(loader, e=0):
    loader.set_epoch(e)
    return list(loader)


def same(a, b):
    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert list(p.extra) == list(q.extra)
        assert torch.equal(p.index, q.index) and torch.equal(p.x, q.x) and torch.equal(p.y, q.y)
        for k in p.extra:
            assert torch.equal(p.extra[k], q.extra[k]), k


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return make_tree(tmp_path_factory.mktemp("path") / "tree")


# ------------------------------------------------------------------------------ cache
def test_cache_is_built_once_reused_and_invalidated_by_a_changed_file(tmp_path, monkeypatch):
    from softlabels.data import cache as cache_mod

    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "tree")
    d = load_dataset("imagefolder", str(root), {"image_size": 12, "resize": 16})
    calls = []
    real = cache_mod.decode_image
    monkeypatch.setattr(cache_mod, "decode_image", lambda p, r: calls.append(p) or real(p, r))
    rule = ResizeRule(16)
    c1 = open_cache(d.all_paths(), rule, "imagefolder", "auto", progress=False)
    assert len(calls) == len(d.all_paths()) == 14
    folders = list((tmp_path / "cache").glob("files-imagefolder-16ss-*"))
    assert len(folders) == 1 and (folders[0] / "pixels.u8").is_file()
    calls.clear()
    c2 = open_cache(d.all_paths(), rule, "imagefolder", "auto", progress=False)
    assert calls == [] and c2.folder == c1.folder  # reused, nothing decoded
    # stored images are the resize rule's output (short side 16, aspect kept)
    for p in d.all_paths():
        assert np.array_equal(c2.image(c2.row_of[p]), real(p, rule))
        assert min(c2.image(c2.row_of[p]).shape[:2]) == 16
    # another rule: another cache
    c3 = open_cache(d.all_paths(), ResizeRule(16, "square"), "imagefolder", "auto", progress=False)
    assert c3.folder != c1.folder and all(tuple(s) == (16, 16) for s in c3.sizes)
    # a file whose modification time changes gives another key: decoded again
    p = d.all_paths()[3]
    st = os.stat(p)
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    calls.clear()
    c4 = open_cache(d.all_paths(), rule, "imagefolder", "auto", progress=False)
    assert c4.folder != c1.folder and len(calls) == 14
    # disabled, or over the size limit under auto: no cache (one-line note); forced: an error
    assert open_cache(d.all_paths(), rule, "imagefolder", False) is None
    monkeypatch.setenv("SOFTLABELS_CACHE_MAX_GB", "0.000001")
    assert open_cache(d.all_paths(), ResizeRule(20), "imagefolder", "auto") is None


def test_cache_build_names_a_corrupt_file_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "tree")
    bad = root / "train" / "b" / "1.png"
    bad.write_bytes(b"not an image")
    d = load_dataset("imagefolder", str(root), {"image_size": 12, "resize": 16})
    with pytest.raises(DataError) as info:
        open_cache(d.all_paths(), ResizeRule(16), "imagefolder", "auto", progress=False)
    assert str(bad) in str(info.value) and "\n" not in str(info.value)
    assert not [f for f in (tmp_path / "cache").iterdir() if not f.name.startswith(".")]


@pytest.mark.parametrize("train_crop", ["random_resized_crop", "resize_random_crop"])
def test_cached_and_decoded_batches_are_identical_for_any_workers_and_world(tree, train_crop):
    d = load_dataset("imagefolder", str(tree), {"image_size": 12, "resize": 16})
    cache = open_cache(d.all_paths(), ResizeRule(16), "imagefolder", "auto", progress=False)
    opts = dict(train_crop=train_crop, views=2, clean=True)
    plain = epoch(file_loader(d.train, **opts), 1)
    same(plain, epoch(file_loader(d.train, cache, **opts), 1))
    same(plain, epoch(file_loader(d.train, cache, workers=2, **opts), 1))
    same(plain, epoch(file_loader(d.train, workers=1, **opts), 1))
    # two ranks with the cache: each its slice of the single-process batch, same pixels
    ranks = [epoch(file_loader(d.train, cache, rank=r, world=2, **opts), 1) for r in (0, 1)]
    assert [len(b) for b in plain] == [4, 4, 2]  # 10 samples: the short last batch is kept
    for whole, r0, r1 in zip(plain, *ranks):
        for key in ("x", "index"):
            assert torch.equal(torch.cat([getattr(r0, key), getattr(r1, key)]), getattr(whole, key))
        for key in whole.extra:
            assert torch.equal(torch.cat([r0.extra[key], r1.extra[key]]), whole.extra[key])
    evals = [epoch(file_loader(d.test, c, train=False)) for c in (None, cache)]
    same(*evals)


def test_trainer_builds_the_cache_and_reads_it(tmp_path, monkeypatch):
    from softlabels.engine.trainer import Trainer

    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "tree", n_train=3)
    cfg = build_config(None, [
        "data.name=imagefolder", f"data.root={root}", "data.options.image_size=16",
        "data.options.resize=18", "data.options.train_crop=resize_random_crop",
        "data.options.resize_shape=square", "data.batch_size=4", "data.val_fraction=0",
        "model.name=resnet8", "method.name=ce", "train.epochs=1", "train.threads=1", "train.device=cpu"])
    trainer = Trainer(cfg, None, progress=None)
    assert trainer.train_loader.cached and trainer.test_loader.cached
    assert trainer.train_loader.workers == 0  # a cached split on the CPU: read in-process
    assert len(list((tmp_path / "cache").glob("files-imagefolder-18sq-*"))) == 1
    assert len(trainer.train_loader) == 2  # 6 images, batches of 4: 4 + 2
    trainer.fit()
    with pytest.raises(ConfigError, match="train_crop"):
        build_loaders_for(root, "data.options.train_crop=center")


def test_fit_stops_the_loaders_worker_processes(tmp_path, monkeypatch):
    from softlabels.engine.trainer import Trainer

    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "tree", n_train=3)
    cfg = build_config(None, [
        "data.name=imagefolder", f"data.root={root}", "data.options.image_size=16", "data.options.resize=18",
        "data.batch_size=4", "data.val_fraction=0", "data.workers=1", "model.name=resnet8", "method.name=ce",
        "train.epochs=1", "train.threads=1", "train.device=cpu"])
    trainer = Trainer(cfg, None, progress=None)
    assert trainer.train_loader.workers == 1
    seen = []
    trainer.callbacks.append(lambda tr, record: seen.extend(tr.train_loader._loader._iterator._workers))
    trainer.fit()
    assert seen and not any(w.is_alive() for w in seen)  # closed at the end of fit, not left to the GC


def build_loaders_for(root, *extra):
    cfg = build_config(None, ["data.name=imagefolder", f"data.root={root}", *extra])
    return prepare_data(cfg.data)


# ------------------------------------------------------------------------------ protocols
def test_resize_rules_and_crop_geometry(tree):
    from PIL import Image

    path = str(sorted((tree / "train" / "a").glob("*.png"))[0])  # 30×22 (w×h)
    with Image.open(path) as im:
        assert im.size == (30, 22)
        short = np.asarray(im.convert("RGB").resize((21, 16), Image.BILINEAR))
        square = np.asarray(im.convert("RGB").resize((16, 16), Image.BILINEAR))
    assert np.array_equal(decode_image(path, ResizeRule(16)), short)  # torchvision's rounding
    assert np.array_equal(decode_image(path, ResizeRule(16, "square")), square)
    seeds = torch.arange(200) * 7919
    # resize_random_crop: a size×size window inside the stored image
    b = RandomCrop(12).boxes(seeds, [16] * 200, [21] * 200)
    assert (b["height"] == 12).all() and (b["width"] == 12).all()
    assert b["top"].min() == 0 and b["top"].max() == 4 and b["left"].min() == 0 and b["left"].max() == 9
    assert 0.3 < b["flip"].mean() < 0.7
    # evaluation: the centred window, torchvision's rounding
    c = CenterCrop(12).boxes(seeds[:1], [16], [21])
    assert (c["top"][0], c["left"][0]) == (2, 4) and not c["flip"].any()
    # random_resized_crop: area 8–100 %, aspect 3/4–4/3 (rounded), inside the image
    r = ResizedCrop(12).boxes(seeds, [160] * 200, [210] * 200)
    area = r["height"] * r["width"] / (160 * 210)
    assert area.min() >= 0.075 and area.max() <= 1 and area.max() > 0.8 and area.min() < 0.2
    aspect = r["width"] / r["height"]
    assert aspect.min() > 0.7 and aspect.max() < 1.4
    assert (r["top"] + r["height"] <= 160).all() and (r["left"] + r["width"] <= 210).all()
    # counter-based: a sample's draw does not depend on the rest of the batch
    assert np.array_equal(uniforms(seeds[5:6], 41), uniforms(seeds, 41)[5:6])
    sub = ResizedCrop(12).boxes(seeds[5:6], [160], [210])
    assert all(sub[k][0] == r[k][5] for k in r)


def test_protocol_batches_are_the_stored_windows(tree):
    """resize_random_crop batches are exact windows of the stored image (flipped or not);
    random_resized_crop batches are torchvision's resized_crop of the stored image's box."""
    from torchvision.transforms.v2 import functional as TF

    d = load_dataset("imagefolder", str(tree), {"image_size": 12, "resize": 16})
    rule = ResizeRule(16)
    for crop in ("resize_random_crop", "random_resized_crop"):
        loader = file_loader(d.train, train_crop=crop)
        tf = RandomCrop(12) if crop == "resize_random_crop" else ResizedCrop(12)
        for step, b in zip(loader.steps(0), epoch(loader)):
            for k, (i, s) in enumerate(zip(step.anchors.tolist(), step.seeds.tolist())):
                stored = torch.from_numpy(decode_image(d.train.paths[i], rule)).permute(2, 0, 1)
                box = tf.boxes([s], [stored.shape[1]], [stored.shape[2]])
                t, l, h, w = (int(box[n][0]) for n in ("top", "left", "height", "width"))
                want = TF.resized_crop(stored, t, l, h, w, [12, 12], antialias=True)
                if box["flip"][0]:
                    want = want.flip(-1)
                got = (b.x[k] * 255).round().to(torch.uint8)
                assert torch.equal(got, want), (crop, i)


def test_options_of_the_readers(tree):
    d = load_dataset("imagefolder", str(tree), {"image_size": 12, "resize": 16,
                                                "train_crop": "resize_random_crop",
                                                "resize_shape": "square", "cache": False})
    assert (d.train_crop, d.resize_shape, d.cache) == ("resize_random_crop", "square", False)
    for bad in ({"train_crop": "centre"}, {"resize_shape": "long_side"}, {"cache": "yes"}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            load_dataset("imagefolder", str(tree), bad)


# ------------------------------------------------------------------------------ one plan
def test_short_last_batch_rule_is_the_same_for_both_paths(tree):
    """10 samples in global batches of 4: both loaders give 4, 4, 2 with the same indices;
    with 2 ranks each gets 2, 2, 1; with batches of 6 and a last batch of 4 it is kept too."""
    d = load_dataset("imagefolder", str(tree), {"image_size": 12, "resize": 16})
    labels = d.train.labels
    images = torch.zeros(len(labels), 3, 12, 12, dtype=torch.uint8)
    for bs, world in ((4, 1), (4, 2), (6, 2)):
        for rank in range(world):
            t = TensorLoader(TensorSplit(images, labels), bs, train=True, mean=(0, 0, 0),
                             std=(1, 1, 1), device="cpu", seed=4, rank=rank, world=world)
            f = file_loader(d.train, batch_size=bs, rank=rank, world=world)
            tb, fb = epoch(t, 2), epoch(f, 2)
            assert len(t) == len(f) == len(tb) == len(fb) == -(-10 // bs)
            assert [b.index.tolist() for b in tb] == [b.index.tolist() for b in fb]
    assert [len(b) for b in epoch(file_loader(d.train, batch_size=4, world=2, rank=1), 0)] == [2, 2, 1]


def test_tensor_random_resized_crop_protocol(tmp_path):
    """CS-KD's Tiny ImageNet rule on in-memory images: RandomResizedCrop(32) of the 64×64
    images for training, the images resized to 32 for evaluation."""
    from torchvision.transforms.v2 import functional as TF

    g = torch.Generator().manual_seed(0)
    imgs = torch.randint(0, 256, (12, 3, 64, 64), generator=g, dtype=torch.uint8)
    labels = torch.arange(12) % 3
    ds = ImageTensors(TensorSplit(imgs, labels), TensorSplit(imgs[:5], labels[:5]), ["x", "y", "z"],
                      (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), train_crop="random_resized_crop", output_size=32)
    assert ds.image_size == 32
    cfg = build_config(None, ["data.name=synthetic", "data.batch_size=4", "data.val_fraction=0",
                              "data.eval_batch_size=5"])
    data = prepare_data(cfg.data, ds)
    train, _, test = build_loaders(data, cfg.data, device="cpu", seed=1, rank=0, world=1,
                                   channels_last=False)
    (tb,) = epoch(test)
    want = TF.resize(imgs[:5], [32, 32], antialias=True)
    assert torch.equal((tb.x * 255).round().to(torch.uint8), want)
    step = train.steps(0)[0]
    b = epoch(train)[0]
    assert b.x.shape == (4, 3, 32, 32)
    box = ResizedCrop(32).boxes(step.seeds, [64] * 4, [64] * 4)
    for k, i in enumerate(step.anchors.tolist()):
        t, l, h, w = (int(box[n][k]) for n in ("top", "left", "height", "width"))
        want = TF.resized_crop(imgs[i], t, l, h, w, [32, 32], antialias=True)
        want = want.flip(-1) if box["flip"][k] else want
        assert torch.equal((b.x[k] * 255).round().to(torch.uint8), want)
    assert isinstance(Resize(32).boxes([0], [64], [64])["height"], np.ndarray)


# ------------------------------------------------------------------------------ 16-bit
def test_sixteen_bit_greyscale_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = (np.arange(64 * 64, dtype=np.uint32).reshape(64, 64) * 16).astype(np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    with Image.open(path) as im:
        assert im.mode.startswith("I")
        clipped = np.asarray(im.convert("RGB"))[..., 0]
        assert (clipped == 255).mean() > 0.8  # what convert('RGB') does
        rgb = np.asarray(to_rgb(im))
    want = np.round(ramp.astype(np.float64) * 255 / 65535)
    assert np.abs(rgb[..., 0].astype(np.float64) - want).max() <= 1
    assert (rgb[..., 0] == 255).mean() < 0.01
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    assert np.array_equal(decode_image(str(path), ResizeRule(64)), rgb)
    Image.fromarray(np.zeros((4, 4), dtype=np.float32)).save(tmp_path / "f.tif")
    with Image.open(tmp_path / "f.tif") as im, pytest.raises(ValueError, match="floating"):
        to_rgb(im)


# ------------------------------------------------------------------------------ t-SNE
def test_tsne_reduces_with_pca_and_caches_the_map(tmp_path, monkeypatch):
    import sklearn.decomposition
    import sklearn.manifold

    from softlabels.evaluate.features import tsne_2d

    g = torch.Generator().manual_seed(0)
    y = torch.arange(90) % 3
    x = torch.randn(90, 80, generator=g) + 4 * torch.nn.functional.one_hot(y, 80).float()
    widths = []
    real_tsne = sklearn.manifold.TSNE

    class Spy(real_tsne):
        def fit_transform(self, data, *a, **k):
            widths.append(data.shape[1])
            return super().fit_transform(data, *a, **k)

    monkeypatch.setattr(sklearn.manifold, "TSNE", Spy)
    first = tsne_2d(x, y, max_points=60, pca_dims=10, cache_dir=tmp_path)
    assert widths == [10] and first["points"].shape == (60, 2)
    assert len(list(tmp_path.glob("tsne-*.npz"))) == 1

    class Broken(real_tsne):
        def fit_transform(self, *a, **k):
            raise AssertionError("recomputed")

    monkeypatch.setattr(sklearn.manifold, "TSNE", Broken)
    again = tsne_2d(x, y, max_points=60, pca_dims=10, cache_dir=tmp_path)  # read, not recomputed
    assert torch.equal(again["points"], first["points"]) and torch.equal(again["index"], first["index"])
    with pytest.raises(AssertionError, match="recomputed"):  # other embeddings: another key
        tsne_2d(x + 1, y, max_points=60, pca_dims=10, cache_dir=tmp_path)


# ------------------------------------------------------------------------------ step options
def test_channels_last_by_default_bf16_and_compile_stay_options(monkeypatch):
    """channels_last is on by default (``auto``) for convolutional networks, model and
    batches; bf16 autocast and torch.compile are options that train (compile wired through a
    dynamo backend that needs no C++ compiler)."""
    import math

    from softlabels.engine.runtime import use_channels_last
    from softlabels.engine.trainer import Trainer

    conv, cpu = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3)), torch.device("cpu")
    assert use_channels_last("auto", "resnet8", conv, cpu)
    assert not use_channels_last("auto", "resnet18", conv, cpu)  # measured slower on the CPU
    assert use_channels_last("auto", "resnet18", conv, torch.device("cuda"))
    assert not use_channels_last("auto", "mlp", torch.nn.Linear(3, 4), cpu)
    assert use_channels_last(True, "resnet18", conv, cpu) and not use_channels_last(False, "resnet8", conv, cpu)

    real_compile = torch.compile
    compiled = []

    def eager_compile(model, **kw):
        compiled.append(model)
        return real_compile(model, backend="eager")

    monkeypatch.setattr(torch, "compile", eager_compile)
    base = ["data.name=synthetic", "data.options.image_size=12", "data.options.channels=3",
            "data.options.train_size=32", "data.options.test_size=8", "data.batch_size=8",
            "model.name=resnet8", "method.name=ce", "train.epochs=1", "train.threads=1",
            "train.device=cpu"]
    t = Trainer(build_config(None, base), None)
    assert t.cfg.train.channels_last == "auto" and t.channels_last
    b = next(iter(t.train_loader))
    assert b.x.is_contiguous(memory_format=torch.channels_last)
    conv = next(p for p in t.model.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not compiled
    t = Trainer(build_config(None, base + ["train.precision=bf16", "train.compile=true",
                                           "train.channels_last=false"]), None)
    assert compiled == [t.model]
    b = next(iter(t.train_loader))
    assert b.x.is_contiguous() and not b.x.is_contiguous(memory_format=torch.channels_last)
    with t.autocast:
        assert t.net(b.x).logits.dtype == torch.bfloat16
    t._reset_accumulators()
    terms = [t.train_step(b) for _ in range(2)]
    assert all(math.isfinite(float(v.detach())) for step in terms for v in step.values())


def test_a_killed_build_is_cleaned_and_redone(tmp_path, monkeypatch):
    monkeypatch.setenv("SOFTLABELS_CACHE", str(tmp_path / "cache"))
    root = make_tree(tmp_path / "tree", n_train=1)
    d = load_dataset("imagefolder", str(root), {"image_size": 12, "resize": 16})
    c = open_cache(d.all_paths(), ResizeRule(16), "imagefolder", True, progress=False)
    folder = c.folder
    torn = folder.with_name(folder.name + ".tmp99999")
    folder.rename(torn)  # as if the build had been killed before its final rename
    (torn / "pixels.u8").write_bytes(b"\0" * 5)
    again = open_cache(d.all_paths(), ResizeRule(16), "imagefolder", True, progress=False)
    assert again.folder == folder and not torn.exists()
    assert all(np.array_equal(again.image(again.row_of[p]), c.image(c.row_of[p])) for p in d.all_paths())


def test_tinyimagenet_cskd_rule(tmp_path):
    from test_official_readers import SUBSET, make_tiny

    folder = make_tiny(tmp_path / "data")
    d = load_dataset("tinyimagenet", str(folder), {**SUBSET, "image_size": 32,
                                                   "train_crop": "random_resized_crop"})
    assert d.train.images.shape[-2:] == (64, 64) and d.image_size == 32
    assert d.train_crop == "random_resized_crop"
    with pytest.raises(ConfigError, match="train_crop"):
        load_dataset("tinyimagenet", str(folder), {**SUBSET, "train_crop": "resize_random_crop"})


def test_automatic_worker_count(monkeypatch):
    from softlabels.data.files import auto_workers

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(32)), raising=False)
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert auto_workers(True, cpu) == 0  # a slice of the memory map: no workers needed
    assert auto_workers(False, cpu) == 8 and auto_workers(True, cuda) == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")  # 8 DDP processes share the 32 cores
    assert auto_workers(False, cuda) == 3
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert auto_workers(False, cuda) == 0


def test_persistent_workers_are_kept_across_epochs_and_closed(tree):
    d = load_dataset("imagefolder", str(tree), {"image_size": 12, "resize": 16})
    loader = file_loader(d.train, workers=1)
    first = epoch(loader, 0)
    pids = list(loader._loader._iterator._workers)
    assert pids and all(w.is_alive() for w in pids)
    same(first, epoch(loader, 0))  # a second pass reuses the same worker processes
    assert list(loader._loader._iterator._workers) == pids
    loader.close()
    assert not any(w.is_alive() for w in pids)
    same(first, epoch(loader, 0))  # and a later pass starts new ones
    loader.close()
