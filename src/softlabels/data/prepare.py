"""From a registered dataset to the three splits a run uses, and their loaders.

A validation split is carved from the training set when the dataset has none: a fixed
fraction of every class, chosen by ``data.split_seed`` (not the run seed), so every method and
seed of a comparison selects its epoch on the same held-out images. Label noise is applied
after carving, to the training part only, also with ``split_seed``, so all runs of a
comparison see the same noisy labels; the validation and test labels stay clean.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

import torch

from ..config import DataConfig
from ..errors import ConfigError, DataError


@dataclass
class PreparedData:
    dataset: object            # ImageTensors or ImageFiles (for class names, mean/std, defaults)
    train: object              # TensorSplit / FileSplit with the training labels (noisy if noise)
    val: Optional[object]
    test: object
    clean_train_labels: torch.Tensor
    noisy_index: Optional[torch.Tensor] = None
    val_source: str = "none"   # "official", "carved from train" or "none"

    @property
    def num_classes(self) -> int:
        return self.dataset.num_classes

    @property
    def in_channels(self) -> int:
        return self.dataset.in_channels

    @property
    def is_tensor(self) -> bool:
        """In memory (``TensorSplit``s), as opposed to files (``FileSplit``s)."""
        from .base import TensorSplit

        return isinstance(self.train, TensorSplit)

    def summary(self) -> dict:
        return {
            "classes": list(self.dataset.classes),
            "train": len(self.train),
            "val": len(self.val) if self.val is not None else 0,
            "test": len(self.test),
            "val_source": self.val_source,
            "label_noise_count": 0 if self.noisy_index is None else int(self.noisy_index.numel()),
        }


def stratified_holdout(labels: torch.Tensor, fraction: float, seed: int):
    """Indices (keep, holdout): round(fraction·n_c) samples of each class c held out."""
    g = torch.Generator().manual_seed(seed)
    keep, hold = [], []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        k = int(round(fraction * len(idx)))
        hold.append(idx[:k])
        keep.append(idx[k:])
    keep_t, hold_t = torch.cat(keep).sort().values, torch.cat(hold).sort().values
    return keep_t, hold_t


def prepare_data(cfg: DataConfig, dataset=None) -> PreparedData:
    from . import load_dataset, symmetric_label_noise

    ds = dataset if dataset is not None else load_dataset(cfg.name, cfg.root, cfg.options)
    train, val = ds.train, ds.val
    source = "official" if val is not None else "none"
    if val is None and cfg.val_fraction > 0:
        keep, hold = stratified_holdout(train.labels, cfg.val_fraction, cfg.split_seed)
        if len(keep) == 0 or len(hold) == 0:
            raise DataError(
                f"{cfg.name}: training set of {len(train)} samples is too small to carve a "
                f"validation split of data.val_fraction={cfg.val_fraction}"
            )
        train, val = train.subset(keep), train.subset(hold)
        source = "carved from train"
    if cfg.train_subset is not None and cfg.train_subset < len(train):
        # a fixed, class-stratified subset of the training images (after the validation carve),
        # drawn with split_seed + 1 so it is the same for every method and run seed
        _, part = stratified_holdout(train.labels, cfg.train_subset / len(train), cfg.split_seed + 1)
        train = train.subset(part)
    clean = train.labels.clone()
    noisy_index = None
    if cfg.label_noise > 0:
        noisy, noisy_index = symmetric_label_noise(train.labels, ds.num_classes, cfg.label_noise, cfg.split_seed)
        train = dataclasses.replace(train, labels=noisy)
    return PreparedData(ds, train, val, ds.test, clean, noisy_index, source)


def post_crop_augmentations(cfg: DataConfig) -> dict:
    """The loaders' ``auto_augment`` / ``erasing`` from ``data.auto_augment``,
    ``data.randaugment_ops``/``_magnitude`` and ``data.random_erasing`` (only with
    ``data.augment``; training loaders only)."""
    from .augment import AutoAugment, RandomErasing

    on = cfg.augment
    auto = (AutoAugment(cfg.auto_augment, cfg.randaugment_ops, cfg.randaugment_magnitude)
            if on and cfg.auto_augment else None)
    erasing = RandomErasing(cfg.random_erasing) if on and cfg.random_erasing > 0 else None
    return {"auto_augment": auto, "erasing": erasing}


def build_loaders(data: PreparedData, cfg: DataConfig, *, device, seed: int, rank: int, world: int,
                  channels_last: bool, requires=None, progress: bool = True):
    """(train, val or None, test) loaders for this rank, supplying what ``requires`` asks for
    (class pairs, extra views, clean copies; see methods.base.Requires).

    One plan for both kinds of dataset (``loader.BatchPlan``); in-memory splits get a
    ``TensorLoader``, file splits a ``FileLoader`` reading the dataset's decoded cache (built
    here on first use, with a progress bar, when ``data.options.cache`` allows it).
    ``data.workers`` 0 means the automatic worker count for file datasets (``files.auto_workers``).
    """
    from .base import ImageTensors
    from .files import ImageFiles

    sampler, views, clean = None, 1, False
    if requires is not None:
        views, clean = requires.views, requires.clean
        if requires.pairs:
            from .loader import ClassPairBatches

            sampler = ClassPairBatches(data.train.labels, cfg.batch_size, requires.pairs_include_self)
    ds = data.dataset
    if cfg.batch_size % world:
        raise ConfigError(f"data.batch_size: the global batch {cfg.batch_size} must be divisible by the {world} processes")
    common = dict(mean=ds.mean, std=ds.std, device=device, seed=seed, rank=rank, world=world,
                  channels_last=channels_last, **post_crop_augmentations(cfg))
    if isinstance(ds, ImageTensors):
        from .augment import CropFlip, ResizedCrop, Resize
        from .loader import TensorLoader

        flip = ds.hflip if cfg.hflip is None else cfg.hflip
        eval_tf, aug = None, None
        if ds.train_crop == "random_resized_crop":
            eval_tf = Resize(ds.image_size)
            if cfg.augment:
                aug = ResizedCrop(ds.image_size, flip)
        elif cfg.augment:
            pad = ds.crop_padding if cfg.crop_padding is None else cfg.crop_padding
            aug = CropFlip(pad, flip)

        def make(split, train):
            return TensorLoader(split, cfg.batch_size if train else cfg.eval_batch_size, train=train,
                                augment=aug, eval_transform=eval_tf,
                                sampler=sampler if train else None, views=views if train else 1,
                                clean=clean and train, **common)
    elif isinstance(ds, ImageFiles):
        from .cache import ResizeRule, open_cache
        from .files import FileLoader

        rule = ResizeRule(ds.resize, ds.resize_shape)
        cache = open_cache(ds.all_paths(), rule, cfg.name, ds.cache, progress=progress and rank == 0)

        def make(split, train):
            return FileLoader(split, cfg.batch_size if train else cfg.eval_batch_size, train=train,
                              image_size=ds.image_size, resize=ds.resize,
                              workers=cfg.workers or None, sampler=sampler if train else None,
                              views=views if train else 1, clean=clean and train,
                              augment=cfg.augment, hflip=True if cfg.hflip is None else cfg.hflip,
                              train_crop=ds.train_crop, resize_shape=ds.resize_shape, cache=cache,
                              **common)
    else:
        raise TypeError(f"build_loaders: {type(ds).__name__} is neither ImageTensors nor ImageFiles")

    train = make(data.train, True)
    val = make(data.val, False) if data.val is not None else None
    return train, val, make(data.test, False)
