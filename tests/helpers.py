"""Small assertions shared by several test modules (importable because pytest puts tests/ on
sys.path)."""
from __future__ import annotations

import pytest
import torch

from softlabels.errors import ConfigError, DataError


class FakeBatch:
    """A stand-in batch with labels only (``y``, a tensor), for calling a method's loss or hooks
    by hand."""

    def __init__(self, y):
        self.y = torch.as_tensor(y)


class FakeOutput:
    """A stand-in model output with ``logits`` and ``embedding``."""

    def __init__(self, logits, embedding=None):
        self.logits, self.embedding = logits, embedding


def assert_reloaded_like_trained(trainer, model, n: int = 16):
    """``model`` (reloaded from the trainer's run) gives bit-identical logits to the trainer's
    model on the first ``n`` test images, in the same memory format (so the same kernels);
    returns those images."""
    x = trainer.data.test.images[:n].float()
    if trainer.channels_last:
        model = model.to(memory_format=torch.channels_last)
    trainer.model.eval()
    with torch.no_grad():
        assert torch.equal(model(x).logits, trainer.model(x).logits)
    return x


def expect_one_line(error: type, fn, *needles) -> str:
    """Call ``fn``; it must raise ``error`` with a one-line message mentioning every needle."""
    with pytest.raises(error) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for needle in needles:
        assert str(needle) in msg, (needle, msg)
    return msg


def expect_data_error(fn, *needles) -> str:
    return expect_one_line(DataError, fn, *needles)


def expect_config_error(fn, *needles) -> str:
    return expect_one_line(ConfigError, fn, *needles)


def ref_softmax(row, t=1.0):
    """softmax(row / t) of a list of floats, by hand (for hand-computed reference losses)."""
    import math

    e = [math.exp(v / t) for v in row]
    s = sum(e)
    return [v / s for v in e]


def ref_kl(rows, target_rows, t):
    """T²·mean_i KL(softmax(target_i/T) ‖ softmax(row_i/T)), by hand."""
    import math

    total = 0.0
    for a, b in zip(rows, target_rows):
        p, q = ref_softmax(a, t), ref_softmax(b, t)
        total += sum(qk * (math.log(qk) - math.log(pk)) for pk, qk in zip(p, q))
    return t * t * total / len(rows)
