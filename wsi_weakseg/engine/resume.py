"""Resume inside a slide: the finished work of a killed ``segment`` run is kept and reused by the next one.

A run works in ``<out>/.wsi-weakseg-partial-<stem>/`` (not a random staging name), with ``key.txt``, a
digest of everything its intermediate results depend on (package version, slide fingerprint, model
weights and card, the options that change maps or nuclei, the ROI and tissue files' contents). Finished
work is recorded as it happens:

- **tiles**: each tile's maps are written into the OME-Zarr level 0 (one chunk per tile), *then* its origin
  is appended to ``tiles.log``. A tile is reused only if its line is complete, so a kill between the two
  costs the tile again, never a torn chunk;
- **blocks**: a block writes its label-key chunk, *then* its record file by temporary name and rename
  (:func:`~.records.save_block`). A block is reused only if its record exists.

Everything after the blocks (ids, GeoJSON, pictures, pyramid) is cheap and is always redone. Each reused
piece is what the same computation would write again (same inputs, same code; CPU kernels are
deterministic), so a resumed run's outputs equal an uninterrupted run's byte for byte (tested with a real
SIGKILL mid-inference and mid-merge, ``tests/engine/test_resume.py``). On success the folder is removed
after publishing; on any failure or interrupt it is kept when it holds finished tiles, and the next run
with the same key continues from it; a different key (changed model, options, slide) starts afresh.
Kills of the *process* (SIGKILL, OOM killer, Ctrl-C) are covered; a crash of the machine may lose the
last writes still in the page cache (nothing is fsynced), which the complete-line rule tolerates for the
log but not for chunk files, so after a power loss delete the folder.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import OutputError
from .outputs import missing_folders, remove_empty

log = logging.getLogger(__name__)

PARTIAL_PREFIX = ".wsi-weakseg-partial-"
_KEY = "key.txt"
_TILES = "tiles.log"


def run_key(parts: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``parts`` (what a run's intermediate results depend on)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def file_digest(path: str | None) -> str | None:
    """SHA-256 of a file's bytes (ROI or tissue annotations); the argument itself when it is not a file."""
    if path is None or not Path(path).is_file():
        return path
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class Partial:
    """The resumable working folder of one slide's run.

    Attributes
    ----------
    folder : Path
    reused_tiles : set of (int, int)
        Tile origins finished by an earlier run with the same key.
    """

    folder: Path
    reused_tiles: set[tuple[int, int]] = field(default_factory=set)
    _finished: int = 0

    @property
    def resumed(self) -> bool:
        return bool(self.reused_tiles)

    def record_tiles(self, origins: Iterable[tuple[int, int]]) -> None:
        """Mark tiles as finished: call after their maps are written."""
        lines = "".join(f"{y} {x}\n" for y, x in origins)
        with open(self.folder / _TILES, "a", encoding="ascii") as fh:
            fh.write(lines)
        self._finished += lines.count("\n")

    def has_work(self) -> bool:
        return bool(self.reused_tiles) or self._finished > 0


def _read_tiles(path: Path) -> set[tuple[int, int]]:
    """Tile origins of the complete lines of ``tiles.log`` (a torn last line is ignored)."""
    try:
        text = path.read_text(encoding="ascii")
    except (FileNotFoundError, UnicodeDecodeError):
        return set()
    done = set()
    for line in text.split("\n")[:-1]:  # the part after the last newline is incomplete
        parts = line.split(" ")
        if len(parts) == 2 and all(p.isdigit() for p in parts):
            done.add((int(parts[0]), int(parts[1])))
    return done


def _open_partial(folder: Path, key: str) -> Partial:
    """Reuse ``folder`` if it was made under ``key``; otherwise start it afresh."""
    try:
        same = (folder / _KEY).read_text(encoding="ascii").strip() == key
    except (OSError, UnicodeDecodeError):
        same = False
    if same:
        return Partial(folder, _read_tiles(folder / _TILES))
    if folder.exists() or folder.is_symlink():
        log.info("%s holds the work of a run with other inputs or options; starting afresh", folder)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        else:
            folder.unlink()
    folder.mkdir()
    (folder / _KEY).write_text(key + "\n", encoding="ascii")
    return Partial(folder)


@contextmanager
def resumable(output_dir: Path, stem: str, key: str) -> Iterator[Partial]:
    """The slide's partial folder in ``output_dir``: removed on success, kept on failure if it holds work.

    Raises
    ------
    OutputError
        ``output_dir`` cannot be created or written.
    """
    created = missing_folders(output_dir)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        partial = _open_partial(output_dir / f"{PARTIAL_PREFIX}{stem}", key)
    except OSError as exc:
        remove_empty(created)
        raise OutputError(f"cannot write to output directory {output_dir}: {exc.strerror or exc}; choose another -o") from None
    if partial.resumed:
        log.info("%s: resuming: %d finished tile(s) of an interrupted run are reused", stem, len(partial.reused_tiles))
    try:
        yield partial
    except BaseException:
        if partial.has_work():
            log.warning("%s: finished work is kept in %s; rerun the same command to continue, or delete that "
                        "folder", stem, partial.folder)
        else:
            shutil.rmtree(partial.folder, ignore_errors=True)
            remove_empty(created)
        raise
    shutil.rmtree(partial.folder, ignore_errors=True)
