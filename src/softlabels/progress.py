"""The progress bar of train, compare and pipeline: drawn only once training has started.

``progress_bar(enabled, desc)`` returns ``None`` (no bar) or a ``LazyBar``, which takes the
calls the engine makes on a tqdm bar (``total``, ``n``, ``refresh``, ``update``,
``set_description``, ``close``) but creates the tqdm bar on the first ``update``, i.e. after
the first training step. So a run that stops before training (a bad config, missing data, a
refused resume) prints its one error line and no empty bar.
"""
from __future__ import annotations

import sys
from typing import Optional


class LazyBar:
    """A tqdm bar (on stderr) that appears on its first ``update``."""

    def __init__(self, desc: Optional[str] = None):
        self._bar = None
        self._total: Optional[int] = None
        self._n = 0
        self._desc = desc

    @property
    def started(self) -> bool:
        return self._bar is not None

    @property
    def total(self) -> Optional[int]:
        return self._bar.total if self._bar is not None else self._total

    @total.setter
    def total(self, value: Optional[int]) -> None:
        self._total = value
        if self._bar is not None:
            self._bar.total = value

    @property
    def n(self) -> int:
        return self._bar.n if self._bar is not None else self._n

    @n.setter
    def n(self, value: int) -> None:
        self._n = value
        if self._bar is not None:
            self._bar.n = value

    def set_description(self, desc: str) -> None:
        self._desc = desc
        if self._bar is not None:
            self._bar.set_description(desc)

    def refresh(self) -> None:
        if self._bar is not None:
            self._bar.refresh()

    def update(self, k: int = 1) -> None:
        if self._bar is None:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self._total, initial=self._n, desc=self._desc, unit="step",
                             dynamic_ncols=True, file=sys.stderr, mininterval=0.5)
        self._bar.update(k)

    def set_postfix(self, values: dict, refresh: bool = True) -> None:
        """What the trainer shows beside the count (epoch, loss, val error, lr, img/s)."""
        if self._bar is not None:
            self._bar.set_postfix(values, refresh=refresh)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def progress_bar(enabled: bool, desc: Optional[str] = None) -> Optional[LazyBar]:
    """The bar for a training command, or ``None`` when ``enabled`` is false."""
    return LazyBar(desc) if enabled else None


def terminal_bar(desc: str, total: Optional[int]) -> Optional[LazyBar]:
    """A bar for a loop outside training (``eval``'s pass over a split, ``bench``'s timed
    blocks), drawn only when stderr is a terminal, so logs and captured output stay clean."""
    bar = progress_bar(sys.stderr.isatty(), desc)
    if bar is not None:
        bar.total = total
    return bar
