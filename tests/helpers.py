"""Small assertions shared by several test modules (importable because pytest puts tests/ on
sys.path)."""
from __future__ import annotations

import pytest

from softlabels.errors import ConfigError, DataError


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
