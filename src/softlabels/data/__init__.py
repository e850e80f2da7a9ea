"""Datasets: readers for the official file layouts, registered by name in ``DATASETS``.

Importing this package registers ``digits`` (bundled), ``mnist``, ``fashion-mnist``,
``cifar10``, ``cifar100``, ``tinyimagenet`` and ``imagenet_dogs`` (in memory), the file-by-file
``cub200``, ``dogs`` (Stanford Dogs), ``mit67`` (MIT Indoor-67), ``flowers102``,
``stanford_cars``, ``fgvc_aircraft``, ``imagewoof``, ``imagenet`` (ILSVRC-2012) and
``imagefolder``, and ``synthetic`` (random images for benchmarks). ``load_dataset`` builds one from a name, a data
root and the user's options (checked against the reader's signature).
"""
from __future__ import annotations

from typing import Optional, Union

from ..registry import DATASETS
from . import (  # noqa: F401  (registration)
    cifar,
    digits,
    fgvc,
    finegrained,
    idx,
    imagefolder,
    imagenet,
    imagenet_dogs,
    synthetic,
    tinyimagenet,
)
from .base import Batch, ImageTensors, TensorSplit
from .files import FileLoader, FileSplit, ImageFiles
from .noise import symmetric_label_noise


def load_dataset(
    name: str, root: Optional[str] = None, options: Optional[dict] = None
) -> Union[ImageTensors, ImageFiles]:
    """Read dataset ``name`` from ``root``; raises ConfigError (bad name/option) or DataError."""
    return DATASETS.build(name, options, where="data.options", root=root)


__all__ = [
    "Batch",
    "FileLoader",
    "FileSplit",
    "ImageFiles",
    "ImageTensors",
    "TensorSplit",
    "load_dataset",
    "symmetric_label_noise",
]
