"""Decode once: image decoding, the resize rule, and the on-disk caches of decoded images.

Two caches live under ``cache_dir()`` (``$SOFTLABELS_CACHE``, else
``$XDG_CACHE_HOME/softlabels``, else ``~/.cache/softlabels``), both keyed by ``files_key``: a
hash of what they hold (the resize rule) and of every source file's path, byte size and
modification time, so a changed, added or removed file gives another key and the images are
decoded again; every run of a study finds the same key and shares the cache.

- ``tinyimagenet`` keeps a whole in-memory set as one safetensors file (see that module).
- ``DecodedCache`` holds the images of a file dataset (``ImageFiles``) after the resize rule,
  as uint8 H×W×3 arrays of varying size in one flat file read through ``numpy.memmap``, with an
  index of (offset, height, width) per image: ``files-<dataset>-<rule>-<key>/{pixels.u8,
  index.npy}``. It is built once, with a progress bar, by the first process that needs it
  (others wait on a lock file and then read it), into a temporary folder renamed into place,
  so a killed build leaves no half cache.

``decode_image`` is the one decoder of file images: the cache builder and the uncached loader
both call it, so a run gives the same images with or without the cache. JPEGs are decoded with
PIL's ``draft`` at the smallest DCT scale still at least the target size, then resized with
PIL's antialiased bilinear filter; 16-bit greyscale images are scaled to 8 bits (not clipped).
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from ..errors import DataError

CACHE_VERSION = 1
# caches larger than this (GB; env SOFTLABELS_CACHE_MAX_GB) are not built under cache: auto
DEFAULT_MAX_GB = 64.0


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$SOFTLABELS_CACHE``, else
    ``$XDG_CACHE_HOME/softlabels``, else ``~/.cache/softlabels``."""
    if os.environ.get("SOFTLABELS_CACHE"):
        return Path(os.environ["SOFTLABELS_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "softlabels"


def files_key(what: str, splits: Sequence[Sequence[str]]) -> str:
    """Hash of ``what`` (the dataset and its resize rule) and each file's path, byte size and
    modification time."""
    h = hashlib.sha256(what.encode())
    for paths in splits:
        h.update(f"|split {len(paths)}".encode())
        for p in paths:
            try:
                st = os.stat(p)
                h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"|{p}|missing".encode())  # the decode reports it
    return h.hexdigest()[:32]


# ------------------------------------------------------------------------------ decoding
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N")


def to_rgb(im):
    """A PIL image as 8-bit RGB. 16-bit greyscale (``I;16*``, and ``I`` holding values above
    255) is scaled by 255/65535 instead of being clipped at 255 as ``convert('RGB')`` does;
    floating-point images are refused (ValueError: the caller names the file)."""
    from PIL import Image

    if im.mode == "RGB":
        return im
    if im.mode in _SIXTEEN_BIT or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if im.mode in _SIXTEEN_BIT or a.max(initial=0) > 255:
            if a.min(initial=0) < 0 or a.max(initial=0) > 65535:
                raise ValueError(f"{im.mode} image with values outside 0..65535 (not 16-bit)")
            a = (a * 255 + 32767) // 65535
        return Image.fromarray(a.astype(np.uint8), "L").convert("RGB")
    if im.mode == "F":
        raise ValueError("floating-point (mode F) images are not supported; save them as 8- or 16-bit")
    return im.convert("RGB")  # L, LA, P, RGBA, CMYK, YCbCr, 1 ...


@dataclass(frozen=True)
class ResizeRule:
    """How a file image is stored: ``short_side`` (the shorter side to ``size``, aspect kept,
    torchvision's ``Resize(size)`` rounding) or ``square`` (``Resize((size, size))``)."""

    size: int
    shape: str = "short_side"

    def target(self, width: int, height: int) -> Tuple[int, int]:
        """(width, height) of an image of the given size after the rule."""
        if self.shape == "square":
            return self.size, self.size
        if width <= height:
            return self.size, int(self.size * height / width)
        return int(self.size * width / height), self.size

    @property
    def name(self) -> str:
        return f"{self.size}{'sq' if self.shape == 'square' else 'ss'}"


def decode_image(path: str, rule: ResizeRule) -> np.ndarray:
    """The file at ``path`` as uint8 H×W×3 after ``rule`` (raises whatever PIL raises)."""
    from PIL import Image

    with Image.open(path) as im:
        width, height = im.size
        if width < 1 or height < 1:
            raise ValueError(f"empty image ({width}x{height})")
        tw, th = rule.target(width, height)
        if im.format == "JPEG" and (tw < width or th < height):
            im.draft(None, (tw, th))  # DCT-domain downscale, never below the target
        rgb = to_rgb(im)
        if rgb.size != (tw, th):
            rgb = rgb.resize((tw, th), Image.BILINEAR)
        return np.array(rgb, dtype=np.uint8)


def estimated_bytes(n: int, rule: ResizeRule) -> int:
    """A cache's size before it is built (4:3 images under a short-side rule)."""
    return int(n * 3 * rule.size * rule.size * (1.0 if rule.shape == "square" else 4 / 3))


# ------------------------------------------------------------------------------ file cache
class DecodedCache:
    """Decoded, resized images of a list of files, memory-mapped from disk.

    ``image(row)`` is a read-only H×W×3 view; ``sizes[row]`` its (height, width); ``row_of``
    maps a file path to its row. Pickles without the mapping (DataLoader workers reopen it).
    """

    def __init__(self, folder: Path, paths: Sequence[str], rule: ResizeRule):
        self.folder = Path(folder)
        self.rule = rule
        index = np.load(self.folder / "index.npy")
        if index.shape != (len(paths), 3):
            raise ValueError(f"index of {index.shape[0]} rows for {len(paths)} files")
        self.offsets = index[:, 0].copy()
        self.sizes = index[:, 1:3].copy()
        self.row_of: Dict[str, int] = {p: i for i, p in enumerate(paths)}
        total = int((self.sizes[:, 0] * self.sizes[:, 1] * 3).sum())
        if (self.folder / "pixels.u8").stat().st_size != total:
            raise ValueError("pixel file size does not match its index")
        self._pixels: Optional[np.ndarray] = None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_pixels"] = None
        return state

    def _map(self) -> np.ndarray:
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / "pixels.u8", dtype=np.uint8, mode="r")
        return self._pixels

    def image(self, row: int) -> np.ndarray:
        h, w = (int(v) for v in self.sizes[row])
        start = int(self.offsets[row])
        return self._map()[start:start + h * w * 3].reshape(h, w, 3)

    @property
    def nbytes(self) -> int:
        return int((self.sizes[:, 0] * self.sizes[:, 1] * 3).sum())


def _build(folder: Path, paths: Sequence[str], rule: ResizeRule, what: str, progress: bool) -> None:
    from .files import error_text

    tmp = folder.with_name(folder.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    index = np.zeros((len(paths), 3), dtype=np.int64)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(paths), unit="img", file=sys.stderr, mininterval=0.5,
                   desc=f"{what}: decoding into the cache", disable=None)
    try:
        offset = 0
        with open(tmp / "pixels.u8", "wb") as out:
            for i, p in enumerate(paths):
                try:
                    a = decode_image(p, rule)
                except Exception as exc:  # PIL raises OSError, UnidentifiedImageError, ...
                    raise DataError(f"{what}: cannot read image {p}: {error_text(exc)}") from None
                out.write(a.tobytes())
                index[i] = (offset, a.shape[0], a.shape[1])
                offset += a.size
                if bar is not None:
                    bar.update(1)
        np.save(tmp / "index.npy", index)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if bar is not None:
            bar.close()


def open_cache(paths: Sequence[str], rule: ResizeRule, what: str, mode="auto",
               progress: bool = True) -> Optional[DecodedCache]:
    """The decoded cache of ``paths`` under ``rule``, built if absent; None when ``mode`` is
    false, or under ``auto`` when it would exceed the size limit or cannot be written (a
    one-line note says why). ``mode: true`` turns those into a DataError."""
    if mode is False or mode == "false":
        return None
    forced = mode is True or mode == "true"
    need = estimated_bytes(len(paths), rule)
    limit = float(os.environ.get("SOFTLABELS_CACHE_MAX_GB", DEFAULT_MAX_GB)) * 1e9
    root = cache_dir()

    def refuse(why: str):
        if forced:
            raise DataError(f"{what}: cannot cache the decoded images under {root}: {why} "
                            f"(data.options.cache=false decodes every step instead)")
        print(f"softlabels: note: {what}: images decoded per step, not cached: {why}", file=sys.stderr)
        return None

    if not forced and need > limit:
        return refuse(f"about {need / 1e9:.1f} GB > SOFTLABELS_CACHE_MAX_GB={limit / 1e9:g}")
    key = files_key(f"files|v{CACHE_VERSION}|{what}|{rule.shape}|{rule.size}", [paths])
    folder = root / f"files-{what}-{rule.name}-{key}"
    try:
        return DecodedCache(folder, paths, rule)
    except Exception:  # absent or foreign: build (below)
        pass
    try:
        root.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(root).free
    except OSError as exc:
        return refuse(exc.strerror or str(exc))
    if need * 1.1 > free:
        return refuse(f"about {need / 1e9:.1f} GB needed, {free / 1e9:.1f} GB free")
    import fcntl

    try:
        with open(root / f".{folder.name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one builder; the others wait and then read
            try:
                return DecodedCache(folder, paths, rule)
            except Exception:
                shutil.rmtree(folder, ignore_errors=True)
            for stale in root.glob(folder.name + ".tmp*"):  # a build killed before its rename
                shutil.rmtree(stale, ignore_errors=True)
            _build(folder, paths, rule, what, progress)
        return DecodedCache(folder, paths, rule)
    except OSError as exc:
        return refuse(exc.strerror or str(exc))
