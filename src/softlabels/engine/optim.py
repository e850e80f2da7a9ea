"""The optimiser of a run: parameter groups, the optimiser by name, the learning-rate schedule.

``optim.name`` is any optimiser of ``torch.optim`` by its class name, case-insensitive (``sgd``,
``adamw``, ``adam``, ``rmsprop``, ``nadam`` …), with ``optim.options`` for its further keyword
arguments (``betas``, ``eps`` …, checked against its signature). ``optim.lr``,
``optim.weight_decay`` and, where the optimiser takes them, ``optim.momentum`` and
``optim.nesterov`` are passed as well.

``schedule.name`` is one of the project's per-step schedules (``cosine``, ``step``,
``constant``: ``engine.schedule.StepSchedule``, exact on resume, with warm-up) or any scheduler of
``torch.optim.lr_scheduler`` by class name (``OneCycleLR``, ``ExponentialLR``, ``PolynomialLR``,
``CosineAnnealingWarmRestarts`` …) with ``schedule.options``, stepped every optimiser step or
every epoch (``schedule.interval``).
"""
from __future__ import annotations

import inspect
from typing import Dict, List, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..registry import check_kwargs

PROJECT_SCHEDULES = ("cosine", "step", "constant")
# optimisers that need a closure per step or are not first-order training optimisers
_NOT_FOR_TRAINING = {"lbfgs", "sparseadam"}


def _classes(module, base) -> Dict[str, type]:
    return {name.lower(): obj for name, obj in vars(module).items()
            if inspect.isclass(obj) and issubclass(obj, base) and obj is not base and not name.startswith("_")}


def optimizer_class(name: str) -> type:
    found = {k: v for k, v in _classes(torch.optim, torch.optim.Optimizer).items() if k not in _NOT_FOR_TRAINING}
    try:
        return found[name.lower()]
    except KeyError:
        raise ConfigError(f"optim.name: unknown optimiser {name!r}; choose one of torch.optim's: "
                          f"{', '.join(sorted(found))}") from None


def scheduler_class(name: str) -> Optional[type]:
    """None for the project's own schedules; else the torch.optim.lr_scheduler class."""
    if name in PROJECT_SCHEDULES:
        return None
    from torch.optim import lr_scheduler

    found = {k: v for k, v in _classes(lr_scheduler, lr_scheduler.LRScheduler).items()
             if k not in ("lambdalr", "multiplicativelr", "sequentiallr", "chainedscheduler",
                          "reducelronplateau", "lrscheduler")}
    try:
        return found[name.lower()]
    except KeyError:
        raise ConfigError(f"schedule.name: unknown schedule {name!r}; choose {', '.join(PROJECT_SCHEDULES)} or a "
                          f"scheduler of torch.optim.lr_scheduler: "
                          f"{', '.join(sorted(c.__name__ for c in found.values()))}") from None


def check_optim_config(optim_cfg, schedule_cfg) -> None:
    """Names and options of the optimiser and schedule, checked before anything is built."""
    cls = optimizer_class(optim_cfg.name)
    given = {"lr", "weight_decay", "momentum", "nesterov", "params"}
    check_kwargs(cls, optim_cfg.options, "optim.options", skip=given)
    sched = scheduler_class(schedule_cfg.name)
    if sched is None:
        if schedule_cfg.options:
            raise ConfigError(f"schedule.options: the project schedule {schedule_cfg.name!r} takes no options "
                              f"(they are for torch.optim.lr_scheduler classes)")
    else:
        check_kwargs(sched, schedule_cfg.options, "schedule.options", skip=("optimizer",))


def _is_norm_or_bias(module: nn.Module, name: str) -> bool:
    norms = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)
    return name == "bias" or isinstance(module, norms)


def _split_decay(params_of: List[nn.Module], keep: Optional[set] = None):
    """(decayed, not decayed) parameters of some modules: BatchNorm/GroupNorm/LayerNorm weights
    and every bias go without weight decay (the convention of timm's ``param_groups_weight_decay``
    and of the torchvision reference scripts' ``norm_weight_decay=0``)."""
    decay, no_decay, seen = [], [], set()
    for root in params_of:
        for module in root.modules():
            for name, p in module.named_parameters(recurse=False):
                if not p.requires_grad or id(p) in seen or (keep is not None and id(p) not in keep):
                    continue
                seen.add(id(p))
                (no_decay if _is_norm_or_bias(module, name) else decay).append(p)
    return decay, no_decay


def param_groups(model: nn.Module, objective: nn.Module, optim_cfg) -> List[dict]:
    """The optimiser's parameter groups.

    One group at ``optim.lr``; with ``optim.head_lr`` the classifier (``model.head_modules``) and
    the method's own modules (adapters, auxiliary heads) form a second group at ``head_lr`` — the
    usual split when fine-tuning a pre-trained backbone. With ``optim.no_decay_norm_bias`` each of
    these is split again into parameters with and without weight decay."""
    head_names = getattr(model, "head_modules", ("head",))
    heads = [getattr(model, n) for n in head_names if hasattr(model, n)] if optim_cfg.head_lr is not None else []
    head_ids = {id(p) for h in heads for p in h.parameters()}
    backbone_ids = {id(p) for p in model.parameters() if id(p) not in head_ids}
    parts = [([model], backbone_ids, {})]
    if optim_cfg.head_lr is not None:
        parts.append((heads + [objective], head_ids | {id(p) for p in objective.parameters()},
                      {"lr": optim_cfg.head_lr}))
    else:
        parts[0] = ([model, objective], backbone_ids | {id(p) for p in objective.parameters()}, {})
    groups = []
    for modules, ids, extra in parts:
        decay, no_decay = _split_decay(modules, ids)
        if optim_cfg.no_decay_norm_bias:
            groups.append({"params": decay, **extra})
            if no_decay:
                groups.append({"params": no_decay, "weight_decay": 0.0, **extra})
        else:
            groups.append({"params": decay + no_decay, **extra})
    return [g for g in groups if g["params"]]


def build_optimizer(groups: List[dict], optim_cfg) -> torch.optim.Optimizer:
    cls = optimizer_class(optim_cfg.name)
    accepted = inspect.signature(cls).parameters
    kwargs = {"lr": optim_cfg.lr, "weight_decay": optim_cfg.weight_decay}
    if "momentum" in accepted:
        kwargs["momentum"] = optim_cfg.momentum
    if "nesterov" in accepted:
        kwargs["nesterov"] = optim_cfg.nesterov
    kwargs.update(optim_cfg.options)
    try:
        return cls(groups, **kwargs)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"optim: {cls.__name__} refuses these settings ({str(exc).splitlines()[0][:160]})") from None


class TorchSchedule:
    """A ``torch.optim.lr_scheduler`` scheduler behind the interface of ``StepSchedule``
    (``step()`` once per optimiser step, ``lr()``, ``state_dict``); with ``interval: epoch`` it
    advances the wrapped scheduler only at epoch boundaries."""

    def __init__(self, optimizer, cfg, steps_per_epoch: int, epochs: int):
        cls = scheduler_class(cfg.name)
        self.steps_per_epoch = max(1, steps_per_epoch)
        self.interval = cfg.interval
        options = dict(cfg.options)
        # OneCycleLR & co. need the run's length; fill it in unless given
        params = inspect.signature(cls).parameters
        if "total_steps" in params and "total_steps" not in options and "epochs" not in options:
            options["total_steps"] = self.steps_per_epoch * epochs if self.interval == "step" else epochs
        if "max_lr" in params and "max_lr" not in options:
            options["max_lr"] = [g["lr"] for g in optimizer.param_groups]
        if "T_max" in params and "T_max" not in options:
            options["T_max"] = self.steps_per_epoch * epochs if self.interval == "step" else epochs
        try:
            self.scheduler = cls(optimizer, **options)
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"schedule: {cls.__name__} refuses these settings "
                              f"({str(exc).splitlines()[0][:160]})") from None
        self.optimizer = optimizer
        self.step_count = 0

    def step(self) -> None:
        self.step_count += 1
        if self.interval == "step" or self.step_count % self.steps_per_epoch == 0:
            self.scheduler.step()

    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def state_dict(self) -> dict:
        return {"step_count": self.step_count, "scheduler": self.scheduler.state_dict(),
                "base_lrs": [g.get("initial_lr", g["lr"]) for g in self.optimizer.param_groups]}

    def load_state_dict(self, state: dict) -> None:
        self.step_count = int(state["step_count"])
        self.scheduler.load_state_dict(state["scheduler"])


def build_schedule(optimizer, schedule_cfg, steps_per_epoch: int, epochs: int):
    from .schedule import StepSchedule

    if scheduler_class(schedule_cfg.name) is None:
        return StepSchedule(optimizer, schedule_cfg, steps_per_epoch, epochs)
    return TorchSchedule(optimizer, schedule_cfg, steps_per_epoch, epochs)
