"""Where a run executes: device, distributed process group, precision, seeding."""
from __future__ import annotations

import contextlib
import datetime as _dt
import os
import random
import signal
import threading
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ..errors import ConfigError


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    distributed: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: expected auto, cpu, cuda or cuda:N, got {name!r}") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device: cuda requested but no CUDA device is available")
        if dev.index is None:
            dev = torch.device(f"cuda:{local_rank}")
    return dev


def setup_runtime(device: str = "auto") -> Runtime:
    """Initialise DDP when launched by torchrun (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = resolve_device(device, local_rank)
    if world > 1:
        if not dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            if dev.type == "cuda":
                torch.cuda.set_device(dev)
            dist.init_process_group(backend=backend, timeout=_dt.timedelta(seconds=dist_timeout_s()))
        return Runtime(dev, rank, world, local_rank, True)
    return Runtime(dev)


def dist_timeout_s() -> float:
    """Bound on every collective (seconds): a rank whose peer died or hangs stops with an error
    instead of waiting for ever. ``SOFTLABELS_DIST_TIMEOUT`` (default 600)."""
    raw = os.environ.get("SOFTLABELS_DIST_TIMEOUT", "600")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"SOFTLABELS_DIST_TIMEOUT: expected seconds, got {raw!r}") from None
    if not 0 < value < 1e6:
        raise ConfigError(f"SOFTLABELS_DIST_TIMEOUT: expected seconds between 0 and 1e6, got {raw!r}")
    return value


def is_dist_failure(exc: BaseException) -> bool:
    """An error of the process group itself (a peer died, a collective timed out)."""
    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        k in text for k in ("Gloo", "gloo", "NCCL", "Connection closed", "Connection reset", "timed out", "Timed out"))


# ---------------------------------------------------------------------------------- signals
class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM while a run trains: raised at once, or at the end of a
    critical section (a checkpoint save), so saves are never cut."""

    def __init__(self, signum: int = signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.run_dir = None  # set by the run manager to the run directory in hand


_state = threading.local()


def _pending():
    return getattr(_state, "pending", None)


@contextlib.contextmanager
def critical_section():
    """A signal arriving inside is held until the section ends (sections nest)."""
    depth = getattr(_state, "depth", 0)
    _state.depth = depth + 1
    try:
        yield
    finally:
        _state.depth = depth
        if depth == 0 and _pending() is not None:
            signum, _state.pending = _state.pending, None
            raise Interrupted(signum)


def _handler(signum, frame):
    if getattr(_state, "depth", 0) > 0:
        _state.pending = signum
        return
    raise Interrupted(signum)


@contextlib.contextmanager
def stop_on_signals():
    """SIGTERM and SIGINT raise :class:`Interrupted` (outside critical sections) while inside;
    previous handlers are restored after. A no-op outside the main thread."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for s in previous:
            signal.signal(s, _handler)
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        _state.pending = None


def teardown_runtime(rt: Runtime) -> None:
    if rt.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def seed_everything(seed: int, deterministic: bool = False) -> None:
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % (2**32))
    except ImportError:
        pass
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.benchmark = True


def autocast_context(device: torch.device, precision: str):
    if precision in ("bf16", "fp16"):
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(device_type=device.type, dtype=dtype)
    return contextlib.nullcontext()


def grad_scaler(device: torch.device, precision: str):
    """fp16 needs loss scaling against gradient underflow; bf16 and fp32 do not (disabled scaler:
    ``scale`` and ``step`` pass through)."""
    return torch.amp.GradScaler(device.type, enabled=precision == "fp16")
# Models whose training step is slower in channels_last on the CPU (docs/benchmarks.md,
# 2026-11-29, 2-core Xeon, batch 16 at 32×32: ResNet-18 CIFAR 0.81×, CS-KD's PreAct ResNet-18
# 0.85×; ResNet-34 is the same basic-block family). Every other convolutional network measured
# was faster (MobileNetV2 1.49×, EfficientNet-B0 1.31×, DenseNet-121 1.25×, LeNet-5 1.23×,
# ResNet-50 1.16×, ResNet-56 1.16×, ResNet-8 1.11×).
CHANNELS_LAST_SLOWER_ON_CPU = frozenset({"resnet18", "resnet34", "preact_resnet18_cskd"})


def use_channels_last(setting, model_name: str, model: torch.nn.Module, device: torch.device) -> bool:
    """``train.channels_last``: true/false as given; ``auto`` (the default) = on for every
    network with 2-D convolutions, except on the CPU for the models measured slower there."""
    if setting != "auto":
        return bool(setting)
    if not any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        return False
    return not (device.type == "cpu" and model_name in CHANNELS_LAST_SLOWER_ON_CPU)
