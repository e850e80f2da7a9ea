"""File-list datasets (an image per file) and their loader.

``ImageFiles`` is what the file-based readers return (``imagefolder``, ``cub200``, ``dogs``,
``mit67``, ``imagenet`` …): paths and labels instead of pixels, for datasets too large to hold
in memory or with images of varying size. ``FileLoader`` is the iterable the engine uses in
place of the in-memory tensor loader; both follow one plan (``loader.BatchPlan``: which
samples, which seeds, the short last batch kept) and one batch assembly
(``loader.PlannedLoader``), and yield the same ``Batch``.

Input protocol (data options of every file reader, checked by ``check_file_options``):

- Every image is first brought to the *stored* size by the resize rule: ``resize_shape:
  short_side`` (default: the shorter side to ``resize``, aspect kept) or ``square``
  (``resize``×``resize``). That is what the decoded cache keeps (``cache.DecodedCache``, built
  once per dataset and rule, memory-mapped, shared by every run), or what is decoded per step
  when the set is not cached (then in persistent worker processes).
- Training crop (``train_crop``): ``random_resized_crop`` (default; CS-KD, the torchvision
  ImageNet recipe: a random box of 8–100 % of the stored image's area, aspect 3/4–4/3, resized
  to ``image_size``) or ``resize_random_crop`` (a random ``image_size`` window of the stored
  image: JGL; the KT code's 600 → 448, the OLS fine-grained code's 256 → 224); then a
  horizontal flip (``data.hflip``).
- Evaluation (and the ``clean_x`` copy, and training with ``data.augment=false``): the centred
  ``image_size`` window of the stored image, i.e. Resize(resize) + CenterCrop(image_size).

The worker (or the main process) only slices the crop box out of the stored image; resizing
the box to ``image_size``, flipping, RandAugment/TrivialAugment (``data.auto_augment``),
normalising and random erasing (``data.random_erasing``) run batched on the training device.
Boxes and flips are drawn from each use's seed (``augment``), so the images a step sees depend
only on (seed, epoch, sample, role): not on the number of worker processes, on the DDP world
size, or on whether the cache is used.
"""
from __future__ import annotations

import inspect
import os
import typing
from dataclasses import dataclass, fields
from typing import Any, Callable, Dict, Iterator, List, Literal, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import ConfigError, DataError
from ..registry import declared_function, option_hints
from .augment import CenterCrop, RandomCrop, ResizedCrop, flip_where, resize_crops
from .augment import derived_seed  # noqa: F401  (re-exported: files.derived_seed)
from .loader import PARTNER_ROLE, SEED_STREAM, PlannedLoader, Step, step_uses  # noqa: F401

IMAGENET_MEAN: Tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: Tuple[float, float, float] = (0.229, 0.224, 0.225)

IndexLike = Union[torch.Tensor, Sequence[int]]

# the input-protocol options of every file reader (data.options.*)
TrainCrop = Literal["random_resized_crop", "resize_random_crop"]
ResizeShape = Literal["short_side", "square"]
CacheMode = Union[bool, Literal["auto"]]
TRAIN_CROPS = ("random_resized_crop", "resize_random_crop")
RESIZE_SHAPES = ("short_side", "square")


def check_file_options(image_size: int, resize: int, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                       train_crop: str = "random_resized_crop", resize_shape: str = "short_side",
                       cache: CacheMode = "auto") -> None:
    """The options every file-based reader shares: 1 <= image_size <= resize, mean/std of 3
    numbers each (RGB, 0..1 scale) with std > 0, ``train_crop`` / ``resize_shape`` / ``cache``
    one of their values; otherwise a ConfigError naming the option."""
    for key, value, allowed in (("train_crop", train_crop, TRAIN_CROPS),
                                ("resize_shape", resize_shape, RESIZE_SHAPES),
                                ("cache", cache, (True, False, "auto"))):
        ok = (value is True or value is False or value == "auto") if key == "cache" else (
            isinstance(value, str) and value in allowed)
        if not ok:
            raise ConfigError(f"data.options.{key}: expected one of "
                              f"{', '.join(str(a).lower() for a in allowed)}, got {value!r}")
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

    Images are decoded as RGB and stored at ``resize`` by ``resize_shape``; training crops
    follow ``train_crop`` (see the module docstring), evaluation is the centred
    ``image_size`` window. ``cache``: keep the stored images in the decoded cache (``auto``:
    when it fits the size limit and the disk).
    """

    train: FileSplit
    test: FileSplit
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    val: Optional[FileSplit] = None
    image_size: int = 224
    resize: int = 256
    train_crop: str = "random_resized_crop"
    resize_shape: str = "short_side"
    cache: CacheMode = "auto"

    def all_paths(self) -> List[str]:
        """Every file of every split, in split order, once (what the decoded cache holds)."""
        seen: Dict[str, None] = {}
        for split in (self.train, self.val, self.test):
            if split is not None:
                seen.update(dict.fromkeys(split.paths))
        return list(seen)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return 3


# --------------------------------------------------------------------------------------------
# Loader


SplitLike = Union[FileSplit, Tuple[Sequence[str], Sequence[int]]]


def _file_split(split: SplitLike) -> FileSplit:
    if isinstance(split, FileSplit):
        return split
    paths, labels = split
    return FileSplit(list(paths), torch.tensor(list(labels), dtype=torch.long))


@dataclass(frozen=True)
class FileOptions:
    """The input-protocol options every file reader shares (``data.options.*``, see the module
    docstring), declared here once: :func:`file_reader` adds them to each reader's signature,
    checks them (:func:`check_file_options`) and hands them to the reader as one value."""

    image_size: int = 224
    resize: int = 256
    mean: Tuple[float, float, float] = IMAGENET_MEAN
    std: Tuple[float, float, float] = IMAGENET_STD
    train_crop: TrainCrop = "random_resized_crop"
    resize_shape: ResizeShape = "short_side"
    cache: CacheMode = "auto"

    def check(self) -> "FileOptions":
        check_file_options(self.image_size, self.resize, self.mean, self.std, self.train_crop,
                           self.resize_shape, self.cache)
        return self

    def dataset(self, train: SplitLike, test: SplitLike, classes: Sequence[str],
                val: Optional[SplitLike] = None) -> "ImageFiles":
        """An ``ImageFiles`` with these options; each split a FileSplit or ``(paths, labels)``
        (``val``: the official validation split, if any)."""
        return ImageFiles(
            train=_file_split(train),
            test=_file_split(test),
            classes=list(classes),
            mean=tuple(float(m) for m in self.mean),
            std=tuple(float(v) for v in self.std),
            val=None if val is None else _file_split(val),
            image_size=self.image_size,
            resize=self.resize,
            train_crop=self.train_crop,
            resize_shape=self.resize_shape,
            cache=self.cache,
        )


_SIZE_OPTIONS = ("image_size", "resize")  # declared right after ``root``; the others last


def file_reader(reader: Callable[..., "ImageFiles"]) -> Callable[..., "ImageFiles"]:
    """Decorator for a file reader declared as ``reader(root, <its own options>, *, file_options)``:
    the registered reader takes ``root, image_size, resize, <its own options>, mean, std,
    train_crop, resize_shape, cache`` (the :class:`FileOptions`, with their defaults), checks
    the shared ones before anything is read, and calls ``reader(..., file_options=FileOptions(...))``."""
    sig = inspect.signature(reader)
    hints = option_hints(reader)
    own = [p.replace(annotation=hints.get(p.name, p.annotation)) for p in sig.parameters.values()
           if p.name != "file_options"]
    if not own or own[0].name != "root" or "file_options" not in sig.parameters:
        raise TypeError(f"file_reader: {reader.__name__} must take root first and file_options")
    file_hints = typing.get_type_hints(FileOptions, include_extras=True)
    shared = {f.name: inspect.Parameter(f.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                                        default=f.default, annotation=file_hints[f.name])
              for f in fields(FileOptions)}
    params = ([own[0]] + [shared[n] for n in _SIZE_OPTIONS] + own[1:]
              + [p for n, p in shared.items() if n not in _SIZE_OPTIONS])

    def call(**arguments: Any) -> "ImageFiles":
        file_options = FileOptions(**{n: arguments.pop(n) for n in shared}).check()
        return reader(**arguments, file_options=file_options)

    signature = sig.replace(parameters=params, return_annotation=hints.get("return", sig.return_annotation))
    declared = {p.name: p.annotation for p in params if p.annotation is not p.empty}
    if "return" in hints:
        declared["return"] = hints["return"]
    return declared_function(call, signature, declared, name=reader.__name__, doc=reader.__doc__,
                             module=reader.__module__)


def auto_workers(cached: bool, device: torch.device) -> int:
    """Worker processes when ``data.workers`` is 0: none for a cached split on the CPU (a crop
    is a slice of a memory-mapped array); otherwise one per core but one, the cores shared among
    the processes of this node (torchrun's ``LOCAL_WORLD_SIZE``), at most 8 (at most 4 for a
    cached split), so decoding overlaps the step."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cached and device.type == "cpu":
        return 0
    per_process = cores // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return max(0, min(4 if cached else 8, per_process - 1))


class _ReadError:
    """Returned instead of a batch when a file cannot be decoded.

    Raising inside a DataLoader worker would come back as a multi-line message carrying the
    worker's traceback; passing the error as data lets the main process raise a clean one-line
    DataError (and behaves the same with or without workers).
    """

    __slots__ = ("message",)

    def __init__(self, message: str):
        self.message = message


class _StepSampler(torch.utils.data.Sampler):
    """Sampler of whole steps: for each step of the epoch, the (key, positions, seeds, train
    transform?) of every image batch it needs (``loader.step_uses``). The DataLoader hands each
    to ``_FileDataset`` as a unit, so one worker loads one step.

    Holds the plan and plain settings only (not the FileLoader): FileLoader → DataLoader →
    sampler has no reference cycle, so the persistent workers end when the loader is freed.
    """

    def __init__(self, plan, views: int, clean: bool):
        self.plan, self.views, self.clean = plan, views, clean
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.plan)

    def __iter__(self):
        for step in self.plan.steps(self.epoch):
            yield [(key, pos.tolist(), seeds.tolist(), train)
                   for key, pos, seeds, train in step_uses(step, self.views, self.clean)]


class _FileDataset(torch.utils.data.Dataset):
    """Loads a whole step: each distinct file is decoded once (or read from the decoded
    cache), then every image asked of it (the anchor, its views, its clean copy, a partner
    use) is cut out by the box its seed gives.

    Returns {key: (crops, flips)} with crops a uint8 B×3×C×C tensor when every box is C×C, else
    a list of uint8 3×h×w tensors (resized on the device), or a ``_ReadError`` naming the first
    bad file.
    """

    def __init__(self, paths: List[str], rule, train_tf, eval_tf, cache=None, rows=None):
        self.paths, self.rule = paths, rule
        self.train_tf, self.eval_tf = train_tf, eval_tf
        self.cache, self.rows = cache, rows

    def __len__(self) -> int:
        return len(self.paths)

    def _stored(self, i: int):
        if self.cache is not None:
            return self.cache.image(self.rows[i])
        from .cache import decode_image

        try:
            return decode_image(self.paths[i], self.rule)
        except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, ValueError, ...
            return _ReadError(f"cannot read image {self.paths[i]}: {error_text(exc)}")

    def __getitem__(self, uses):
        images: Dict[int, np.ndarray] = {}
        for _, positions, _, _ in uses:  # decode in order of first use
            for i in positions:
                if i not in images:
                    im = self._stored(i)
                    if isinstance(im, _ReadError):
                        return im
                    images[i] = im
        out = {}
        for key, positions, seeds, train in uses:
            tf = self.train_tf if train else self.eval_tf
            hw = np.array([images[i].shape[:2] for i in positions], dtype=np.int64).reshape(-1, 2)
            boxes = tf.boxes(seeds, hw[:, 0], hw[:, 1])
            crops = []
            for k, i in enumerate(positions):
                t, l, h, w = (int(boxes[n][k]) for n in ("top", "left", "height", "width"))
                crop = np.ascontiguousarray(images[i][t:t + h, l:l + w].transpose(2, 0, 1))
                crops.append(torch.from_numpy(crop))
            same = all(c.shape[-2:] == crops[0].shape[-2:] for c in crops)
            out[key] = (torch.stack(crops) if same else crops, torch.from_numpy(boxes["flip"]))
        return out


def _as_loaded(item):
    """DataLoader ``collate_fn`` for un-batched loading: the dataset already built the batch."""
    return item


class FileLoader(PlannedLoader):
    """Iterate a ``FileSplit`` as normalised ``Batch``es on ``device``.

    ``batch_size`` is the global batch; the steps follow ``loader.BatchPlan`` (the same rules
    as the in-memory loader: the short last training batch is kept unless it has fewer samples
    than ranks; evaluation walks contiguous shards in batches of ``batch_size // world``).

    The input protocol (see the module docstring): ``resize``/``resize_shape`` (the stored
    image), ``train_crop`` (``random_resized_crop`` or ``resize_random_crop``) to
    ``image_size``, ``hflip``; ``augment=False`` trains on the evaluation crop.

    ``cache``: a ``cache.DecodedCache`` holding every path of ``split`` under the same rule
    (the stored images are then read from it), or None (decoded per step).
    ``workers``: DataLoader worker processes, kept for the loader's life (``None``: the
    automatic count of ``auto_workers``). Batches on CUDA come through pinned memory with
    non-blocking copies, so the next step's loading overlaps the current one's compute.

    What a method's ``requires`` asks for (training only; ignored for evaluation), with the
    same ``batch.extra`` keys as the in-memory loader: ``sampler`` (e.g. ``ClassPairBatches``:
    ``partner_x`` with the partner's own seed, ``partner_y``, ``partner_index``), ``views``
    (``view1`` …, each with its own seed), ``clean`` (``clean_x``, the evaluation crop). Each
    file of a step is decoded once; adding views or a clean copy does not change ``batch.x``.

    ``auto_augment`` / ``erasing`` (``augment.AutoAugment`` / ``augment.RandomErasing``, with
    ``augment`` only): applied on the device after the crop, as for in-memory sets
    (``loader.PlannedLoader``).
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
        workers: Optional[int] = 0,
        channels_last: bool = False,
        sampler=None,
        views: int = 1,
        clean: bool = False,
        augment: bool = True,
        hflip: bool = True,
        train_crop: str = "random_resized_crop",
        resize_shape: str = "short_side",
        cache=None,
        auto_augment=None,
        erasing=None,
    ):
        from .cache import ResizeRule

        if len(split) == 0:
            raise DataError("FileLoader: the split has no images")
        if len(mean) != 3 or len(std) != 3:
            raise ConfigError(f"FileLoader: mean/std need 3 values, got {mean!r} / {std!r}")
        check_file_options(image_size, resize, mean, std, train_crop, resize_shape)
        super().__init__(len(split), split.labels, batch_size, train=train, mean=mean, std=std,
                         device=device, seed=seed, rank=rank, world=world, sampler=sampler,
                         channels_last=channels_last, views=views, clean=clean,
                         auto_augment=auto_augment if augment else None,
                         erasing=erasing if augment else None)
        self.split = split
        self.image_size = image_size
        self.rule = ResizeRule(resize, resize_shape)
        if cache is not None and cache.rule != self.rule:
            raise ConfigError(f"FileLoader: the cache holds images under {cache.rule}, "
                              f"not {self.rule}")
        rows = None
        if cache is not None:
            missing = [p for p in split.paths if p not in cache.row_of]
            if missing:
                raise DataError(f"FileLoader: {missing[0]} is not in the decoded cache "
                                f"({len(missing)} such file(s))")
            rows = [cache.row_of[p] for p in split.paths]
        self.cached = cache is not None
        eval_tf = CenterCrop(image_size)
        if not (train and augment):
            train_tf = eval_tf
        elif train_crop == "resize_random_crop":
            train_tf = RandomCrop(image_size, hflip)
        else:
            train_tf = ResizedCrop(image_size, hflip)
        self.workers = auto_workers(self.cached, self.device) if workers is None else int(workers)
        self._sampler = _StepSampler(self._plan, self.views, self.clean)
        self._loader = torch.utils.data.DataLoader(
            _FileDataset(split.paths, self.rule, train_tf, eval_tf, cache, rows),
            sampler=self._sampler,
            batch_size=None,  # the sampler yields whole steps; the dataset builds them
            num_workers=self.workers,
            collate_fn=_as_loaded,
            pin_memory=self.device.type == "cuda",
            persistent_workers=self.workers > 0,
            prefetch_factor=4 if self.workers > 0 else None,
        )

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._sampler.epoch = self.epoch

    def close(self) -> None:
        """Stop the persistent worker processes now (they also stop when the loader is freed;
        a loader kept alive by a reference cycle would otherwise hold them until the cyclic
        garbage collector runs). Iterating again starts new ones."""
        it = getattr(self._loader, "_iterator", None)
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader._iterator = None

    def _to_device(self, crops, flips) -> torch.Tensor:
        nb = self.device.type == "cuda"
        if isinstance(crops, torch.Tensor):
            crops = crops.to(self.device, non_blocking=nb)
        else:
            crops = [c.to(self.device, non_blocking=nb) for c in crops]
        return flip_where(resize_crops(crops, self.image_size), flips)

    def _load(self, item) -> Dict[str, torch.Tensor]:
        if isinstance(item, _ReadError):
            raise DataError(item.message)
        return {key: self._to_device(crops, flips) for key, (crops, flips) in item.items()}

    def _images(self, steps: List[Step]) -> Iterator[Dict[str, torch.Tensor]]:
        self._sampler.epoch = self.epoch
        items = iter(self._loader)
        if self.device.type != "cuda":
            for item in items:
                yield self._load(item)
            return
        # CUDA: the next step's copies and resizes are issued on a side stream before this
        # step is handed out, so they overlap this step's compute
        side = torch.cuda.Stream(self.device)

        def ahead():
            item = next(items, None)
            if item is None:
                return None
            if isinstance(item, _ReadError):
                return item  # raised when its step is due, after the steps before it
            with torch.cuda.stream(side):
                return self._load(item)

        nxt = ahead()
        while nxt is not None:
            if isinstance(nxt, _ReadError):
                raise DataError(nxt.message)
            main = torch.cuda.current_stream(self.device)
            main.wait_stream(side)
            for t in nxt.values():
                t.record_stream(main)  # keep the side stream's memory until main is done with it
            cur, nxt = nxt, ahead()
            yield cur
