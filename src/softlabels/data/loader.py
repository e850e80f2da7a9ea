"""The loader plan shared by in-memory and file datasets, and the in-memory loader.

``batch_size`` is the GLOBAL batch: under DDP with N ranks each rank takes a contiguous
1/N slice of every global batch (sizes differ by at most one on a short last batch), so
N processes see exactly the samples and augmentations one process would.

One plan (``BatchPlan``) decides, for both kinds of dataset, which samples a step of a rank
loads and with which seeds; one base class (``PlannedLoader``) turns the step's uint8 images
into the ``Batch`` (normalisation, memory format, the ``extra`` keys methods ask for). The two
loaders differ only in where the pixels come from: ``TensorLoader`` gathers them from a split
held on the device, ``files.FileLoader`` from files (decoded, or read from the decoded cache).

The rules, the same for both:

- Training: every epoch the sampler (``RandomBatches``: a permutation from
  ``epoch_generator(seed, epoch)`` cut into global batches; or e.g. ``ClassPairBatches``) gives
  the global batches; the short last batch is KEPT (every sample is seen once per epoch),
  unless it has fewer samples than there are ranks, then every rank skips it.
- Each training sample has a seed per epoch (``epoch_generator(seed, epoch, SEED_STREAM)``,
  indexed by position in the split); its augmentation is a pure function of that seed (see
  ``augment``); view v uses ``derived_seed(seed, v)``, a class partner ``derived_seed(anchor
  seed, PARTNER_ROLE)``. So images depend on (seed, epoch, sample, role), never on batch size
  per rank, rank or worker count.
- Evaluation: the ordered split cut into ``world`` contiguous near-equal parts; rank r walks
  its part in batches of ``batch_size // world`` (at least 1), the last one possibly smaller.
"""
from __future__ import annotations

from typing import Dict, Iterator, List, NamedTuple, Optional, Sequence, Union

import torch

from .augment import AutoAugment, BoxTransform, CropFlip, RandomErasing, apply_boxes, derived_seeds, normalize
from .base import Batch, TensorSplit

# role of a partner image in derived_seed: far above any view number
PARTNER_ROLE = 1 << 32
# epoch_generator stream of the per-sample seeds (stream 0 belongs to the sampler)
SEED_STREAM = 1


def epoch_generator(seed: int, epoch: int, stream: int = 0) -> torch.Generator:
    """A CPU generator for one epoch: the same (seed, epoch) always gives the same draws, so a
    resumed run replays the epochs it has not done yet exactly."""
    g = torch.Generator()
    g.manual_seed((seed * 1_000_003 + epoch * 7919 + stream * 104_729) % (2**63))
    return g


class RandomBatches:
    """Default sampler: a fresh permutation each epoch, cut into global batches of indices
    (the last one short when ``batch_size`` does not divide ``n``)."""

    def __init__(self, n: int, batch_size: int):
        self.n, self.batch_size = n, batch_size

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def batches(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.n, generator=generator)
        for i in range(len(self)):
            yield perm[i * self.batch_size:(i + 1) * self.batch_size]


class ClassPairBatches:
    """CS-KD's class-pair sampler: every sample is an anchor once per epoch (in random order,
    the last batch may be short), each with a partner drawn uniformly from its class.

    Yields B×2 index tensors: column 0 anchors, column 1 partners. ``include_self`` draws the
    partner from the whole class, anchor included (the authors' sampler); otherwise from the
    other samples of the class (the anchor itself only when it is alone in its class).
    """

    def __init__(self, labels: torch.Tensor, batch_size: int, include_self: bool = False):
        self.labels = labels.cpu()
        self.n, self.batch_size, self.include_self = len(labels), batch_size, include_self
        order = torch.argsort(self.labels, stable=True)
        counts = torch.bincount(self.labels)
        starts = torch.cumsum(counts, 0) - counts
        self.sorted_index = order                     # samples grouped by class
        self.class_start = starts[self.labels]        # per sample: where its class begins
        self.class_count = counts[self.labels]        # per sample: its class size
        rank = torch.empty(self.n, dtype=torch.long)  # per sample: its position in its class
        rank[order] = torch.arange(self.n) - starts[self.labels[order]]
        self.rank_in_class = rank

    def __len__(self) -> int:
        return -(-self.n // self.batch_size)

    def partners(self, anchors: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        count = self.class_count[anchors]
        if self.include_self:
            offset = (torch.rand(len(anchors), generator=generator) * count).long()
        else:  # uniform over the other count−1 positions: skip the anchor's own slot
            others = (count - 1).clamp_min(1)
            offset = (torch.rand(len(anchors), generator=generator) * others).long()
            own = self.rank_in_class[anchors]
            offset = torch.where(count > 1, offset + (offset >= own).long(), own)
        return self.sorted_index[self.class_start[anchors] + offset.clamp_max(count - 1)]

    def batches(self, generator: torch.Generator) -> Iterator[torch.Tensor]:
        perm = torch.randperm(self.n, generator=generator)
        for i in range(len(self)):
            anchors = perm[i * self.batch_size:(i + 1) * self.batch_size]
            yield torch.stack([anchors, self.partners(anchors, generator)], dim=1)


def shard_bounds(n: int, rank: int, world: int) -> tuple:
    """Contiguous split of n items over world ranks, sizes differing by at most one."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


class Step(NamedTuple):
    """What one step of one rank loads: the anchors' positions in the split and their seeds;
    with a class-pair sampler also the partners' positions and (derived) seeds."""

    anchors: torch.Tensor                     # int64, this rank's part of the global batch
    seeds: torch.Tensor                       # int64, one per anchor (0 in evaluation)
    partners: Optional[torch.Tensor] = None
    partner_seeds: Optional[torch.Tensor] = None


class BatchPlan:
    """The steps of one rank for an epoch (see the module docstring for the rules).

    Holds plain settings only (no loader), so a DataLoader sampler wrapping it creates no
    reference cycle.
    """

    def __init__(self, n: int, batch_size: int, *, world: int = 1, rank: int = 0,
                 train: bool = True, seed: int = 0, sampler=None):
        self.n, self.batch_size = n, batch_size
        self.world, self.rank, self.train, self.seed = world, rank, train, seed
        self.local_batch = max(1, batch_size // world)
        self.sampler = (sampler or RandomBatches(n, batch_size)) if train else None

    def _last_skipped(self) -> bool:
        last = self.n - (len(self.sampler) - 1) * self.sampler.batch_size
        return 0 < last < self.world

    def __len__(self) -> int:
        if self.train:
            return len(self.sampler) - (1 if self._last_skipped() else 0)
        lo, hi = shard_bounds(self.n, self.rank, self.world)
        return -(-(hi - lo) // self.local_batch)

    def steps(self, epoch: int) -> List[Step]:
        if not self.train:
            lo, hi = shard_bounds(self.n, self.rank, self.world)
            part = torch.arange(lo, hi)
            return [Step(s, torch.zeros(len(s), dtype=torch.long))
                    for s in torch.split(part, self.local_batch)]
        seeds = torch.randint(0, 2**62, (self.n,), dtype=torch.long,
                              generator=epoch_generator(self.seed, epoch, SEED_STREAM))
        out = []
        for glob in self.sampler.batches(epoch_generator(self.seed, epoch)):
            if len(glob) < self.world:  # a short last batch: skipped on every rank alike
                continue
            lo, hi = shard_bounds(len(glob), self.rank, self.world)
            local = glob[lo:hi]
            if local.dim() == 2:
                anchors, partners = local[:, 0], local[:, 1]
                out.append(Step(anchors, seeds[anchors], partners,
                                derived_seeds(seeds[anchors], PARTNER_ROLE)))
            else:
                out.append(Step(local, seeds[local]))
        return out


def step_uses(step: Step, views: int, clean: bool) -> List[tuple]:
    """(key, positions, seeds, through the training transform?) of every image batch a step
    needs: ``x``, ``view1`` … (derived seeds), ``clean_x`` (evaluation transform),
    ``partner_x``."""
    out = [("x", step.anchors, step.seeds, True)]
    for v in range(1, views):
        out.append((f"view{v}", step.anchors, derived_seeds(step.seeds, v), True))
    if clean:
        out.append(("clean_x", step.anchors, step.seeds, False))
    if step.partners is not None:
        out.append(("partner_x", step.partners, step.partner_seeds, True))
    return out


class PlannedLoader:
    """What both loaders share: the plan, the epoch, and the one batch assembly.

    Subclasses implement ``_images(steps)``: for each step, a dict of uint8 B×C×H×W image
    batches on the device under the keys ``x``, ``view1`` …, ``clean_x``, ``partner_x`` (those
    asked for). ``Batch.extra`` then has, in this order: ``view1`` …, ``clean_x``,
    ``partner_x``, ``partner_y``, ``partner_index``.

    Training only, on every image that went through the training transform (``x``, views,
    ``partner_x``; not ``clean_x``), with that use's seed: ``auto_augment`` (an
    ``augment.AutoAugment``) on the uint8 batch, then normalisation, then ``erasing`` (an
    ``augment.RandomErasing``).
    """

    def __init__(self, n: int, labels: torch.Tensor, batch_size: int, *, train: bool,
                 mean: Sequence[float], std: Sequence[float], device, seed: int = 0,
                 rank: int = 0, world: int = 1, sampler=None, channels_last: bool = False,
                 views: int = 1, clean: bool = False, auto_augment: Optional[AutoAugment] = None,
                 erasing: Optional[RandomErasing] = None):
        from ..errors import ConfigError

        if batch_size < 1 or world < 1 or not 0 <= rank < world:
            raise ConfigError(f"loader: need batch_size >= 1 and 0 <= rank < world, got batch_size="
                              f"{batch_size}, rank={rank}, world={world}")
        if train and batch_size % world:
            raise ConfigError(f"batch size {batch_size} is not divisible by the {world} processes")
        if isinstance(views, bool) or not isinstance(views, int) or views < 1:
            raise ConfigError(f"loader: views must be an integer >= 1, got {views!r}")
        if not train:
            sampler, views, clean, auto_augment, erasing = None, 1, False, None, None
        if sampler is not None and (sampler.n != n or sampler.batch_size != batch_size):
            raise ConfigError(
                f"loader: the sampler covers {sampler.n} samples in batches of "
                f"{sampler.batch_size}, but the split has {n} and the batch is {batch_size}")
        self.train, self.seed, self.rank, self.world = train, seed, rank, world
        self.batch_size = batch_size
        self.sampler, self.views, self.clean = sampler, views, bool(clean)
        self.channels_last = channels_last
        self.auto_augment, self.erasing = auto_augment, erasing
        self.device = torch.device(device)
        self.mean, self.std = tuple(mean), tuple(std)
        self._mean_t = torch.tensor(self.mean, dtype=torch.float32, device=self.device)
        self._std_t = torch.tensor(self.std, dtype=torch.float32, device=self.device)
        self._labels = labels.to(torch.long).to(self.device)
        self._plan = BatchPlan(n, batch_size, world=world, rank=rank, train=train, seed=seed,
                               sampler=sampler)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self._plan)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def close(self) -> None:
        """Release what the loader holds beyond its tensors (worker processes); nothing for an
        in-memory loader. Iterating again afterwards still works."""

    def steps(self, epoch: int) -> List[Step]:
        return self._plan.steps(epoch)

    def plan(self, epoch: int) -> List[List[tuple]]:
        """This rank's batches for ``epoch``: lists of (position in split, sample seed) of the
        anchors (``batch.x``)."""
        return [list(zip(s.anchors.tolist(), s.seeds.tolist())) for s in self.steps(epoch)]

    def partner_plan(self, epoch: int) -> List[List[tuple]]:
        """The partners of ``plan(epoch)``, slot by slot: (position in split, augmentation
        seed); empty lists without a class-pair sampler."""
        return [list(zip(s.partners.tolist(), s.partner_seeds.tolist())) if s.partners is not None
                else [] for s in self.steps(epoch)]

    def uses(self, step: Step):
        return step_uses(step, self.views, self.clean)

    def _finish(self, x: torch.Tensor, seeds: Optional[torch.Tensor] = None) -> torch.Tensor:
        """uint8 → the model's input; ``seeds`` (a training use) adds the post-crop augmentations."""
        if seeds is not None and self.auto_augment is not None:
            x = self.auto_augment.apply(x, seeds)
        x = normalize(x, self._mean_t, self._std_t)
        if seeds is not None and self.erasing is not None:
            x = self.erasing.apply(x, seeds)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _batch(self, step: Step, images: Dict[str, torch.Tensor]) -> Batch:
        seeds = {key: (s if train and self.train else None) for key, _, s, train in self.uses(step)}
        index = step.anchors.to(self.device, non_blocking=True)
        batch = Batch(x=self._finish(images["x"], seeds["x"]), y=self._labels[index], index=index)
        for key in [f"view{v}" for v in range(1, self.views)] + (["clean_x"] if self.clean else []):
            batch.extra[key] = self._finish(images[key], seeds[key])
        if step.partners is not None:
            partners = step.partners.to(self.device, non_blocking=True)
            batch.extra["partner_x"] = self._finish(images["partner_x"], seeds["partner_x"])
            batch.extra["partner_y"] = self._labels[partners]
            batch.extra["partner_index"] = partners
        return batch

    def _images(self, steps: List[Step]) -> Iterator[Dict[str, torch.Tensor]]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Batch]:
        steps = self.steps(self.epoch)
        for step, images in zip(steps, self._images(steps)):
            yield self._batch(step, images)


Augment = Union[CropFlip, BoxTransform, None]


class TensorLoader(PlannedLoader):
    """Iterates ``Batch``es over a TensorSplit held on ``device``.

    train=True: the plan's batches (or ``sampler``'s), ``augment`` (``CropFlip`` or a box
    transform such as ``ResizedCrop``) on the device, labels as given (noisy if label noise is
    on). train=False: ordered batches of this rank's contiguous shard through
    ``eval_transform`` (None: the stored images), for evaluation (the engine gathers shards).
    ``clean`` copies also go through ``eval_transform``. ``auto_augment``/``erasing``: see
    ``PlannedLoader``.
    """

    def __init__(self, split: TensorSplit, batch_size: int, *, train: bool, mean: Sequence[float],
                 std: Sequence[float], device: torch.device, seed: int = 0,
                 augment: Augment = None, rank: int = 0, world: int = 1,
                 sampler=None, channels_last: bool = False, views: int = 1, clean: bool = False,
                 eval_transform: Optional[BoxTransform] = None,
                 auto_augment: Optional[AutoAugment] = None, erasing: Optional[RandomErasing] = None):
        n = len(split)
        super().__init__(n, split.labels, batch_size, train=train, mean=mean, std=std,
                         device=device, seed=seed, rank=rank, world=world, sampler=sampler,
                         channels_last=channels_last, views=views, clean=clean,
                         auto_augment=auto_augment, erasing=erasing)
        self.augment = augment if train else None
        self.eval_transform = eval_transform
        if train:
            self.offset, images = 0, split.images
        else:  # evaluation: only this rank's contiguous shard lives on the device
            lo, hi = shard_bounds(n, rank, world)
            self.offset, images = lo, split.images[lo:hi]
        self.images = images.to(self.device)

    def _transform(self, raw: torch.Tensor, seeds: torch.Tensor, transform) -> torch.Tensor:
        if transform is None:
            return raw
        if isinstance(transform, CropFlip):
            return transform.apply(raw, transform.params(seeds))
        h, w = raw.shape[-2:]
        boxes = transform.boxes(seeds, [h] * len(raw), [w] * len(raw))
        return apply_boxes(raw, boxes, transform.size)

    def _images(self, steps: List[Step]) -> Iterator[Dict[str, torch.Tensor]]:
        for step in steps:
            out: Dict[str, torch.Tensor] = {}
            cache: Dict[int, torch.Tensor] = {}
            for key, positions, seeds, train_tf in self.uses(step):
                src = id(positions)
                if src not in cache:
                    cache[src] = self.images[(positions - self.offset).to(self.device, non_blocking=True)]
                tf = self.augment if (train_tf and self.augment is not None) else self.eval_transform
                out[key] = self._transform(cache[src], seeds, tf)
            yield out
