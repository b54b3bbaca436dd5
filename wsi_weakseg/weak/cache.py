"""A content-addressed on-disk cache for point-derived labels (compressed ``.npz`` files).

The key is the sha256 of the image content digest, the point coordinates (float64 bytes and
shape), the parameters as canonical JSON and :data:`LABELS_VERSION`, so changing any of them --
or the label code, by bumping the version -- computes afresh. Files are written to a temporary
file in the cache folder and moved into place with :func:`os.replace`, so concurrent writers and
interrupted runs never leave a half-written entry under a valid name.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LABELS_VERSION", "array_digest", "cache_key", "cached_labels", "file_digest"]

log = logging.getLogger(__name__)

#: Version of the label recipes; bump it whenever voronoi/clusters/stain change their output.
LABELS_VERSION = "1"


def file_digest(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def array_digest(a: np.ndarray) -> str:
    """sha256 (hex) of an array's dtype, shape and C-order bytes."""
    a = np.ascontiguousarray(a)
    h = hashlib.sha256(f"{a.dtype.str}{a.shape}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, os.PathLike):
        return os.fspath(o)
    raise TypeError(f"parameter value {o!r} of type {type(o).__name__} is not JSON-serialisable")


def _image_digest(image: str | os.PathLike[str] | np.ndarray | bytes) -> str:
    if isinstance(image, np.ndarray):
        return array_digest(image)
    if isinstance(image, os.PathLike):
        return file_digest(image)
    if isinstance(image, bytes):
        return hashlib.sha256(image).hexdigest()
    if isinstance(image, str):
        return image
    raise TypeError(f"expected a path, an array, bytes or a digest string, got {type(image).__name__}")


def cache_key(
    image: str | os.PathLike[str] | np.ndarray | bytes,
    points_rc: np.ndarray,
    params: Mapping[str, Any],
) -> str:
    """The sha256 (hex) cache key of one image, its points and the label parameters.

    ``image`` is a path (``os.PathLike``: its file content is hashed), an array (content, dtype
    and shape hashed), raw bytes (hashed), or a ``str`` taken as an already computed digest.
    """
    pts = np.ascontiguousarray(np.asarray(points_rc, dtype=np.float64).reshape(-1, 2))
    payload = {
        "image": _image_digest(image),
        "points": array_digest(pts),
        "params": json.dumps(dict(params), sort_keys=True, default=_json_default),
        "version": LABELS_VERSION,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cached_labels(
    image_path_or_array_digest: str | os.PathLike[str] | np.ndarray | bytes,
    points_rc: np.ndarray,
    params: Mapping[str, Any],
    compute: Callable[[], Mapping[str, np.ndarray]],
    cache_dir: str | os.PathLike[str],
) -> dict[str, np.ndarray]:
    """Return ``compute()``, from ``cache_dir`` when the same inputs were computed before.

    Parameters
    ----------
    image_path_or_array_digest : path, ndarray, bytes or str
        The image, identified by content (see :func:`cache_key`).
    points_rc : ndarray, shape (n, 2)
        The points the labels are derived from.
    params : mapping
        Every parameter that changes the labels (JSON-serialisable; numpy scalars allowed).
    compute : callable
        Returns the labels as ``{name: array}``; called only on a cache miss.
    cache_dir : path
        Folder of the ``<key>.npz`` entries; created if missing.

    Returns
    -------
    dict of str to ndarray
        The arrays, identical (values, dtypes, shapes) whether computed or loaded.

    Notes
    -----
    An unreadable entry (truncated, corrupt) is logged, recomputed and overwritten.
    """
    cache_dir = Path(cache_dir)
    path = cache_dir / f"{cache_key(image_path_or_array_digest, points_rc, params)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {name: z[name] for name in z.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
            log.warning("label cache entry %s unreadable (%s); recomputing", path, exc)
    arrays = {str(name): np.asarray(a) for name, a in compute().items()}
    bad = [name for name, a in arrays.items() if a.dtype.hasobject]
    if bad:
        raise TypeError(f"label arrays must not have object dtype (cannot be cached): {bad}")
    cache_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=cache_dir, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez_compressed(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return arrays
