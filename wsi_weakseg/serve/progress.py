"""Progress of a running job, from wherever it runs to the server's ``job.json``.

A segment job on a Dask worker reports through :class:`ProgressFile`, a picklable ``on_progress(fraction)``
callback that rewrites ``<job folder>/progress.json`` (temporary name + ``os.replace``, at most every
:data:`INTERVAL_S` seconds, always for 1.0); the dispatcher waiting on the job's future reads it
(:func:`read_progress`) between waits. A job run in a server thread reports through :class:`Throttled`
straight into the job store. A file needs nothing from the cluster (no scheduler variables to clean up) and
survives a lost worker as a stale number, never as an error.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PROGRESS_NAME = "progress.json"
#: Shortest interval between two reports (seconds); a final 1.0 is always reported.
INTERVAL_S = 0.2


class ProgressFile:
    """``on_progress(fraction)`` writing ``{"progress": fraction}`` to ``path`` (picklable, throttled).

    Parameters
    ----------
    path : str
        The file (in the job folder, which the worker can reach: the server's state folder).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._last = 0.0

    def __call__(self, fraction: float) -> None:
        now = time.monotonic()
        if fraction < 1.0 and now - self._last < INTERVAL_S:
            return
        self._last = now
        tmp = f"{self.path}.{secrets.token_hex(4)}.tmp"
        with open(tmp, "w") as fh:
            fh.write(json.dumps({"progress": round(float(fraction), 4)}))
        os.replace(tmp, self.path)


def read_progress(path: Path) -> float | None:
    """The fraction a :class:`ProgressFile` last wrote, or None (no file yet, or unreadable)."""
    try:
        value = json.loads(path.read_text())["progress"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return float(value) if isinstance(value, (int, float)) and 0.0 <= value <= 1.0 else None


class Throttled:
    """``callback(*args)`` at most every ``interval_s`` seconds, and always when ``final(*args)`` holds."""

    def __init__(self, callback: Callable[..., None], interval_s: float = INTERVAL_S,
                 final: Callable[..., bool] = lambda *a: False) -> None:
        self.callback, self.interval_s, self.final = callback, interval_s, final
        self._last = 0.0

    def __call__(self, *args) -> None:
        now = time.monotonic()
        if not self.final(*args) and now - self._last < self.interval_s:
            return
        self._last = now
        self.callback(*args)
