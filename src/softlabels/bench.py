"""``softlabels bench``: the speed goals measured side by side, in one run.

Every comparison runs its contenders in the same process, in interleaved rounds (the order
rotates each round, so none always runs first), and reports the median over rounds with the
per-round minimum and maximum, and ratios computed per round (the two blocks closest in time)
then their median. Two clocks:

- ``wall``: ``time.perf_counter`` (with a device sync around each block on CUDA);
- ``cpu``: CPU seconds of this process and of its worker processes (``process_time`` plus the
  children's user+system time, live ones read from ``/proc``), for a shared machine, where other
  people's work inflates wall time but not the CPU time a loop itself needs. Throughputs are
  then images per CPU-second.

The parts (``--parts``, default all):

- ``engine``: ``Trainer.train_step`` (what ``softlabels train`` calls) against a bare PyTorch
  loop (forward, cross-entropy, zero_grad, backward, SGD step) on the same batch.
- ``formats``: the engine step with ``train.channels_last`` on against off, for ResNet-18,
  MobileNetV2 and DenseNet-121 (CIFAR stems, 32×32), the measurement behind its default.
- ``epoch``: one training epoch of the engine (its loader, augmentation on the device, its
  step) against an authors'-shape reference loop on the same images and model: a map-style
  dataset converting each image to PIL and applying torchvision's RandomCrop(32, 4) + flip +
  ToTensor + Normalize per sample, ``DataLoader`` workers started per epoch, fp32, and a host
  sync every step (``loss.item()``, the running accuracy); for CE, and for CS-KD as its
  authors' code runs it (a batch sampler that appends each anchor's same-class partner; the
  partners' forward under ``no_grad``; KL at T=4).
- ``methods``: the step cost per anchor image of every registered method against CE, beside
  its FLOP ratio counted with ``torch.utils.flop_counter`` on the same step (frozen teachers
  of the student's architecture are supplied to methods that need them).
- ``files``: the file data path (decoded cache + device-side crops) against
  ``torchvision.datasets.ImageFolder`` + ``DataLoader`` with RandomResizedCrop(224) + flip +
  ToTensor + Normalize, on the same JPEGs (written to a temporary folder): the first epoch (for
  softlabels including building its cache) and the following, cached epochs.
- ``cuda``: ResNet-18 (CIFAR stem) images/s in fp32, bf16, bf16 + channels_last and + compile;
  ResNet-50 at 448×448 fed by the file path (KT protocol: 512 → 448 crops), with the share of
  the step time spent waiting for data. Skipped with a one-line note without a CUDA device.
"""
from __future__ import annotations

import copy
import os
import statistics
import tempfile
import time
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .config import build_config

PARTS = ("engine", "formats", "epoch", "methods", "files", "cuda")


# ------------------------------------------------------------------------------ clocks
def _children_cpu(pid: int) -> float:
    """User+system CPU seconds of the live descendants of ``pid`` (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        kids: List[int] = []
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids += [int(k) for k in f.read().split()]
        except OSError:
            continue
        for k in kids:
            try:
                with open(f"/proc/{k}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
            except (OSError, IndexError, ValueError):
                pass
            todo.append(k)
    return total


def cpu_seconds() -> float:
    """CPU time of this process, its finished children and its live descendants."""
    import resource

    done = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + done.ru_utime + done.ru_stime + _children_cpu(os.getpid())


def make_clock(name: str) -> Callable[[], float]:
    if name == "cpu":
        return cpu_seconds
    if name == "wall":
        return time.perf_counter
    raise ValueError(f"clock must be cpu or wall, got {name!r}")


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(loops: Dict[str, Callable[[], int]], rounds: int, clock: Callable[[], float],
                device="cpu") -> Dict[str, List[float]]:
    """Images per second (per clock second) of each loop, one value per round. A loop is a
    callable running one timed block and returning the number of images it processed."""
    from .progress import terminal_bar

    names = list(loops)
    out: Dict[str, List[float]] = {k: [] for k in names}
    bar = terminal_bar("bench", rounds * len(names))
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            _sync(device)
            t0 = clock()
            n = loops[name]()
            _sync(device)
            out[name].append(n / max(clock() - t0, 1e-9))
            if bar is not None:  # outside the timed block
                bar.update(1)
                bar.set_postfix({"round": f"{r + 1}/{rounds}", "block": name, "img/s": f"{out[name][-1]:.0f}"})
    if bar is not None:
        bar.close()
    return out


def summary(values: Sequence[float]) -> Dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def ratio(a: Sequence[float], b: Sequence[float]) -> Dict[str, float]:
    """Per-round ratios a/b, summarised."""
    return summary([x / y for x, y in zip(a, b)])


def _row(name: str, values, ref=None, **extra) -> dict:
    row = {"name": name, **summary(values), **extra}
    if ref is not None:
        row["ratio"] = ratio(values, ref)
    return row


# ------------------------------------------------------------------------------ (a) engine
def run_bench(model: str = "resnet8", methods: Sequence[str] = ("ce", "ols"), batch_size: int = 128,
              image_size: int = 28, channels: int = 1, num_classes: int = 10,
              channels_last: bool = False, precision: str = "fp32", compile: bool = False,
              device: str = "auto", steps: int = 20, rounds: int = 5, warmup: int = 5,
              threads: int = 0, clock: str = "wall") -> Dict[str, object]:
    """The engine's step against a bare loop on one batch (part ``engine``)."""
    from .engine import Trainer

    if threads:
        torch.set_num_threads(threads)
    trainers = {}
    for m in methods:
        cfg = build_config(None, [
            "data.name=synthetic", f"data.options.image_size={image_size}", f"data.options.channels={channels}",
            f"data.options.num_classes={num_classes}", f"data.options.train_size={batch_size * 2}",
            "data.options.test_size=16", "data.val_fraction=0", f"data.batch_size={batch_size}",
            f"model.name={model}", f"method.name={m}", f"train.channels_last={channels_last}",
            f"train.precision={precision}", f"train.compile={compile}", f"train.device={device}",
            "schedule.name=constant", "train.epochs=1"])
        trainers[m] = Trainer(cfg, None)
    first = trainers[methods[0]]
    dev = first.rt.device
    batch = next(iter(first.train_loader))
    for t in trainers.values():
        t.model.load_state_dict(first.model.state_dict())
        t.model.train()
        t._reset_accumulators()

    bare_model = copy.deepcopy(first.model).train()
    o = first.cfg.optim
    bare_opt = torch.optim.SGD(bare_model.parameters(), lr=o.lr, momentum=o.momentum,
                               nesterov=o.nesterov, weight_decay=o.weight_decay)
    autocast = first.autocast
    bare_net = torch.compile(bare_model) if compile else bare_model

    def bare_step():
        with autocast:
            loss = F.cross_entropy(bare_net(batch.x).logits, batch.y)
        bare_opt.zero_grad(set_to_none=True)
        loss.backward()
        bare_opt.step()

    steps_of = {"bare": bare_step}
    for m, t in trainers.items():
        steps_of[f"engine:{m}"] = (lambda t=t: t.train_step(batch))
    for step in steps_of.values():
        for _ in range(warmup):
            step()

    def block(step):
        def run():
            for _ in range(steps):
                step()
            return steps * len(batch)
        return run

    ips = interleaved({k: block(s) for k, s in steps_of.items()}, rounds, make_clock(clock), dev)
    med = {k: statistics.median(v) for k, v in ips.items()}
    ratios = {k: statistics.median(a / b for a, b in zip(ips[k], ips["bare"])) for k in ips if k != "bare"}
    base_engine = f"engine:{methods[0]}"
    vs_first = {k: statistics.median(a / b for a, b in zip(ips[k], ips[base_engine]))
                for k in ips if k.startswith("engine:") and k != base_engine}
    return {"device": str(dev), "threads": torch.get_num_threads(), "model": model,
            "batch_size": len(batch), "image_size": image_size, "channels_last": channels_last,
            "precision": precision, "compile": compile, "steps": steps, "rounds": rounds,
            "clock": clock, "images_per_s": med, "ratio_vs_bare": ratios,
            f"ratio_vs_{base_engine}": vs_first,
            "rows": [_row(k, v, None if k == "bare" else ips["bare"]) for k, v in ips.items()]}


def format_bench(res: Dict[str, object]) -> str:
    unit = "img/CPU-s" if res.get("clock") == "cpu" else "images/s"
    lines = [f"device {res['device']} ({res['threads']} threads), model {res['model']}, batch {res['batch_size']}, "
             f"{res['image_size']}x{res['image_size']}, {res['precision']}, channels_last={res['channels_last']}, "
             f"compile={res['compile']}; {res['rounds']} rounds x {res['steps']} steps, clock {res.get('clock', 'wall')}"]
    lines.append(_table(res["rows"], unit, "vs bare"))
    for key, val in res.items():
        if key.startswith("ratio_vs_engine"):
            for k, r in val.items():
                lines.append(f"{k} / {key[len('ratio_vs_'):]}: {r:.3f}")
    return "\n".join(lines)


def _table(rows: List[dict], unit: str, ratio_name: str = "ratio", extra: Sequence[str] = ()) -> str:
    """A Markdown table: median, per-round min–max, the ratio (median and min–max)."""
    width = max([len("loop")] + [len(r["name"]) for r in rows])
    cols = ["loop".ljust(width), f"{unit} median", "min–max", f"{ratio_name} (min–max)", *extra]
    out = ["| " + " | ".join(cols) + " |", "|" + "|".join("-" * (len(c) + 2) for c in cols) + "|"]
    for r in rows:
        rr = r.get("ratio")
        cells = [r["name"].ljust(width), f"{r['median']:.1f}".rjust(len(cols[1])),
                 f"{r['min']:.1f}–{r['max']:.1f}".rjust(len(cols[2])),
                 (f"{rr['median']:.2f} ({rr['min']:.2f}–{rr['max']:.2f})" if rr else "").rjust(len(cols[3]))]
        cells += [_fmt(r.get(e)).rjust(len(e)) for e in extra]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _section(title: str, rows: List[dict], unit: str, ratio_name: str, extra: Sequence[str] = ()) -> List[str]:
    """A part's lines in the suite's report: a blank line, the ``## title``, its table."""
    return ["", f"## {title}", _table(rows, unit, ratio_name, extra=extra)]


def _fmt(v) -> str:
    if v is None:
        return ""
    return f"{v:.3f}" if isinstance(v, float) else str(v)


# ------------------------------------------------------------------------------ formats
def run_formats_part(models: Sequence[str] = ("resnet18", "mobilenet_v2", "densenet121"),
                     batch_size: int = 16, image_size: int = 32, steps: int = 2, rounds: int = 3,
                     clock: str = "cpu", device: str = "auto") -> dict:
    """Part ``formats``: channels_last on vs off, per model, on the same batch and weights."""
    import inspect

    from . import models as _registration  # noqa: F401
    from .engine import Trainer
    from .registry import MODELS

    rows = []
    dev = "cpu"
    for model in models:
        factory = MODELS.get(model).factory
        stem = ["model.options.stem=cifar"] if "stem" in inspect.signature(
            factory.__init__ if inspect.isclass(factory) else factory).parameters else []
        loops, trainers = {}, {}
        for cl in (False, True):
            cfg = build_config(None, [
                "data.name=synthetic", f"data.options.image_size={image_size}", "data.options.channels=3",
                f"data.options.train_size={batch_size * 2}", "data.options.test_size=8",
                "data.val_fraction=0", f"data.batch_size={batch_size}", f"model.name={model}",
                "method.name=ce", f"train.channels_last={cl}", f"train.device={device}",
                "schedule.name=constant", "train.epochs=1"] + stem)
            t = trainers[cl] = Trainer(cfg, None)
            if cl:
                t.model.load_state_dict(trainers[False].model.state_dict())
            batch = next(iter(t.train_loader))
            t._reset_accumulators()
            t.train_step(batch)  # warm-up

            def run(t=t, batch=batch):
                for _ in range(steps):
                    t.train_step(batch)
                return steps * len(batch)
            loops["channels_last" if cl else "contiguous"] = run
        dev = trainers[True].rt.device
        ips = interleaved(loops, rounds, make_clock(clock), dev)
        rows.append(_row(f"{model}: contiguous (NCHW)", ips["contiguous"]))
        rows.append(_row(f"{model}: channels_last", ips["channels_last"], ips["contiguous"]))
    return {"batch_size": batch_size, "image_size": image_size, "device": str(dev), "rows": rows}


# ------------------------------------------------------------------------------ (b) epoch
class _PILImages(torch.utils.data.Dataset):
    """The authors' dataset shape: uint8 H×W×C arrays, each item converted to a PIL image and
    put through the transform (as torchvision's CIFAR datasets do)."""

    def __init__(self, images, labels, transform):
        self.images = images.permute(0, 2, 3, 1).contiguous().numpy()
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image

        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


class _PairBatches(torch.utils.data.Sampler):
    """The authors' CS-KD batch sampler shape: a random permutation cut into batches, each
    anchor followed (in a second half) by a uniformly drawn sample of its class."""

    def __init__(self, labels, batch_size, seed=0):
        self.labels = labels.tolist()
        self.batch_size = batch_size
        self.by_class: Dict[int, List[int]] = {}
        for i, y in enumerate(self.labels):
            self.by_class.setdefault(y, []).append(i)
        self.g = torch.Generator().manual_seed(seed)

    def __len__(self):
        return -(-len(self.labels) // self.batch_size)

    def __iter__(self):
        import random

        rng = random.Random(int(torch.randint(0, 2**31, (1,), generator=self.g)))
        perm = torch.randperm(len(self.labels), generator=self.g).tolist()
        for k in range(len(self)):
            anchors = perm[k * self.batch_size:(k + 1) * self.batch_size]
            yield anchors + [rng.choice(self.by_class[self.labels[a]]) for a in anchors]


def _synthetic(n: int, size: int, classes: int, seed: int = 0):
    """Smooth random colour images (a few blobs, not white noise: JPEG and PIL behave as on
    photographs) and random labels, as an ImageTensors."""
    from .data.base import ImageTensors, TensorSplit

    g = torch.Generator().manual_seed(seed)
    low = torch.randint(0, 256, (n, 3, 4, 4), generator=g, dtype=torch.uint8).float()
    images = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    images = (images + torch.randn(images.shape, generator=g) * 8).clamp(0, 255).to(torch.uint8)
    labels = torch.randint(0, classes, (n,), generator=g)
    return ImageTensors(TensorSplit(images, labels), TensorSplit(images[:16], labels[:16]),
                        [str(i) for i in range(classes)], (0.49, 0.48, 0.45), (0.25, 0.24, 0.26),
                        crop_padding=4, hflip=True)


def run_epoch_part(model: str = "resnet8", n: int = 2048, batch_size: int = 128, workers: int = 2,
                   rounds: int = 3, clock: str = "cpu", device: str = "auto") -> dict:
    """Part ``epoch``: engine epochs vs the authors'-shape loop, for CE and CS-KD."""
    from torchvision import transforms as T

    from .engine import Trainer
    from .models import build_model

    ds = _synthetic(n, 32, 10)
    out = {"model": model, "images": n, "batch_size": batch_size, "workers": workers, "rows": []}
    for method, opts in (("ce", []), ("cskd", ["method.options.variant=official"])):
        cfg = build_config(None, [
            "data.name=synthetic", "data.val_fraction=0", f"data.batch_size={batch_size}",
            f"model.name={model}", f"method.name={method}", "schedule.name=constant",
            "train.epochs=1", f"train.device={device}"] + opts)
        trainer = Trainer(cfg, None, dataset=ds)
        dev = trainer.rt.device
        ref_model = build_model(model, 10, 3, cfg.model.options, None).to(dev)
        ref_model.load_state_dict(trainer.model.state_dict())
        o = cfg.optim
        ref_opt = torch.optim.SGD(ref_model.parameters(), lr=o.lr, momentum=o.momentum,
                                  weight_decay=o.weight_decay, nesterov=o.nesterov)
        tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                        T.Normalize(ds.mean, ds.std)])
        pil = _PILImages(ds.train.images, ds.train.labels, tf)
        if method == "ce":
            ref_loader = torch.utils.data.DataLoader(pil, batch_size=batch_size, shuffle=True,
                                                     num_workers=workers)
        else:
            ref_loader = torch.utils.data.DataLoader(
                pil, batch_sampler=_PairBatches(ds.train.labels, batch_size), num_workers=workers)
        lam, temp = 1.0, 4.0
        epochs = {"engine": 0, "ref": 0}

        def engine_epoch(trainer=trainer):
            trainer.train_loader.set_epoch(epochs["engine"])
            epochs["engine"] += 1
            trainer.model.train()
            trainer._reset_accumulators()
            for b in trainer.train_loader:
                trainer.train_step(b)
            trainer._train_stats()  # the engine's one host sync per epoch
            return n

        def ref_epoch(ref_loader=ref_loader, method=method):
            ref_model.train()
            seen = correct = 0
            total = 0.0
            for x, y in ref_loader:
                x, y = x.to(dev), y.to(dev)
                if method == "ce":
                    logits = ref_model(x).logits
                    loss = F.cross_entropy(logits, y)
                else:
                    half = len(y) // 2
                    logits = ref_model(x[:half]).logits
                    y = y[:half]
                    loss = F.cross_entropy(logits, y)
                    with torch.no_grad():
                        partner = ref_model(x[half:]).logits
                    kl = F.kl_div(F.log_softmax(logits / temp, 1), F.softmax(partner.detach() / temp, 1),
                                  reduction="batchmean")
                    loss = loss + lam * temp ** 2 * kl
                ref_opt.zero_grad()
                loss.backward()
                ref_opt.step()
                total += loss.item() * len(y)  # the host sync every step
                correct += (logits.argmax(1) == y).sum().item()
                seen += len(y)
            return seen

        engine_epoch(), ref_epoch()  # warm-up (allocator, first-use costs)
        ips = interleaved({"engine": engine_epoch, "ref": ref_epoch}, rounds, make_clock(clock), dev)
        label = "CE" if method == "ce" else "CS-KD official"
        out["rows"].append(_row(f"{label}: authors'-shape loop", ips["ref"]))
        out["rows"].append(_row(f"{label}: softlabels epoch", ips["engine"], ips["ref"]))
        out["device"] = str(dev)
    return out


# ------------------------------------------------------------------------------ (c) methods
def run_methods_part(model: str = "resnet8", batch_size: int = 64, image_size: int = 32,
                     steps: int = 3, rounds: int = 3, clock: str = "cpu", device: str = "auto",
                     methods: Optional[Sequence[str]] = None) -> dict:
    """Part ``methods``: step time per anchor image and FLOPs of every method vs CE."""
    from torch.utils.flop_counter import FlopCounterMode

    from .engine import Trainer
    from .engine.runs import method_requires
    from . import methods as _registration  # noqa: F401
    from .errors import SoftlabelsError
    from .models import build_model
    from .registry import METHODS as REG

    names = list(methods) if methods else ["ce"] + [m for m in REG.names() if m != "ce"]
    ds = _synthetic(batch_size * 2, image_size, 10, seed=1)
    trainers, batches, flops, skipped = {}, {}, {}, {}
    for m in names:
        cfg = build_config(None, [
            "data.name=synthetic", "data.val_fraction=0", f"data.batch_size={batch_size}",
            f"model.name={model}", f"method.name={m}", "schedule.name=constant", "train.epochs=1",
            f"train.device={device}"])
        try:
            k = method_requires(cfg).teacher_models
            teachers = [build_model(model, 10, 3, cfg.model.options, None) for _ in range(k)]
            t = Trainer(cfg, None, dataset=ds, teachers=teachers)
            batch = next(iter(t.train_loader))
            t.model.train()
            t._reset_accumulators()
            for _ in range(2):
                t.train_step(batch)
            with FlopCounterMode(display=False) as counter:
                t.train_step(batch)
            flops[m] = counter.get_total_flops()
        except (SoftlabelsError, RuntimeError, ValueError) as exc:
            skipped[m] = " ".join(str(exc).split())[:120]
            continue
        trainers[m], batches[m] = t, batch

    def block(t, batch):
        def run():
            for _ in range(steps):
                t.train_step(batch)
            return steps * len(batch)  # anchors
        return run

    loops = {m: block(trainers[m], batches[m]) for m in trainers}
    dev = next(iter(trainers.values())).rt.device if trainers else torch.device("cpu")
    ips = interleaved(loops, rounds, make_clock(clock), dev)
    rows = []
    for m in trainers:
        cost = ratio(ips["ce"], ips[m])  # time per anchor relative to CE
        flop_ratio = flops[m] / flops["ce"]
        rows.append({"name": m, **summary(ips[m]), "time_ratio": cost, "flop_ratio": flop_ratio,
                     "excess": cost["median"] / flop_ratio})
    return {"model": model, "batch_size": batch_size, "image_size": image_size, "device": str(dev),
            "rows": rows, "skipped": skipped}


# ------------------------------------------------------------------------------ (d) files
def write_jpegs(root: str, n: int, size=(500, 375), classes: int = 4, seed: int = 0) -> str:
    """``n`` smooth random colour JPEGs (quality 90) in ``root/train/<class>/``."""
    import numpy as np
    from PIL import Image

    ds = _synthetic(n, 64, classes, seed)
    for i in range(n):
        folder = os.path.join(root, "train", f"c{int(ds.train.labels[i])}")
        os.makedirs(folder, exist_ok=True)
        small = Image.fromarray(ds.train.images[i].permute(1, 2, 0).numpy())
        big = np.asarray(small.resize(size, Image.BICUBIC)).astype(np.int16)
        noise = np.random.default_rng(seed + i).integers(-6, 7, big.shape)
        Image.fromarray((big + noise).clip(0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i:05d}.jpg"), quality=90)
    return os.path.join(root, "train")


def run_files_part(n: int = 256, batch_size: int = 32, image_size: int = 224, resize: int = 256,
                   rounds: int = 3, clock: str = "cpu", workers: int = 0) -> dict:
    """Part ``files``: the file path vs ImageFolder + DataLoader on the same JPEGs (CPU)."""
    from torchvision import datasets
    from torchvision import transforms as T

    from .data.cache import ResizeRule, open_cache
    from .data.files import IMAGENET_MEAN, IMAGENET_STD, FileLoader, FileSplit

    tick = make_clock(clock)
    old_cache = os.environ.get("SOFTLABELS_CACHE")
    with tempfile.TemporaryDirectory(prefix="softlabels-bench-") as tmp:
        os.environ["SOFTLABELS_CACHE"] = os.path.join(tmp, "cache")  # a first epoch builds anew
        try:
            train_dir = write_jpegs(tmp, n)
            tf = T.Compose([T.RandomResizedCrop(image_size), T.RandomHorizontalFlip(), T.ToTensor(),
                            T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
            folder = datasets.ImageFolder(train_dir, transform=tf)
            tv_loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=True,
                                                    num_workers=workers)
            split = FileSplit([p for p, _ in folder.samples],
                              torch.tensor([y for _, y in folder.samples]))
            rule = ResizeRule(resize)

            def ours(cache):
                return FileLoader(split, batch_size, train=True, image_size=image_size, resize=resize,
                                  mean=IMAGENET_MEAN, std=IMAGENET_STD, device="cpu", workers=workers,
                                  cache=cache, channels_last=False)

            def epoch_of(loader):
                state = {"epoch": 0}

                def run():
                    if hasattr(loader, "set_epoch"):
                        loader.set_epoch(state["epoch"])
                    state["epoch"] += 1
                    seen = 0
                    for item in loader:
                        seen += len(item[1] if isinstance(item, (list, tuple)) else item)
                    return seen
                return run

            tv_epoch = epoch_of(tv_loader)
            # first epochs: softlabels builds its cache (decode + resize of every file) and then
            # runs an epoch from it; ImageFolder decodes every file as always
            t0 = tick()
            cache = open_cache(split.paths, rule, "bench", True, progress=False)
            cached = ours(cache)
            cached_epoch = epoch_of(cached)
            first_ours = cached_epoch() / max(tick() - t0, 1e-9)
            t0 = tick()
            first_tv = tv_epoch() / max(tick() - t0, 1e-9)
            uncached_epoch = epoch_of(ours(None))
            ips = interleaved({"torchvision": tv_epoch, "cached": cached_epoch,
                               "uncached": uncached_epoch}, rounds, tick)
        finally:
            if old_cache is None:
                os.environ.pop("SOFTLABELS_CACHE", None)
            else:
                os.environ["SOFTLABELS_CACHE"] = old_cache
    rows = [
        {"name": "first epoch: ImageFolder + DataLoader", "median": first_tv, "min": first_tv, "max": first_tv},
        {"name": "first epoch: softlabels (builds cache)", "median": first_ours, "min": first_ours,
         "max": first_ours, "ratio": {"median": first_ours / first_tv, "min": first_ours / first_tv,
                                      "max": first_ours / first_tv}},
        _row("epochs 2+: ImageFolder + DataLoader", ips["torchvision"]),
        _row("epochs 2+: softlabels, cached", ips["cached"], ips["torchvision"]),
        _row("epochs 2+: softlabels, not cached", ips["uncached"], ips["torchvision"]),
    ]
    return {"images": n, "batch_size": batch_size, "image_size": image_size, "resize": resize,
            "workers": workers, "rows": rows}


# ------------------------------------------------------------------------------ (e) cuda
def run_cuda_part(rounds: int = 5, steps: int = 20) -> dict:
    """Part ``cuda``: ResNet-18 CIFAR throughput per precision/format/compile; ResNet-50 at
    448 fed by the file path, with the share of time waiting for data."""
    if not torch.cuda.is_available():
        return {"skipped": "no CUDA device: the CUDA part (ResNet-18 fp32/bf16/channels_last/compile, "
                           "ResNet-50 at 448 on the file path) was not run"}
    out: dict = {"device": torch.cuda.get_device_name(0), "rows": []}
    ips = {}
    for name, prec, cl, comp in (("fp32", "fp32", False, False), ("bf16", "bf16", False, False),
                                 ("bf16 + channels_last", "bf16", True, False),
                                 ("bf16 + channels_last + compile", "bf16", True, True)):
        res = run_bench(model="resnet18", methods=("ce",), batch_size=256, image_size=32, channels=3,
                        num_classes=100, channels_last=cl, precision=prec, compile=comp, device="cuda",
                        steps=steps, rounds=rounds, warmup=10 if comp else 5, clock="wall")
        ips[name] = res["images_per_s"]["engine:ce"]
        out["rows"].append({"name": f"ResNet-18 CIFAR-100, batch 256, {name}", "median": ips[name],
                            "min": ips[name], "max": ips[name]})
    out["rows"] += [_fine_grained_row()]
    return out


def _fine_grained_row(n: int = 512, batch_size: int = 32, device: str = "cuda", model: str = "resnet50",
                      image_size: int = 448, resize: int = 512, size=(600, 450), epochs: int = 3,
                      precision: str = "bf16") -> dict:
    """``model`` at ``image_size`` trained from the file path (``resize_random_crop`` from the
    decoded cache, channels_last, the automatic workers) on ``n`` JPEGs of ``size``: images/s
    over epochs 2.. and the share of that time spent waiting for the next batch."""
    from .engine import Trainer

    with tempfile.TemporaryDirectory(prefix="softlabels-bench-") as tmp:
        old = os.environ.get("SOFTLABELS_CACHE")
        os.environ["SOFTLABELS_CACHE"] = os.path.join(tmp, "cache")
        try:
            train_dir = write_jpegs(tmp, n, size=size)
            os.makedirs(os.path.join(tmp, "test"), exist_ok=True)
            for c in os.listdir(train_dir):  # the test split: the same files (not evaluated)
                os.symlink(os.path.join(train_dir, c), os.path.join(tmp, "test", c))
            cfg = build_config(None, [
                "data.name=imagefolder", f"data.root={tmp}", f"data.options.image_size={image_size}",
                f"data.options.resize={resize}", "data.options.train_crop=resize_random_crop",
                "data.val_fraction=0", f"data.batch_size={batch_size}", f"model.name={model}",
                "method.name=ce", f"train.precision={precision}", "train.channels_last=true",
                f"train.device={device}", "schedule.name=constant", "train.epochs=1"])
            t = Trainer(cfg, None)
            dev = t.rt.device
            t.model.train()
            t._reset_accumulators()
            wait = total = 0.0
            seen = 0
            for epoch in range(epochs):  # epoch 0 warms up (cudnn autotuning, workers)
                t.train_loader.set_epoch(epoch)
                _sync(dev)
                t0 = time.perf_counter()
                it = iter(t.train_loader)
                while True:
                    w0 = time.perf_counter()
                    try:
                        b = next(it)
                    except StopIteration:
                        break
                    w = time.perf_counter() - w0
                    t.train_step(b)
                    if epoch:
                        wait += w
                        seen += len(b)
                _sync(dev)
                if epoch:
                    total += time.perf_counter() - t0
            workers = t.train_loader.workers
        finally:
            if old is None:
                os.environ.pop("SOFTLABELS_CACHE", None)
            else:
                os.environ["SOFTLABELS_CACHE"] = old
    ips = seen / max(total, 1e-9)
    return {"name": f"{model} {image_size}px, file path, batch {batch_size}, {precision}+cl, "
                    f"{workers} workers", "median": ips, "min": ips, "max": ips,
            "data_wait_share": wait / max(total, 1e-9)}


# ------------------------------------------------------------------------------ the suite
def run_suite(parts: Sequence[str] = PARTS, clock: str = "cpu", rounds: int = 3, steps: int = 5,
              device: str = "auto", model: str = "resnet8", batch_size: int = 128,
              image_size: int = 28, channels: int = 1, channels_last: bool = True,
              precision: str = "fp32", compile: bool = False, epoch_images: int = 2048,
              workers: int = 2, files: int = 256, methods: Optional[Sequence[str]] = None,
              progress: Optional[Callable[[str], None]] = None) -> dict:
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        from .errors import ConfigError

        raise ConfigError(f"bench --parts: unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")
    say = progress or (lambda s: None)
    res: dict = {"clock": clock, "rounds": rounds, "threads": torch.get_num_threads(),
                 "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    for part in parts:
        say(f"bench: {part} ...")
        t0 = time.perf_counter()
        if part == "engine":
            res[part] = run_bench(model=model, methods=("ce", "ols"), batch_size=batch_size,
                                  image_size=image_size, channels=channels, channels_last=channels_last,
                                  precision=precision, compile=compile, device=device, steps=steps,
                                  rounds=rounds, clock=clock)
        elif part == "formats":
            res[part] = run_formats_part(rounds=rounds, clock=clock, device=device)
        elif part == "epoch":
            res[part] = run_epoch_part(model=model, n=epoch_images, batch_size=batch_size,
                                       workers=workers, rounds=rounds, clock=clock, device=device)
        elif part == "methods":
            res[part] = run_methods_part(model=model, steps=steps, rounds=rounds, clock=clock,
                                         device=device, methods=methods)
        elif part == "files":
            res[part] = run_files_part(n=files, rounds=rounds, clock=clock)
        else:
            res[part] = run_cuda_part(rounds=rounds)
        res[part]["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def format_suite(res: dict) -> str:
    unit = "img/CPU-s" if res["clock"] == "cpu" else "images/s"
    out = [f"softlabels bench, {res['date']}, clock {res['clock']}, {res['rounds']} interleaved rounds, "
           f"{res['threads']} torch threads"]
    if "engine" in res:
        out += ["", "## engine step vs a bare PyTorch loop", format_bench(res["engine"])]
    if "formats" in res:
        f = res["formats"]
        out += _section(f"channels_last vs contiguous, engine step (batch {f['batch_size']}, "
                        f"{f['image_size']}×{f['image_size']}, CIFAR stems, device {f['device']})",
                        f["rows"], unit, "vs NCHW")
    if "epoch" in res:
        e = res["epoch"]
        out += _section(f"a whole training epoch vs the authors'-shape loop ({e['model']}, {e['images']} "
                        f"32×32 images, batch {e['batch_size']}, reference with {e['workers']} DataLoader "
                        f"workers, device {e.get('device')}; target ≥ 1.3×)", e["rows"], unit, "vs authors'")
    if "methods" in res:
        m = res["methods"]
        rows = [{**r, "ratio": r["time_ratio"]} for r in m["rows"]]
        out += _section(f"step cost per anchor image vs CE ({m['model']}, batch {m['batch_size']}, "
                        f"{m['image_size']}×{m['image_size']}; target: time ratio ≤ 1.1 × FLOP ratio)",
                        rows, unit + " (anchors)", "time vs CE", extra=("flop_ratio", "excess"))
        for name, why in m["skipped"].items():
            out.append(f"  {name}: not timed ({why})")
    if "files" in res:
        f = res["files"]
        out += _section(f"file path vs ImageFolder + DataLoader ({f['images']} JPEGs 500×375, "
                        f"RandomResizedCrop({f['image_size']}) from resize {f['resize']}, batch "
                        f"{f['batch_size']}, {f['workers']} workers; target from epoch 2: ≥ 2×)",
                        f["rows"], unit, "vs torchvision")
    if "cuda" in res:
        c = res["cuda"]
        out += ["", "## CUDA"]
        if "skipped" in c:
            out.append(c["skipped"])
        else:
            out += [f"device {c['device']}", _table(c["rows"], "images/s", extra=("data_wait_share",))]
    return "\n".join(out)
