"""Where ``segment`` writes: output names, staging folder, collision check and all-or-nothing publishing.

Everything is built in the run's working folder (:mod:`.resume`) and renamed into place at the end; a failure
while publishing puts back what it replaced.
Outputs are named by the slide's name up to its first dot, so ``a.svs`` and ``a.ndpi`` would share
names: that is refused (:func:`check_collision`). A GeoJSON of the other format (``.geojson`` vs
``.geojson.gz``) left by an earlier run of the same slide is stale and is removed when the new one is
published.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import OutputError

log = logging.getLogger(__name__)

GEOJSON_SUFFIXES = (".geojson", ".geojson.gz")


@dataclass(frozen=True)
class OutputNames:
    """File names of one slide's outputs in its output folder.

    Attributes
    ----------
    stem : str
        The slide's file name up to its first dot (``slide`` if that is empty).
    geojson, zarr, run_json : str
        ``<stem>.geojson`` (or ``.geojson.gz``), ``<stem>.ome.zarr``, ``<stem>.run.json``.
    stale : str
        The GeoJSON name of the other format, removed when these outputs are published.
    """

    stem: str
    geojson: str
    zarr: str
    run_json: str
    stale: str


def output_names(slide_path: str | os.PathLike, compress: bool) -> OutputNames:
    """Output names of a slide.

    Examples
    --------
    >>> output_names("/data/a.b.svs", compress=True).geojson
    'a.geojson.gz'
    """
    stem = Path(slide_path).name.split(".")[0] or "slide"
    new, old = GEOJSON_SUFFIXES[::-1] if compress else GEOJSON_SUFFIXES
    return OutputNames(stem, stem + new, f"{stem}.ome.zarr", f"{stem}.run.json", stem + old)


def previous_run(output_dir: Path, names: OutputNames) -> dict[str, Any] | None:
    """The ``run.json`` already in ``output_dir`` under these names, or ``None`` (absent or unreadable)."""
    path = output_dir / names.run_json
    try:
        run = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        log.warning("%s is unreadable (%s); it will be replaced", path, exc)
        return None
    return run if isinstance(run, dict) else None


def check_collision(previous: dict[str, Any] | None, names: OutputNames, slide_path: Path, fingerprint: str,
                    output_dir: Path) -> None:
    """Refuse to overwrite the outputs of a *different* slide that shares the output names.

    The previous outputs (``previous``, their ``run.json``) belong to the same slide when they record the
    same resolved path (the file may have been replaced) or the same content fingerprint (it was moved).

    Raises
    ------
    OutputError
        ``output_dir`` holds the outputs of another slide under these names.
    """
    recorded = (previous or {}).get("slide")
    if not isinstance(recorded, dict):
        return
    other = str(recorded.get("path"))
    if other == str(slide_path.resolve()) or recorded.get("fingerprint") == fingerprint:
        return
    raise OutputError(
        f"{output_dir} already holds the outputs of {other} ({names.run_json}); {slide_path.name} would overwrite "
        "them (outputs are named by the slide name up to its first dot): choose another -o"
    )


def stale_outputs(previous: dict[str, Any] | None, names: OutputNames, output_dir: Path,
                  pictures: Sequence[str] = ()) -> list[Path]:
    """Files of the previous run of this slide that this run does not replace, to remove when it publishes.

    The GeoJSON of the other format (``--compress`` switched) and the previous run's pictures that this run
    does not write (``--no-preview``, fewer ``--overlays``); a picture name is only trusted when it is a bare
    name of this slide's pictures, so a doctored ``run.json`` cannot delete anything else.
    """
    from .pictures import is_picture_name

    stale: list[Path] = []
    config = (previous or {}).get("config")
    if isinstance(config, dict) and "compress" in config and bool(config["compress"]) != names.geojson.endswith(".gz"):
        stale.append(output_dir / names.stale)
    recorded = (previous or {}).get("pictures")
    files = recorded.get("files") if isinstance(recorded, dict) else None
    for name in files if isinstance(files, list) else []:
        if is_picture_name(names.stem, name) and name not in pictures:
            stale.append(output_dir / name)
    return stale


def missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents that do not exist yet, deepest first (what creating it would create)."""
    return [p for p in (folder, *folder.parents) if not p.exists() and not p.is_symlink()]


def remove_empty(folders: list[Path]) -> None:
    """Remove each of ``folders`` that is empty, in order (deepest first); keep the others."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            pass


def publish_all(moves: Mapping[Path, Path], tmp: Path, stale: Sequence[Path] = ()) -> None:
    """Move each staged ``src`` to ``dst`` and remove ``stale`` files, all or nothing.

    Replaced outputs and stale files are first parked inside ``tmp`` (removed with it afterwards). On
    failure the moves done so far are undone and everything parked is put back.
    """
    parked: list[tuple[Path, Path | None, bool]] = []  # (destination, parked previous, whether src moved)
    try:
        for path in stale:
            if path.exists() or path.is_symlink():
                old = tmp / f".stale-{path.name}"
                os.replace(path, old)
                parked.append((path, old, False))
        for src, dst in moves.items():
            old = None
            if dst.exists() or dst.is_symlink():
                old = tmp / f".previous-{dst.name}"
                os.replace(dst, old)
            parked.append((dst, old, True))
            os.replace(src, dst)
    except BaseException:
        for dst, old, moved in reversed(parked):
            _restore(dst, old, moved)
        raise


def _restore(dst: Path, old: Path | None, moved: bool) -> None:
    """Undo one step of :func:`publish_all`: remove what was moved to ``dst``, put ``old`` back."""
    try:
        if moved:
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            elif dst.exists() or dst.is_symlink():
                dst.unlink()
        if old is not None:
            os.replace(old, dst)
    except OSError as exc:
        log.error("could not restore %s after a failed run: %s", dst, exc)
