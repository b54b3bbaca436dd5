"""One slide at a time: an exclusive lock on ``OUT/<slide id>/.lock``, and the sweep of dead attempts' staging.

Every cohort attempt at a slide holds the lock while it stages, publishes and commits, so two drivers on one
output folder (or a rerun beside a killed driver's still-running worker) never compute a slide twice: the
second attempt does not wait, it fails at once with :class:`SlideLockedError`, naming the holder.

The lock is :func:`wsi_weakseg.engine.lock.output_lock` (``fcntl.flock``, released by the kernel when its
process dies, SIGKILL included). Because a dead holder releases it, everything a *previous* attempt left in the
slide folder is stale once the lock is acquired: :func:`sweep_staging` removes its
``.wsi-weakseg-tmp-*`` folders (the staging of ``segment``).

``segment`` itself also takes a lock of its own outputs (``.<stem>.lock``, :func:`~wsi_weakseg.engine.lock.segment_lock`).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from ..engine.lock import OutputsLockedError, lock_holder, output_lock

__all__ = ["LOCK_NAME", "STAGING_PREFIX", "SlideLockedError", "lock_holder", "slide_lock", "sweep_staging"]

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
#: Prefix of ``segment``'s per-attempt staging folders (``engine.segment.staging``).
STAGING_PREFIX = ".wsi-weakseg-tmp-"


class SlideLockedError(OutputsLockedError):
    """Another live process holds the slide's lock: the slide is being computed there, not twice."""


def slide_lock(out_dir: Path):
    """Hold the exclusive lock of the slide folder ``out_dir`` (created if needed) for the ``with`` body.

    Parameters
    ----------
    out_dir : Path
        The slide's output folder, ``OUT/<slide id>``.

    Yields
    ------
    Path
        The lock file. It records the holder (pid, host) and is removed on release, together with
        ``out_dir`` when that is left empty (a slide that failed before writing anything).

    Raises
    ------
    SlideLockedError
        The lock is held by another live process (never waits).
    OutputError
        The folder or lock file cannot be created.
    """
    busy = (f"{out_dir.name}: being computed by {{holder}} (it holds {{path}}); not computed twice. "
            "Rerun the cohort when that run has finished")
    return output_lock(out_dir / LOCK_NAME, busy, SlideLockedError, remove_empty_dir=True)


def sweep_staging(out_dir: Path) -> list[Path]:
    """Remove the staging folders of earlier, dead attempts at a slide; call it holding :func:`slide_lock`.

    Returns
    -------
    list of Path
        The folders removed.
    """
    removed = []
    for tmp in sorted(out_dir.glob(STAGING_PREFIX + "*")):
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
            removed.append(tmp)
            log.warning("%s: removed %s, left by an attempt that did not finish", out_dir.name, tmp.name)
    return removed
