"""Exclusive, non-waiting locks on output folders, so two processes never write the same outputs.

``segment`` holds ``OUT/.<stem>.lock`` from the collision check to the publish (two ``segment`` runs of one slide
into one folder: the second fails at once, exit 2, naming the holder); the cohort holds ``OUT/<slide id>/.lock``
around a whole attempt (:mod:`wsi_weakseg.cohort.lock`).

The lock is ``fcntl.flock`` (an advisory lock on the open file, released by the kernel when its process dies,
SIGKILL included), so a dead holder never blocks a rerun. ``flock`` works between processes (and between
threads with their own ``open``) on one host; Linux NFS clients map it to byte-range locks the server
arbitrates. File systems without locks raise :class:`~wsi_weakseg.errors.OutputError` (never a silent race).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import OutputError
from .outputs import missing_folders, remove_empty


class OutputsLockedError(OutputError):
    """Another live process holds the lock of these outputs: they are being written there."""


def lock_holder(path: Path) -> str:
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


def _acquire(path: Path, busy: str, error: type[OutputsLockedError]) -> int:
    """Open and flock ``path`` (creating its folder), retrying while a releasing holder unlinks it."""
    for _ in range(10):  # the path can be unlinked (a holder releasing) between open and flock: try again
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:  # the folder removed by a releasing holder in between
            continue
        except OSError as exc:
            raise OutputError(f"cannot create the lock {path}: {exc.strerror or exc}; choose another -o") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise error(busy.replace("{holder}", lock_holder(path)).replace("{path}", str(path))) from None
            raise OutputError(f"cannot lock {path}: {exc.strerror or exc}; use a file system with locks") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            return fd
        os.close(fd)  # we locked a file a releasing holder had just unlinked
    raise error(f"could not take {path}: it keeps being replaced by other processes")


@contextmanager
def output_lock(path: Path, busy: str, error: type[OutputsLockedError] = OutputsLockedError,
                remove_empty_dir: bool = False) -> Iterator[Path]:
    """Hold the exclusive lock file ``path`` for the ``with`` body; never waits.

    Parameters
    ----------
    path : Path
        The lock file (its folder is created if needed).
    busy : str
        Message when another process holds it; ``{holder}`` and ``{path}`` are filled in.
    error : type
        The :class:`OutputsLockedError` subclass to raise.
    remove_empty_dir : bool
        Also remove the lock's folder on release when it is left empty.

    Yields
    ------
    Path
        The lock file; it records the holder (pid, host) and is removed on release.
    """
    fd = _acquire(path, busy, error)
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
        if remove_empty_dir:
            try:
                path.parent.rmdir()  # only when empty
            except OSError:
                pass


@contextmanager
def segment_lock(output_dir: Path, stem: str) -> Iterator[Path]:
    """Hold the lock of one slide's ``segment`` outputs (``<stem>.*``) in ``output_dir``.

    ``output_dir`` (and missing parents) are created if needed and removed again on release when this call
    created them and nothing was written there (a run refused before publishing leaves nothing behind).
    """
    created = missing_folders(output_dir)
    busy = (f"{stem}: another segment run ({{holder}}) is writing these outputs in {output_dir} (it holds "
            "{path}); wait for it to finish or choose another -o")
    try:
        with output_lock(output_dir / f".{stem}.lock", busy) as path:
            yield path
    finally:
        remove_empty(created)
