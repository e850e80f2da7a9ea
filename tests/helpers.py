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
