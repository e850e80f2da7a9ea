"""Typed run configuration.

A run is described by one ``RunConfig``: nested dataclasses, loaded from YAML with
``yaml.safe_load`` and patched with dotted overrides (``optim.lr=0.05``). Every key and value is
checked before anything trains: an unknown key, a wrong type or an out-of-range value raises
``ConfigError`` with one line naming the key and what was expected. Registry-backed ``options``
dicts (model, dataset, method) are checked against the factory's signature.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import yaml

from .errors import ConfigError
from .registry import describe_type, _type_ok


def _range(lo=None, hi=None, lo_open=False, hi_open=False):
    return {"range": (lo, hi, lo_open, hi_open)}


@dataclass
class DataConfig:
    name: str = "digits"
    root: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    batch_size: int = field(default=64, metadata=_range(1))
    eval_batch_size: int = field(default=512, metadata=_range(1))
    val_fraction: float = field(default=0.1, metadata=_range(0.0, 1.0, hi_open=True))
    split_seed: int = 0
    augment: bool = True
    crop_padding: Optional[int] = field(default=None, metadata=_range(0))
    hflip: Optional[bool] = None
    label_noise: float = field(default=0.0, metadata=_range(0.0, 1.0, hi_open=True))
    workers: int = field(default=0, metadata=_range(0))


@dataclass
class ModelConfig:
    name: str = "resnet8"
    options: Dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None


@dataclass
class MethodConfig:
    """One objective, or a weighted sum of several (``name: kd+cskd``).

    For a single method ``options`` holds its options. For a sum, ``options`` maps each component
    name to its options and ``weights`` maps component names to multipliers (default 1).
    """

    name: str = "ce"
    options: Dict[str, Any] = field(default_factory=dict)
    weights: Dict[str, float] = field(default_factory=dict)

    @property
    def components(self) -> List[str]:
        return [c.strip() for c in self.name.split("+")]


@dataclass
class OptimConfig:
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = field(default=0.1, metadata=_range(0.0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0, hi_open=True))
    nesterov: bool = False
    weight_decay: float = field(default=5e-4, metadata=_range(0.0))
    head_lr: Optional[float] = field(default=None, metadata=_range(0.0, lo_open=True))


@dataclass
class ScheduleConfig:
    name: Literal["step", "cosine", "constant"] = "cosine"
    milestones: List[int] = field(default_factory=list)
    gamma: float = field(default=0.1, metadata=_range(0.0, lo_open=True))
    warmup_epochs: float = field(default=0.0, metadata=_range(0.0))
    min_lr: float = field(default=0.0, metadata=_range(0.0))


@dataclass
class TrainConfig:
    epochs: int = field(default=15, metadata=_range(1))
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: Union[bool, Literal["auto"]] = "auto"
    compile: bool = False
    sync_bn: bool = False
    threads: Optional[int] = field(default=None, metadata=_range(1))
    eval_every: int = field(default=1, metadata=_range(1))
    checkpoint_every: int = field(default=1, metadata=_range(1))
    snapshot_epochs: List[int] = field(default_factory=list)


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    out_dir: str = "runs"
    name: Optional[str] = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _section_from_dict(cls, data: Any, where: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in fields:
            raise ConfigError(f"{path}: unknown config key (accepted: {', '.join(fields)})")
        ann = hints[key]
        if dataclasses.is_dataclass(ann):
            kwargs[key] = _section_from_dict(ann, value, path)
            continue
        kwargs[key] = _check_value(path, value, ann, fields[key].metadata.get("range"))
    return cls(**kwargs)


def _check_value(path: str, value: Any, ann: Any, rng) -> Any:
    if not _type_ok(value, ann):
        raise ConfigError(f"{path}: expected {describe_type(ann)}, got {value!r}")
    origin = typing.get_origin(ann)
    if origin in (list, List):
        (item,) = typing.get_args(ann) or (Any,)
        value = [_check_value(f"{path}[{i}]", v, item, None) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        _, vtype = typing.get_args(ann) or (str, Any)
        value = {str(k): _check_value(f"{path}.{k}", v, vtype, None) for k, v in value.items()}
    if ann is float and isinstance(value, int):
        value = float(value)
    if rng is not None and value is not None:
        lo, hi, lo_open, hi_open = rng
        bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
            hi is not None and (value >= hi if hi_open else value > hi)
        )
        if bad:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            expect = " and ".join(s for s in (lo_s, hi_s) if s)
            raise ConfigError(f"{path}: expected a value {expect}, got {value!r}")
    return value


def config_from_dict(data: Optional[dict]) -> RunConfig:
    return _section_from_dict(RunConfig, data or {}, "")


def parse_override(text: str) -> tuple:
    """``"optim.lr=0.05"`` → (["optim", "lr"], 0.05); the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict, overrides: List[str]) -> dict:
    data = _deepcopy(data)
    for text in overrides:
        keys, value = parse_override(text)
        node = data
        for k in keys[:-1]:
            child = node.get(k)
            if child is None:
                child = node[k] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {k} is not a section")
            node = child
        node[keys[-1]] = value
    return data


def _deepcopy(d):
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def load_yaml(path: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path}: not found")
    try:
        data = yaml.safe_load(p.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}:{where} is not valid YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level")
    return data


def build_config(path: Optional[str] = None, overrides: Optional[List[str]] = None,
                 base: Optional[dict] = None) -> RunConfig:
    """YAML file (if any) → dotted overrides → validated RunConfig."""
    data = _deepcopy(base or {})
    if path:
        data = _merge(data, load_yaml(path))
    data = apply_overrides(data, overrides or [])
    cfg = config_from_dict(data)
    validate_registered(cfg)
    return cfg


def _merge(a: dict, b: dict) -> dict:
    out = _deepcopy(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = _deepcopy(v)
    return out


def validate_registered(cfg: RunConfig) -> None:
    """Check names and options against the registries before any work starts."""
    from . import data as _data  # noqa: F401  (registration)
    from . import methods as _methods  # noqa: F401
    from . import models as _models  # noqa: F401
    from .registry import DATASETS, METHODS, MODELS, check_kwargs

    check_kwargs(DATASETS.get(cfg.data.name).factory, cfg.data.options, "data.options", skip=("root",))
    check_kwargs(MODELS.get(cfg.model.name).factory, cfg.model.options, "model.options",
                 skip=("num_classes", "in_channels"))
    from .methods.base import method_option_sets

    for comp, opts in method_option_sets(cfg.method).items():
        where = "method.options" if len(cfg.method.components) == 1 else f"method.options.{comp}"
        check_kwargs(METHODS.get(comp).factory, opts, where, skip=("num_classes",))
    for ep in cfg.train.snapshot_epochs:
        if not 1 <= ep <= cfg.train.epochs:
            raise ConfigError(f"train.snapshot_epochs: {ep} is outside 1..{cfg.train.epochs}")
    if cfg.schedule.name == "step" and any(m < 1 for m in cfg.schedule.milestones):
        raise ConfigError("schedule.milestones: epochs must be >= 1")


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
