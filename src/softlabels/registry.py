"""Name → factory registries for models, datasets and methods.

Everything the CLI and config can name is looked up here, so adding a model or a method is one
decorator in one file; no ``if name == ...`` chains anywhere else.
"""
from __future__ import annotations

import functools
import inspect
import math
import types
import typing
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional

from .errors import ConfigError


@dataclass
class Entry:
    name: str
    factory: Callable[..., Any]
    description: str
    reference: str = ""


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: Dict[str, Entry] = {}
        self._prefixes: Dict[str, Entry] = {}

    def register(self, name: str, description: str = "", reference: str = ""):
        """Decorator: ``@MODELS.register("resnet8", "CIFAR ResNet-8 (3 stages)")``."""

        def deco(factory):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            doc = description or (inspect.getdoc(factory) or "").split("\n")[0]
            self._entries[name] = Entry(name, factory, doc, reference)
            return factory

        return deco

    def register_prefix(self, prefix: str, factory: Callable[..., Any], description: str = "",
                        reference: str = "") -> None:
        """A family of names ``<prefix><rest>`` served by one factory, which receives
        ``name=<rest>`` (e.g. ``MODELS.register_prefix("timm:", ...)`` for ``timm:<model>``).
        ``get`` returns an Entry whose factory has ``name`` bound; the entry is listed as
        ``<prefix><name>``."""
        if prefix in self._prefixes:
            raise ValueError(f"{self.kind} prefix {prefix!r} registered twice")
        self._prefixes[prefix] = Entry(prefix + "<name>", factory, description, reference)

    def _prefixed(self, name: str) -> Optional[Entry]:
        for prefix, entry in self._prefixes.items():
            if isinstance(name, str) and name.startswith(prefix):
                rest = name[len(prefix):]
                if not rest:
                    raise ConfigError(f"{self.kind} {name!r}: give a name after {prefix!r}, "
                                      f"e.g. {prefix}<name>")
                return Entry(name, functools.partial(entry.factory, name=rest), entry.description,
                             entry.reference)
        return None

    def __contains__(self, name: str) -> bool:
        return name in self._entries or (isinstance(name, str) and any(
            name.startswith(p) and len(name) > len(p) for p in self._prefixes))

    def names(self) -> List[str]:
        return sorted(self._entries)

    def entries(self) -> List[Entry]:
        """The registered entries, then one per prefix (named ``<prefix><name>``)."""
        return [self._entries[n] for n in self.names()] + [self._prefixes[p] for p in sorted(self._prefixes)]

    def get(self, name: str) -> Entry:
        entry = self._entries.get(name) if isinstance(name, str) else None
        if entry is None:
            entry = self._prefixed(name)
        if entry is None:
            extra = "".join(f", {p}<name>" for p in sorted(self._prefixes))
            raise ConfigError(
                f"unknown {self.kind} {name!r}; choose one of: {', '.join(self.names())}{extra}"
            )
        return entry

    def build(self, name: str, options: Optional[dict] = None, where: str = "", **fixed):
        """Call the factory with ``fixed`` keyword arguments plus user ``options``.

        User options are checked against the factory's signature: an unknown key or a value of
        the wrong type raises ConfigError naming ``where.key``.
        """
        entry = self.get(name)
        options = dict(options or {})
        checked = check_kwargs(entry.factory, options, where or f"{self.kind}.options", skip=fixed)
        return entry.factory(**fixed, **checked)


@dataclass(frozen=True)
class Range:
    """The allowed interval of a numeric option, declared once in the signature:
    ``lam: Annotated[float, Range(0, 1)] = 0.8``. ``low``/``high`` None = unbounded; the
    ``*_open`` flags exclude the bound. Values must also be finite. ``None`` (for an
    ``Optional`` option) is not checked against the range."""

    low: Optional[float] = None
    high: Optional[float] = None
    low_open: bool = False
    high_open: bool = False

    def ok(self, value) -> bool:
        if not math.isfinite(value):
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return "a finite number " + " and ".join(parts) if parts else "a finite number"


def _split_annotated(annotation: Any):
    """(base annotation, Range or None) of ``Annotated[T, Range(...)]``, also inside Optional."""
    if typing.get_origin(annotation) is typing.Annotated:
        base, *meta = typing.get_args(annotation)
        rng = next((m for m in meta if isinstance(m, Range)), None)
        return base, rng
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        args, rng = [], None
        for a in typing.get_args(annotation):
            b, r = _split_annotated(a)
            args.append(b)
            rng = rng or r
        if rng is not None:
            return typing.Union[tuple(args)], rng
    return annotation, None


def _type_ok(value: Any, annotation: Any) -> bool:
    annotation, _ = _split_annotated(annotation)
    if annotation is inspect.Parameter.empty or annotation is Any:
        return True
    origin = typing.get_origin(annotation)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return value is None
    if origin is typing.Literal:
        return value in typing.get_args(annotation)
    if origin in (list, tuple, typing.Sequence):
        return isinstance(value, (list, tuple))
    if origin is dict:
        return isinstance(value, dict)
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(annotation, type):
        return isinstance(value, annotation)
    return True


def describe_type(annotation: Any) -> str:
    annotation, _ = _split_annotated(annotation)
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def option_hints(fn: Callable) -> Dict[str, Any]:
    """The resolved annotations of ``fn``'s parameters (of ``__init__`` for a class), with their
    ``Annotated`` metadata (the declared ranges)."""
    # for a class, the options are __init__'s parameters (get_type_hints(cls) would give the
    # class attributes' annotations instead)
    target = fn.__init__ if inspect.isclass(fn) else fn
    target = getattr(target, "__wrapped__", target)
    try:
        return typing.get_type_hints(target, include_extras=True)
    except Exception:  # unresolvable forward refs: fall back to raw annotations
        return {}


def check_value(key: str, value: Any, annotation: Any, where: str) -> Any:
    """One option against its declared type and range: the value (an int given for a float
    becomes a float), or a one-line ConfigError naming ``where.key``."""
    if not _type_ok(value, annotation):
        raise ConfigError(f"{where}.{key}: expected {describe_type(annotation)}, got {value!r}")
    base, rng = _split_annotated(annotation)
    if rng is not None and isinstance(value, (int, float)) and not isinstance(value, bool):
        if not rng.ok(value):
            raise ConfigError(f"{where}.{key}: expected {rng.describe()}, got {value!r}")
    if isinstance(value, int) and not isinstance(value, bool) and (
            base is float or (typing.get_origin(base) is typing.Union and float in typing.get_args(base)
                              and int not in typing.get_args(base))):
        value = float(value)
    return value


def declared_function(call: Callable[..., Any], signature: inspect.Signature, hints: Dict[str, Any], *,
                      name: str, doc: Optional[str], module: str) -> Callable[..., Any]:
    """A function whose options are ``signature`` (``hints``: their resolved annotations),
    called like a ``def`` with that signature would be (unknown or missing arguments raise
    TypeError, defaults filled in), that returns ``call(**arguments)``. For factories generated
    from a shared declaration (model variants, file readers): ``inspect.signature``,
    :func:`option_hints` and :func:`check_kwargs` read what is declared here."""

    def function(*args, **kwargs):
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        return call(**bound.arguments)

    function.__signature__ = signature
    function.__annotations__ = dict(hints)
    function.__name__ = function.__qualname__ = name
    function.__doc__ = doc
    function.__module__ = module
    return function


def check_kwargs(fn: Callable, options: dict, where: str, skip=()) -> dict:
    """Validate ``options`` against ``fn``'s keyword parameters (types and declared ranges);
    return them (ints → floats where a float is declared)."""
    if isinstance(fn, functools.partial):  # a prefix entry: its bound name is not an option
        skip, fn = tuple(skip) + tuple(fn.keywords), fn.func
    sig = inspect.signature(fn)
    hints = option_hints(fn)
    params = {
        n: p
        for n, p in sig.parameters.items()
        if n not in skip and n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    out = {}
    for key, value in options.items():
        if key not in params:
            accepted = ", ".join(sorted(params)) or "none"
            raise ConfigError(f"{where}.{key}: unknown option (accepted: {accepted})")
        out[key] = check_value(key, value, hints.get(key, params[key].annotation), where)
    return out


MODELS = Registry("model")
DATASETS = Registry("dataset")
METHODS = Registry("method")
