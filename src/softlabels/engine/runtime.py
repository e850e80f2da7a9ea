"""Where a run executes: device, distributed process group, precision, seeding."""
from __future__ import annotations

import contextlib
import os
import random
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
            dist.init_process_group(backend=backend)
        return Runtime(dev, rank, world, local_rank, True)
    return Runtime(dev)


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
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


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
