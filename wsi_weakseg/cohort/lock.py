"""One slide at a time: an exclusive lock on ``OUT/<slide id>/.lock``, and the sweep of dead attempts' staging.

Every cohort attempt at a slide holds the lock while it stages, publishes and commits, so two drivers on one
output folder (or a rerun beside a killed driver's still-running worker) never compute a slide twice: the
second attempt does not wait, it fails at once with :class:`SlideLockedError`, naming the holder.

The lock is ``fcntl.flock`` (an advisory lock on the open file, released by the kernel when its process
dies, SIGKILL included). Because a dead holder releases it, everything a *previous* attempt left in the
slide folder is stale once the lock is acquired: :func:`sweep_staging` removes its
``.wsi-weakseg-tmp-*`` folders (the staging of ``segment``).

Notes
-----
``flock`` locks work between processes (and between threads with their own ``open``) on one host; on
Linux NFS clients they are mapped to byte-range locks that the server arbitrates, so hosts sharing an NFS
output folder exclude each other too (NFSv4, or v3 with a lock manager). File systems without locks raise
:class:`OSError` at :func:`slide_lock` (a failed slide, not a silent race). A plain ``segment`` run does not
take this lock.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError

log = logging.getLogger(__name__)

LOCK_NAME = ".lock"
#: Prefix of ``segment``'s per-attempt staging folders (``engine.segment.staging``).
STAGING_PREFIX = ".wsi-weakseg-tmp-"


class SlideLockedError(OutputError):
    """Another live process holds the slide's lock: the slide is being computed there, not twice."""


def _holder(path: Path) -> str:
    """Who holds the lock at ``path``, as its file records (the holder writes it just after locking)."""
    for _ in range(50):
        try:
            info = json.loads(path.read_text() or "{}")
        except FileNotFoundError:
            break
        except (OSError, ValueError):
            info = {}
        if info.get("pid"):
            return f"pid {info['pid']} on host {info.get('host')}"
        time.sleep(0.01)
    return "another process"


@contextmanager
def slide_lock(out_dir: Path) -> Iterator[Path]:
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
    path = out_dir / LOCK_NAME
    for _ in range(10):  # the path can be unlinked (a holder releasing) between open and flock: try again
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # out_dir removed by a releasing holder in between
            continue
        except OSError as exc:
            raise OutputError(f"cannot create the slide lock {path}: {exc.strerror or exc}; choose another -o") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise SlideLockedError(
                    f"{out_dir.name}: being computed by {_holder(path)} (it holds {path}); not computed twice. "
                    "Rerun the cohort when that run has finished"
                ) from None
            raise OutputError(f"cannot lock {path}: {exc.strerror or exc}; use a file system with locks") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # we locked a file a releasing holder had just unlinked
    else:
        raise SlideLockedError(f"{out_dir.name}: could not take {path}: it keeps being replaced by other processes")
    try:
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode())
        yield path
    finally:
        try:
            path.unlink()  # while still holding it: a waiter that opened this inode sees it is gone and retries
        except OSError:
            pass
        os.close(fd)
        try:
            out_dir.rmdir()  # only when empty
        except OSError:
            pass


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
