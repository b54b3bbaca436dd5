"""Provenance of a ``segment`` run: stage clock, slide fingerprint, versions and the ``run.json`` record."""

from __future__ import annotations

import hashlib
import platform
import sys
import time
from pathlib import Path
from typing import Any


class StageClock:
    """Wall and process-CPU seconds per stage (laps); CPU counts every thread of this process."""

    def __init__(self) -> None:
        self._start = self._last = (time.perf_counter(), time.process_time())
        self.laps: dict[str, tuple[float, float]] = {}

    def lap(self, stage: str) -> None:
        """End the current stage, naming it ``stage``."""
        now = (time.perf_counter(), time.process_time())
        self.laps[stage] = (now[0] - self._last[0], now[1] - self._last[1])
        self._last = now

    def wall(self) -> dict[str, float]:
        """Wall seconds per stage (``<stage>_s``) and in all (``total_s``)."""
        out = {f"{k}_s": round(v[0], 3) for k, v in self.laps.items()}
        return out | {"total_s": round(self._last[0] - self._start[0], 3)}

    def cpu(self) -> dict[str, float]:
        """Process CPU seconds per stage and in all, keyed like :meth:`wall`."""
        out = {f"{k}_s": round(v[1], 3) for k, v in self.laps.items()}
        return out | {"total_s": round(self._last[1] - self._start[1], 3)}


def slide_fingerprint(path: Path) -> str:
    """Cheap content identity: size plus sha256 of the first and last MiB."""
    size = path.stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as fh:
        h.update(fh.read(1 << 20))
        if size > 1 << 20:
            fh.seek(max(size - (1 << 20), 1 << 20))
            h.update(fh.read(1 << 20))
    return h.hexdigest()


def versions() -> dict[str, Any]:
    """Python, platform and the versions of the packages that decide the result."""
    import importlib.metadata as md

    out: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "numpy", "scipy", "scikit-image", "zarr", "dask", "openslide-python", "openslide-bin", "shapely"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    return out


def slide_record(slide, slide_path: Path, fingerprint: str) -> dict[str, Any]:
    """The ``slide`` and ``coordinates`` entries of ``run.json``."""
    return {
        "slide": {"path": str(slide_path.resolve()), "fingerprint": fingerprint, "vendor": slide.vendor,
                  "mpp": slide.mpp, "mpp_source": slide.mpp_source, "bounds": list(slide.bounds)},
        "coordinates": {"unit": "level-0 pixel", "origin_level0": list(slide.bounds[:2]),
                        "note": "relative to the slide's bounds origin, as QuPath's OpenSlide server shows it"},
    }


def model_record(model) -> dict[str, Any]:
    """The ``model`` entry of ``run.json``: ``sha256`` is the identity (weights and result-affecting card
    fields, :attr:`~wsi_weakseg.model.card.Model.sha256`), ``weights_sha256`` the weights file alone."""
    card = model.card
    return {"name": card.name, "path": str(model.path) if model.path else None,
            "sha256": model.sha256, "weights_sha256": model.weights_sha256 or card.weights_sha256,
            "trained": card.trained}


def working_record(view) -> dict[str, Any]:
    """The ``working`` entry of ``run.json``: the grid the model ran on."""
    return {"mpp": view.mpp, "scale": view.scale, "level": view.level, "resampled": view.resampled,
            "shape": list(view.shape)}
