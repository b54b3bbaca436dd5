"""Which slides a cohort holds: a folder searched recursively, or a manifest CSV.

Every slide becomes a :class:`SlideJob` with a slide id that names its output folder ``OUT/<slide id>/``.
Ids must be unique (also ignoring case, so outputs do not collide on case-insensitive file systems); a
collision is an error before any work starts. A listed file that does not exist is *not* an error here:
it fails as that slide's task, like a corrupt file, and the rest of the cohort runs.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import math
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import CohortInputError

log = logging.getLogger(__name__)

#: File patterns a folder search matches by default (OpenSlide formats, TIFF and common images).
DEFAULT_PATTERNS = (
    "*.svs", "*.tif", "*.tiff", "*.ndpi", "*.vms", "*.vmu", "*.scn", "*.mrxs", "*.svslide", "*.bif",
)
_MANIFEST_SUFFIXES = (".csv", ".tsv")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


@dataclass(frozen=True)
class SlideJob:
    """One slide of a cohort.

    Attributes
    ----------
    slide_id : str
        Name of the slide's output folder (letters, digits, ``._+-``; not starting with a dot).
    path : Path
        The slide file.
    mpp : float or None
        Pixel size in µm/px overriding the slide's metadata (a manifest's ``mpp`` column), or None.
    regions : Path or None
        QuPath GeoJSON of the slide's classified region annotations (a manifest's ``regions`` column, relative
        to the manifest's folder): nuclei per mm² per region class in the ledger (``segment --regions``).
    """

    slide_id: str
    path: Path
    mpp: float | None = None
    regions: Path | None = None


def default_slide_id(path: Path) -> str:
    """The id a slide gets without a manifest: its file name up to the first dot (as ``segment`` names outputs)."""
    return path.name.split(".")[0]


def find_slides(
    source: str | os.PathLike, patterns: Sequence[str] | None = None, exclude: str | os.PathLike | None = None
) -> list[SlideJob]:
    """The slides of a cohort, sorted by slide id.

    Parameters
    ----------
    source : path
        A folder (searched recursively; hidden folders and ``exclude`` are skipped) or a manifest
        ``.csv``/``.tsv`` with a ``path`` column (relative paths are relative to the manifest) and optional
        ``mpp`` and ``slide_id`` columns; other columns are ignored.
    patterns : sequence of str, optional
        Glob patterns of slide files in a folder (default :data:`DEFAULT_PATTERNS`; case-insensitive).
    exclude : path, optional
        A folder never searched (the cohort's output folder, when it lies inside the input folder).

    Raises
    ------
    CohortInputError
        The source does not exist, holds no slides, the manifest is malformed, or slide ids collide.
    """
    src = Path(source)
    if src.is_dir():
        jobs = _from_folder(src, patterns or DEFAULT_PATTERNS, exclude)
    elif src.is_file() and src.suffix.lower() in _MANIFEST_SUFFIXES:
        jobs = _from_manifest(src)
    elif src.exists():
        raise CohortInputError(f"{src} is neither a folder nor a manifest (.csv/.tsv); give a folder of slides or a CSV")
    else:
        raise CohortInputError(f"cohort input {src} does not exist; give a folder of slides or a manifest CSV")
    if not jobs:
        what = f"files matching {list(patterns or DEFAULT_PATTERNS)}" if src.is_dir() else "rows"
        raise CohortInputError(f"no slides in {src}: found no {what}")
    check_unique_ids(jobs)
    return sorted(jobs, key=lambda j: j.slide_id)


def check_unique_ids(jobs: Sequence[SlideJob]) -> None:
    """Raise :class:`CohortInputError` naming every slide id used more than once (ignoring case)."""
    seen: dict[str, list[SlideJob]] = {}
    for job in jobs:
        seen.setdefault(job.slide_id.casefold(), []).append(job)
    clashes = {k: v for k, v in seen.items() if len(v) > 1}
    if clashes:
        lines = [f"{v[0].slide_id!r}: " + ", ".join(str(j.path) for j in v) for v in clashes.values()]
        raise CohortInputError(
            f"{len(clashes)} slide id(s) name more than one slide, so their outputs would collide: "
            + "; ".join(lines[:5]) + ("; ..." if len(lines) > 5 else "")
            + ". Give a manifest CSV with a unique slide_id per row"
        )


def _from_folder(folder: Path, patterns: Sequence[str], exclude) -> list[SlideJob]:
    regexes = [re.compile(fnmatch.translate(p), re.IGNORECASE) for p in patterns]
    skip = Path(exclude).resolve() if exclude is not None else None
    jobs = []
    for root, dirs, files in os.walk(folder):
        rootp = Path(root)
        # hidden folders (our own temporary outputs among them), OME-Zarr stores and the output folder
        dirs[:] = sorted(
            d for d in dirs
            if not d.startswith(".") and not d.endswith(".zarr") and (skip is None or (rootp / d).resolve() != skip)
        )
        for name in sorted(files):
            if not name.startswith(".") and any(r.match(name) for r in regexes):
                path = rootp / name
                jobs.append(SlideJob(_checked_id(default_slide_id(path), path), path))
    return jobs


def _from_manifest(path: Path) -> list[SlideJob]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh, delimiter=delimiter)
            fields = [f.strip().lower() for f in (reader.fieldnames or [])]
            if "path" not in fields:
                raise CohortInputError(
                    f"manifest {path} needs a 'path' column (optional: mpp, slide_id, regions); its columns are {fields}"
                )
            extra = sorted(set(fields) - {"path", "mpp", "slide_id", "regions"})
            if extra:
                log.info("manifest %s: ignoring columns %s", path, extra)
            rows = [{(k or "").strip().lower(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CohortInputError(f"cannot read manifest {path}: {exc}") from None
    jobs = []
    for n, row in enumerate(rows, start=2):  # line 1 is the header
        if not any(row.values()):
            continue
        where = f"manifest {path}, line {n}"
        if not row.get("path"):
            raise CohortInputError(f"{where}: empty path")
        slide = Path(row["path"]).expanduser()
        slide = slide if slide.is_absolute() else path.parent / slide
        mpp = None
        if row.get("mpp"):
            try:
                mpp = float(row["mpp"])
            except ValueError:
                mpp = math.nan
            if not (math.isfinite(mpp) and mpp > 0):
                raise CohortInputError(f"{where}: mpp must be a positive number of µm/px, got {row['mpp']!r}")
        sid = row.get("slide_id") or default_slide_id(slide)
        regions = Path(row["regions"]).expanduser() if row.get("regions") else None
        regions = regions if regions is None or regions.is_absolute() else path.parent / regions
        jobs.append(SlideJob(_checked_id(sid, slide, where), slide, mpp, regions))
    return jobs


def _checked_id(slide_id: str, path: Path, where: str | None = None) -> str:
    if not _SAFE_ID.match(slide_id):
        hint = "a manifest slide_id" if where else "a manifest CSV with a slide_id column"
        raise CohortInputError(
            f"{where + ': ' if where else ''}slide id {slide_id!r} (from {path}) is not a safe folder name "
            f"(letters, digits, '._+-', not starting with a dot); use {hint}"
        )
    return slide_id
