"""Typed run configuration.

A run is described by one ``RunConfig``: nested dataclasses, loaded from YAML with
``load_yaml`` (safe, bounded, see there) and patched with dotted overrides (``optim.lr=0.05``).
Every key and value is checked before anything trains: an unknown key, a wrong type or an
out-of-range value raises ``ConfigError`` with one line naming the key and what was expected.
Every integer key has a range; anywhere in a config no number may be NaN or infinite, no
integer exceed 64 bits and no string hold a NUL character. Registry-backed ``options`` dicts (model, dataset, method) are
checked against the factory's signature.
"""
from __future__ import annotations

import dataclasses
import math
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Union

import yaml

from .errors import ConfigError
from .registry import describe_type, _type_ok


def _range(lo=None, hi=None, lo_open=False, hi_open=False):
    """A field's allowed values; for a list field, each item's."""
    return {"range": (lo, hi, lo_open, hi_open)}


# Upper bounds of the integer keys: far above any real use, far below what overflows NumPy,
# torch or a C int.
MAX_SEED = 2**31 - 1
MAX_EPOCHS = 100_000
MAX_BATCH = 2**20
MAX_THREADS = 1024
MAX_PADDING = 1024


@dataclass
class DataConfig:
    name: str = "digits"
    root: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    batch_size: int = field(default=64, metadata=_range(1, MAX_BATCH))
    eval_batch_size: int = field(default=512, metadata=_range(1, MAX_BATCH))
    val_fraction: float = field(default=0.1, metadata=_range(0.0, 1.0, hi_open=True))
    split_seed: int = field(default=0, metadata=_range(0, MAX_SEED))
    augment: bool = True
    crop_padding: Optional[int] = field(default=None, metadata=_range(0, MAX_PADDING))
    hflip: Optional[bool] = None
    label_noise: float = field(default=0.0, metadata=_range(0.0, 1.0, hi_open=True))
    train_subset: Optional[int] = field(default=None, metadata=_range(1, MAX_BATCH))
    workers: int = field(default=0, metadata=_range(0, MAX_THREADS))
    auto_augment: Optional[Literal["randaugment", "trivialaugment"]] = None
    randaugment_ops: int = field(default=2, metadata=_range(1, 14))
    randaugment_magnitude: int = field(default=9, metadata=_range(0, 30))
    random_erasing: float = field(default=0.0, metadata=_range(0.0, 1.0))


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
    name: str = "sgd"
    lr: float = field(default=0.1, metadata=_range(0.0, lo_open=True))
    momentum: float = field(default=0.9, metadata=_range(0.0, 1.0, hi_open=True))
    nesterov: bool = False
    weight_decay: float = field(default=5e-4, metadata=_range(0.0))
    head_lr: Optional[float] = field(default=None, metadata=_range(0.0, lo_open=True))
    options: Dict[str, Any] = field(default_factory=dict)
    no_decay_norm_bias: bool = False
    clip_grad_norm: Optional[float] = field(default=None, metadata=_range(0.0, lo_open=True))
    accumulate: int = field(default=1, metadata=_range(1, 4096))


@dataclass
class ScheduleConfig:
    name: str = "cosine"
    milestones: List[int] = field(default_factory=list, metadata=_range(0, MAX_EPOCHS))
    gamma: float = field(default=0.1, metadata=_range(0.0, lo_open=True))
    warmup_epochs: float = field(default=0.0, metadata=_range(0.0))
    min_lr: float = field(default=0.0, metadata=_range(0.0))
    options: Dict[str, Any] = field(default_factory=dict)
    interval: Literal["step", "epoch"] = "step"


@dataclass
class TrainConfig:
    epochs: int = field(default=15, metadata=_range(1, MAX_EPOCHS))
    seed: int = field(default=0, metadata=_range(0, MAX_SEED))
    deterministic: bool = False
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    channels_last: Union[bool, Literal["auto"]] = "auto"
    compile: bool = False
    sync_bn: bool = False
    threads: Optional[int] = field(default=None, metadata=_range(1, MAX_THREADS))
    eval_every: int = field(default=1, metadata=_range(1, MAX_EPOCHS))
    checkpoint_every: int = field(default=1, metadata=_range(1, MAX_EPOCHS))
    snapshot_epochs: List[int] = field(default_factory=list, metadata=_range(1, MAX_EPOCHS))
    tensorboard: bool = True
    ema_decay: Optional[float] = field(default=None, metadata=_range(0.0, 1.0, lo_open=True, hi_open=True))
    early_stop_patience: Optional[int] = field(default=None, metadata=_range(1, MAX_EPOCHS))


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


def _show(value: Any) -> str:
    """``repr`` for a message, short even for a huge integer or a long string."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"an integer of {len(str(abs(value))) if value.bit_length() < 13000 else 'thousands of'} digits"
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _not_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, str):  # "nan", "inf", "-Infinity" (a flag like --lr nan)
        try:
            return not math.isfinite(float(value))
        except ValueError:
            return False
    return False


def _check_value(path: str, value: Any, ann: Any, rng) -> Any:
    wants_number = _type_ok(1.0, ann) and not _type_ok("x", ann)
    if _not_finite(value) and (wants_number or isinstance(value, float)):
        raise ConfigError(f"{path}: expected a finite number, got {_show(value)}")
    if not _type_ok(value, ann):
        raise ConfigError(f"{path}: expected {describe_type(ann)}, got {_show(value)}")
    origin = typing.get_origin(ann)
    if origin in (list, List):
        (item,) = typing.get_args(ann) or (Any,)
        return [_check_value(f"{path}[{i}]", v, item, rng) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        _, vtype = typing.get_args(ann) or (str, Any)
        value = {str(k): _check_value(f"{path}.{k}", v, vtype, None) for k, v in value.items()}
    if ann is float and isinstance(value, int):
        value = float(value)
    if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi, lo_open, hi_open = rng
        bad = (lo is not None and (value <= lo if lo_open else value < lo)) or (
            hi is not None and (value >= hi if hi_open else value > hi)
        )
        if bad:
            lo_s = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_s = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            expect = " and ".join(s for s in (lo_s, hi_s) if s)
            raise ConfigError(f"{path}: expected a value {expect}, got {_show(value)}")
    return value


INT64 = 2**63 - 1


def check_scalars(data: Any, where: str = "") -> None:
    """Refuse NaN, infinities, integers beyond 64 bits and strings with a NUL character
    anywhere in a config tree.

    This covers the free-form parts too (``model.options``, ``method.options``,
    ``method.weights``, ``data.options``) before a factory sees them.
    """
    if isinstance(data, dict):
        for k, v in data.items():
            check_scalars(v, f"{where}.{k}" if where else str(k))
    elif isinstance(data, (list, tuple)):
        for i, v in enumerate(data):
            check_scalars(v, f"{where}[{i}]")
    elif isinstance(data, float) and not math.isfinite(data):
        raise ConfigError(f"{where}: expected a finite number, got {data!r}")
    elif isinstance(data, int) and not isinstance(data, bool) and abs(data) > INT64:
        raise ConfigError(f"{where}: expected an integer of at most 64 bits, got {_show(data)}")
    elif isinstance(data, str) and "\x00" in data:
        raise ConfigError(f"{where}: a NUL character is not allowed, got {_show(data)}")


def config_from_dict(data: Optional[dict]) -> RunConfig:
    cfg = _section_from_dict(RunConfig, data or {}, "")
    check_scalars(data or {})
    return cfg


def parse_override(text: str) -> tuple:
    """``"optim.lr=0.05"`` → (["optim", "lr"], 0.05); the value is parsed as YAML
    (``load_yaml_text``: ``1e-3`` is a float, tags are refused); text that is not YAML stays a
    string."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected KEY=VALUE, e.g. optim.lr=0.05")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {text!r}: empty key")
    try:
        value = load_yaml_text(raw, f"override {key}=...") if raw.strip() else None
    except _NotYaml:
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


# ----------------------------------------------------------------------------- YAML reading
#
# Every YAML file the project reads (run configs, pipelines, studies, a run's config.yaml) goes
# through ``load_yaml``; override values through ``load_yaml_text``. Both are ``safe_load`` plus:
# YAML 1.2 floats (``1e-3``, ``5E4``: PyYAML's YAML 1.1 rules read them as strings), no tags
# (``!!python/...``, ``!custom``), no key twice in a mapping, bounded size and alias expansion (an "alias bomb" of nested
# ``*refs`` expands exponentially), no recursive aliases, UTF-8 text. Each failure is one
# ``ConfigError`` line naming the file.

MAX_YAML_BYTES = 1 << 20  # 1 MiB: configs, pipelines and studies are a few KiB
MAX_YAML_NODES = 100_000  # scalars + lists + mappings once every alias is expanded

_FLOAT_WITH_EXPONENT = re.compile(
    r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


MAX_YAML_DEPTH = 100  # nested lists/mappings


class YamlLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that also reads ``1e-3``, ``5E4``, ``1.5e+3`` as floats and stops
    at ``MAX_YAML_DEPTH`` levels of nesting (PyYAML composes recursively)."""

    _depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                mark = self.peek_event().start_mark
                raise ConfigError(f"line {mark.line + 1}: nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


YamlLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITH_EXPONENT,
                                 list("-+0123456789."))
_ALLOWED_TAGS = frozenset(t for t in yaml.SafeLoader.yaml_constructors if t) | {
    "tag:yaml.org,2002:merge"}


class _NotYaml(ConfigError):
    """A syntax error (override values fall back to the plain string)."""


def _shown_tag(tag: str) -> str:
    return "!!" + tag[len("tag:yaml.org,2002:"):] if tag.startswith("tag:yaml.org,2002:") else tag


def _check_nodes(root, where: str) -> None:
    """Tags allowed, no recursive alias, at most MAX_YAML_NODES values and MAX_YAML_DEPTH
    levels once aliases are expanded (an alias bomb is small as nodes but huge expanded)."""
    seen: Dict[int, tuple] = {}  # id(node) → (expanded size, expanded height)
    active = set()

    def walk(node, depth: int) -> tuple:
        key = id(node)
        line = node.start_mark.line + 1
        if key in seen:
            size, height = seen[key]
        else:
            if key in active:
                raise ConfigError(f"{where}: line {line}: an alias refers to a node that contains "
                                  "it (recursive YAML is not allowed)")
            if node.tag not in _ALLOWED_TAGS:
                raise ConfigError(f"{where}: line {line}: tags such as {_shown_tag(node.tag)} are "
                                  "not allowed; write plain YAML (mappings, lists, strings, numbers, "
                                  "booleans, null)")
            if depth > MAX_YAML_DEPTH:
                height = MAX_YAML_DEPTH + 1  # reported below, without recursing further
                size = 1
            else:
                if isinstance(node, yaml.MappingNode):
                    _check_unique_keys(node, where)
                active.add(key)
                children = node.value if isinstance(node, yaml.SequenceNode) else \
                    [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
                stats = [walk(c, depth + 1) for c in children]
                active.discard(key)
                size = 1 + sum(st[0] for st in stats)
                height = 1 + max((st[1] for st in stats), default=0)
            seen[key] = (size, height)
        if depth - 1 + height > MAX_YAML_DEPTH:
            raise ConfigError(f"{where}: line {line}: nested more than {MAX_YAML_DEPTH} levels deep "
                              "once its aliases (*name) are expanded")
        if size > MAX_YAML_NODES:
            raise ConfigError(f"{where}: line {line}: expands to more than {MAX_YAML_NODES:,} "
                              "values once its aliases (*name) are expanded; not a config")
        return size, height

    walk(root, 1)


def _check_unique_keys(node, where: str) -> None:
    """YAML requires unique keys; PyYAML silently keeps the last (a config with two ``optim:``
    sections would lose the first)."""
    seen = set()
    for k, _ in node.value:
        if isinstance(k, yaml.ScalarNode) and k.tag != "tag:yaml.org,2002:merge":
            ident = (k.tag, k.value)
            if ident in seen:
                raise ConfigError(f"{where}: line {k.start_mark.line + 1}: key {k.value!r} appears "
                                  "twice in the same mapping")
            seen.add(ident)


def load_yaml_text(text: str, where: str) -> Any:
    """Parse one YAML document with the project's rules (see above); errors name ``where``."""
    try:
        loader = YamlLoader(text)
        try:
            return _load_document(loader, where)
        finally:
            loader.dispose()
    except yaml.reader.ReaderError as exc:  # raised while reading, by the constructor or later
        raise ConfigError(f"{where}: character #x{exc.character:04x} at position {exc.position} "
                          "is not allowed in YAML (a binary file?)") from None
    except RecursionError:
        raise ConfigError(f"{where}: nested too deeply") from None


def _load_document(loader: YamlLoader, where: str) -> Any:
    try:
        node = loader.get_single_node()
    except ConfigError as exc:  # too deep
        raise ConfigError(f"{where}: {exc}") from None
    except yaml.reader.ReaderError:
        raise
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark is not None else ""
        problem = "; ".join(t for t in (getattr(exc, "context", None), getattr(exc, "problem", None))
                            if t) or "syntax error"
        raise _NotYaml(f"{where}:{line} is not valid YAML ({problem})") from None
    if node is None:
        return None
    _check_nodes(node, where)
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}:" if mark is not None else ""
        raise ConfigError(f"{where}:{line} {getattr(exc, 'problem', None) or exc}") from None
    except (ValueError, OverflowError) as exc:  # a 5000-digit integer, a 30 February
        raise ConfigError(f"{where}: a value cannot be read ({str(exc).split(';')[0]})") from None


def load_yaml(path: str, what: str = "config file") -> dict:
    """Read a YAML mapping from ``path`` (config, pipeline, study, a run's config.yaml).

    At most ``MAX_YAML_BYTES``, UTF-8, ``load_yaml_text``'s rules; an empty file is ``{}``.
    Every failure is one ``ConfigError`` line starting with ``"{what} {path}:"``.
    """
    where = f"{what} {path}"
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{where}: not found")
    if not p.is_file():
        raise ConfigError(f"{where}: not a file")
    try:
        with open(p, "rb") as f:
            raw = f.read(MAX_YAML_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{where}: cannot read ({exc.strerror or exc})") from None
    if len(raw) > MAX_YAML_BYTES:
        raise ConfigError(f"{where}: larger than {MAX_YAML_BYTES // 1024} KiB; not a config")
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{where}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); save it as UTF-8") from None
    data = load_yaml_text(text, where)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level")
    return data


RECIPES_DIR = Path(__file__).resolve().parent / "recipes"


def resolve_recipe(path: str) -> str:
    """``path`` itself when it is a file; else, for a bare name such as ``ols-cifar100``, the
    packaged recipe of that name (``softlabels/recipes/<name>.yaml``, shipped in the wheel); else
    ``path`` unchanged (``load_yaml`` then says it is not found)."""
    p = Path(path)
    if p.exists() or "/" in str(path):
        return str(path)
    name = p.name if p.suffix == ".yaml" else f"{p.name}.yaml"
    packaged = RECIPES_DIR / name
    return str(packaged) if packaged.is_file() else str(path)


def build_config(path: Optional[str] = None, overrides: Optional[List[str]] = None,
                 base: Optional[dict] = None) -> RunConfig:
    """YAML file (if any; a file path or the name of a packaged recipe) → dotted overrides →
    validated RunConfig."""
    data = _deepcopy(base or {})
    if path:
        data = _merge(data, load_yaml(resolve_recipe(path)))
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
    from .engine.optim import check_optim_config

    check_optim_config(cfg.optim, cfg.schedule)
    if cfg.schedule.name == "step" and any(m < 1 for m in cfg.schedule.milestones):
        raise ConfigError("schedule.milestones: epochs must be >= 1")


def dump_yaml(cfg: RunConfig) -> str:
    """The config as YAML (``load_yaml`` reads it back to the same values)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
