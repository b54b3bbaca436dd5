"""Progress of a run: tqdm bars on stderr for people, and a fraction callback for programs (the server).

The bars are silent when disabled or when stderr is not a terminal. :class:`ProgressCounter` counts the units
of a run (tiles inferred and instance blocks finished, from several threads) and tells an optional
``on_progress(fraction)`` callback; a failing callback is logged once and never fails the run.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm import tqdm

log = logging.getLogger(__name__)

#: Fraction reported once every counted unit is done: the rest (GeoJSON, pyramids, publishing) follows it.
COUNTED_SHARE = 0.95


@contextmanager
def progress_bar(total: int, desc: str, enabled: bool = True) -> Iterator[tqdm]:
    """A tqdm bar writing to stderr; ``update(n)`` is thread-safe."""
    bar = tqdm(total=total, desc=desc, unit="it", file=sys.stderr, disable=not enabled, leave=False, dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


class ProgressCounter:
    """Units done out of a total, reported as a fraction in [0, 1] to ``callback`` (thread-safe).

    Units may be added before the total is known (:meth:`start`); nothing is reported until it is. Fractions
    are scaled to :data:`COUNTED_SHARE` until :meth:`finish` reports 1.0, and never decrease.

    Parameters
    ----------
    callback : callable or None
        ``callback(fraction)``; None counts silently.
    """

    def __init__(self, callback: Callable[[float], None] | None) -> None:
        self._callback = callback
        self._lock = threading.Lock()
        self._report_lock = threading.Lock()  # held across the callback: fractions arrive in order
        self._done = self._total = 0
        self._last = -1.0
        self._failed = False

    def start(self, total: int, already: int = 0) -> None:
        """Set the total units and count ``already`` done ones (reused from an earlier attempt)."""
        with self._lock:
            self._total = max(0, int(total))
        self.add(already)

    def add(self, n: int = 1) -> None:
        """Count ``n`` more units done."""
        with self._lock:
            self._done += int(n)
            if self._total <= 0:
                return
            fraction = COUNTED_SHARE * min(1.0, self._done / self._total)
        self._report(fraction)

    def finish(self) -> None:
        """Report 1.0: the run is complete."""
        self._report(1.0)

    def bar(self, bar: Any) -> _CountingBar:
        """A bar-like object whose ``update(n)`` updates ``bar`` and counts ``n`` units."""
        return _CountingBar(bar, self)

    def _report(self, fraction: float) -> None:
        if self._callback is None:
            return
        with self._report_lock:
            if fraction <= self._last:
                return
            self._last = fraction
            try:
                self._callback(fraction)
            except Exception as exc:  # noqa: BLE001 - progress reporting must never fail a run
                if not self._failed:
                    self._failed = True
                    log.warning("progress callback failed (%s: %s); the run continues", type(exc).__name__, exc)


class _CountingBar:
    """``update(n)`` on a tqdm bar and on a :class:`ProgressCounter`."""

    def __init__(self, bar: Any, counter: ProgressCounter) -> None:
        self._bar, self._counter = bar, counter

    def update(self, n: int = 1) -> None:
        self._bar.update(n)
        self._counter.add(n)
