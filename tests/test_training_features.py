"""Training features timm/torchvision users reach for: optimisers and schedules of torch.optim by
name, no weight decay on norms and biases, gradient clipping and accumulation, fp16 with a
gradient scaler, an EMA of the weights, early stopping."""
import json

import pytest
import torch
from torch import nn

from softlabels.cli import main
from softlabels.config import build_config
from softlabels.data.base import Batch
from softlabels.engine import Trainer
from softlabels.engine.optim import TorchSchedule, param_groups
from softlabels.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")

SYN = ["data.name=synthetic", "data.options.image_size=12", "data.options.train_size=64",
       "data.options.test_size=32", "data.batch_size=32", "data.augment=false", "model.name=lenet5",
       "train.deterministic=true"]


def _cfg(*extra):
    return build_config(None, SYN + list(extra))


def test_optimiser_by_name_with_options():
    t = Trainer(_cfg("optim.name=Adam", "optim.lr=0.001", "optim.options.betas=[0.8, 0.99]", "optim.weight_decay=0"),
                None)
    assert type(t.optimizer) is torch.optim.Adam
    assert t.optimizer.param_groups[0]["betas"] == (0.8, 0.99)


@pytest.mark.parametrize("override, fragment", [
    ("optim.name=adamz", "optim.name: unknown optimiser 'adamz'"),
    ("optim.options.bogus=1", "optim.options.bogus: unknown option"),
    ("schedule.name=NoSuchLR", "schedule.name: unknown schedule 'NoSuchLR'"),
    ("schedule.options.gamma=0.5", "schedule.options: the project schedule 'cosine' takes no options"),
])
def test_bad_optimiser_or_schedule_is_one_line(override, fragment):
    with pytest.raises(ConfigError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        _cfg(override)


@pytest.mark.filterwarnings("ignore:Detected call of .lr_scheduler.step")
def test_torch_scheduler_by_name_steps_and_resumes():
    cfg = _cfg("schedule.name=OneCycleLR", "train.epochs=2")
    t = Trainer(cfg, None)
    assert isinstance(t.schedule, TorchSchedule)
    lrs = []
    for _ in range(3):
        t.schedule.step()
        lrs.append(t.schedule.lr())
    assert len(set(lrs)) == 3                       # one-cycle moves the rate every step
    state = json.loads(json.dumps(t.schedule.state_dict()))   # JSON-able: it goes into the sidecar
    fresh = Trainer(cfg, None)
    fresh.schedule.load_state_dict(state)
    t.schedule.step()
    fresh.schedule.step()
    assert fresh.schedule.lr() == pytest.approx(t.schedule.lr())


@pytest.mark.filterwarnings("ignore:Detected call of .lr_scheduler.step")
def test_epoch_interval_scheduler_moves_only_at_epoch_ends():
    t = Trainer(_cfg("schedule.name=ExponentialLR", "schedule.options.gamma=0.5", "schedule.interval=epoch"), None)
    base = t.schedule.lr()
    t.schedule.step()                               # 2 steps per epoch (64 images, batch 32)
    assert t.schedule.lr() == base
    t.schedule.step()
    assert t.schedule.lr() == pytest.approx(base * 0.5)


def test_no_decay_on_norms_and_biases():
    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", "optim.no_decay_norm_bias=true"])
    t = Trainer(cfg, None)
    groups = t.optimizer.param_groups
    assert [g["weight_decay"] for g in groups] == [cfg.optim.weight_decay, 0.0]
    no_decay = {id(p) for p in groups[1]["params"]}
    for module in t.model.modules():
        for name, p in module.named_parameters(recurse=False):
            expect = isinstance(module, nn.BatchNorm2d) or name == "bias"
            assert (id(p) in no_decay) == expect, (type(module).__name__, name)
    # every trainable parameter is in exactly one group
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert len(all_ids) == len(set(all_ids)) == sum(1 for p in t.model.parameters())


def test_no_decay_split_keeps_head_lr_groups():
    cfg = build_config(None, ["data.name=digits", "model.name=resnet8", "optim.no_decay_norm_bias=true",
                              "optim.head_lr=0.01"])
    t = Trainer(cfg, None)
    groups = param_groups(t.model, t.objective, cfg.optim)
    assert [(g.get("lr"), g.get("weight_decay")) for g in groups] == [(None, None), (None, 0.0), (0.01, None),
                                                                      (0.01, 0.0)]


def _one_batch(t):
    return next(iter(t.train_loader))


def test_gradient_clipping_bounds_the_step():
    t = Trainer(_cfg("optim.momentum=0", "optim.weight_decay=0", "optim.lr=1.0", "optim.clip_grad_norm=0.001",
                     "schedule.name=constant"), None)
    before = torch.cat([p.detach().flatten().clone() for p in t.model.parameters()])
    t.train_step(_one_batch(t))
    after = torch.cat([p.detach().flatten() for p in t.model.parameters()])
    assert (after - before).norm() <= 0.001 * 1.0001


def test_gradient_accumulation_equals_the_large_batch():
    """lenet5 has no BatchNorm, so two accumulated halves give exactly the gradient of the whole."""
    big = Trainer(_cfg("optim.momentum=0", "optim.weight_decay=0", "schedule.name=constant"), None)
    acc = Trainer(_cfg("optim.momentum=0", "optim.weight_decay=0", "schedule.name=constant",
                       "optim.accumulate=2"), None)
    acc.model.load_state_dict(big.model.state_dict())
    batch = _one_batch(big)
    halves = [Batch(x=batch.x[i:i + 16], y=batch.y[i:i + 16], index=batch.index[i:i + 16]) for i in (0, 16)]
    big.train_step(batch)
    acc.train_step(halves[0], last_in_epoch=False)
    assert acc.schedule.step_count == 0              # no optimiser step yet
    acc.train_step(halves[1], last_in_epoch=False)
    assert acc.schedule.step_count == 1
    for p, q in zip(big.model.parameters(), acc.model.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)
    assert acc.schedule.steps_per_epoch == 1        # 2 batches of 32 → 1 optimiser step per epoch


def test_fp16_with_gradient_scaler_trains(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--out", str(out), "--no-progress", "--epochs", "2", *SYN, "train.precision=fp16"]) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["last"]["test"]["top1_error"] <= 100
    from softlabels.engine import checkpoint as ckpt

    _, meta = ckpt.load_checkpoint(out / "checkpoints" / "last", training=True)
    assert meta["scaler"]["scale"] > 0               # the scaler's state is checkpointed for resume


def test_ema_is_evaluated_checkpointed_and_resumed(tmp_path):
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--no-progress", *SYN, "train.ema_decay=0.9", "data.val_fraction=0.25",
            "schedule.name=constant"]
    assert main(args + ["--epochs", "1"]) == 0
    (out / "final.json").unlink()                   # continue it as if it had been interrupted
    assert main(["train", "--resume", str(out), "--no-progress", "train.epochs=2"]) == 0
    final = json.loads((out / "final.json").read_text())
    assert set(final["ema"]) == {"epoch", "val", "test"} and final["ema"]["epoch"] == 2
    # the resumed run equals an uninterrupted one, EMA included
    ref = tmp_path / "ref"
    assert main(["train", "--out", str(ref), "--no-progress", *SYN, "train.ema_decay=0.9", "data.val_fraction=0.25",
                 "schedule.name=constant",
                 "--epochs", "2"]) == 0
    ref_final = json.loads((ref / "final.json").read_text())
    assert final["ema"]["test"] == ref_final["ema"]["test"]
    # the averaged weights load as a model of their own
    import softlabels

    ema = softlabels.load_model(out, "ema")
    raw = softlabels.load_model(out, "last")
    x = torch.randn(2, 1, 12, 12)
    assert not torch.allclose(ema(x).logits, raw(x).logits)


def test_early_stopping_on_validation(tmp_path):
    out = tmp_path / "run"
    # a rate so small the validation error cannot change: no improvement after the first epoch
    assert main(["train", "--out", str(out), "--no-progress", "--epochs", "6", *SYN, "optim.lr=0.000000000001",
                 "data.val_fraction=0.25", "train.early_stop_patience=2"]) == 0
    final = json.loads((out / "final.json").read_text())
    assert final["stopped_early"] == {"epoch": 3, "patience": 2}
    assert final["last"]["epoch"] == 3
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_early_stopping_needs_a_validation_split():
    with pytest.raises(ConfigError, match="early_stop_patience"):
        Trainer(_cfg("data.val_fraction=0", "train.early_stop_patience=2"), None)
