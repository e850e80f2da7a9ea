"""Batched augmentation on uint8 image tensors, on whatever device they live on.

Every training image of an epoch has a 62-bit *sample seed* (drawn per position in the split
from the epoch's generator, see ``loader.BatchPlan``); each use of it (the anchor, view v, a
class partner) has its own seed ``derived_seed(sample_seed, role)``. The random parameters of a
use (crop offsets, box, flip) are a pure function of that seed: a counter-based hash
(``uniforms``) gives its uniform numbers, vectorised over a batch. So an image's augmentation
does not depend on the batch, the rank, the worker or any process-global RNG, and no
``fork_rng`` is needed.

The transforms, all applied on the device to a whole batch:

- ``CropFlip``: random crop of a zero-padded image (the CIFAR recipe), then a flip.
- ``ResizedCrop``: ``RandomResizedCrop`` (torchvision's sampling: scale (0.08, 1), ratio
  (3/4, 4/3), 10 tries, then a centred fallback), resized to ``size`` (bilinear, antialiased),
  then a flip.
- ``RandomCrop``: a random ``size``×``size`` window of the (already resized) image, then a flip.
- ``CenterCrop``: the centred ``size``×``size`` window (evaluation).
- ``Resize``: the whole image resized to ``size``×``size`` (evaluation of a random-resized-crop
  protocol on images held at another size, e.g. Tiny ImageNet 64 → 32).

After the crop, for training uses only (``loader.PlannedLoader`` applies them, in-memory and file
datasets alike):

- ``AutoAugment``: RandAugment (``num_ops`` ops at one ``magnitude``) or TrivialAugment (one op,
  a random magnitude bin) on the uint8 batch, with torchvision's op list, magnitude bins and
  signs, applied with ``torchvision.transforms.v2.functional``. Samples that drew the same (op,
  magnitude, sign) go through the op together, so a step is a handful of batched calls.
- ``RandomErasing``: after normalisation, each image with probability ``p`` gets one box (area
  2–33 % of the image, aspect 0.3–3.3, torchvision's sampling and 10 tries) set to 0, i.e. to
  the mean colour, as torchvision's reference recipe does.

Their draws use the seeds ``derived_seeds(seed, AUTO_AUGMENT_ROLE)`` / ``ERASING_ROLE`` of each
use, so they too depend only on (seed, epoch, sample, role).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

_GOLDEN = 0x9E3779B97F4A7C15
_MASK64 = (1 << 64) - 1


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser on a uint64 array (wrapping arithmetic)."""
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def _as_u64(seeds) -> np.ndarray:
    if isinstance(seeds, torch.Tensor):
        seeds = seeds.detach().cpu().numpy()
    return np.asarray(seeds, dtype=np.int64).reshape(-1).astype(np.uint64)


def derived_seeds(seeds, role: int) -> torch.Tensor:
    """``derived_seed`` of every seed of a batch (int64 tensor); role 0 is the seed itself."""
    s = _as_u64(seeds)
    if role == 0:
        return torch.from_numpy(s.astype(np.int64))
    with np.errstate(over="ignore"):
        z = s + np.uint64((role * _GOLDEN) & _MASK64)
        out = _mix(z) >> np.uint64(2)  # < 2**62, like the drawn sample seeds
    return torch.from_numpy(out.astype(np.int64))


def derived_seed(sample_seed: int, role: int) -> int:
    """The augmentation seed of one use of a sample: ``role`` 0 is the sample's seed itself
    (``batch.x``), view v uses role v, a partner image ``PARTNER_ROLE``. Depends only on
    (sample seed, role), i.e. on (run seed, epoch, sample, role): not on batch, rank or worker."""
    return int(derived_seeds([int(sample_seed)], role)[0])


def uniforms(seeds, count: int) -> np.ndarray:
    """``count`` uniform numbers in [0, 1) per seed (float64, len(seeds)×count), a pure
    function of (seed, k): counter-based, so any subset of a batch draws the same numbers."""
    s = _as_u64(seeds)
    k = np.arange(1, count + 1, dtype=np.uint64)
    with np.errstate(over="ignore"):
        z = s[:, None] + k[None, :] * np.uint64(_GOLDEN)
        return (_mix(z) >> np.uint64(11)).astype(np.float64) * (2.0 ** -53)


Boxes = Dict[str, np.ndarray]  # top, left, height, width (int64), flip (bool); one per sample


def _sizes(heights, widths) -> Tuple[np.ndarray, np.ndarray]:
    """The images' heights and widths as int64 vectors."""
    return np.asarray(heights, dtype=np.int64).reshape(-1), np.asarray(widths, dtype=np.int64).reshape(-1)


def _window(top: np.ndarray, left: np.ndarray, c: np.ndarray, h: np.ndarray, w: np.ndarray,
            flip: np.ndarray) -> Boxes:
    """The c×c windows at (top, left), cut to the images smaller than c."""
    return {"top": top, "left": left, "height": np.minimum(c, h), "width": np.minimum(c, w), "flip": flip}


class BoxTransform:
    """A crop box (and flip) per sample from its seed and its image's size; ``size`` is the
    output side (the box is resized to size×size when it is not already that)."""

    size: int
    hflip: bool = False

    def boxes(self, seeds, heights, widths) -> Boxes:
        raise NotImplementedError


@dataclass
class ResizedCrop(BoxTransform):
    size: int
    hflip: bool = True
    scale: Tuple[float, float] = (0.08, 1.0)
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    tries: int = 10

    def boxes(self, seeds, heights, widths) -> Boxes:
        h, w = _sizes(heights, widths)
        n = len(h)
        u = uniforms(seeds, 4 * self.tries + 1)
        area = (h * w).astype(np.float64)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        top, left = np.zeros(n, np.int64), np.zeros(n, np.int64)
        bh, bw = np.zeros(n, np.int64), np.zeros(n, np.int64)
        done = np.zeros(n, dtype=bool)
        for t in range(self.tries):  # torchvision's sampling, each try on its own 4 numbers
            target = area * (self.scale[0] + u[:, 4 * t] * (self.scale[1] - self.scale[0]))
            aspect = np.exp(log_lo + u[:, 4 * t + 1] * (log_hi - log_lo))
            cw = np.round(np.sqrt(target * aspect)).astype(np.int64)
            ch = np.round(np.sqrt(target / aspect)).astype(np.int64)
            ok = ~done & (cw > 0) & (ch > 0) & (cw <= w) & (ch <= h)
            top[ok] = np.floor(u[ok, 4 * t + 2] * (h[ok] - ch[ok] + 1)).astype(np.int64)
            left[ok] = np.floor(u[ok, 4 * t + 3] * (w[ok] - cw[ok] + 1)).astype(np.int64)
            bh[ok], bw[ok] = ch[ok], cw[ok]
            done |= ok
        rest = ~done  # fallback: the whole image, its ratio clamped to the range, centred
        if rest.any():
            in_ratio = w[rest] / h[rest]
            fw, fh = w[rest].copy(), h[rest].copy()
            narrow, wide = in_ratio < self.ratio[0], in_ratio > self.ratio[1]
            fh[narrow] = np.round(fw[narrow] / self.ratio[0]).astype(np.int64)
            fw[wide] = np.round(fh[wide] * self.ratio[1]).astype(np.int64)
            bh[rest], bw[rest] = fh, fw
            top[rest], left[rest] = (h[rest] - fh) // 2, (w[rest] - fw) // 2
        flip = (u[:, -1] < 0.5) if self.hflip else np.zeros(n, dtype=bool)
        return {"top": top, "left": left, "height": bh, "width": bw, "flip": flip}


@dataclass
class RandomCrop(BoxTransform):
    """A uniformly placed size×size window (images at least that large), then a flip."""

    size: int
    hflip: bool = True

    def boxes(self, seeds, heights, widths) -> Boxes:
        h, w = _sizes(heights, widths)
        u = uniforms(seeds, 3)
        c = np.full(len(h), self.size, dtype=np.int64)
        top = np.floor(u[:, 0] * np.maximum(h - c + 1, 1)).astype(np.int64)
        left = np.floor(u[:, 1] * np.maximum(w - c + 1, 1)).astype(np.int64)
        flip = (u[:, 2] < 0.5) if self.hflip else np.zeros(len(h), dtype=bool)
        return _window(top, left, c, h, w, flip)


@dataclass
class CenterCrop(BoxTransform):
    """The centred size×size window (torchvision's rounding); no randomness."""

    size: int

    def boxes(self, seeds, heights, widths) -> Boxes:
        h, w = _sizes(heights, widths)
        c = np.full(len(h), self.size, dtype=np.int64)
        top = np.round((h - c) / 2.0).astype(np.int64).clip(min=0)  # round half to even,
        left = np.round((w - c) / 2.0).astype(np.int64).clip(min=0)  # as torchvision's
        return _window(top, left, c, h, w, np.zeros(len(h), dtype=bool))


@dataclass
class Resize(BoxTransform):
    """The whole image, resized to size×size."""

    size: int

    def boxes(self, seeds, heights, widths) -> Boxes:
        h, w = _sizes(heights, widths)
        z = np.zeros(len(h), dtype=np.int64)
        return {"top": z, "left": z.copy(), "height": h, "width": w, "flip": np.zeros(len(h), dtype=bool)}


def resize_crops(crops: Union[torch.Tensor, Sequence[torch.Tensor]], size: int) -> torch.Tensor:
    """uint8 C×h×w crops (or a batch of equal ones) → one uint8 B×C×size×size batch, each
    resized (bilinear, antialiased, torchvision's tensor resize) only when not already size×size.

    On the CPU the resize runs on uint8 directly (torch's vectorised kernel); elsewhere in
    float32, rounded back to uint8, so the result is a uint8 image either way.
    """
    out: List[torch.Tensor] = []
    for c in crops:
        if tuple(c.shape[-2:]) != (size, size):
            if c.device.type == "cpu":
                c = F.interpolate(c[None], size=(size, size), mode="bilinear", antialias=True,
                                  align_corners=False)[0]
            else:
                r = F.interpolate(c[None].float(), size=(size, size), mode="bilinear",
                                  antialias=True, align_corners=False)[0]
                c = r.round_().clamp_(0, 255).to(torch.uint8)
        out.append(c)
    return torch.stack(out) if out else torch.zeros(0, dtype=torch.uint8)


def apply_boxes(images: torch.Tensor, boxes: Boxes, size: int) -> torch.Tensor:
    """Crop box b of image b of a B×C×H×W uint8 batch, resize to size×size, flip."""
    crops = [images[b, :, t:t + h, l:l + w] for b, (t, l, h, w) in enumerate(zip(
        boxes["top"].tolist(), boxes["left"].tolist(), boxes["height"].tolist(), boxes["width"].tolist()))]
    return flip_where(resize_crops(crops, size), boxes["flip"])


def flip_where(images: torch.Tensor, flip) -> torch.Tensor:
    """Mirror the images whose ``flip`` is true (one batched op)."""
    flip = torch.as_tensor(np.asarray(flip, dtype=bool) if not isinstance(flip, torch.Tensor) else flip)
    if not bool(flip.any()):
        return images
    mask = flip.to(images.device).view(-1, 1, 1, 1)
    return torch.where(mask, images.flip(-1), images)


@dataclass
class CropFlip:
    """Random crop with zero padding, then random horizontal flip (the CIFAR recipe)."""

    padding: int = 4
    hflip: bool = True

    def params(self, seeds) -> Dict[str, torch.Tensor]:
        """Offsets (dy, dx) in 0..2·padding and the flip, from each sample's seed."""
        u = torch.from_numpy(uniforms(seeds, 3))
        span = 2 * self.padding + 1
        params = {"dy": (u[:, 0] * span).long(), "dx": (u[:, 1] * span).long()}
        if self.hflip:
            params["flip"] = u[:, 2] < 0.5
        return params

    def apply(self, images: torch.Tensor, params: Dict[str, torch.Tensor]) -> torch.Tensor:
        return crop_flip(images, self.padding, params["dy"], params["dx"], params.get("flip"))


def crop_flip(images: torch.Tensor, padding: int, dy: torch.Tensor, dx: torch.Tensor,
              flip: torch.Tensor = None) -> torch.Tensor:
    """Crop each image of ``images`` (B×C×H×W) at offset (dy, dx) of its zero-padded copy.

    Output pixel (i, j) of sample b is padded[b, :, dy_b + i, dx_b + j]; with ``flip`` the
    column index is mirrored first, which is the same as flipping the crop.
    """
    b, c, h, w = images.shape
    dev = images.device
    if padding:
        images = F.pad(images, (padding, padding, padding, padding))
    rows = dy.to(dev)[:, None] + torch.arange(h, device=dev)[None, :]  # B×H
    cols_base = torch.arange(w, device=dev)
    cols = dx.to(dev)[:, None] + cols_base[None, :]  # B×W
    if flip is not None:
        cols = torch.where(flip.to(dev)[:, None], cols.flip(1), cols)
    bi = torch.arange(b, device=dev)[:, None, None, None]
    ci = torch.arange(c, device=dev)[None, :, None, None]
    return images[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]


def normalize(images: torch.Tensor, mean, std, dtype=torch.float32) -> torch.Tensor:
    """uint8 B×C×H×W → float, (x/255 − mean)/std per channel.

    ``mean``/``std`` may be sequences or ready C-element tensors on the images' device (the
    loaders pass tensors so no host-to-device copy happens per batch).
    """
    m = torch.as_tensor(mean, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(std, device=images.device, dtype=dtype).view(1, -1, 1, 1)
    return (images.to(dtype) / 255.0 - m) / s


# roles of the post-crop augmentations in derived_seeds: above the views and PARTNER_ROLE (2**32)
AUTO_AUGMENT_ROLE = 1 << 33
ERASING_ROLE = (1 << 33) + 1
AUTO_AUGMENT_POLICIES = ("randaugment", "trivialaugment")

# torchvision's op list of RandAugment / TrivialAugmentWide (same 14 ops, same order)
AUTO_AUGMENT_OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate",
                    "Brightness", "Color", "Contrast", "Sharpness", "Posterize", "Solarize",
                    "AutoContrast", "Equalize")
_SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
           "Contrast", "Sharpness"}


def _op_magnitudes(policy: str, op: str, bins: int, height: int, width: int) -> Optional[np.ndarray]:
    """The magnitude of every bin of ``op`` (torchvision's augmentation spaces): RandAugment's
    and TrivialAugmentWide's; None for the ops without a magnitude."""
    wide = policy == "trivialaugment"
    if op in ("ShearX", "ShearY"):
        return np.linspace(0.0, 0.99 if wide else 0.3, bins)
    if op in ("TranslateX", "TranslateY"):
        side = width if op == "TranslateX" else height
        return np.linspace(0.0, 32.0 if wide else 150.0 / 331.0 * side, bins)
    if op == "Rotate":
        return np.linspace(0.0, 135.0 if wide else 30.0, bins)
    if op in ("Brightness", "Color", "Contrast", "Sharpness"):
        return np.linspace(0.0, 0.99 if wide else 0.9, bins)
    if op == "Posterize":  # bits: 8 … 4 (RandAugment) or 8 … 2 (TrivialAugmentWide)
        return np.round(8 - np.arange(bins) / ((bins - 1) / (6 if wide else 4)))
    if op == "Solarize":  # threshold as a fraction of 255
        return np.linspace(1.0, 0.0, bins)
    return None


def apply_op(images: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One RandAugment/TrivialAugment op at one (signed) magnitude on a uint8 B×C×H×W batch
    (any device): torchvision's definitions, nearest interpolation, fill 0."""
    from torchvision.transforms.v2 import functional as TF

    if op == "Identity":
        return images
    if op in ("ShearX", "ShearY"):
        angle = math.degrees(math.atan(magnitude))
        shear = [angle, 0.0] if op == "ShearX" else [0.0, angle]
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, center=[0, 0])
    if op in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if op == "TranslateX" else [0, int(magnitude)]
        return TF.affine(images, angle=0.0, translate=shift, scale=1.0, shear=[0.0, 0.0])
    if op == "Rotate":
        return TF.rotate(images, angle=magnitude)
    if op == "Brightness":
        return TF.adjust_brightness(images, 1.0 + magnitude)
    if op == "Color":
        return TF.adjust_saturation(images, 1.0 + magnitude)
    if op == "Contrast":
        return TF.adjust_contrast(images, 1.0 + magnitude)
    if op == "Sharpness":
        return TF.adjust_sharpness(images, 1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize(images, int(magnitude))
    if op == "Solarize":
        return TF.solarize(images, 255.0 * magnitude)
    if op == "AutoContrast":
        return TF.autocontrast(images)
    if op == "Equalize":
        return TF.equalize(images)
    raise ValueError(f"unknown augmentation op {op!r}")


@dataclass
class AutoAugment:
    """RandAugment (``num_ops`` ops, each at bin ``magnitude`` of ``num_bins``) or TrivialAugment
    (one op, a uniformly drawn bin), per sample from its seed; signed ops flip their sign with
    probability 1/2. Ops are drawn uniformly from ``AUTO_AUGMENT_OPS``."""

    policy: str = "randaugment"
    num_ops: int = 2
    magnitude: int = 9
    num_bins: int = 31

    @property
    def layers(self) -> int:
        return self.num_ops if self.policy == "randaugment" else 1

    def params(self, seeds) -> Dict[str, np.ndarray]:
        """Per sample and layer (B×layers): ``op`` (index into AUTO_AUGMENT_OPS), ``bin`` and
        ``negative`` (the sign of a signed op)."""
        u = uniforms(derived_seeds(seeds, AUTO_AUGMENT_ROLE), 3 * self.layers).reshape(-1, self.layers, 3)
        n_ops = len(AUTO_AUGMENT_OPS)
        op = np.minimum((u[..., 0] * n_ops).astype(np.int64), n_ops - 1)
        if self.policy == "randaugment":
            bins = np.full(op.shape, self.magnitude, dtype=np.int64)
        else:
            bins = np.minimum((u[..., 1] * self.num_bins).astype(np.int64), self.num_bins - 1)
        return {"op": op, "bin": bins, "negative": u[..., 2] < 0.5}

    def apply(self, images: torch.Tensor, seeds) -> torch.Tensor:
        """The uint8 B×C×H×W batch, each image through its own ops; samples that drew the
        same (op, bin, sign) in a layer share one batched call."""
        if len(images) == 0:
            return images
        p = self.params(seeds)
        h, w = images.shape[-2:]
        for layer in range(self.layers):
            op, bins, neg = p["op"][:, layer], p["bin"][:, layer], p["negative"][:, layer]
            key = (op * self.num_bins + bins) * 2 + neg
            out = None
            for k in np.unique(key):
                idx = np.nonzero(key == k)[0]
                name = AUTO_AUGMENT_OPS[int(op[idx[0]])]
                mags = _op_magnitudes(self.policy, name, self.num_bins, h, w)
                if name == "Identity":
                    continue
                m = 0.0 if mags is None else float(mags[int(bins[idx[0]])])
                if name in _SIGNED and bool(neg[idx[0]]):
                    m = -m
                if out is None:
                    out = images.clone()
                sel = torch.from_numpy(idx).to(images.device)
                out[sel] = apply_op(images[sel], name, m)
            if out is not None:
                images = out
        return images


@dataclass
class RandomErasing:
    """torchvision's RandomErasing on a normalised float batch: with probability ``p`` per
    image, one box of ``scale`` × the area and aspect ratio in ``ratio`` (log-uniform), placed
    uniformly, set to ``value``; after ``tries`` boxes that do not fit, the image is kept."""

    p: float = 0.5
    scale: Tuple[float, float] = (0.02, 0.33)
    ratio: Tuple[float, float] = (0.3, 3.3)
    value: float = 0.0
    tries: int = 10

    def boxes(self, seeds, height: int, width: int) -> Dict[str, np.ndarray]:
        """``erase`` (bool) and top, left, height, width per sample (a 0×0 box when not erased)."""
        u = uniforms(derived_seeds(seeds, ERASING_ROLE), 1 + 4 * self.tries)
        n = len(u)
        area = float(height * width)
        log_lo, log_hi = math.log(self.ratio[0]), math.log(self.ratio[1])
        top, left = np.zeros(n, np.int64), np.zeros(n, np.int64)
        bh, bw = np.zeros(n, np.int64), np.zeros(n, np.int64)
        todo = u[:, 0] < self.p
        done = np.zeros(n, dtype=bool)
        for t in range(self.tries):
            c = 1 + 4 * t
            target = area * (self.scale[0] + u[:, c] * (self.scale[1] - self.scale[0]))
            aspect = np.exp(log_lo + u[:, c + 1] * (log_hi - log_lo))
            eh = np.round(np.sqrt(target * aspect)).astype(np.int64)
            ew = np.round(np.sqrt(target / aspect)).astype(np.int64)
            ok = todo & ~done & (eh < height) & (ew < width)
            top[ok] = np.floor(u[ok, c + 2] * (height - eh[ok] + 1)).astype(np.int64)
            left[ok] = np.floor(u[ok, c + 3] * (width - ew[ok] + 1)).astype(np.int64)
            bh[ok], bw[ok] = eh[ok], ew[ok]
            done |= ok
        return {"erase": done, "top": top, "left": left, "height": bh, "width": bw}

    def apply(self, images: torch.Tensor, seeds) -> torch.Tensor:
        """The B×C×H×W batch with each drawn box set to ``value`` (one batched masked fill)."""
        if len(images) == 0:
            return images
        h, w = images.shape[-2:]
        b = self.boxes(seeds, h, w)
        if not b["erase"].any():
            return images
        t, l, bh, bw = (torch.from_numpy(b[k]).to(images.device) for k in ("top", "left", "height", "width"))
        return images.masked_fill(box_mask(t, l, bh, bw, h, w)[:, None], self.value)


def box_mask(top: torch.Tensor, left: torch.Tensor, height, width, rows: int, cols: int) -> torch.Tensor:
    """B×rows×cols boolean mask, True inside box b: rows [top_b, top_b + height_b), columns
    [left_b, left_b + width_b), clipped to the image (boxes may start outside it). ``height`` /
    ``width``: a tensor per box or one int for all."""
    dev = top.device
    r = torch.arange(rows, device=dev)[None, :]
    c = torch.arange(cols, device=dev)[None, :]
    bottom = top + torch.as_tensor(height, device=dev)
    right = left + torch.as_tensor(width, device=dev)
    in_r = (r >= top[:, None]) & (r < bottom.reshape(-1, 1))   # B×rows
    in_c = (c >= left[:, None]) & (c < right.reshape(-1, 1))   # B×cols
    return in_r[:, :, None] & in_c[:, None, :]
