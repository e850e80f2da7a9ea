"""File-list datasets (an image per file, decoded on the fly) and their loader.

``ImageFiles`` is what the ``imagefolder`` dataset returns: paths and labels instead of pixels,
for datasets too large to hold in memory or with images of varying size. ``FileLoader`` is the
iterable the engine uses in place of the in-memory tensor loader; it yields the same ``Batch``.

Determinism: the training order of an epoch is a permutation drawn from a ``torch.Generator``
seeded from (seed, epoch), and every sample's random crop/flip is drawn from its own seed taken
from the same generator. So the images a step sees depend only on (seed, epoch, global batch
size): not on the number of worker processes, and a rank of an N-process DDP run gets exactly
its slice of the global batch a single process would have seen.

What some methods need beyond ``batch.x`` (``methods.base.Requires``) comes with the same
``batch.extra`` keys as from the in-memory loader: class pairs through a sampler such as
``ClassPairBatches`` (``partner_x``, ``partner_y``, ``partner_index``), extra augmented views
(``view1`` …) and un-augmented copies (``clean_x``). Each file of a step is decoded once and
every image asked of it is made from that decode, each with its own seed derived from the
sample's (``derived_seed``), so they too depend only on (seed, epoch, sample, use).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch

from ..errors import ConfigError, DataError
from .base import Batch
from .loader import epoch_generator, shard_bounds

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

IndexLike = Union[torch.Tensor, Sequence[int]]


def check_file_options(image_size: int, resize: int, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> None:
    """The options every file-based reader shares: 1 <= image_size <= resize, and mean/std of 3
    numbers each (RGB, 0..1 scale) with std > 0; otherwise a ConfigError naming the option."""
    if image_size < 1:
        raise ConfigError(f"data.options.image_size: must be >= 1, got {image_size}")
    if resize < image_size:
        raise ConfigError(f"data.options.resize: must be >= data.options.image_size ({image_size}), "
                          f"got {resize}")
    for key, values in (("mean", mean), ("std", std)):
        numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        if len(values) != 3 or not numbers or (key == "std" and any(v <= 0 for v in values)):
            raise ConfigError(f"data.options.{key}: expected 3 numbers (RGB){' > 0' if key == 'std' else ''}, "
                              f"got {list(values)!r}")


def error_text(exc: BaseException) -> str:
    """``Type: message`` of an exception, squeezed onto one line (for DataError messages)."""
    msg = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__


def _as_index_list(index: IndexLike) -> List[int]:
    if isinstance(index, torch.Tensor):
        if index.dtype == torch.bool:
            index = index.nonzero().flatten()
        return [int(i) for i in index.flatten().tolist()]
    return [int(i) for i in index]


@dataclass
class FileSplit:
    paths: List[str]
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, index: IndexLike) -> "FileSplit":
        idx = _as_index_list(index)
        labels = self.labels[torch.tensor(idx, dtype=torch.long)]
        return FileSplit([self.paths[i] for i in idx], labels)


@dataclass
class ImageFiles:
    """A dataset given as image files. ``val`` is None when the tree has no ``val`` folder.

    Images are decoded as RGB; training crops are ``RandomResizedCrop(image_size)`` plus a
    horizontal flip, evaluation uses ``Resize(resize)`` then ``CenterCrop(image_size)``.
    """

    train: FileSplit
    test: FileSplit
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    val: Optional[FileSplit] = None
    image_size: int = 224
    resize: int = 256
    train_crop: str = "random_resized_crop"   # or "resize_random_crop" (input protocol)
    resize_shape: str = "short_side"          # or "square": how ``resize`` is applied

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3


# --------------------------------------------------------------------------------------------
# Loader


def _build_transform(train: bool, image_size: int, resize: int, augment: bool = True, hflip: bool = True):
    """Training with ``augment``: RandomResizedCrop (+ a horizontal flip with ``hflip``);
    otherwise (evaluation, or training without augmentation): Resize + CenterCrop."""
    from torchvision.transforms import v2

    if train and augment:
        steps = [v2.RandomResizedCrop(image_size, antialias=True)]
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    else:
        steps = [v2.Resize(resize, antialias=True), v2.CenterCrop(image_size)]
    return v2.Compose(steps + [v2.PILToTensor()])


_MASK64 = (1 << 64) - 1
# role of a partner image in derived_seed: far above any view number
PARTNER_ROLE = 1 << 32
# epoch_generator stream of the per-sample seeds when a sampler (e.g. ClassPairBatches) owns
# stream 0
SEED_STREAM = 1


def derived_seed(sample_seed: int, role: int) -> int:
    """The augmentation seed of one use of a sample: ``role`` 0 is the sample's seed itself
    (``batch.x``), view v uses role v, a partner image ``PARTNER_ROLE``.

    A fixed 64-bit mix (splitmix64's finaliser), so the seed depends only on (sample seed, role),
    i.e. on (run seed, epoch, sample, role): not on batch, rank or worker.
    """
    if role == 0:
        return int(sample_seed)
    z = (int(sample_seed) + role * 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) >> 2  # < 2**62, like the drawn sample seeds


class _ReadError:
    """Returned instead of a batch when a file cannot be decoded.

    Raising inside a DataLoader worker would come back as a multi-line message carrying the
    worker's traceback; passing the error as data lets the main process raise a clean one-line
    DataError (and behaves the same with or without workers).
    """

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


class _Step(NamedTuple):
    """What one step of one rank loads: (position, sample seed) of every anchor, and of every
    anchor's partner (None without a class-pair sampler; the partner's seed is already the
    derived one)."""

    anchors: Tuple[Tuple[int, int], ...]
    partners: Optional[Tuple[Tuple[int, int], ...]] = None


class _FileDataset(torch.utils.data.Dataset):
    """Loads a whole ``_Step``: each distinct file of the step is decoded once, then every
    image asked of it (the anchor, its extra views, its clean copy, a partner use) is made by
    applying the transform under that use's own seed.

    Returns a dict of uint8 image batches ``x``, ``view1`` …, ``clean_x``, ``partner_x`` plus
    ``index`` (and ``partner_index``), or a ``_ReadError`` naming the first bad file.
    """

    def __init__(self, paths: List[str], transform, *, views: int = 1, clean_transform=None):
        self.paths = paths
        self.transform = transform
        self.views = views
        self.clean_transform = clean_transform

    def __len__(self) -> int:
        return len(self.paths)

    def _decode(self, i: int):
        path = self.paths[i]
        try:
            from PIL import Image

            with Image.open(path) as im:
                return im.convert("RGB")  # forces the decode inside the try
        except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, ValueError, ...
            return _ReadError(f"cannot read image {path}: {error_text(exc)}")

    def _apply(self, im, i: int, transform, seed: int):
        # The crop/flip come from this use's own seed, not from the process-global RNG, so they
        # do not depend on worker count or rank; fork_rng leaves the caller's RNG intact.
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                return transform(im)
        except Exception as exc:  # e.g. a degenerate (0-pixel) image
            return _ReadError(f"cannot transform image {self.paths[i]}: {error_text(exc)}")

    def __getitem__(self, step: _Step):
        anchors, partners = step
        # per distinct file, in order of first use: (output key, slot, transform, seed)
        jobs: Dict[int, List[tuple]] = {}
        for slot, (i, seed) in enumerate(anchors):
            todo = jobs.setdefault(i, [])
            todo.append(("x", slot, self.transform, seed))
            for v in range(1, self.views):
                todo.append((f"view{v}", slot, self.transform, derived_seed(seed, v)))
            if self.clean_transform is not None:
                todo.append(("clean_x", slot, self.clean_transform, 0))
        if partners is not None:
            for slot, (i, seed) in enumerate(partners):
                jobs.setdefault(i, []).append(("partner_x", slot, self.transform, seed))
        images: Dict[str, list] = {}
        for i, todo in jobs.items():
            im = self._decode(i)
            if isinstance(im, _ReadError):
                return im
            for key, slot, transform, seed in todo:
                x = self._apply(im, i, transform, seed)
                if isinstance(x, _ReadError):
                    return x
                size = len(partners) if key == "partner_x" else len(anchors)
                images.setdefault(key, [None] * size)[slot] = x
        out = {key: torch.stack(xs) for key, xs in images.items()}
        out["index"] = torch.tensor([i for i, _ in anchors], dtype=torch.long)
        if partners is not None:
            out["partner_index"] = torch.tensor([i for i, _ in partners], dtype=torch.long)
        return out


def _as_loaded(item):
    """DataLoader ``collate_fn`` for un-batched loading: the dataset already built the batch."""
    return item


class _BatchPlan(torch.utils.data.Sampler):
    """Sampler of whole steps: the ``_Step``s of one rank for an epoch (the DataLoader hands
    each one to ``_FileDataset`` as a unit, so one worker loads one step).

    Holds its own copy of the settings (not the FileLoader) so that FileLoader → DataLoader →
    plan has no reference cycle: a cycle would leave persistent workers to the cyclic garbage
    collector, which finalises their queues first and then waits 5 s for each worker.
    """

    def __init__(self, n: int, batch_size: int, world: int, rank: int, train: bool, seed: int,
                 sampler=None):
        self.n = n
        self.batch_size = batch_size
        self.local_batch = max(1, batch_size // world)
        self.world = world
        self.rank = rank
        self.train = train
        self.seed = seed
        self.sampler = sampler if train else None
        self.epoch = 0

    def _num_global_batches(self) -> int:
        return max(1, self.n // self.batch_size)

    def _eval_part(self) -> torch.Tensor:
        return torch.tensor_split(torch.arange(self.n), self.world)[self.rank]

    def __len__(self) -> int:
        if self.sampler is not None:
            # the sampler's batches, less a last one too short to give every rank a sample
            full = len(self.sampler)
            last = self.n - (full - 1) * self.sampler.batch_size
            return full - (1 if 0 < last < self.world else 0)
        if self.train:
            return self._num_global_batches()
        return math.ceil(len(self._eval_part()) / self.local_batch)

    def _sampler_steps(self, epoch: int) -> List[_Step]:
        # the sampler draws from stream 0 exactly as it does for TensorLoader, so the global
        # batches (anchors and partners) are the in-memory loader's; the sample seeds come from
        # their own stream, indexed by sample position
        seeds = torch.randint(0, 2**62, (self.n,), dtype=torch.long,
                              generator=epoch_generator(self.seed, epoch, SEED_STREAM)).tolist()
        out = []
        for glob in self.sampler.batches(epoch_generator(self.seed, epoch)):
            if len(glob) < self.world:  # only a short last batch: skipped on every rank alike
                continue
            lo, hi = shard_bounds(len(glob), self.rank, self.world)
            local = glob[lo:hi].tolist()
            if glob.dim() == 2:
                anchors = tuple((a, seeds[a]) for a, _ in local)
                partners = tuple((p, derived_seed(seeds[a], PARTNER_ROLE)) for a, p in local)
                out.append(_Step(anchors, partners))
            else:
                out.append(_Step(tuple((a, seeds[a]) for a in local)))
        return out

    def steps(self, epoch: int) -> List[_Step]:
        if self.sampler is not None:
            return self._sampler_steps(epoch)
        if self.train:
            g = epoch_generator(self.seed, epoch)
            perm = torch.randperm(self.n, generator=g)
            seeds = torch.randint(0, 2**62, (self.n,), generator=g, dtype=torch.long)
            out = []
            for k in range(self._num_global_batches()):
                glob = perm[k * self.batch_size:(k + 1) * self.batch_size]
                if len(glob) == self.batch_size:
                    part = glob[self.rank * self.local_batch:(self.rank + 1) * self.local_batch]
                else:  # the split is smaller than one global batch
                    part = torch.tensor_split(glob, self.world)[self.rank]
                # seeds are indexed by sample position, so a sample's crop in an epoch does not
                # depend on which batch or rank it lands in
                out.append(_Step(tuple((int(i), int(seeds[i])) for i in part)))
            return out
        part = self._eval_part()
        return [
            _Step(tuple((int(i), 0) for i in part[s:s + self.local_batch]))
            for s in range(0, len(part), self.local_batch)
        ]

    def __iter__(self):
        return iter(self.steps(self.epoch))


class FileLoader:
    """Iterate a ``FileSplit`` as normalised ``Batch``es on ``device``.

    ``batch_size`` is the global batch; this rank gets ``batch_size // world`` samples per step
    (training needs ``batch_size`` divisible by ``world``; evaluation takes at least 1).
    Training: each epoch a permutation from ``epoch_generator(seed, epoch)``; global batch k is
    ``perm[k·B:(k+1)·B]`` and rank r takes its contiguous part ``[r·B/W, (r+1)·B/W)``; an
    incomplete last global batch is dropped (unless the split is smaller than one batch, then
    that one batch is split as evenly as possible). Evaluation: the ordered split is cut into
    ``world`` contiguous, near-equal parts and rank r walks its part in batches of B/W, the last
    one possibly smaller.

    What a method's ``requires`` asks for (training only; ignored for evaluation, as by
    ``TensorLoader``), with the same ``batch.extra`` keys as the in-memory loader:

    sampler: a global-batch sampler such as ``ClassPairBatches`` (attributes ``n``,
             ``batch_size``; ``batches(generator)`` yields 1-D index batches or B×2 (anchor,
             partner) batches). It then decides the global batches, drawing from
             ``epoch_generator(seed, epoch)`` exactly as for ``TensorLoader``, so a file and an
             in-memory dataset with the same labels get the same anchors and partners; the last
             batch may be short (every sample is an anchor once per epoch) and each rank takes
             its ``shard_bounds`` slice. A last batch with fewer samples than ranks is skipped.
             B×2 batches give ``extra["partner_x"]`` (the partner decoded and augmented with its
             own seed), ``["partner_y"]`` and ``["partner_index"]``.
    views:   views 2..N of each anchor, each augmented with its own seed: ``extra["view1"]`` …
    augment: training images get RandomResizedCrop (+ a horizontal flip with ``hflip``); false:
             the evaluation transform (``data.augment`` / ``data.hflip``).
    clean:   the anchor through the evaluation transform (Resize + CenterCrop):
             ``extra["clean_x"]``.

    Every file of a step is decoded once and all images asked of it are made from that decode.
    Seeds: anchor i of an epoch has sample seed s_i (drawn per position from the epoch's
    generator); view v uses ``derived_seed(s_i, v)``, its partner ``derived_seed(s_i,
    PARTNER_ROLE)``. Adding views or a clean copy does not change ``batch.x``.
    """

    def __init__(
        self,
        split: FileSplit,
        batch_size: int,
        *,
        train: bool,
        image_size: int,
        resize: int,
        mean: Sequence[float],
        std: Sequence[float],
        device: Union[str, torch.device] = "cpu",
        seed: int = 0,
        rank: int = 0,
        world: int = 1,
        workers: int = 0,
        channels_last: bool = False,
        sampler=None,
        views: int = 1,
        clean: bool = False,
        augment: bool = True,
        hflip: bool = True,
    ):
        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ConfigError(
                f"FileLoader: need batch_size >= 1 and 0 <= rank < world, got batch_size="
                f"{batch_size}, rank={rank}, world={world}"
            )
        if train and batch_size % world:
            raise ConfigError(
                f"batch size {batch_size} is not divisible by the {world} processes"
            )
        if len(split) == 0:
            raise DataError("FileLoader: the split has no images")
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"FileLoader: mean/std need 3 values, got {mean!r} / {std!r}")
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"FileLoader: views must be an integer >= 1, got {views!r}")
        if not train:
            sampler, views, clean = None, 1, False
        if sampler is not None and (sampler.n != len(split) or sampler.batch_size != batch_size):
            raise ConfigError(
                f"FileLoader: the sampler covers {sampler.n} samples in batches of "
                f"{sampler.batch_size}, but the split has {len(split)} and the batch is {batch_size}"
            )
        self.split = split
        self.batch_size = batch_size
        self.local_batch = max(1, batch_size // world)
        self.train = train
        self.seed = seed
        self.rank = rank
        self.world = world
        self.sampler = sampler
        self.views = views
        self.clean = bool(clean)
        self.channels_last = channels_last
        self.device = torch.device(device)
        self._mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._labels = split.labels.to(torch.long)
        self._plan = _BatchPlan(len(split), batch_size, world, rank, train, seed, sampler)
        dataset = _FileDataset(
            split.paths, _build_transform(train, image_size, resize, augment, hflip), views=views,
            clean_transform=_build_transform(False, image_size, resize) if self.clean else None,
        )
        self._loader = torch.utils.data.DataLoader(
            dataset,
            sampler=self._plan,
            batch_size=None,  # the plan yields whole steps; the dataset builds the batch
            num_workers=workers,
            collate_fn=_as_loaded,
            pin_memory=self.device.type == "cuda",
            # Workers are started per epoch (cheap with fork) rather than kept: a persistent
            # DataLoader iterator that ends up in garbage, e.g. via the traceback of a
            # DataError, is shut down by the cyclic collector, which costs 5 s per worker.
            persistent_workers=False,
        )

    @property
    def epoch(self) -> int:
        return self._plan.epoch

    def set_epoch(self, epoch: int) -> None:
        self._plan.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self._plan)

    def plan(self, epoch: int) -> List[List[Tuple[int, int]]]:
        """This rank's batches for ``epoch``: lists of (position in split, sample seed) of the
        anchors (``batch.x``)."""
        return [list(step.anchors) for step in self._plan.steps(epoch)]

    def partner_plan(self, epoch: int) -> List[List[Tuple[int, int]]]:
        """The partners of ``plan(epoch)``, slot by slot: (position in split, augmentation seed);
        empty lists without a class-pair sampler."""
        return [list(step.partners or ()) for step in self._plan.steps(epoch)]

    def _finish(self, images: torch.Tensor, non_blocking: bool) -> torch.Tensor:
        x = images.to(self.device, non_blocking=non_blocking).float().div_(255.0)
        x = (x - self._mean) / self._std
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def __iter__(self) -> Iterator[Batch]:
        non_blocking = self.device.type == "cuda"
        batches = iter(self._loader)
        try:
            for item in batches:
                if isinstance(item, _ReadError):
                    raise DataError(item.message)
                index = item["index"]
                batch = Batch(x=self._finish(item["x"], non_blocking),
                              y=self._labels[index].to(self.device, non_blocking=non_blocking),
                              index=index.to(self.device, non_blocking=non_blocking))
                # the same keys, in the same order, as TensorLoader
                for v in range(1, self.views):
                    batch.extra[f"view{v}"] = self._finish(item[f"view{v}"], non_blocking)
                if self.clean:
                    batch.extra["clean_x"] = self._finish(item["clean_x"], non_blocking)
                if "partner_index" in item:
                    partners = item["partner_index"]
                    batch.extra["partner_x"] = self._finish(item["partner_x"], non_blocking)
                    batch.extra["partner_y"] = self._labels[partners].to(
                        self.device, non_blocking=non_blocking)
                    batch.extra["partner_index"] = partners.to(self.device, non_blocking=non_blocking)
                yield batch
        finally:
            # stop the workers now (also on an error or an early break), not whenever the
            # garbage collector gets to a traceback that still references this frame
            del batches
