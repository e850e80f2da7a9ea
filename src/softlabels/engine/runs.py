"""The one run manager: a run directory's layout, state, lock, resume, model and results.

``train``, ``compare``, ``pipeline`` and ``study`` all go through :class:`RunDir`; there is one
resume path (:meth:`RunDir.train`) and one way to load a run's model (:meth:`RunDir.load_model`).

Layout of a run directory::

    config.yaml        the RunConfig (written when the run starts)
    environment.json   versions, device, command, start time, and the teachers that taught it
                       (run directory or weights file, checkpoint, sha256 of the file)
    data.json          split sizes; noise.json with label noise
    metrics.jsonl      one record per finished epoch (a torn last line is ignored and redone)
    checkpoints/       NAME.gNNNNNN.{safetensors,json}: last, best, epochN (engine/checkpoint.py)
    final.json         the results; present only once the run has finished
    .lock              while a process owns the directory: {"pid", "host", "started", "command"}

States (:class:`RunState`): ``new`` (no config.yaml), ``interrupted`` (started, killed before
its first checkpoint: restarts from the beginning), ``resumable`` (a complete ``last``
checkpoint, no final.json), ``finished`` (a valid final.json), ``torn`` (final.json or
config.yaml unreadable: redone from the last checkpoint, or from the beginning).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import enum
import hashlib
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from ..config import RunConfig, config_from_dict, load_yaml, validate_registered
from ..errors import CheckpointError, ConfigError, RunLockedError, SoftlabelsError
from . import checkpoint as ckpt

# Config keys a resumed (or re-used) run may change: they do not change what is trained, so
# a resumed run still equals an uninterrupted one. ``train.epochs`` may only grow (extend).
# Everything else is the run's identity. This is the only list of them.
RESUME_ALLOWED = (
    "train.epochs", "train.device", "train.threads", "train.eval_every", "train.checkpoint_every",
    "train.snapshot_epochs", "train.compile", "data.root", "data.workers", "data.eval_batch_size",
    "out_dir", "name",
)

# files a run writes at its top level (removed by a restart from the beginning)
RUN_FILES = ("config.yaml", "environment.json", "data.json", "noise.json", "metrics.jsonl", "final.json")


class RunState(str, enum.Enum):
    NEW = "new"
    INTERRUPTED = "interrupted"
    RESUMABLE = "resumable"
    FINISHED = "finished"
    TORN = "torn"


# ------------------------------------------------------------------------------------ the lock
_HELD: Dict[str, List[Any]] = {}  # realpath of a lock file -> [fd, depth]: re-entrant per process


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return True
    return True


class RunLock:
    """An exclusive lock on a run directory while a process owns it.

    The file ``.lock`` holds ``{"pid", "host", "started", "command"}`` of the owner and is held
    with ``flock``, which the kernel releases when the owner dies, so a lock left by a dead
    process is taken over. Where ``flock`` is not supported, the owner's PID decides: a lock of a
    process that no longer exists on this host is stale and taken over. Re-entrant in one
    process; only DDP rank 0 takes it."""

    def __init__(self, run_dir: Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / ".lock"

    @staticmethod
    def owner_text(info: dict) -> str:
        return (f"PID {info.get('pid', '?')} on {info.get('host', '?')} since {info.get('started', '?')}"
                + (f" ({info['command']})" if info.get("command") else ""))

    def read(self) -> Optional[dict]:
        try:
            info = json.loads(self.path.read_text())
        except (OSError, ValueError):
            return None
        return info if isinstance(info, dict) else None

    def owner(self) -> Optional[dict]:
        """The owner's record when another live process holds the lock, else None (a check that
        takes nothing: for schedulers that skip runs in use instead of stopping)."""
        import fcntl

        if os.path.realpath(self.path) in _HELD:
            return None
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return self.read() or {}
        except OSError:
            info = self.read()
            alive = info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
                and _pid_alive(info["pid"])
            return info if alive else None
        finally:
            os.close(fd)
        return None

    def acquire(self) -> None:
        import fcntl

        with ckpt.storage(self.run_dir):
            self.run_dir.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _HELD:
            _HELD[key][1] += 1
            return
        for _ in range(5):
            with ckpt.storage(self.path):
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                for wait in (0.05, 0.1, 0.2, None):  # owner() of another process holds it for an instant
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                        break
                    except BlockingIOError:
                        if wait is None:
                            raise
                        time.sleep(wait)
            except BlockingIOError:
                os.close(fd)
                info = self.read() or {}
                raise RunLockedError(f"run directory {self.run_dir} is in use by {self.owner_text(info)}; "
                                     f"wait for it to finish or stop it") from None
            except OSError:  # no flock on this file system: the recorded PID decides
                info = self.read()
                if info and info.get("host") == socket.gethostname() and isinstance(info.get("pid"), int) \
                        and info["pid"] != os.getpid() and _pid_alive(info["pid"]):
                    os.close(fd)
                    raise RunLockedError(f"run directory {self.run_dir} is in use by {self.owner_text(info)}; "
                                         f"wait for it to finish or stop it") from None
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # the previous owner removed the file between our open and flock
                os.close(fd)
                continue
            info = {"pid": os.getpid(), "host": socket.gethostname(),
                    "started": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
                    "command": " ".join(sys.argv)[:300]}
            try:
                with ckpt.storage(self.path):
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, json.dumps(info).encode(), 0)
                    os.fsync(fd)
            except BaseException:
                os.close(fd)
                raise
            _HELD[key] = [fd, 1]
            return
        raise RunLockedError(f"run directory {self.run_dir}: could not take its lock {self.path}")

    def release(self) -> None:
        key = os.path.realpath(self.path)
        held = _HELD.get(key)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _HELD[key]
        try:
            os.unlink(self.path)  # while still holding it: a waiter re-checks the inode
        except OSError:
            pass
        os.close(held[0])

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()


# ------------------------------------------------------------------------------------ identity
def _flat(d: Any, prefix: str = "") -> Dict[str, Any]:
    if isinstance(d, dict):
        out: Dict[str, Any] = {}
        for k, v in d.items():
            out.update(_flat(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: d}


def config_changes(old: RunConfig, new: RunConfig) -> List[Tuple[str, Any, Any]]:
    """(key, old, new) for every leaf that differs between two configs."""
    a, b = _flat(old.to_dict()), _flat(new.to_dict())
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def _allowed(key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in RESUME_ALLOWED)


def check_same_run(old: RunConfig, new: RunConfig, where: Path, done_epochs: int = 0) -> None:
    """Refuse a config that would change what the run in ``where`` is (one line naming the key);
    allow the keys of RESUME_ALLOWED (``train.epochs`` only to extend)."""
    for key, a, b in config_changes(old, new):
        if not _allowed(key):
            raise ConfigError(f"{key}: run {where} was made with {a!r}; changing it to {b!r} would make it another run "
                              f"(on resume only {', '.join(RESUME_ALLOWED)} may change; start a new run elsewhere)")
    if new.train.epochs < done_epochs:
        raise ConfigError(f"train.epochs: run {where} has already done {done_epochs} epochs; "
                          f"{new.train.epochs} would shorten it (it can only be extended)")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _say(text: str) -> None:
    print(f"softlabels: {text}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------ the manager
class RunDir:
    """A run directory: see the module docstring for its layout and states."""

    def __init__(self, path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    # layout
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def final_path(self) -> Path:
        return self.path / "final.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    def checkpoint_stem(self, name: str) -> Path:
        return self.checkpoints / name

    def lock(self) -> RunLock:
        return RunLock(self.path)

    # state
    def state(self) -> RunState:
        if not self.config_path.is_file():
            return RunState.NEW
        try:
            self.config()
        except SoftlabelsError:
            return RunState.TORN
        if self.final_path.exists():
            try:
                self.results()
            except SoftlabelsError:
                return RunState.TORN
            return RunState.FINISHED
        if ckpt.exists(self.checkpoint_stem("last")):
            return RunState.RESUMABLE
        return RunState.INTERRUPTED

    def config(self) -> RunConfig:
        """The run's recorded config, validated."""
        if not self.config_path.is_file():
            raise ConfigError(f"{self.path}: no config.yaml there; not a run directory")
        try:
            cfg = config_from_dict(load_yaml(str(self.config_path)))
        except ConfigError as exc:
            raise ConfigError(f"{self.config_path}: damaged ({exc})") from None
        validate_registered(cfg)
        return cfg

    def results(self) -> dict:
        """final.json, checked: ``run``, ``last`` and ``best`` blocks with an epoch and test metrics."""
        p = self.final_path
        try:
            final = json.loads(p.read_text())
        except FileNotFoundError:
            raise CheckpointError(f"{p}: not found; the run has not finished") from None
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{p}: torn or damaged ({type(exc).__name__}); the run will be redone") from None
        ok = isinstance(final, dict) and isinstance(final.get("run"), dict) and all(
            isinstance(final.get(b), dict) and isinstance(final[b].get("epoch"), int)
            and isinstance(final[b].get("test"), dict) for b in ("last", "best"))
        if not ok:
            raise CheckpointError(f"{p}: not the results of a finished run (missing run/last/best blocks)")
        return final

    def done_epochs(self) -> int:
        from .trainer import read_metrics

        rows = read_metrics(self.path)
        return int(rows[-1]["epoch"]) if rows and isinstance(rows[-1].get("epoch"), int) else 0

    def checkpoint_names(self) -> List[str]:
        return ckpt.checkpoint_names(self.checkpoints)

    def resolve_checkpoint(self, name: Optional[str] = None) -> str:
        """``None``/``best`` → the checkpoint final.json names as best (``last`` for a run without
        a validation split); any other name must exist."""
        available = self.checkpoint_names()
        if name in (None, "best") and "best" not in available:
            final = None
            if self.final_path.is_file():
                with contextlib.suppress(SoftlabelsError):
                    final = self.results()
            named = (final or {}).get("best_checkpoint")
            if named is None and final is not None and final["best"]["epoch"] == final["last"]["epoch"]:
                named = "last"
            if named is None:
                with contextlib.suppress(SoftlabelsError):
                    if self.config().data.val_fraction == 0:
                        named = "last"  # no validation split: best = last epoch
            name = named or "best"
        name = name or "best"
        if name not in available:
            raise CheckpointError(f"{self.path}: no checkpoint {name!r} "
                                  f"(available: {', '.join(available) or 'none yet'})")
        return name

    # models
    def load_checkpoint(self, checkpoint: Optional[str] = None, cfg: Optional[RunConfig] = None):
        """(name, tensors, meta, sidecar path) of a checkpoint, its identity checked against the
        run's config."""
        from .trainer import check_identity

        cfg = cfg or self.config()
        name = self.resolve_checkpoint(checkpoint)
        stem = self.checkpoint_stem(name)
        tensors, meta = ckpt.load_checkpoint(stem)
        check_identity(meta, cfg, stem)
        gen = ckpt.complete_generations(stem)[0]
        return name, tensors, meta, ckpt.generations(stem)[gen]["safetensors"]

    def load_model(self, checkpoint: Optional[str] = None, *, num_classes: Optional[int] = None,
                   with_meta: bool = False):
        """The run's model from a checkpoint, on the CPU, in eval mode. It carries
        ``softlabels_source`` (run, checkpoint, file, sha256) so a run it teaches records it.
        ``num_classes``: refuse a model for another number of classes."""
        from ..methods.base import build_run_model
        from .trainer import load_state

        cfg = self.config()
        name, tensors, meta, file = self.load_checkpoint(checkpoint, cfg)
        k = int(meta["num_classes"])
        if num_classes is not None and k != num_classes:
            raise CheckpointError(f"run {self.path} predicts {k} classes, this run's dataset has {num_classes}")
        model = build_run_model(cfg, k, int(meta["in_channels"]))
        load_state(model, ckpt.unprefixed("model", tensors), file, "model")
        model.softlabels_source = {"run": str(self.path.resolve()), "checkpoint": name, "epoch": meta["epoch"],
                                   "file": str(file.resolve()), "sha256": file_sha256(file),
                                   "model": {"name": cfg.model.name, "options": cfg.model.options}}
        model.eval()
        return (model, meta) if with_meta else model

    # training
    def reset(self) -> None:
        """Remove what a run wrote (a restart from the beginning); other files are left alone."""
        for n in RUN_FILES:
            self._remove(self.path / n)
        if self.checkpoints.is_dir():
            for p in self.checkpoints.iterdir():
                if p.suffix in (".safetensors", ".json", ".tmp") and p.is_file():
                    self._remove(p)

    @staticmethod
    def _remove(p: Path) -> None:
        with ckpt.storage(p), contextlib.suppress(FileNotFoundError):
            p.unlink()

    def _check_same_teachers(self, teachers: Sequence) -> None:
        """A run continues only with the teachers it was started with (same file contents)."""
        try:
            recorded = json.loads((self.path / "environment.json").read_text()).get("teachers")
        except (OSError, ValueError, AttributeError):
            return
        if not isinstance(recorded, list):
            return
        now = teacher_record(teachers)
        if len(recorded) != len(now):
            raise ConfigError(f"run {self.path} was taught by {len(recorded)} teacher(s); "
                              f"continuing it with {len(now)} would make it another run")
        for i, (a, b) in enumerate(zip(recorded, now)):
            if isinstance(a, dict) and a.get("sha256") and b.get("sha256") and a["sha256"] != b["sha256"]:
                raise ConfigError(f"teacher {i + 1} of run {self.path} was {a.get('file') or a.get('weights')} "
                                  f"(sha256 {a['sha256'][:12]}…); now it is {b.get('file') or b.get('weights')} "
                                  f"(sha256 {b['sha256'][:12]}…): the teacher changed, so this would be another run")

    def train(self, cfg: RunConfig, rt, *, teachers: Sequence = (), progress=None, progress_offset: int = 0,
              progress_total_runs: int = 1, mode: str = "reuse", say: Callable[[str], None] = _say) -> dict:
        """Train, resume or reuse this run; returns its final.json content. The one resume path.

        mode ``new``: the directory must not hold a run (``train --out``); ``resume``: continue
        it (``train --resume``); ``reuse``: a finished run is read back, anything else resumes
        or starts (compare, pipeline, study). A run killed before its first checkpoint restarts
        from the beginning; a torn one is redone from its last checkpoint. ``cfg`` may differ
        from the recorded config only in RESUME_ALLOWED keys. The directory is locked meanwhile
        and SIGTERM stops it like Ctrl-C (raising runtime.Interrupted, never inside a save)."""
        from .runtime import Interrupted, stop_on_signals

        say = say if rt.is_main else (lambda text: None)
        lock = self.lock() if rt.is_main else contextlib.nullcontext()
        existed = self.path.exists()
        try:
            try:
                with lock, stop_on_signals():
                    return self._train(cfg, rt, teachers, progress, progress_offset, progress_total_runs, mode, say)
            finally:
                # a run that failed before writing anything (bad data, a refused config) leaves no
                # empty folder behind that a later `--out` would take for an existing run
                if not existed and self.path.is_dir() and not any(self.path.iterdir()):
                    with contextlib.suppress(OSError):
                        self.path.rmdir()
        except KeyboardInterrupt as exc:
            if not isinstance(exc, Interrupted):
                exc = Interrupted()
            if exc.run_dir is None:
                exc.run_dir = self.path
            raise exc from None

    def _train(self, cfg, rt, teachers, progress, progress_offset, progress_total_runs, mode, say) -> dict:
        from .trainer import Trainer

        state = self.state()
        if mode == "new" and state is not RunState.NEW:
            raise ConfigError(f"--out {self.path}: a run already exists there; use --resume {self.path} to continue it")
        if mode == "resume" and state is RunState.NEW:
            raise ConfigError(f"--resume {self.path}: no config.yaml there; not a run directory")
        if state is RunState.TORN:
            try:
                self.config()
            except SoftlabelsError:  # even config.yaml is unreadable: start over
                say(f"{self.path}: config.yaml is damaged; redoing the run from the beginning")
                state = RunState.INTERRUPTED
            else:
                if rt.is_main:
                    self._remove(self.final_path)
                state = RunState.RESUMABLE if ckpt.exists(self.checkpoint_stem("last")) else RunState.INTERRUPTED
                say(f"{self.path}: final.json was torn; redoing the run from its last checkpoint"
                    if state is RunState.RESUMABLE else f"{self.path}: torn; redoing it from the beginning")
        if state in (RunState.FINISHED, RunState.RESUMABLE):
            recorded = self.config()
            check_same_run(recorded, cfg, self.path, self.done_epochs())
            if state is RunState.RESUMABLE or cfg.train.epochs > recorded.train.epochs:
                self._check_same_teachers(teachers)
            if state is RunState.FINISHED:
                final = self.results()
                if cfg.train.epochs <= recorded.train.epochs:
                    return final
                say(f"{self.path}: extending the finished run from {recorded.train.epochs} to {cfg.train.epochs} epochs")
                if rt.is_main:
                    self._remove(self.final_path)
            if rt.is_main and config_changes(recorded, cfg):  # allowed changes: the record follows
                from ..config import dump_yaml

                ckpt.atomic_write_text(self.config_path, dump_yaml(cfg))
        if state is RunState.INTERRUPTED:
            say(f"{self.path}: no checkpoint yet (stopped during its first epoch); starting it from the beginning")
        resume = state in (RunState.FINISHED, RunState.RESUMABLE)
        if not resume and rt.is_main:
            self.reset()  # nothing of an earlier attempt (a stale best, snapshots) may survive a fresh start
        trainer = Trainer(cfg, self.path, resume=resume, runtime=rt, teachers=teachers, progress=progress)
        if progress is not None:
            per_run = cfg.train.epochs * len(trainer.train_loader)
            if progress.total is None:
                progress.total = progress_total_runs * per_run
            progress.n = progress_offset * per_run + trainer.start_epoch * len(trainer.train_loader)
            progress.refresh()
        return trainer.fit()


# ------------------------------------------------------------------------------------ teachers
def teacher_model_options(student, name: Optional[str], options: Optional[dict] = None) -> dict:
    """The one rule for a teacher's model options: the student's model options (same model), or
    those of them the other model accepts (``stem: cifar`` stays a CIFAR stem), then the
    teacher's own ``options`` over them. ``student``: the student's ModelConfig."""
    import inspect

    from .. import models as _models  # noqa: F401  (registration)
    from ..registry import MODELS

    inherited = dict(student.options) if student is not None else {}
    if student is not None and name not in (None, student.name):
        params = inspect.signature(MODELS.get(name).factory).parameters.values()
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            accepted = {p.name for p in params} - {"num_classes", "in_channels"}
            inherited = {k: v for k, v in inherited.items() if k in accepted}
    return {**inherited, **(options or {})}


def teacher_spec(spec, where: str = "teacher") -> dict:
    """A teacher given as ``{run: DIR, checkpoint: NAME}`` or as a weights file with its model,
    ``{weights: FILE, model: NAME | {name, options}, options: {...}}``, in one form:
    ``{run[, checkpoint]}`` or ``{weights, model: {name, options}}`` (the model's options and the
    spec's own merged); one ConfigError for anything else."""
    if isinstance(spec, dict) and "run" in spec:
        return {k: v for k, v in (("run", str(spec["run"])), ("checkpoint", spec.get("checkpoint"))) if v is not None}
    if isinstance(spec, dict) and "weights" in spec and "model" in spec:
        model_spec = spec["model"]
        if isinstance(model_spec, dict):
            if set(model_spec) - {"name", "options"} or "name" not in model_spec:
                raise ConfigError(f"{where}.model: expected a model name or {{name: NAME, options: {{...}}}}")
            name, own = model_spec["name"], {**(model_spec.get("options") or {}), **(spec.get("options") or {})}
        else:
            name, own = str(model_spec), dict(spec.get("options") or {})
        return {"weights": str(spec["weights"]), "model": {"name": name, "options": own}}
    raise ConfigError(f"{where} {spec!r}: expected a stage name, {{run: DIR}} or "
                      f"{{weights: FILE, model: NAME or {{name, options}}}}")


def load_teacher(spec, *, checkpoint: str = "best", num_classes: Optional[int] = None,
                 in_channels: Optional[int] = None, student=None, where: str = "teacher"):
    """A frozen teacher from a :func:`teacher_spec` (a run directory, or a weights file with
    its full model config; options not given follow :func:`teacher_model_options` from the
    ``student``'s ModelConfig). The model carries ``softlabels_source`` (path and sha256) for
    the student's environment.json."""
    from ..models import build_model

    spec = teacher_spec(spec, where)
    if "run" in spec:
        return RunDir(spec["run"]).load_model(spec.get("checkpoint", checkpoint), num_classes=num_classes)
    name = spec["model"]["name"]
    options = teacher_model_options(student, name, spec["model"]["options"])
    if num_classes is None or in_channels is None:
        raise ConfigError(f"{where}: a teacher from a weights file needs the dataset's classes and channels")
    model = build_model(name, num_classes, in_channels, options, spec["weights"]).eval()
    path = Path(spec["weights"])
    model.softlabels_source = {"weights": str(path.resolve()), "sha256": file_sha256(path),
                               "model": {"name": name, "options": options}}
    return model


def teacher_record(teachers: Sequence) -> List[dict]:
    """What environment.json records about the teachers of a run."""
    return [dict(getattr(t, "softlabels_source", None) or {"model": type(t).__name__}) for t in teachers]


# ------------------------------------------------------------------------------------ functions
def progress_bar(enabled: bool, desc: Optional[str] = None):
    """The one progress display of train, compare, pipeline and study (steps, on stderr), drawn
    from the first training step on (``softlabels.progress.LazyBar``)."""
    from ..progress import progress_bar as lazy_bar

    return lazy_bar(enabled, desc)


def train_or_reuse(cfg: RunConfig, run_dir: Path, rt, teachers: Sequence = (), progress=None,
                   progress_offset: int = 0, progress_total_runs: int = 1) -> dict:
    """A finished run (``final.json``) is read back; an interrupted one resumes; a torn one is
    redone; otherwise a new run starts. Returns the run's final.json content."""
    return RunDir(run_dir).train(cfg, rt, teachers=teachers, progress=progress, progress_offset=progress_offset,
                                 progress_total_runs=progress_total_runs, mode="reuse")


def load_model_from_run(run_dir: Path, checkpoint: Optional[str] = "best", *, num_classes: Optional[int] = None):
    """The model saved in a run directory's checkpoint, on the CPU, in eval mode (``best``:
    the checkpoint final.json names as best, ``last`` for a run without a validation split)."""
    return RunDir(run_dir).load_model(checkpoint, num_classes=num_classes)


def method_requires(cfg: RunConfig):
    """The merged ``Requires`` of a config's method, without building a model.

    What a method requires does not depend on the number of classes K, but a few options are
    checked against it at construction (AdaCos's default scale needs K >= 3, per-class weight
    lists need exactly K entries). The objective is first built for a nominal K = 1000; only
    when that is refused is the dataset read for its true K (and an option that fits neither
    gets its one-line error from the build with the true K)."""
    from ..errors import ConfigError
    from ..methods.base import build_objective

    try:
        return build_objective(cfg.method, 1000).requires
    except ConfigError:
        from ..data import load_dataset

        k = load_dataset(cfg.data.name, cfg.data.root, cfg.data.options).num_classes
        return build_objective(cfg.method, k).requires

