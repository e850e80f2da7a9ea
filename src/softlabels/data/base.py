"""Dataset containers, the batch type, and the loaders the engine iterates.

Small-image datasets are held whole as uint8 tensors (``ImageTensors``) and moved to the run's
device once; every epoch the loader draws a permutation from a generator seeded by
(seed, epoch), gathers a batch on the device, and augments it there in one batched op. Random
augmentation parameters are drawn for the *global* batch and each DDP rank takes its slice, so N
processes with batch B/N see exactly the samples and crops one process with batch B sees.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch


@dataclass
class TensorSplit:
    images: torch.Tensor  # uint8, N×C×H×W
    labels: torch.Tensor  # int64, N

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def subset(self, index: torch.Tensor) -> "TensorSplit":
        return TensorSplit(self.images[index], self.labels[index])

    @classmethod
    def of(cls, images: torch.Tensor, labels: Sequence[int]) -> "TensorSplit":
        """A split from uint8 images and a list of int labels."""
        return cls(images, torch.tensor(list(labels), dtype=torch.long))


@dataclass
class ImageTensors:
    """A whole small-image dataset in memory.

    ``val`` is the dataset's official validation split, or None (the engine then carves one
    from ``train``). ``crop_padding`` and ``hflip`` are the dataset's standard augmentation
    (``train_crop: pad_crop``). ``train_crop: random_resized_crop`` with ``output_size`` S
    instead trains on RandomResizedCrop(S) of the stored images and evaluates on them resized
    to S×S (CS-KD's Tiny ImageNet at 32×32 from the 64×64 images).
    """

    train: TensorSplit
    test: TensorSplit
    classes: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]
    val: Optional[TensorSplit] = None
    crop_padding: int = 4
    hflip: bool = True
    train_crop: str = "pad_crop"
    output_size: Optional[int] = None

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def in_channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        """The side of the images batches carry."""
        return int(self.output_size or self.train.images.shape[-1])


@dataclass
class Batch:
    """One step's data on the run's device.

    x: B×C×H×W float images, normalised. y: B labels (the training labels, noisy if label noise
    is on). index: B positions in the split, so methods can keep per-sample state. ``extra`` is
    for what a method's ``requires`` asks the loader for (a second view, class partners) and for
    what a method's forward pass records.

    Mixed labels (the one form): a method that mixes inputs (``mixup``, ``mixup_cskd``,
    ``cutmix``) writes ``extra["mix_lambda"]`` = λ (0-d float32 tensor) and
    ``extra["mix_index"]`` = π (B indices) with ``methods.functional.record_mix``: sample i's
    target is λ·onehot(y_i) + (1−λ)·onehot(y_π(i)). ``y`` stays the first label. Loss terms read
    labels through ``methods.functional.label_terms`` / ``targets_of`` (and
    ``dominant_labels``), never ``y`` alone, so they see the mixed labels.
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    extra: Dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.y.shape[0])
