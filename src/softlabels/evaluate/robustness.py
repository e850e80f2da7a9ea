"""Robustness analyses from the OLS paper (Zhang et al., "Delving Deep into Label Smoothing").

Adversarial robustness (OLS §V-C, Tables VIII-IX)
-------------------------------------------------
:func:`fgsm` and :func:`pgd` attack the model's cross-entropy loss under an L∞ bound. Inputs
and outputs are *normalised* images as the loaders yield them; the attack itself works in pixel
space ``x_pixel = x · std + mean`` (values in [0, 1]), so ``epsilon`` and ``step_size`` are in
[0, 1] pixel units (8/255 = "8" on the 0-255 scale). After every step the pixel image is
projected onto the ε-ball around the clean image and clamped to [0, 1], then normalised again.

What the paper states, and so the defaults of :data:`OLS_ATTACKS`:

* FGSM (Goodfellow et al. 2015): "we keep its default setup. Therefore, the bound is set to 8
  for all methods" → ``epsilon = 8/255``, one step ``x + ε·sign(∇_x L)``;
* PGD: "the same experimental setup as in [72] (Peterson et al., ICCV 2019) except that we
  increase the iteration times to 20" → ``steps = 20``. The paper does not restate ε, the step
  size or the random start of [72]; we use ``epsilon = 8/255`` (the bound it gives for FGSM),
  ``step_size = 2/255`` and a uniform random start in the ε-ball (the usual Madry et al.
  CIFAR setting). These three are our assumption, not a number from the OLS text.

Fit to noisy labels (OLS §V-B, Fig. 5)
--------------------------------------
:func:`noisy_label_fit` reads the per-epoch ``train.noisy_fit`` / ``train.noisy_recovered``
that the trainer logs when label noise is on (percent of the flipped training samples
predicted as their wrong label / as their true label); :func:`plot_noisy_fit` draws OLS Fig. 5,
the top-1 error on the noisy samples measured against their *wrong* labels, ``100 − noisy_fit``
(higher = less fitting of the noise).
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DataError
from .metrics import classification_metrics
from ..models.base import EvalMode as _EvalMode

__all__ = [
    "OLS_ATTACKS",
    "fgsm",
    "pgd",
    "adversarial_metrics",
    "attack_metrics",
    "noisy_label_fit",
    "noisy_fit_error",
    "plot_noisy_fit",
]

#: Default attacks (see the module docstring for which numbers the OLS paper states).
OLS_ATTACKS: Tuple[dict, ...] = (
    {"name": "fgsm", "epsilon": 8 / 255},
    {"name": "pgd", "epsilon": 8 / 255, "step_size": 2 / 255, "steps": 20},
)

Stats = Union[Sequence[float], Tensor]


# ---------------------------------------------------------------------------- helpers
def _stat(v: Stats, x: Tensor, what: str) -> Tensor:
    t = torch.as_tensor(v, dtype=x.dtype, device=x.device).reshape(-1)
    c = int(x.shape[1])
    if t.numel() == 1:
        t = t.expand(c)
    if t.numel() != c:
        raise ValueError(f"{what} has {t.numel()} values but the images have {c} channels")
    return t.reshape(1, c, *([1] * (x.dim() - 2)))


def _logits(out) -> Tensor:
    return out.logits if hasattr(out, "logits") else out


def _check_attack_inputs(x: Tensor, y: Tensor, epsilon: float) -> None:
    if x.dim() < 2 or not x.dtype.is_floating_point:
        raise ValueError(f"x must be a float B×C×... tensor, got {x.dtype} of shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must hold one label per image ({x.shape[0]}), got shape {tuple(y.shape)}")
    if not (epsilon >= 0 and math.isfinite(epsilon)):
        raise ValueError(f"epsilon must be a finite number >= 0, got {epsilon}")


def _input_grad(model: nn.Module, x_pix: Tensor, y: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """∂(summed cross-entropy)/∂x_pixel; only the input gets a gradient (no ``.grad`` on params)."""
    x_pix = x_pix.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = _logits(model((x_pix - mean) / std))
        if logits.dtype not in (torch.float32, torch.float64):
            logits = logits.float()
        loss = F.cross_entropy(logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, [x_pix])
    return grad


def _project(x_adv: Tensor, x0: Tensor, epsilon: float) -> Tensor:
    return torch.minimum(torch.maximum(x_adv, x0 - epsilon), x0 + epsilon).clamp_(0.0, 1.0)


# ---------------------------------------------------------------------------- attacks
def fgsm(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, mean: Stats, std: Stats) -> Tensor:
    """Fast Gradient Sign Method on normalised images ``x`` with labels ``y``.

    ``x_adv_pixel = clamp(x_pixel + ε·sign(∇_{x_pixel} CE(model(x), y)), 0, 1)`` (the clean
    pixel image is clamped to [0, 1] first), returned normalised, detached, same shape and
    dtype as ``x``. The model runs in eval mode (each submodule's mode is restored after);
    only the input is differentiated, parameter ``.grad`` fields are not touched.
    """
    return pgd(model, x, y, epsilon, step_size=epsilon, steps=1, mean=mean, std=std,
               random_start=False)


def pgd(model: nn.Module, x: Tensor, y: Tensor, epsilon: float, step_size: float, steps: int,
        mean: Stats, std: Stats, random_start: bool = True,
        generator: Optional[torch.Generator] = None) -> Tensor:
    """Projected gradient descent (L∞) on normalised images ``x`` with labels ``y``.

    In pixel space: start at the clean image (clamped to [0, 1]), or with ``random_start`` at a
    uniform draw from the ε-ball around it (from ``generator``, a CPU generator, for
    reproducibility; the draw is made on the CPU and moved to ``x``'s device); then ``steps``
    times ``x ← Π(x + step_size·sign(∇_x CE))``, where Π clamps to ``[x0 − ε, x0 + ε]`` and
    then to [0, 1]. With ``steps=1, step_size=ε, random_start=False`` this is exactly
    :func:`fgsm`. Returns the normalised adversarial images (detached). Eval mode and
    gradients as in :func:`fgsm`.
    """
    _check_attack_inputs(x, y, epsilon)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    # Works when called under torch.inference_mode() / no_grad too: everything below is made
    # outside inference mode, so autograd may use it.
    with torch.inference_mode(False):
        y = y.to(x.device).long().clone()
        m, s = _stat(mean, x, "mean").clone(), _stat(std, x, "std").clone()
        if bool((s <= 0).any()):
            raise ValueError("std must be positive")
        x0 = (x.detach().clone() * s + m).clamp(0.0, 1.0)
        if random_start and epsilon > 0:
            noise = torch.rand(x0.shape, generator=generator, dtype=x0.dtype) * 2.0 - 1.0
            x_adv = _project(x0 + epsilon * noise.to(x0.device), x0, epsilon)
        else:
            x_adv = x0.clone()
        with _EvalMode(model):
            for _ in range(int(steps)):
                grad = _input_grad(model, x_adv, y, m, s)
                x_adv = _project(x_adv + step_size * grad.sign(), x0, epsilon)
        return ((x_adv - m) / s).detach()


def _run_attack(model, x, y, spec: Mapping, mean, std, generator) -> Tensor:
    name = str(spec.get("name", "")).lower()
    if name == "fgsm":
        return fgsm(model, x, y, float(spec["epsilon"]), mean, std)
    if name == "pgd":
        return pgd(model, x, y, float(spec["epsilon"]), float(spec["step_size"]), int(spec["steps"]),
                   mean, std, random_start=bool(spec.get("random_start", True)), generator=generator)
    raise ValueError(f"unknown attack {spec.get('name')!r}; choose 'fgsm' or 'pgd'")


def _attack_key(spec: Mapping) -> str:
    return str(spec.get("key") or spec.get("name"))


def adversarial_metrics(model: nn.Module, loader: Iterable, mean: Stats, std: Stats,
                        attacks: Sequence[Mapping] = OLS_ATTACKS, num_classes: Optional[int] = None,
                        seed: int = 0, device=None) -> Dict[str, Dict[str, float]]:
    """Classification metrics on clean and adversarial versions of every batch of ``loader``.

    ``loader`` yields ``Batch``es (or anything with ``.x`` normalised images and ``.y`` labels),
    e.g. an evaluation :class:`~softlabels.data.loader.TensorLoader`; ``mean``/``std`` are
    its normalisation. Each attack spec is a dict with ``name`` (``"fgsm"`` or ``"pgd"``),
    ``epsilon`` and for PGD ``step_size``, ``steps`` and optionally ``random_start``
    (default True); ``key`` optionally names its entry in the result (default: ``name``).
    The defaults are :data:`OLS_ATTACKS` (FGSM ε = 8/255; PGD ε = 8/255, step 2/255, 20 steps,
    random start; see the module docstring for the paper's wording). PGD's random starts come
    from one CPU generator seeded with ``seed``.

    The model runs in eval mode on ``device`` (default: the device of its first parameter) and
    its submodules' modes are restored afterwards. Returns ``{"clean": metrics, key: metrics,
    ...}`` with :func:`~softlabels.evaluate.metrics.classification_metrics` of the predictions
    on the clean and attacked images (attack ``top1_error`` is the paper's "+ FGSM / + PGD
    Top-1 Err").
    """
    attacks = [dict(a) for a in attacks]
    keys = [_attack_key(a) for a in attacks]
    if "clean" in keys or len(set(keys)) != len(keys):
        raise ValueError(f"attack keys must be distinct and not 'clean', got {keys}")
    for a in attacks:  # fail on a bad spec before any work
        if str(a.get("name", "")).lower() not in ("fgsm", "pgd"):
            raise ValueError(f"unknown attack {a.get('name')!r}; choose 'fgsm' or 'pgd'")
        need = ("epsilon",) if a["name"].lower() == "fgsm" else ("epsilon", "step_size", "steps")
        missing = [k for k in need if k not in a]
        if missing:
            raise ValueError(f"attack {a['name']!r} needs {', '.join(missing)}")
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device)
    gen = torch.Generator().manual_seed(int(seed))
    clean: List[Tensor] = []
    adv: Dict[str, List[Tensor]] = {k: [] for k in keys}
    labels: List[Tensor] = []
    with _EvalMode(model):
        for batch in loader:
            x = batch.x.to(device)
            y = batch.y.to(device).long()
            with torch.no_grad():
                clean.append(_logits(model(x)).detach().float().cpu())
            for key, spec in zip(keys, attacks):
                x_adv = _run_attack(model, x, y, spec, mean, std, gen)
                with torch.no_grad():
                    adv[key].append(_logits(model(x_adv)).detach().float().cpu())
            labels.append(y.cpu())
    if not labels:
        raise ValueError("the loader yielded no batches")
    y_all = torch.cat(labels)
    out = {"clean": classification_metrics(torch.cat(clean), y_all, num_classes)}
    for key in keys:
        out[key] = classification_metrics(torch.cat(adv[key]), y_all, num_classes)
    return out


class _Part:
    """The first ``n`` samples of a batch (``.x``, ``.y`` and ``len``)."""

    def __init__(self, batch, n: int):
        self.x, self.y = batch.x[:n], batch.y[:n]

    def __len__(self) -> int:
        return int(self.y.shape[0])


def _first(loader: Iterable, limit: Optional[int]):
    seen = 0
    for batch in loader:
        if limit is not None and seen >= limit:
            return
        n = len(batch.y)
        yield batch if limit is None or seen + n <= limit else _Part(batch, limit - seen)
        seen += n


def attack_metrics(model: nn.Module, loader: Iterable, mean: Stats, std: Stats,
                   attacks: Sequence[Mapping] = OLS_ATTACKS, num_classes: Optional[int] = None, seed: int = 0,
                   device=None, max_samples: Optional[int] = None) -> Dict[str, object]:
    """:func:`adversarial_metrics` on the first ``max_samples`` samples of ``loader`` (``None``:
    all of them), plus ``samples``: how many were attacked. The one path of ``softlabels eval
    --analyses robustness`` (first ``--max-adversarial`` test images) and of a study's
    ``fgsm_*``/``pgd_*`` metrics (the whole test split unless its ``metric_options`` say
    otherwise)."""
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be >= 1 or None, got {max_samples}")
    batches = list(_first(loader, max_samples))
    res = adversarial_metrics(model, batches, mean, std, attacks=attacks, num_classes=num_classes, seed=seed,
                              device=device)
    return {"samples": sum(len(b.y) for b in batches), **res}


# ---------------------------------------------------------------------------- noisy labels
def noisy_label_fit(records: Sequence[Mapping]) -> Dict[str, List[float]]:
    """Per-epoch noisy-label statistics from metrics.jsonl records (``read_metrics(run_dir)``).

    Returns lists aligned by epoch (ascending; if an epoch was logged twice, e.g. after a
    resume, its last record wins): ``epochs``, ``noisy_fit`` (% of noisy samples predicted as
    their wrong training label), ``noisy_recovered`` (% predicted as their true label),
    ``noisy_error`` = ``100 − noisy_fit`` (OLS Fig. 5's y axis) and ``train_error`` (top-1
    error on the whole noisy training set w.r.t. the training labels). Records without
    noisy-label statistics are skipped; DataError when none has them (label noise off).
    """
    by_epoch: Dict[int, Mapping] = {}
    for i, r in enumerate(records):
        train = r.get("train") if isinstance(r, Mapping) else None
        if not isinstance(train, Mapping) or "noisy_fit" not in train:
            continue
        epoch = r.get("epoch", i + 1)
        by_epoch[int(epoch)] = train
    if not by_epoch:
        raise DataError("no record has train.noisy_fit: the run was trained without label noise")
    epochs = sorted(by_epoch)
    fit = [float(by_epoch[e]["noisy_fit"]) for e in epochs]
    return {
        "epochs": epochs,
        "noisy_fit": fit,
        "noisy_recovered": [float(by_epoch[e].get("noisy_recovered", float("nan"))) for e in epochs],
        "noisy_error": [100.0 - f for f in fit],
        "train_error": [float(by_epoch[e].get("top1_error", float("nan"))) for e in epochs],
    }


def plot_noisy_fit(curves: Mapping[str, Mapping], title: Optional[str] = None):
    """OLS Fig. 5: top-1 error on the noisy training samples w.r.t. their wrong labels.

    ``curves`` maps a method name to a :func:`noisy_label_fit` result; each becomes one line of
    ``100 − noisy_fit`` against the epoch (higher = the model fits the wrong labels less).
    Returns a ``matplotlib.figure.Figure`` on the Agg canvas (pyplot is not used).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for name, c in curves.items():
        err = [100.0 - float(f) for f in c["noisy_fit"]]
        ax.plot(list(c["epochs"]), err, label=str(name))
    ax.set_xlabel("epoch")
    ax.set_ylabel("top-1 error on noisy samples\nw.r.t. their wrong labels (%)")
    ax.set_ylim(0, 100)
    ax.grid(True, alpha=0.3)
    if curves:
        ax.legend(loc="best", frameon=False)
    if title:
        ax.set_title(title)
    fig.tight_layout()
    return fig


def noisy_fit_error(records: Sequence[Mapping], epoch: Optional[int] = None) -> float:
    """OLS Fig. 5 at one epoch: ``100 − train.noisy_fit`` of that epoch's record (``None``: the
    last epoch logged), from :func:`noisy_label_fit`. DataError when the run had no label
    noise or that epoch was not logged."""
    fit = noisy_label_fit(records)
    epoch = fit["epochs"][-1] if epoch is None else int(epoch)
    if epoch not in fit["epochs"]:
        raise DataError(f"no record of epoch {epoch} has train.noisy_fit (logged: {fit['epochs'][0]}..{fit['epochs'][-1]})")
    return fit["noisy_error"][fit["epochs"].index(epoch)]
