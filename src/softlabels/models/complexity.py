"""Parameters and FLOPs of a run's model, at inference and at training.

Conventions (what ``final.json["complexity"]`` holds; ``model_complexity`` computes it)::

    {"inference": {"params": int, "flops": int},
     "training":  {"params": int, "flops": int},
     "input_shape": [C, H, W]}

- FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` **per image** (the forward of
  a batch divided by its size) and follow its convention: a multiply-add is 2 FLOPs, and only
  matrix multiplications and convolutions (and attention) are counted; element-wise operations,
  normalisation and pooling are not. Backward passes are never counted. So a ResNet-18 with the
  CIFAR stem at 64×64 is 4.44 GFLOPs (measured), the "4.46 G" of FocusNet's Tables 4 and 6.
- Params are the parameters of the modules that actually run (each counted once, shared ones
  once), so modules installed but idle in that pass are left out (e.g. ONE's extra branches at
  inference with ``inference: branch``).
- inference: the model alone, in eval mode, on one image of ``input_shape``: what is deployed.
- training: everything one training step runs forward for each training image: the student
  through the method's own forward (extra branches, the CS-KD partner, extra views — so CS-KD's
  training FLOPs are twice its inference FLOPs, being two images per anchor), the modules the
  method adds (CD adapters, BYOT's auxiliary classifiers, FRSKD's self-teacher, ...) as its loss
  runs them, and the frozen teachers' forwards (KD/CD teachers, FocusNet's baseline branch,
  earlier orthogonal members). Params include the teachers' (they run every step). The papers'
  own "Params" columns count only the trained network (e.g. FocusNet's 11.27M for "FocusNet");
  that is the inference figure, or training minus the teachers.
- input_shape: C×H×W of the images the model is fed (the tensor dataset's images, or the file
  dataset's ``image_size`` crop).

Measuring runs the model and the method once in training mode (a batch of 2: BatchNorm1d needs
two samples); every state it touches (BatchNorm statistics, method buffers) and the random
number generators are restored afterwards, so a run trains exactly as it would without it.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


@contextlib.contextmanager
def _running_modules():
    """Collect every nn.Module called inside the block (a global forward pre-hook)."""
    called: Dict[int, nn.Module] = {}

    def hook(module, args):
        called[id(module)] = module

    handle = nn.modules.module.register_module_forward_pre_hook(hook)
    try:
        yield called
    finally:
        handle.remove()


def _params_of(modules) -> int:
    seen = set()
    total = 0
    for m in modules:
        for p in m.parameters(recurse=False):
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def _measure(fn, images: int) -> Dict[str, int]:
    with _running_modules() as called, FlopCounterMode(display=False) as counter:
        fn()
    return {"params": _params_of(called.values()), "flops": int(round(counter.get_total_flops() / images))}


@contextlib.contextmanager
def _preserved(modules: Sequence[nn.Module], device: torch.device):
    """Restore the state dicts, train/eval flags of ``modules`` and the RNGs (CPU, and the
    CUDA device ``device`` if it is one) on exit."""
    states = [{k: v.detach().clone() for k, v in m.state_dict().items()} for m in modules]
    flags = [[(sub, sub.training) for sub in m.modules()] for m in modules]
    devices = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        try:
            yield
        finally:
            with torch.no_grad():
                for m, state in zip(modules, states):
                    own = m.state_dict()
                    for k, v in state.items():
                        if k in own:
                            own[k].copy_(v)
            for pairs in flags:
                for sub, training in pairs:
                    sub.training = training


def training_batch(requires, input_shape: Sequence[int], num_classes: int, device, n: int = 2):
    """A synthetic training ``Batch`` of ``n`` images with what ``requires`` asks for."""
    from ..data.base import Batch

    def images():
        return torch.zeros((n, *input_shape), device=device)

    y = torch.arange(n, device=device) % max(1, num_classes)
    batch = Batch(x=images(), y=y, index=torch.arange(n, device=device))
    if requires is not None:
        for v in range(1, int(requires.views)):
            batch.extra[f"view{v}"] = images()
        if requires.clean:
            batch.extra["clean_x"] = images()
        if requires.pairs:
            batch.extra["partner_x"] = images()
            batch.extra["partner_y"] = y.clone()
            batch.extra["partner_index"] = torch.arange(n, device=device).flip(0)
    return batch


def model_complexity(model: nn.Module, input_shape: Sequence[int], objective=None,
                     teachers: Sequence[nn.Module] = (), num_classes: Optional[int] = None) -> dict:
    """``{"inference": {...}, "training": {...}, "input_shape": [C, H, W]}`` (module docstring).

    ``objective``: the run's Objective (or any Method); None measures training as a plain
    forward of the model. ``teachers``: the frozen teacher models the method receives.
    """
    shape: List[int] = [int(s) for s in input_shape]
    p = next(model.parameters(), None)
    device = p.device if p is not None else torch.device("cpu")
    teachers = list(teachers)
    with _preserved([model] + ([objective] if objective is not None else []), device):
        model.eval()
        with torch.no_grad():
            inference = _measure(lambda: model(torch.zeros((1, *shape), device=device)), 1)
        requires = getattr(objective, "requires", None)
        k = num_classes or int(getattr(getattr(model, "head", None), "out_features", 2) or 2)
        batch = training_batch(requires, shape, k, device)
        features = bool(getattr(requires, "features", False))
        model.train()

        def step():
            if objective is None:
                return model(batch.x)
            out = objective.forward_batch(model, batch, features)
            outs = [t(batch.x, return_features=features) for t in teachers]
            return objective.loss(out, batch, outs)

        with torch.no_grad():
            training = _measure(step, len(batch))
    return {"inference": inference, "training": training, "input_shape": shape}


def input_shape_of(data) -> List[int]:
    """[C, H, W] a run's model is fed: the in-memory images' shape, or the file dataset's
    ``image_size`` crop (``data``: a ``PreparedData``)."""
    if data.is_tensor:
        return [int(s) for s in data.train.images.shape[1:]]
    size = int(data.dataset.image_size)
    return [int(data.in_channels), size, size]
