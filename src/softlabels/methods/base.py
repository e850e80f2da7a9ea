"""The Method interface: one training objective, its state and its extra parameters.

The trainer knows nothing about any particular method. It reads ``requires`` to decide what to
supply (stage feature maps, teachers, class pairs, extra views), calls ``loss`` to get named
terms that it sums and logs, and calls the two hooks. State lives in buffers, so
``state_dict()`` checkpoints and resumes it; extra modules (heads, adapters) are submodules, so
the optimiser gets them through ``parameters()``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch
from torch import nn

from ..config import MethodConfig
from ..errors import ConfigError
from ..registry import METHODS


@dataclass(frozen=True)
class Requires:
    """What a method needs from the batch and the model.

    teachers: number of frozen teacher models whose outputs are passed to ``loss``.
    features: whether stage feature maps must be in ``ModelOutput.features``.
    pairs:    whether each anchor must come with a same-class partner (class-pair sampler):
              ``batch.extra["partner_x"]``, ``["partner_y"]``, ``["partner_index"]``.
    pairs_include_self: the partner is drawn from all samples of the class, so it may be the
              anchor itself (CS-KD's official sampler); otherwise from the other samples.
    views:    number of independently augmented views of each sample; views 2..N arrive as
              ``batch.extra["view1"]``, ``["view2"]`` …
    clean:    an un-augmented copy of each sample in ``batch.extra["clean_x"]``.
    uses_teachers: accepts any number of teachers and uses those it is given (an orthogonal
              ensemble member); ``compare`` then supplies its per-seed teacher.
    """

    teachers: int = 0
    features: bool = False
    pairs: bool = False
    pairs_include_self: bool = False
    views: int = 1
    clean: bool = False
    uses_teachers: bool = False

    def merge(self, other: "Requires") -> "Requires":
        if self.pairs and other.pairs and self.pairs_include_self != other.pairs_include_self:
            raise ConfigError("method.name: the combined methods need different class-pair samplers")
        return Requires(
            teachers=max(self.teachers, other.teachers),
            features=self.features or other.features,
            pairs=self.pairs or other.pairs,
            pairs_include_self=self.pairs_include_self or other.pairs_include_self,
            views=max(self.views, other.views),
            clean=self.clean or other.clean,
            uses_teachers=self.uses_teachers or other.uses_teachers,
        )


class Method(nn.Module):
    """Base class of every objective. Subclasses set ``requires`` and implement ``loss``.

    ``needs_model_forward``: the loss reads what the model's own forward adds (ONE's branch
    outputs), so the method cannot be summed with one that replaces the forward (CS-KD)."""

    requires = Requires()
    needs_model_forward = False

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes = num_classes

    def adapt_model(self, model) -> None:
        """Change the student's architecture in place, e.g. replace ``model.head`` with a cosine
        classifier (AdaCos). Called whenever a model of a run with this method is built — for
        training, ``softlabels eval`` and loading it as a teacher — so the saved weights always
        fit. Keep it deterministic and independent of data and teachers."""

    def setup(self, model, teachers: Sequence = ()) -> None:
        """Called once with the student and the teacher models before the optimiser is built:
        the place to create modules whose shape depends on the backbones (e.g. per-stage
        adapters sized from ``model.stage_channels``). They are optimised with the model."""

    def forward_batch(self, net, batch, features: bool):
        """The training forward pass. Most methods keep the default (None: the trainer calls
        ``net(batch.x, return_features=features)``). A method that needs another forward, e.g.
        CS-KD's partner pass, returns a ModelOutput for ``batch.x`` with its extra outputs in
        ``out.aux``. Only one method of a sum may customise the forward."""
        return None

    def loss(self, out, batch, teachers: Sequence = ()) -> Dict[str, torch.Tensor]:
        """Named, already-weighted loss terms; the trainer optimises their sum.

        ``out`` is the model's output on ``batch.x`` (plus ``out.aux`` from ``forward_batch``);
        ``teachers`` are the frozen teachers' outputs on the same ``batch.x`` (no gradient).
        """
        raise NotImplementedError  # abstract: every registered method overrides it

    def on_epoch_start(self, epoch: int) -> None:
        """Called before each training epoch (0-based), also after a resume; for schedules."""

    def on_step_end(self, out, batch) -> None:
        """Called after each optimiser step with the (detached) outputs of that step."""

    def on_epoch_end(self, epoch: int) -> None:
        """Called once at the end of each training epoch (0-based ``epoch``)."""


class Objective(nn.Module):
    """A weighted sum of methods; a single method is the common case (weight 1).

    Term names are prefixed with the component name when there is more than one, so
    ``kd+cskd`` logs ``kd/kl``, ``cskd/ce`` … The trainer uses this class only.
    """

    def __init__(self, methods: Dict[str, Method], weights: Optional[Dict[str, float]] = None):
        super().__init__()
        self.methods = nn.ModuleDict(methods)
        self.weights = {k: float((weights or {}).get(k, 1.0)) for k in methods}
        req = Requires()
        for m in methods.values():
            req = req.merge(m.requires)
        self.requires = req
        custom = [n for n, m in methods.items() if type(m).forward_batch is not Method.forward_batch]
        if len(custom) > 1:
            raise ConfigError(f"method.name: {' and '.join(custom)} both define their own forward pass "
                              f"and cannot be combined")
        self._forward_owner = methods[custom[0]] if custom else None
        readers = [n for n, m in methods.items() if m.needs_model_forward]
        if custom and readers:
            raise ConfigError(f"method.name: {readers[0]} reads the outputs of the model's own forward pass, "
                              f"which {custom[0]} replaces with its own; they cannot be combined")

    @property
    def name(self) -> str:
        return "+".join(self.methods.keys())

    def loss(self, out, batch, teachers: Sequence = ()) -> Dict[str, torch.Tensor]:
        if len(self.methods) == 1:
            (method,) = self.methods.values()
            terms = method.loss(out, batch, teachers)
            w = next(iter(self.weights.values()))
            return terms if w == 1.0 else {k: w * v for k, v in terms.items()}
        terms = {}
        for name, method in self.methods.items():
            w = self.weights[name]
            for k, v in method.loss(out, batch, teachers).items():
                terms[f"{name}/{k}"] = v if w == 1.0 else w * v
        return terms

    def adapt_model(self, model) -> None:
        for m in self.methods.values():
            m.adapt_model(model)

    def setup(self, model, teachers: Sequence = ()) -> None:
        for m in self.methods.values():
            m.setup(model, teachers)

    def forward_batch(self, net, batch, features: bool):
        if self._forward_owner is not None:
            out = self._forward_owner.forward_batch(net, batch, features)
            if out is not None:
                return out
        return net(batch.x, return_features=features)

    def on_step_end(self, out, batch) -> None:
        for m in self.methods.values():
            m.on_step_end(out, batch)

    def on_epoch_start(self, epoch: int) -> None:
        for m in self.methods.values():
            m.on_epoch_start(epoch)

    def on_epoch_end(self, epoch: int) -> None:
        for m in self.methods.values():
            m.on_epoch_end(epoch)


def option_number(key: str, value, lowest: float, strict: bool) -> float:
    """A finite real number above ``lowest`` (``strict``) or at least it, as float; otherwise a
    one-line ConfigError naming ``method.options.<key>``. For options checked at construction,
    also when a Method is built directly in Python rather than from a config."""
    import math

    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        ok = value > lowest if strict else value >= lowest
    if not ok:
        raise ConfigError(f"method.options.{key}: expected a number {'>' if strict else '>='} "
                          f"{lowest:g}, got {value!r}")
    return float(value)


def method_option_sets(cfg: MethodConfig) -> Dict[str, dict]:
    """Split ``cfg.options`` per component (flat for one method, nested for a sum)."""
    comps = cfg.components
    if len(set(comps)) != len(comps) or any(not c for c in comps):
        raise ConfigError(f"method.name: {cfg.name!r} must name distinct methods joined by '+'")
    for c in comps:
        METHODS.get(c)
    for k in cfg.weights:
        if k not in comps:
            raise ConfigError(f"method.weights.{k}: not a component of {cfg.name!r}")
    if len(comps) == 1:
        return {comps[0]: dict(cfg.options)}
    for k, v in cfg.options.items():
        if k not in comps:
            raise ConfigError(
                f"method.options.{k}: with a sum of methods, options are given per component "
                f"({', '.join(comps)})"
            )
        if not isinstance(v, dict):
            raise ConfigError(f"method.options.{k}: expected a mapping of options, got {v!r}")
    return {c: dict(cfg.options.get(c, {})) for c in comps}


def build_objective(cfg: MethodConfig, num_classes: int) -> Objective:
    sets = method_option_sets(cfg)
    methods = {}
    for comp, opts in sets.items():
        where = "method.options" if len(sets) == 1 else f"method.options.{comp}"
        methods[comp] = METHODS.build(comp, opts, where=where, num_classes=num_classes)
    return Objective(methods, cfg.weights)


def build_run_model(cfg, num_classes: int, in_channels: int, weights=None):
    """The model of a run: the registered backbone, adapted by the run's method(s)."""
    from ..models import build_model

    model = build_model(cfg.model.name, num_classes, in_channels, cfg.model.options, weights)
    build_objective(cfg.method, num_classes).adapt_model(model)
    return model
