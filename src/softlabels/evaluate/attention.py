"""Where a classifier looks: Grad-CAM at each stage, OR attention maps of ensemble members, and
the figures that show them.

* ``grad_cam``: Grad-CAM (Selvaraju et al., ICCV 2017) at every stage of a ``Classifier``, as in
  JGL Fig. 5 (stages 2–4 of a ResNet-50, baseline vs JGL) and the per-class CAMs of FocusNet
  Fig. 1–2 (``target`` picks the class).
* ``or_attention_maps``: the standardised spatial attention map of Eq. 1–2 of the orthogonal
  (OR) loss (Zhang et al., ICME 2021) on the last stage of each ensemble member, the maps the
  OR loss pushes apart.
* ``plot_cams`` / ``plot_or_maps``: image grids (rows = samples) with one heat-map overlay per
  stage, model or member, drawn on a matplotlib ``Figure`` with the Agg canvas (no pyplot, so
  no global figure state and no display needed).

Every map is returned as a B×H×W float32 tensor, detached, on the input's device.
"""
from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from ..methods.orthogonal import PAPER_EPS, attention_map, standardize_map
from ..models.base import EvalMode as _EvalMode

__all__ = ["grad_cam", "or_attention_maps", "plot_cams", "plot_or_maps"]

_OR_VARIANTS = ("paper", "official")


# ----------------------------------------------------------------------------- helpers

def _images(x) -> torch.Tensor:
    """A B×C×H×W tensor from a tensor or anything with ``.x`` (a ``data.base.Batch``)."""
    if not isinstance(x, torch.Tensor) and hasattr(x, "x"):
        x = x.x
    if not isinstance(x, torch.Tensor) or x.dim() != 4:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"expected B×C×H×W images, got {shape}")
    return x


def _resize(maps: torch.Tensor, size) -> torch.Tensor:
    """B×h×w → B×H×W, bilinear (align_corners=False); unchanged when already that size."""
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps.unsqueeze(1), size=tuple(size), mode="bilinear", align_corners=False).squeeze(1)


def _normalize_per_sample(maps: torch.Tensor) -> torch.Tensor:
    """Divide each non-negative B×H×W map by its maximum, so it spans [0, 1] with zero kept as
    "no evidence"; an all-zero map stays zero (no 0/0)."""
    peak = maps.flatten(1).amax(dim=1).view(-1, 1, 1)
    positive = peak > 0
    safe = torch.where(positive, peak, torch.ones_like(peak))
    return torch.where(positive, maps / safe, torch.zeros_like(maps)).clamp_(0.0, 1.0)


def _targets(target, logits: torch.Tensor) -> torch.Tensor:
    """The B class indices whose scores are explained."""
    b, k = logits.shape
    if target is None:
        t = logits.argmax(dim=1)
    else:
        t = torch.as_tensor(target, device=logits.device)
        if t.is_floating_point() or t.dtype == torch.bool:
            raise ValueError(f"grad_cam: target must be an integer class or B integer classes, got dtype {t.dtype}")
        t = t.long()
        if t.dim() == 0:
            t = t.expand(b)
        elif t.shape != (b,):
            raise ValueError(f"grad_cam: target must be one class or {b} classes (one per sample), "
                             f"got shape {tuple(t.shape)}")
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= k):
            raise ValueError(f"grad_cam: target classes must lie in [0, {k}), got {t.tolist()}")
    return t


def _stage_indices(stages, n: int) -> List[int]:
    if stages is None:
        return list(range(n))
    if isinstance(stages, int) and not isinstance(stages, bool):
        stages = [stages]
    out = []
    for s in stages:
        if isinstance(s, bool) or not isinstance(s, int) or not -n <= s < n:
            raise ValueError(f"grad_cam: stages must be indices into the model's {n} stages "
                             f"(0 = shallowest, -1 = deepest), got {s!r}")
        out.append(s % n)
    return out


# ----------------------------------------------------------------------------- maps

def grad_cam(model: nn.Module, x, target=None, stages: Optional[Sequence[int]] = None,
             upsample: bool = True, normalize: bool = True) -> List[torch.Tensor]:
    """Grad-CAM (Selvaraju et al. 2017) of ``model`` on images ``x`` at each requested stage.

    For the stage map A (B×C×h×w, from ``model(x, return_features=True).features``, shallow →
    deep) and the score y of the target class (the logit, before softmax):
    ``α_c = mean_{h,w} ∂y/∂A_c``, ``CAM = ReLU(Σ_c α_c A_c)``.

    target:    None (each sample's predicted class), one class for every sample, or a B-long
               tensor/sequence of classes.
    stages:    stage indices (negative count from the deepest; an int for one stage); default
               all, in order.
    upsample:  resize each CAM bilinearly to the input's H×W (False: the stage's own h×w).
    normalize: divide each sample's map by its maximum (after upsampling), so it lies in
               [0, 1]; an all-zero map stays zero.

    Returns one B×H×W float32 tensor per requested stage, detached. The model runs in eval
    mode (every submodule's mode is restored afterwards); gradients are taken with
    ``torch.autograd.grad`` w.r.t. the stage maps only, so no ``.grad`` is left on the
    parameters, and it works under ``torch.no_grad`` and with frozen parameters. Samples are
    independent (eval mode), so one backward pass of the summed scores serves the batch.
    """
    x = _images(x)
    with _EvalMode(model), torch.enable_grad():
        # an input that requires grad puts every stage map in the graph even when the
        # parameters are frozen; only the stage maps are differentiated
        inp = x.detach().requires_grad_(True)
        out = model(inp, return_features=True)
        features = out.features
        if not features:
            raise ValueError("grad_cam: the model returned no stage feature maps")
        idx = _stage_indices(stages, len(features))
        maps = [features[i] for i in idx]
        for i, a in zip(idx, maps):
            if a.dim() != 4:
                raise ValueError(f"grad_cam: stage {i} map must be B×C×h×w, got shape {tuple(a.shape)}")
        t = _targets(target, out.logits)
        score = out.logits.gather(1, t.view(-1, 1)).sum()
        grads = torch.autograd.grad(score, maps, allow_unused=True)

    cams = []
    for a, g in zip(maps, grads):
        a = a.detach().float()
        if g is None:  # a stage the logits do not depend on explains nothing
            cam = torch.zeros(a.shape[0], *a.shape[2:], device=a.device)
        else:
            alpha = g.float().mean(dim=(2, 3), keepdim=True)  # B×C×1×1
            cam = F.relu((alpha * a).sum(dim=1))               # B×h×w
        if upsample:
            cam = _resize(cam, x.shape[-2:])
        if normalize:
            cam = _normalize_per_sample(cam)
        cams.append(cam)
    return cams


def or_attention_maps(models: Union[nn.Module, Sequence[nn.Module]], x, variant: str = "paper",
                      upsample: bool = True) -> List[torch.Tensor]:
    """The standardised OR attention map (Eq. 1–2 of the orthogonal loss) of each model's last
    stage: ``standardize_map(attention_map(features[-1]))``, resized bilinearly to the input's
    H×W unless ``upsample=False``.

    variant: ``paper`` (population std + ε, as the OR loss's paper form) or ``official``
             (unbiased std, no ε). Values are z-scores: positive = the regions the member
             attends to, strongly negative = what it treats as background.

    Returns one B×H×W float32 tensor per model, in the order given. Each model runs in eval
    mode under ``torch.no_grad`` and gets its modes back afterwards.
    """
    if variant not in _OR_VARIANTS:
        raise ValueError(f"or_attention_maps: variant must be one of {', '.join(_OR_VARIANTS)}, got {variant!r}")
    if isinstance(models, nn.Module):
        models = [models]
    models = list(models)
    if not models:
        raise ValueError("or_attention_maps: no models given")
    x = _images(x)
    unbiased, eps = (True, 0.0) if variant == "official" else (False, PAPER_EPS)
    maps = []
    for n, model in enumerate(models):
        with _EvalMode(model), torch.no_grad():
            features = model(x, return_features=True).features
        if not features:
            raise ValueError(f"or_attention_maps: model {n} returned no stage feature maps")
        m = standardize_map(attention_map(features[-1]), unbiased, eps).float()
        maps.append(_resize(m, x.shape[-2:]) if upsample else m)
    return maps


# ----------------------------------------------------------------------------- figures

def _per_channel(values, c: int, what: str) -> torch.Tensor:
    v = torch.as_tensor(values, dtype=torch.float32).flatten()
    if v.numel() == 1:
        v = v.expand(c)
    if v.numel() != c:
        raise ValueError(f"{what} has {v.numel()} values for {c}-channel images")
    return v.view(1, c, 1, 1)


def _display_images(images, mean, std) -> torch.Tensor:
    """Normalised B×C×H×W → B×H×W×C (or B×H×W for one channel) in [0, 1], on the CPU."""
    x = _images(images).detach().float().cpu()
    c = x.shape[1]
    if c not in (1, 3):
        raise ValueError(f"can only draw 1- or 3-channel images, got {c} channels")
    x = (x * _per_channel(std, c, "std") + _per_channel(mean, c, "mean")).clamp(0.0, 1.0)
    return x[:, 0] if c == 1 else x.permute(0, 2, 3, 1)


def _display_map(m: torch.Tensor, n: int, size, what: str) -> torch.Tensor:
    """A B×H×W (or B×1×H×W) map → n×H×W on the CPU at the image size."""
    m = m.detach().float().cpu()
    if m.dim() == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.dim() != 3:
        raise ValueError(f"{what}: expected B×H×W maps, got shape {tuple(m.shape)}")
    if m.shape[0] < n:
        raise ValueError(f"{what}: {m.shape[0]} maps for {n} images")
    return _resize(m[:n], size)


def _new_figure(rows: int, cols: int):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(1.9 * cols + 0.6, 1.9 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    return fig, axes


def _draw_image(ax, img: torch.Tensor) -> None:
    if img.dim() == 2:
        ax.imshow(img.numpy(), cmap="gray", vmin=0.0, vmax=1.0)
    else:
        ax.imshow(img.numpy())


def plot_cams(images, cams_by_row: Mapping[str, Sequence[torch.Tensor]], mean, std,
              stage_names: Optional[Sequence[str]] = None, cmap: str = "jet", alpha: float = 0.5,
              row_labels: Optional[Sequence[str]] = None):
    """A grid of CAM overlays: one row per sample; the columns are the input image, then for
    each entry of ``cams_by_row`` (the key labels the column group: a model, a method) one
    overlay per map in its list (a stage, as ``grad_cam`` returns them).

    images:      B×C×H×W normalised with ``mean``/``std`` (per channel, or one value), shown
                 unnormalised; one channel is drawn in grey.
    cams_by_row: {label: [B×H×W maps]} with values in [0, 1] (drawn on a fixed 0–1 scale);
                 maps of another size are resized to the image. A plain list is one unlabelled
                 group.
    stage_names: titles of the maps within each group (default ``stage 1``, ``stage 2``, …).
    row_labels:  one text per sample written beside its row (e.g. its true and predicted class).

    Returns a ``matplotlib.figure.Figure`` on the Agg canvas (``fig.savefig(...)`` to write it).
    """
    disp = _display_images(images, mean, std)
    n, size = disp.shape[0], _images(images).shape[-2:]
    groups: Dict[str, Sequence[torch.Tensor]] = (
        {"": cams_by_row} if isinstance(cams_by_row, (list, tuple)) else dict(cams_by_row))
    longest = max((len(v) for v in groups.values()), default=0)
    if stage_names is not None and len(stage_names) < longest:
        raise ValueError(f"plot_cams: {len(stage_names)} stage names for groups of up to {longest} maps")
    columns = []  # (title, n×H×W map)
    for label, maps in groups.items():
        for i, m in enumerate(maps):
            name = stage_names[i] if stage_names is not None else f"stage {i + 1}"
            title = f"{label}\n{name}" if label else name
            columns.append((title, _display_map(m, n, size, f"plot_cams[{label!r}][{i}]")))
    if row_labels is not None and len(row_labels) != n:
        raise ValueError(f"plot_cams: {len(row_labels)} row labels for {n} images")
    fig, axes = _new_figure(n, 1 + len(columns))
    axes[0, 0].set_title("input", fontsize=9)
    mappable = None
    for r in range(n):
        _draw_image(axes[r, 0], disp[r])
        if row_labels is not None:
            axes[r, 0].set_ylabel(str(row_labels[r]), fontsize=8)
        for c, (title, m) in enumerate(columns, start=1):
            _draw_image(axes[r, c], disp[r])
            mappable = axes[r, c].imshow(m[r].numpy(), cmap=cmap, alpha=alpha, vmin=0.0, vmax=1.0)
            if r == 0:
                axes[r, c].set_title(title, fontsize=9)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, shrink=0.6, label="Grad-CAM")
    return fig


def plot_or_maps(images, maps: Sequence[torch.Tensor], member_names: Sequence[str], mean, std,
                 cmap: str = "bwr", alpha: float = 0.55):
    """A grid of the ensemble members' OR attention maps (as ``or_attention_maps`` returns
    them): one row per sample; the input image, then one overlay per member.

    The maps are standardised (z-scores), so they are drawn on one symmetric diverging scale
    shared by every panel (red: attended, blue: background), with a colour bar, which makes the
    members comparable. Returns a ``matplotlib.figure.Figure`` on the Agg canvas.
    """
    maps = list(maps)
    member_names = list(member_names)
    if len(maps) != len(member_names):
        raise ValueError(f"plot_or_maps: {len(maps)} maps for {len(member_names)} member names")
    disp = _display_images(images, mean, std)
    n, size = disp.shape[0], _images(images).shape[-2:]
    shown = [_display_map(m, n, size, f"plot_or_maps[{i}]") for i, m in enumerate(maps)]
    limit = max([float(m.abs().max()) for m in shown if m.numel()] + [0.0])
    limit = limit if limit > 0 and math.isfinite(limit) else 1.0
    fig, axes = _new_figure(n, 1 + len(shown))
    axes[0, 0].set_title("input", fontsize=9)
    mappable = None
    for r in range(n):
        _draw_image(axes[r, 0], disp[r])
        for c, m in enumerate(shown, start=1):
            _draw_image(axes[r, c], disp[r])
            mappable = axes[r, c].imshow(m[r].numpy(), cmap=cmap, alpha=alpha, vmin=-limit, vmax=limit)
            if r == 0:
                axes[r, c].set_title(str(member_names[c - 1]), fontsize=9)
    if mappable is not None:
        fig.colorbar(mappable, ax=axes, shrink=0.6, label="standardised attention")
    return fig
