"""The one training loop every method runs through.

The loop is generic: a method says what it needs through ``requires`` and gets it. Inside the
step loop nothing waits for the device: losses and accuracies are summed in device tensors and
read once per epoch. Each epoch ends with evaluation on the validation split (model selection)
and the test split (reporting only; never used to choose anything).
"""
from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import torch
import torch.distributed as dist
from torch import nn

from ..config import RunConfig, dump_yaml
from ..data.prepare import PreparedData, build_loaders, prepare_data
from ..errors import CheckpointError, ConfigError, SoftlabelsError
from ..evaluate.metrics import classification_metrics
from ..methods.base import build_objective
from ..methods.functional import label_terms
from ..models import build_model
from ..models.complexity import input_shape_of, model_complexity
from . import checkpoint as ckpt
from .collapse import collapse_message, collapse_reason
from .optim import build_optimizer, build_schedule, param_groups
from .runtime import Runtime, autocast_context, grad_scaler, seed_everything, setup_runtime, use_channels_last

SELECTION = "lowest val top1_error, ties broken by lower val nll"


def _identity(cfg: RunConfig) -> dict:
    """What a checkpoint must match to be resumed or evaluated with this config."""
    return {"model": cfg.model.name, "model_options": cfg.model.options, "dataset": cfg.data.name,
            "method": cfg.method.name}


class Trainer:
    """Builds everything a run needs from a RunConfig and trains it.

    run_dir: where results go (None: nothing is written, e.g. for benchmarks).
    resume:  continue from ``run_dir/checkpoints/last``.
    teachers: frozen models whose outputs methods that require teachers receive.
    callbacks: functions called as ``cb(trainer, record)`` after each epoch's record is written.
    """

    def __init__(self, cfg: RunConfig, run_dir: Optional[Path] = None, *, resume: bool = False,
                 runtime: Optional[Runtime] = None, dataset=None, teachers: Sequence[nn.Module] = (),
                 callbacks: Sequence[Callable] = (), progress=None):
        self.cfg = cfg
        self.rt = runtime or setup_runtime(cfg.train.device)
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.callbacks = list(callbacks)
        self.progress = progress
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed, cfg.train.deterministic)
        dev = self.rt.device

        self.data: PreparedData = prepare_data(cfg.data, dataset)
        k = self.data.num_classes
        self.objective = build_objective(cfg.method, k)
        self.model = build_model(cfg.model.name, k, self.data.in_channels, cfg.model.options,
                                 cfg.model.weights)
        self.objective.adapt_model(self.model)
        self.model = self.model.to(dev)
        self.channels_last = use_channels_last(cfg.train.channels_last, cfg.model.name, self.model, dev)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self._check_input_fits()
        self.requires = self.objective.requires
        if self.requires.teachers > len(teachers):
            raise SoftlabelsError(
                f"method {cfg.method.name} needs {self.requires.teachers} teacher model(s); "
                f"run it through a pipeline stage or `compare`, which supply them"
            )
        self.teachers = [_frozen_teacher(t, self.requires.teacher_mode).to(dev) for t in teachers]
        self.objective.setup(self.model, self.teachers)
        self.objective.to(dev)
        # parameters and FLOPs at inference and at training (models/complexity.py), for final.json
        self.complexity = model_complexity(self.model, input_shape_of(self.data), self.objective,
                                           self.teachers, k)

        self.train_loader, self.val_loader, self.test_loader = build_loaders(
            self.data, cfg.data, device=dev, seed=cfg.train.seed, rank=self.rt.rank,
            world=self.rt.world, channels_last=self.channels_last, requires=self.requires)
        if cfg.train.early_stop_patience is not None and self.val_loader is None:
            raise ConfigError("train.early_stop_patience: early stopping watches the validation split, and this run "
                              "has none (set data.val_fraction > 0)")
        # gradient accumulation: one optimiser step every `accumulate` batches (and at an epoch's end)
        self.accumulate = cfg.optim.accumulate
        self._micro = 0
        self.optimizer = build_optimizer(param_groups(self.model, self.objective, cfg.optim), cfg.optim)
        self.schedule = build_schedule(self.optimizer, cfg.schedule, -(-len(self.train_loader) // self.accumulate),
                                       cfg.train.epochs)
        self._precision = cfg.train.precision
        self.scaler = grad_scaler(dev, cfg.train.precision)

        # the module the step loop calls: DDP-wrapped and/or compiled view of self.model
        net: nn.Module = self.model
        if self.rt.distributed and cfg.train.sync_bn:
            self.model = net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        if self.rt.distributed:
            net = nn.parallel.DistributedDataParallel(
                net, device_ids=[dev.index] if dev.type == "cuda" else None)
        if cfg.train.compile:
            net = torch.compile(net)
        self.net = net
        self._method_params = [p for p in self.objective.parameters() if p.requires_grad]
        self._all_params = [p for g in self.optimizer.param_groups for p in g["params"]]
        # an exponential moving average of the weights (buffers copied), evaluated beside them
        self.ema = None
        if cfg.train.ema_decay is not None:
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema = AveragedModel(self.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.train.ema_decay),
                                     use_buffers=True)
        self._since_best = 0
        self.stopped_early: Optional[int] = None

        self.start_epoch = 0
        self.collapsed: Optional[dict] = None
        self._collapse_reasons: dict = {}
        self.best: Optional[dict] = None
        self.history: List[dict] = []
        if self.data.noisy_index is not None:
            mask = torch.zeros(len(self.data.train), dtype=torch.bool)
            mask[self.data.noisy_index] = True
            self._noisy_mask = mask.to(dev)
            self._clean_labels = self.data.clean_train_labels.to(dev)
        else:
            self._noisy_mask = None
        self._reset_accumulators()  # so that train_step also works outside fit (benchmarks, tests)
        if resume:
            self._resume()
        elif self.run_dir is not None and self.rt.is_main:
            self._init_run_dir()

    # ------------------------------------------------------------------ construction helpers
    def _check_input_fits(self) -> None:
        """One eval-mode forward on two training images, so a model/input mismatch is one clear
        line before training starts instead of a traceback from deep inside a convolution."""
        split = self.data.train
        if not self.data.is_tensor:
            return
        x = split.images[:2].to(self.rt.device).float()
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                self.model(x)
        except RuntimeError as exc:
            shape = "x".join(str(d) for d in x.shape[1:])
            first = str(exc).splitlines()[0][:160]
            raise ConfigError(
                f"model.name: {self.cfg.model.name} does not accept {shape} inputs from dataset "
                f"{self.cfg.data.name} ({first})") from None
        finally:
            self.model.train(was_training)

    def _init_run_dir(self) -> None:
        from .rundir import environment_info

        from .runs import teacher_record

        d = self.run_dir
        with ckpt.storage(d / "checkpoints"):
            (d / "checkpoints").mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(d / "config.yaml", dump_yaml(self.cfg))
        env = environment_info(self.rt)
        env["teachers"] = teacher_record(self.teachers)
        ckpt.atomic_write_text(d / "environment.json", json.dumps(env, indent=1))
        ckpt.atomic_write_text(d / "data.json", json.dumps(self.data.summary(), indent=1))
        if self.data.noisy_index is not None:
            idx = self.data.noisy_index
            noise = {"rate": self.cfg.data.label_noise, "seed": self.cfg.data.split_seed,
                     "kind": "symmetric", "indices": idx.tolist(),
                     "original": self.data.clean_train_labels[idx].tolist(),
                     "noisy": self.data.train.labels[idx].tolist()}
            ckpt.atomic_write_text(d / "noise.json", json.dumps(noise))
        ckpt.atomic_write_text(d / "metrics.jsonl", "")

    @property
    def autocast(self):
        """A fresh autocast context (or a null context) per use: one torch.autocast instance
        must not be entered twice (nested, its exit restores the wrong state)."""
        return autocast_context(self.rt.device, self._precision)

    # ------------------------------------------------------------------ the step
    def teacher_outputs(self, batch) -> list:
        """Frozen teachers on the same (augmented) batch. ``no_grad`` rather than
        ``inference_mode``: the outputs enter the student's loss, and autograd refuses to save
        inference tensors for backward."""
        if not self.teachers:
            return []
        with torch.no_grad(), self.autocast:
            return [t(batch.x, return_features=self.requires.features) for t in self.teachers]

    def train_step(self, batch, last_in_epoch: bool = True) -> Dict[str, torch.Tensor]:
        """Forward and backward on one batch and, every ``optim.accumulate`` batches (always with
        accumulate 1, and at the epoch's last batch), one optimiser step. Returns the loss terms."""
        with self.autocast:
            out = self.objective.forward_batch(self.net, batch, self.requires.features)
            terms = self.objective.loss(out, batch, self.teacher_outputs(batch))
        if not terms:
            raise ConfigError(f"method.name: {self.cfg.method.name} gives no loss terms to optimise "
                              f"(e.g. cutout with ce=false needs another method beside it)")
        loss = sum(terms.values())
        if self._micro == 0:
            self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss / self.accumulate if self.accumulate > 1 else loss).backward()
        self._micro += 1
        if self._micro == self.accumulate or last_in_epoch:
            self._optimizer_step()
        self.objective.on_step_end(out.detach(), batch)
        self._accumulate(out, batch, terms, loss)
        return terms

    def _optimizer_step(self) -> None:
        if self._method_params and self.rt.distributed:
            self._allreduce_method_grads()
        if self.cfg.optim.clip_grad_norm is not None:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self._all_params, self.cfg.optim.clip_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update_parameters(self.model)
        self._micro = 0

    def _allreduce_method_grads(self) -> None:
        # Method-owned parameters (heads, adapters) live outside the DDP wrapper.
        for p in self._method_params:
            if p.grad is not None:
                dist.all_reduce(p.grad)
                p.grad.div_(self.rt.world)

    def _reset_accumulators(self) -> None:
        self._term_names: Optional[List[str]] = None
        self._term_sums = None
        self._seen = torch.zeros((), device=self.rt.device)
        self._correct = torch.zeros((), device=self.rt.device)
        if self._noisy_mask is not None:
            self._noisy_stats = torch.zeros(3, device=self.rt.device)

    def _accumulate(self, out, batch, terms, loss) -> None:
        n = len(batch)
        with torch.no_grad():
            vals = torch.stack([loss.detach().float()] + [v.detach().float() for v in terms.values()]) * n
            if self._term_sums is None:
                self._term_names = ["loss"] + list(terms)
                self._term_sums = vals
            else:
                self._term_sums += vals
            pred = out.logits.detach().argmax(dim=1)
            # a mixed batch (mixup, cutmix) counts λ·[pred = y] + (1−λ)·[pred = y[π]]
            self._correct += label_terms(lambda y: (pred == y).sum().float(), batch)
            self._seen += n
            if self._noisy_mask is not None:
                m = self._noisy_mask[batch.index]
                self._noisy_stats += torch.stack([
                    m.sum(), (m & (pred == batch.y)).sum(),
                    (m & (pred == self._clean_labels[batch.index])).sum()]).float()

    def _train_stats(self) -> dict:
        """The epoch's summed training figures, reduced over ranks: the one sync per epoch."""
        parts = [self._seen.view(1), self._correct.view(1), self._term_sums]
        if self._noisy_mask is not None:
            parts.append(self._noisy_stats)
        flat = torch.cat([p.float() for p in parts])
        if self.rt.distributed:
            dist.all_reduce(flat)
        flat = flat.cpu().tolist()
        seen, correct = flat[0], flat[1]
        self._last_seen = seen
        sums = flat[2:2 + len(self._term_names)]
        stats = {name: s / max(seen, 1) for name, s in zip(self._term_names, sums)}
        stats["top1_error"] = 100.0 * (1 - correct / max(seen, 1))
        if self._noisy_mask is not None:
            n_noisy, fit, clean = flat[-3:]
            stats["noisy_fit"] = 100.0 * fit / max(n_noisy, 1)       # predicted = the wrong label
            stats["noisy_recovered"] = 100.0 * clean / max(n_noisy, 1)  # predicted = the true label
        return stats

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def predict(self, loader, model: Optional[nn.Module] = None):
        """Logits and labels of a whole split (gathered across ranks), on the CPU; ``model``
        defaults to the trained model (the EMA model is the other one evaluated)."""
        model = self.model if model is None else model
        was_training = model.training
        model.eval()
        logits, labels = [], []
        with torch.inference_mode(), self.autocast:
            for batch in loader:
                logits.append(model(batch.x).logits.float())
                labels.append(batch.y)
        model.train(was_training)
        k = self.data.num_classes
        z = torch.cat(logits) if logits else torch.zeros(0, k, device=self.rt.device)
        y = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=self.rt.device)
        if self.rt.distributed:
            z, y = _gather_rows(z, self.rt.world), _gather_rows(y, self.rt.world)
        return z.cpu(), y.cpu()

    def evaluate(self, loader, model: Optional[nn.Module] = None) -> dict:
        z, y = self.predict(loader, model)
        if model is None:  # the collapse check watches the trained weights, not their average
            self._collapse_reasons[id(loader)] = collapse_reason(z, y, self.data.num_classes)
        return classification_metrics(z, y, self.data.num_classes)

    def _check_collapse(self, record: dict, diverged: Optional[str] = None) -> bool:
        """After an evaluated epoch: is the run collapsed (engine/collapse.py), or did its loss
        diverge? Then record it, say so in one line, and tell ``fit`` to stop: the run ends with
        a verdict in final.json, so compare and pipelines go on with the next run."""
        loader, split = (self.val_loader, "val") if self.val_loader is not None else (self.test_loader, "test")
        reason = diverged or self._collapse_reasons.pop(id(loader), None)
        self._collapse_reasons.clear()
        if reason is None or split not in record:
            return False
        self.collapsed = {"epoch": record["epoch"], "split": split, "reason": reason}
        if self.rt.is_main:
            print(f"softlabels: {collapse_message(self.cfg.method.name, record['epoch'], reason, record['lr'])}",
                  file=sys.stderr, flush=True)
        return True

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        cfg = self.cfg
        t_start = time.time()
        log = None
        if self.run_dir is not None and self.rt.is_main:
            from .runlog import RunLog

            log = RunLog(self.run_dir, self.start_epoch, tensorboard=cfg.train.tensorboard)
        for epoch in range(self.start_epoch, cfg.train.epochs):
            t0 = time.time()
            lr = self.schedule.lr()
            self.train_loader.set_epoch(epoch)
            self.model.train()
            self._reset_accumulators()
            self.objective.on_epoch_start(epoch)
            shown = time.monotonic()
            n_batches = len(self.train_loader)
            for i, batch in enumerate(self.train_loader):
                self.train_step(batch, last_in_epoch=i + 1 == n_batches)
                if self.progress is not None:
                    self.progress.update(1)
                    if time.monotonic() - shown > 1.0:  # a host sync at most once a second
                        shown = time.monotonic()
                        self._show_progress(None, epoch, lr, t0)
            self.objective.on_epoch_end(epoch)
            train = self._train_stats()
            self._images_this_epoch = self._last_seen
            diverged = not math.isfinite(train["loss"])  # a verdict like a collapse, below
            record = {"epoch": epoch + 1, "lr": lr, "train": train,
                      "train_time_s": round(time.time() - t0, 3)}
            last = epoch + 1 == cfg.train.epochs
            if (epoch + 1) % cfg.train.eval_every == 0 or last or diverged:
                if self.val_loader is not None:
                    record["val"] = self.evaluate(self.val_loader)
                record["test"] = self.evaluate(self.test_loader)
                if self.ema is not None:
                    ema = self.ema.module
                    record["ema"] = {"test": self.evaluate(self.test_loader, ema)}
                    if self.val_loader is not None:
                        record["ema"]["val"] = self.evaluate(self.val_loader, ema)
                self._track_best(record)
                patience = cfg.train.early_stop_patience
                if patience is not None and self._since_best >= patience and not last:
                    self.stopped_early = epoch + 1
                    last = True
            record["epoch_time_s"] = round(time.time() - t0, 3)
            self.history.append(record)
            collapsed = "test" in record and self._check_collapse(
                record, f"its training loss is {train['loss']} (diverged)" if diverged else None)
            if collapsed:
                record["collapsed"] = self.collapsed
            if self.progress is not None:
                self._show_progress(record, epoch, lr, t0, epoch_done=True)
            if log is not None:
                log.append(record)
                if (epoch + 1) in cfg.train.snapshot_epochs:
                    ckpt.save_checkpoint(self.run_dir / "checkpoints" / f"epoch{epoch + 1}",
                                         self._model_tensors(), self._model_meta(epoch + 1))
                if (epoch + 1) % cfg.train.checkpoint_every == 0 or last or collapsed:
                    self.save_last(epoch + 1)
            for cb in self.callbacks:
                cb(self, record)
            if collapsed or self.stopped_early is not None:
                break
        if log is not None:
            log.close()
        self.close_loaders()
        final = self._final(time.time() - t_start)
        if self.run_dir is not None and self.rt.is_main:
            ckpt.atomic_write_text(self.run_dir / "final.json", json.dumps(final, indent=1))
        return final

    def close_loaders(self) -> None:
        """Stop the file loaders' worker processes once training is over (evaluating again
        afterwards starts new ones)."""
        for loader in (self.train_loader, self.val_loader, self.test_loader):
            close = getattr(loader, "close", None)
            if close is not None:
                close()

    def _show_progress(self, record, epoch: int, lr: float, t0: float, epoch_done: bool = False) -> None:
        from .runlog import progress_postfix

        running, rate = None, None
        if epoch_done:
            running = record["train"]["loss"]
            rate = record["train_time_s"] and self._images_this_epoch / record["train_time_s"]
        elif self._term_sums is not None:
            seen = float(self._seen)
            running = float(self._term_sums[0]) / max(seen, 1.0)
            rate = seen * self.rt.world / max(time.time() - t0, 1e-9)
        shown = record if epoch_done else (self.history[-1] if self.history else None)
        self.progress.set_postfix(progress_postfix(shown, running, rate, lr, epoch + 1, self.cfg.train.epochs),
                                  refresh=False)

    def _track_best(self, record: dict) -> None:
        if "val" not in record:
            return
        key = (record["val"]["top1_error"], record["val"]["nll"])
        self._since_best += 1
        if self.best is None or key < (self.best["val"]["top1_error"], self.best["val"]["nll"]):
            self._since_best = 0
            self.best = {"epoch": record["epoch"], "val": record["val"], "test": record["test"]}
            if self.run_dir is not None and self.rt.is_main:
                # every best generation is kept until `last` of the same epoch is saved (then
                # pruned), so a resume from an earlier `last` finds the best it recorded
                ckpt.save_checkpoint(self.run_dir / "checkpoints" / "best", self._model_tensors(),
                                     self._model_meta(record["epoch"]), keep=None)

    def _final(self, seconds: float) -> dict:
        evaluated = [r for r in self.history if "test" in r] or []
        if not evaluated and self.run_dir is not None:
            evaluated = read_metrics(self.run_dir)
        last = evaluated[-1] if evaluated else None
        last_block = {"epoch": last["epoch"], "val": last.get("val"), "test": last["test"]} if last else None
        best = self.best
        selection = SELECTION
        if best is None:  # no validation split: nothing to select on, report the last epoch
            best, selection = last_block, "none (no validation split): best = last epoch"
        c = self.cfg
        return {
            "run": {"method": c.method.name, "label": c.name or c.method.name, "seed": c.train.seed,
                    "dataset": c.data.name, "model": c.model.name},
            "selection": selection,
            "best_checkpoint": "best" if self.best is not None else "last",
            "last": last_block,
            "best": best,
            "train_seconds": round(seconds, 2),
            "complexity": self.complexity,
            **({"ema": {"epoch": last["epoch"], **last["ema"]}} if last and "ema" in last else {}),
            **({"stopped_early": {"epoch": self.stopped_early, "patience": c.train.early_stop_patience}}
               if self.stopped_early is not None else {}),
            **({"collapsed": self.collapsed} if self.collapsed else {}),
        }

    # ------------------------------------------------------------------ checkpoints
    def _model_tensors(self) -> dict:
        return ckpt.prefixed("model", self.model.state_dict())

    def _model_meta(self, epoch: int) -> dict:
        return {"epoch": epoch, "identity": _identity(self.cfg), "num_classes": self.data.num_classes,
                "in_channels": self.data.in_channels}

    def save_last(self, epoch: int) -> None:
        tensors = self._model_tensors()
        tensors.update(ckpt.prefixed("method", self.objective.state_dict()))
        opt_t, opt_meta = ckpt.optimizer_state(self.optimizer)
        rng_t, rng_meta = ckpt.rng_state(self.rt.device)
        tensors.update(opt_t)
        tensors.update(rng_t)
        meta = self._model_meta(epoch)
        meta.update({"optimizer": opt_meta, "schedule": self.schedule.state_dict(), "rng": rng_meta,
                     "best": self.best, "since_best": self._since_best, "scaler": self.scaler.state_dict()})
        if self.ema is not None:
            tensors.update(ckpt.prefixed("ema", self.ema.state_dict()))
        ckpt.save_checkpoint(self.run_dir / "checkpoints" / "last", tensors, meta)
        if self.ema is not None:  # the averaged weights as a model of their own: `eval --checkpoint ema`
            ckpt.save_checkpoint(self.run_dir / "checkpoints" / "ema",
                                 ckpt.prefixed("model", self.ema.module.state_dict()), self._model_meta(epoch))
        ckpt.prune(self.run_dir / "checkpoints" / "best", keep=1)

    def _resume(self) -> None:
        stem = self.run_dir / "checkpoints" / "last"
        tensors, meta = ckpt.load_checkpoint(stem, training=True)
        check_identity(meta, self.cfg, stem)
        load_state(self.model, ckpt.unprefixed("model", tensors), stem, "model")
        load_state(self.objective, ckpt.unprefixed("method", tensors), stem, "method")
        ckpt.load_optimizer_state(self.optimizer, tensors, meta["optimizer"], stem)
        self.schedule.load_state_dict(meta["schedule"])
        ckpt.load_rng_state(self.rt.device, tensors, meta.get("rng", {}), stem)
        self.start_epoch = int(meta["epoch"])
        self.best = meta.get("best")
        self._since_best = int(meta.get("since_best", 0))
        if meta.get("scaler"):
            self.scaler.load_state_dict(meta["scaler"])
        if self.ema is not None:
            ema_state = ckpt.unprefixed("ema", tensors)
            if not ema_state:
                raise CheckpointError(f"checkpoint {stem}: has no EMA weights; it was written without train.ema_decay")
            load_state(self.ema, ema_state, stem, "EMA")
        if self.rt.is_main:
            # what was saved after this checkpoint (a best or snapshot of an epoch about to be
            # redone) is discarded, so the redone epochs write them again
            folder = self.run_dir / "checkpoints"
            for name in ckpt.checkpoint_names(folder):
                if name != "last":
                    ckpt.prune(folder / name, keep=1, after_epoch=self.start_epoch)
            kept = [r for r in read_metrics(self.run_dir) if r["epoch"] <= self.start_epoch]
            ckpt.atomic_write_text(self.run_dir / "metrics.jsonl",
                                   "".join(json.dumps(r) + "\n" for r in kept))
        self.history = []


def _frozen_teacher(model: nn.Module, mode: str) -> nn.Module:
    """A teacher as its method's ``requires.teacher_mode`` asks: ``eval`` (the model itself in
    eval mode) or ``train`` (a private copy in train mode: BatchNorm normalises with the batch's
    statistics, and its running-statistics updates never reach the caller's model). No grad."""
    if mode == "train":
        return copy.deepcopy(model).train().requires_grad_(False)
    return model.eval().requires_grad_(False)


def read_metrics(run_dir: Path) -> List[dict]:
    p = Path(run_dir) / "metrics.jsonl"
    if not p.is_file():
        return []
    rows = []
    for line in p.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a kill: everything after it is redone
            break
    return rows


def check_identity(meta: dict, cfg: RunConfig, where) -> None:
    want, got = _identity(cfg), meta.get("identity", {})
    for key in ("model", "model_options", "dataset", "method"):
        if got.get(key) != want[key]:
            raise CheckpointError(
                f"checkpoint {where} was written for {key} {got.get(key)!r}, "
                f"but this run uses {want[key]!r}")


def load_state(module: nn.Module, state: dict, where, what: str) -> None:
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else "mismatch"
        raise CheckpointError(f"checkpoint {where}: {what} weights do not fit ({first[:160]})") from None


def _gather_rows(t: torch.Tensor, world: int) -> torch.Tensor:
    """all_gather for tensors whose first dimension differs by rank (contiguous shards)."""
    n = torch.tensor([t.shape[0]], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    pad = max(sizes) - t.shape[0]
    if pad:
        t = torch.cat([t, t.new_zeros((pad,) + tuple(t.shape[1:]))])
    out = [torch.empty_like(t) for _ in range(world)]
    dist.all_gather(out, t)
    return torch.cat([o[:s] for o, s in zip(out, sizes)])
