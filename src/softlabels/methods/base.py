"""The Method interface: one training objective, its state and its extra parameters.

The trainer knows nothing about any particular method. It reads ``requires`` to decide what to
supply (stage feature maps, teachers, class pairs, extra views), calls ``loss`` to get named
terms that it sums and logs, and calls the two hooks. State lives in buffers, so
``state_dict()`` checkpoints and resumes it; extra modules (heads, adapters) are submodules, so
the optimiser gets them through ``parameters()``.
"""
from __future__ import annotations

import functools
import inspect
import typing
from dataclasses import dataclass, replace
from typing import Dict, List, Literal, Optional, Sequence

import torch
from torch import nn

from ..config import MethodConfig
from ..errors import ConfigError, MissingInputError
from ..models.base import ModelOutput
from ..registry import METHODS, check_value, option_hints

from ..data.base import Batch

#: How a method's frozen teachers run: ``eval`` (BatchNorm on running statistics, no dropout)
#: or ``train`` (BatchNorm on the batch's statistics, as the channel-distillation and Label
#: Refinery code do). Declared by every teacher-based method as its ``teacher_mode`` option.
TeacherMode = Literal["eval", "train"]


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
    teacher_mode: ``eval`` or ``train``: the mode the trainer runs the teachers in (the
              method's ``teacher_mode`` option; in ``train`` mode the trainer runs a private
              copy of each teacher, so BatchNorm statistics updates never reach the original).
    """

    teachers: int = 0
    features: bool = False
    pairs: bool = False
    pairs_include_self: bool = False
    views: int = 1
    clean: bool = False
    uses_teachers: bool = False
    teacher_mode: str = "eval"

    @property
    def has_teachers(self) -> bool:
        return self.teachers > 0 or self.uses_teachers

    @property
    def teacher_models(self) -> int:
        """How many teacher models to give a run of the method: ``teachers`` (it cannot train
        without them), or 1 for a method that only uses teachers when given (an orthogonal
        member 1 trains alone)."""
        return max(self.teachers, 1 if self.uses_teachers else 0)

    def merge(self, other: "Requires") -> "Requires":
        if self.pairs and other.pairs and self.pairs_include_self != other.pairs_include_self:
            raise ConfigError("method.name: the combined methods need different class-pair samplers")
        if self.has_teachers and other.has_teachers and self.teacher_mode != other.teacher_mode:
            raise ConfigError("method.options.teacher_mode: the combined methods run their shared teachers "
                              f"in different modes ({self.teacher_mode} and {other.teacher_mode}); "
                              "give them the same teacher_mode")
        mode = self.teacher_mode if self.has_teachers else other.teacher_mode
        return Requires(
            teachers=max(self.teachers, other.teachers),
            features=self.features or other.features,
            pairs=self.pairs or other.pairs,
            pairs_include_self=self.pairs_include_self or other.pairs_include_self,
            views=max(self.views, other.views),
            clean=self.clean or other.clean,
            uses_teachers=self.uses_teachers or other.uses_teachers,
            teacher_mode=mode,
        )

    def with_teacher_mode(self, mode: str) -> "Requires":
        return replace(self, teacher_mode=mode)


def need_teacher(teachers: Sequence[ModelOutput], method: str, count: int = 1) -> Sequence[ModelOutput]:
    """The first ``count`` teacher outputs, or a MissingInputError naming the method."""
    if len(teachers) < count:
        raise MissingInputError(f"method {method} needs the outputs of {count} teacher model(s), got "
                                f"{len(teachers)}; run it through a pipeline stage or `compare`, "
                                f"which supply them")
    return teachers[:count]


def need_features(out: ModelOutput, method: str) -> List[torch.Tensor]:
    """``out.features`` (the stage maps), or a MissingInputError naming the method."""
    if out.features is None:
        raise MissingInputError(f"method {method} needs the stage feature maps "
                                f"(forward with return_features=True)")
    return out.features


def need_extra(batch: Batch, key: str, method: str) -> torch.Tensor:
    """``batch.extra[key]`` (a view, a class partner, a clean copy, mixing draws), or a
    MissingInputError naming the method."""
    try:
        return batch.extra[key]
    except KeyError:
        raise MissingInputError(
            f"method {method}: the batch has no {key!r}; it is set by the method's own forward pass "
            f"(forward_batch) or by the loader when the method's requires asks for it") from None


def need_aux(out: ModelOutput, key: str, method: str) -> ModelOutput:
    """``out.aux[key]`` (set by the method's own forward), or a MissingInputError."""
    try:
        return out.aux[key]
    except KeyError:
        raise MissingInputError(f"method {method}: the output has no {key!r}; it is set by the "
                                f"method's own forward pass (forward_batch)") from None


def need_setup(module, method: str, what: str):
    """A module built in ``setup``/``adapt_model``, or a MissingInputError saying to call it."""
    if module is None:
        raise MissingInputError(f"method {method}: {what} is built in setup(model, teachers) / "
                                f"adapt_model(model); call it before the loss")
    return module


def _checked_init(init):
    """Wrap a Method's ``__init__`` so that the options declared in its signature (type and
    ``Range``) are checked however the method is built: by the registry from a config, or
    directly in Python. One mechanism: ``registry.check_value``."""
    sig = inspect.signature(init)
    hints: Dict[str, object] = {}

    @functools.wraps(init)
    def checked(self, *args, **kwargs):
        if not hints:
            hints.update(option_hints(init) or {"": None})
        bound = sig.bind(self, *args, **kwargs)
        for name, value in list(bound.arguments.items()):
            if name in ("self", "num_classes") or name not in hints:
                continue
            bound.arguments[name] = check_value(name, value, hints[name], "method.options")
        init(*bound.args, **bound.kwargs)

    checked._checks_options = True
    return checked


class Method(nn.Module):
    """Base class of every objective. Subclasses set ``requires`` and implement ``loss``.

    ``needs_model_forward``: the loss reads what the model's own forward adds (ONE's branch
    outputs), so the method cannot be summed with one that replaces the forward (CS-KD)."""

    requires = Requires()
    needs_model_forward = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is not None and not getattr(init, "_checks_options", False):
            cls.__init__ = _checked_init(init)

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

    def loss(self, out: ModelOutput, batch: Batch,
             teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
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

    def loss(self, out: ModelOutput, batch: Batch,
             teachers: Sequence[ModelOutput] = ()) -> Dict[str, torch.Tensor]:
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
