"""Checkpoints: tensors in safetensors, everything else in a JSON sidecar, saved atomically as a pair.

A checkpoint named ``NAME`` (``last``, ``best``, ``epoch12``) lives in its run's ``checkpoints/``
folder as numbered generations::

    NAME.g000007.safetensors   model, method and optimiser tensors plus RNG states (as uint8)
    NAME.g000007.json          epoch, optimiser hyper-parameters, schedule position, best-so-far
                               tracking and the identity of the model it belongs to

A save writes generation G+1 next to G: the tensors first (to a ``.tmp`` file, flushed, fsynced,
renamed), then the sidecar the same way, then the folder is fsynced; only then is the pair
complete and only then are older generations removed. A kill at any moment therefore leaves the
previous complete pair in place, and a load takes the newest *complete* generation (both files
present, sidecar valid, the same random token in both). ``NAME.safetensors``/``NAME.json``
without a generation number (written by softlabels < 0.2) load as generation 0. Nothing here
unpickles. Writing failures (disk full, read-only folder) become one-line ``StorageError``.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import random
import re
import secrets
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError, StorageError
from .runtime import critical_section

_GEN = re.compile(r"^(?P<name>.+)\.g(?P<gen>\d{6,})\.(?P<ext>safetensors|json)(?P<tmp>\.tmp)?$")


# ---------------------------------------------------------------------------------- writing files
@contextlib.contextmanager
def storage(path) -> None:
    """Turn an OSError while writing ``path`` into one line naming the path and the cause."""
    try:
        yield
    except OSError as exc:
        code = errno.errorcode.get(exc.errno, "") if exc.errno else ""
        cause = exc.strerror or str(exc) or type(exc).__name__
        raise StorageError(f"cannot write {getattr(exc, 'filename', None) or path}: {cause}"
                           f"{f' ({code})' if code else ''}") from None


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (a no-op where directories cannot be opened)."""
    try:
        fd = os.open(str(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a flushed, fsynced temporary file and a rename; the
    folder is fsynced too, so after a power loss the file is either the old or the new one."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with critical_section(), storage(path):
        try:
            with open(tmp, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError:
            _unlink(tmp)
            raise
        fsync_dir(path.parent)


def append_line(path: Path, line: str) -> None:
    """Append one line (metrics.jsonl), flushed and fsynced."""
    with critical_section(), storage(path), open(path, "a") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _unlink(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


# ---------------------------------------------------------------------------------- generations
def generations(stem: Path) -> Dict[int, Dict[str, Path]]:
    """Every generation of checkpoint ``stem`` on disk, complete or not: {gen: {ext: path}}
    (``ext`` is ``safetensors``, ``json``, ``tmp.safetensors`` or ``tmp.json``)."""
    stem = Path(stem)
    found: Dict[int, Dict[str, Path]] = {}
    if not stem.parent.is_dir():
        return found
    for p in stem.parent.iterdir():
        m = _GEN.match(p.name)
        if m and m["name"] == stem.name:
            found.setdefault(int(m["gen"]), {})[f"tmp.{m['ext']}" if m["tmp"] else m["ext"]] = p
    legacy = {ext: stem.with_name(f"{stem.name}.{ext}") for ext in ("safetensors", "json")}
    legacy = {k: v for k, v in legacy.items() if v.is_file()}
    if legacy:
        found.setdefault(0, {}).update(legacy)
    return found


def complete_generations(stem: Path) -> List[int]:
    """Generations with both files present, newest first (validity is checked on load)."""
    return sorted((g for g, f in generations(stem).items() if "safetensors" in f and "json" in f), reverse=True)


def checkpoint_names(folder: Path) -> List[str]:
    """Names of the checkpoints with at least one complete generation in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    names = set()
    for p in folder.iterdir():
        m = _GEN.match(p.name)
        if m and not m["tmp"]:
            names.add(m["name"])
        elif p.suffix == ".json" and not p.name.endswith(".tmp"):
            names.add(p.stem)
    return sorted(n for n in names if complete_generations(folder / n))


def exists(stem: Path) -> bool:
    return bool(complete_generations(stem))


def save_checkpoint(stem: Path, tensors: Dict[str, torch.Tensor], meta: dict, keep: Optional[int] = 1) -> Path:
    """Write a new generation of ``stem``; once it is complete and durable, remove all but the
    newest ``keep`` complete generations (``None``: keep all; see :func:`prune`). Returns the
    sidecar's path. The previous generation stays intact whatever happens during the save."""
    stem = Path(stem)
    folder = stem.parent
    with critical_section(), storage(folder):
        folder.mkdir(parents=True, exist_ok=True)
        gen = max(generations(stem), default=0) + 1
        st = folder / f"{stem.name}.g{gen:06d}.safetensors"
        js = folder / f"{stem.name}.g{gen:06d}.json"
        token = secrets.token_hex(8)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
        tmp_st, tmp_js = st.with_name(st.name + ".tmp"), js.with_name(js.name + ".tmp")
        try:
            save_file(tensors, str(tmp_st), metadata={"token": token})
            with open(tmp_st, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp_st, st)
            with open(tmp_js, "w") as f:
                f.write(json.dumps({**meta, "token": token}, indent=1))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp_js, js)       # the pair is complete from here on
            fsync_dir(folder)
        except BaseException:
            for p in (tmp_st, tmp_js):
                _unlink(p)
            if not js.is_file():
                _unlink(st)
            raise
    if keep is not None:
        prune(stem, keep=keep)
    return js


def prune(stem: Path, keep: int = 1, after_epoch: Optional[int] = None) -> None:
    """Remove incomplete generations and all but the newest ``keep`` complete ones; with
    ``after_epoch``, first remove complete generations written for a later epoch (a resumed run
    discards what it will redo). Removal failures are ignored: they leave only extra files."""
    gens = generations(stem)
    complete = sorted((g for g, f in gens.items() if "safetensors" in f and "json" in f), reverse=True)
    drop = [g for g in gens if g not in complete]
    if after_epoch is not None:
        for g in list(complete):
            try:
                epoch = int(json.loads(gens[g]["json"].read_text()).get("epoch", 0))
            except (OSError, ValueError, AttributeError, TypeError):
                continue
            if epoch > after_epoch:
                complete.remove(g)
                drop.append(g)
    drop += complete[keep:]
    newest = complete[0] if complete else None
    for g in drop:
        if g == newest:
            continue
        for p in gens[g].values():
            _unlink(p)


# ---------------------------------------------------------------------------------- loading
def load_checkpoint(stem: Path, training: bool = False) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Tensors and validated sidecar of the newest complete generation of ``stem``.

    ``training``: the sidecar must also hold what a resume needs (optimiser, schedule, RNG)."""
    stem = Path(stem)
    gens = complete_generations(stem)
    if not gens:
        raise CheckpointError(f"checkpoint {stem}: not found")
    files = generations(stem)[gens[0]]
    st, js = files["safetensors"], files["json"]
    try:
        meta = json.loads(js.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"checkpoint {js}: not valid JSON") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {js}: unreadable ({exc.strerror or exc})") from None
    validate_meta(meta, js, training)
    try:
        from safetensors import safe_open

        with safe_open(str(st), framework="pt") as f:
            token = (f.metadata() or {}).get("token")
        tensors = load_file(str(st))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"checkpoint {st}: unreadable ({str(exc).splitlines()[0][:120]})") from None
    if meta.get("token") != token:
        raise CheckpointError(f"checkpoint {stem}: .safetensors and .json are from different saves")
    return tensors, meta


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


_IDENTITY = {"model": str, "model_options": dict, "dataset": str, "method": str}


def validate_meta(meta, where, training: bool = False) -> None:
    """The sidecar's schema: one-line CheckpointError for a wrong shape, type or missing key."""
    def bad(what):
        raise CheckpointError(f"checkpoint {where}: {what}; the sidecar is damaged or not a softlabels checkpoint")

    if not isinstance(meta, dict):
        bad(f"expected a JSON object, got {type(meta).__name__}")
    for key, check, want in (("epoch", lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
                             ("num_classes", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
                             ("in_channels", lambda v: _is_int(v) and v >= 1, "an integer >= 1"),
                             ("identity", lambda v: isinstance(v, dict), "an object"),
                             ("token", lambda v: isinstance(v, str), "a string")):
        if key not in meta:
            bad(f"key {key!r} is missing")
        if not check(meta[key]):
            bad(f"{key} should be {want}, got {meta[key]!r:.60}")
    for key, typ in _IDENTITY.items():
        if not isinstance(meta["identity"].get(key), typ):
            bad(f"identity.{key} should be a {typ.__name__}, got {meta['identity'].get(key)!r:.60}")
    if not training:
        return
    for key in ("optimizer", "schedule", "rng"):
        if not isinstance(meta.get(key), dict):
            bad(f"{key} should be an object, got {meta.get(key)!r:.60}")
    opt = meta["optimizer"]
    if not isinstance(opt.get("param_groups"), list) or not all(isinstance(g, dict) and "params" in g
                                                                 for g in opt["param_groups"]):
        bad("optimizer.param_groups should be a list of parameter groups")
    if not isinstance(opt.get("scalars", {}), dict):
        bad("optimizer.scalars should be an object")
    sched = meta["schedule"]
    if not _is_int(sched.get("step_count")) or not isinstance(sched.get("base_lrs"), list) or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in sched["base_lrs"]):
        bad("schedule should hold an integer step_count and a list of base_lrs")
    best = meta.get("best")
    if best is not None and not (isinstance(best, dict) and _is_int(best.get("epoch"))
                                 and isinstance(best.get("test"), dict)):
        bad("best should be null or an object with epoch, val and test")
    if "python" in meta["rng"] and not isinstance(meta["rng"]["python"], list):
        bad("rng.python should be a list")


def prefixed(prefix: str, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return {f"{prefix}.{k}": v for k, v in state.items() if isinstance(v, torch.Tensor)}


def unprefixed(prefix: str, tensors: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    p = prefix + "."
    return {k[len(p):]: v for k, v in tensors.items() if k.startswith(p)}


def optimizer_state(opt: torch.optim.Optimizer) -> Tuple[Dict[str, torch.Tensor], dict]:
    """Split an optimizer state_dict into tensors and a JSON-able remainder."""
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{k}"] = v
            else:
                scalars[f"{pid}.{k}"] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer_state(opt: torch.optim.Optimizer, tensors: Dict[str, torch.Tensor], meta: dict,
                         where="checkpoint") -> None:
    state: Dict[int, dict] = {}
    try:
        for key, v in tensors.items():
            if key.startswith("optim."):
                _, pid, name = key.split(".", 2)
                state.setdefault(int(pid), {})[name] = v
        for key, v in meta.get("scalars", {}).items():
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"checkpoint {where}: optimizer state does not fit ({first})") from None


def rng_state(device: torch.device) -> Tuple[Dict[str, torch.Tensor], dict]:
    tensors = {"rng.torch": torch.get_rng_state()}
    if device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(device)
    return tensors, {"python": _jsonable(random.getstate())}


def load_rng_state(device: torch.device, tensors: Dict[str, torch.Tensor], meta: dict, where="checkpoint") -> None:
    try:
        if "rng.torch" in tensors:
            torch.set_rng_state(tensors["rng.torch"])
        if device.type == "cuda" and "rng.cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.cuda"], device)
        if "python" in meta:
            random.setstate(_tupled(meta["python"]))
    except (ValueError, TypeError, RuntimeError) as exc:
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:160]
        raise CheckpointError(f"checkpoint {where}: random-generator state is damaged ({first})") from None


def _jsonable(x):
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x):
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x
