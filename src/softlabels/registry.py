"""Name → factory registries for models, datasets and methods.

Everything the CLI and config can name is looked up here, so adding a model or a method is one
decorator in one file; no ``if name == ...`` chains anywhere else.
"""
from __future__ import annotations

import functools
import inspect
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


def _type_ok(value: Any, annotation: Any) -> bool:
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
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(annotation))
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    return getattr(annotation, "__name__", str(annotation))


def check_kwargs(fn: Callable, options: dict, where: str, skip=()) -> dict:
    """Validate ``options`` against ``fn``'s keyword parameters; return them (ints → floats)."""
    if isinstance(fn, functools.partial):  # a prefix entry: its bound name is not an option
        skip, fn = tuple(skip) + tuple(fn.keywords), fn.func
    sig = inspect.signature(fn)
    # for a class, the options are __init__'s parameters (get_type_hints(cls) would give the
    # class attributes' annotations instead)
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # unresolvable forward refs: fall back to raw annotations
        hints = {}
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
        ann = hints.get(key, params[key].annotation)
        if not _type_ok(value, ann):
            raise ConfigError(
                f"{where}.{key}: expected {describe_type(ann)}, got {value!r}"
            )
        if ann is float and isinstance(value, int):
            value = float(value)
        out[key] = value
    return out


MODELS = Registry("model")
DATASETS = Registry("dataset")
METHODS = Registry("method")
