"""QuPath GeoJSON: build nucleus detections, stream them to disk, read what QuPath exports.

Coordinates are level-0 pixels in QuPath's continuous convention: pixel (col ``i``, row ``j``)
spans ``[i, i+1) x [j, j+1)``, origin top-left, y down.

QuPath facts this module follows (from QuPath's own reader and writer):

- ``properties.objectType`` is read only inside ``properties``; nuclei are ``detection`` objects.
- ``id`` is a UUID at feature level; non-UUID ids are dropped by QuPath.
- ``classification`` is ``{"name": ..., "color": [r, g, b]}``; the object form needs ``color``.
- ``measurements`` is a map of numbers; coordinates are written with 2 decimals.
- One invalid polygon (e.g. a ring touching itself) makes QuPath 0.7 reject the whole file ("Reduction
  failed, possible invalid input"); :func:`valid_polygons` checks and repairs polygons before writing.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import math
import os
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import numpy as np

from wsi_weakseg.errors import OutputError
from wsi_weakseg.io._geojson_read import feature_class_name, read_features, read_roi
from wsi_weakseg.io.polygons import valid_polygons, valid_ragged

__all__ = [
    "DEFAULT_NUCLEUS_COLOR",
    "GeoJSONWriter",
    "annotation_feature",
    "feature_class_name",
    "nucleus_feature",
    "read_features",
    "read_roi",
    "stable_uuid",
    "stable_uuids",
    "valid_polygons",
    "valid_ragged",
]

log = logging.getLogger(__name__)

#: Fixed namespace of :func:`stable_uuid` (uuid5 of the project name in the URL namespace).
#: Never change it: ids written by earlier runs would no longer match.
PROJECT_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "https://github.com/wsi-weakseg/wsi-weakseg")
_NAMESPACE_BYTES = PROJECT_NAMESPACE.bytes

#: Colour of the ``Nucleus`` class in written detections (an arbitrary, readable magenta).
DEFAULT_NUCLEUS_COLOR: tuple[int, int, int] = (160, 90, 160)

_HEADER = b'{"type":"FeatureCollection","features":[\n'
_FOOTER = b"\n]}\n"
_DECIMALS = 2


def stable_uuid(*parts: object) -> str:
    """Return a deterministic UUID for ``parts``, stable across runs and machines.

    Parameters
    ----------
    *parts : object
        Values identifying the object (e.g. slide name, tile origin, label). Each is turned into
        text with ``str`` and the texts are joined with a unit separator.

    Returns
    -------
    str
        A version-5 UUID in canonical lowercase form.

    Examples
    --------
    >>> stable_uuid("slide.svs", 3, 7) == stable_uuid("slide.svs", 3, 7)
    True
    >>> stable_uuid("a", "b") == stable_uuid("ab")
    False
    """
    name = "\x1f".join(str(p) for p in parts)
    # uuid.uuid5 without its object overhead (a third of the time per nucleus): SHA-1 of namespace + name,
    # version 5 and RFC 4122 variant bits, canonical hex (tests/io compare it with uuid.uuid5).
    d = bytearray(hashlib.sha1(_NAMESPACE_BYTES + name.encode("utf-8")).digest()[:16])
    d[6] = (d[6] & 0x0F) | 0x50
    d[8] = (d[8] & 0x3F) | 0x80
    h = d.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def stable_uuids(prefix: tuple[object, ...], pairs: np.ndarray) -> list[str]:
    """``[stable_uuid(*prefix, a, b) for a, b in pairs]``, hashing the common prefix once.

    Examples
    --------
    >>> stable_uuids(("fp", "sha"), np.array([[3, 7]])) == [stable_uuid("fp", "sha", 3, 7)]
    True
    """
    if len(pairs) == 0:
        return []
    base = hashlib.sha1(_NAMESPACE_BYTES + "".join(f"{p}\x1f" for p in prefix).encode("utf-8"))
    digests = []
    for a, b in np.asarray(pairs).tolist():
        h = base.copy()
        h.update(f"{a}\x1f{b}".encode())
        digests.append(h.digest()[:16])
    d = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16).copy()
    d[:, 6] = (d[:, 6] & 0x0F) | 0x50
    d[:, 8] = (d[:, 8] & 0x3F) | 0x80
    h = d.tobytes().hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, len(h), 32)]


def _ring(vertices: np.ndarray, what: str) -> list[list[float]]:
    """Round a ring to 2 decimals, drop repeated vertices and close it (first == last)."""
    arr = np.asarray(vertices, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise ValueError(f"{what} must be an (n, 2) array of (x, y) vertices, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} has NaN or infinite coordinates")
    # + 0.0 turns -0.0 into 0.0 so that the text never reads "-0.0".
    arr = np.round(arr, _DECIMALS) + 0.0
    keep = np.ones(len(arr), dtype=bool)
    keep[1:] = np.any(arr[1:] != arr[:-1], axis=1)
    arr = arr[keep]
    if len(arr) > 1 and np.array_equal(arr[0], arr[-1]):
        arr = arr[:-1]
    if len(arr) < 3:
        raise ValueError(f"{what} needs at least 3 distinct vertices after rounding, got {len(arr)}")
    ring = arr.tolist()
    ring.append(list(ring[0]))
    return ring


def _measurement_value(name: str, value: Any) -> int | float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"measurement {name!r} must be a number, got {type(value).__name__}")
    if isinstance(value, (int, np.integer)):
        return int(value)
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"measurement {name!r} must be finite, got {value}")
    return value


def nucleus_feature(
    uid: str,
    exterior: np.ndarray,
    *,
    class_name: str = "Nucleus",
    color: tuple[int, int, int] = DEFAULT_NUCLEUS_COLOR,
    measurements: Mapping[str, float] | None = None,
    holes: Sequence[np.ndarray] = (),
) -> dict[str, Any]:
    """Build a QuPath detection Feature for one nucleus.

    Parameters
    ----------
    uid : str
        UUID of the object (e.g. from :func:`stable_uuid`); written in canonical form.
    exterior : numpy.ndarray
        ``(n, 2)`` vertices ``(x, y)`` in level-0 pixels, closed or not.
    class_name : str, optional
        Classification name, ``"Nucleus"`` by default.
    color : tuple of int, optional
        Classification colour ``(r, g, b)``, each in ``0..255``.
    measurements : Mapping[str, float], optional
        Measurement name to finite number (e.g. area, probability). ``None`` writes ``{}``.
    holes : Sequence of numpy.ndarray, optional
        Interior rings, each an ``(m, 2)`` array.

    Returns
    -------
    dict
        ``{"type", "id", "geometry", "properties"}`` in this key order; the ring is closed and
        coordinates are rounded to 2 decimals.

    Raises
    ------
    ValueError
        If ``uid`` is not a UUID, a ring has fewer than 3 distinct vertices or non-finite
        coordinates, the colour is not 3 integers in ``0..255``, or a measurement is not a finite
        number.
    """
    try:
        canonical = str(uuid.UUID(str(uid)))
    except ValueError:
        raise ValueError(f"feature id must be a UUID string (QuPath drops others), got {uid!r}") from None
    if not isinstance(class_name, str) or not class_name:
        raise ValueError(f"class_name must be a non-empty string, got {class_name!r}")
    rgb = list(color)
    if len(rgb) != 3 or not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in rgb):
        raise ValueError(f"color must be 3 integers (r, g, b), got {color!r}")
    if not all(0 <= c <= 255 for c in rgb):
        raise ValueError(f"color components must lie in 0..255, got {color!r}")
    rings = [_ring(exterior, "exterior")]
    rings += [_ring(h, f"hole {k}") for k, h in enumerate(holes)]
    values = {str(k): _measurement_value(str(k), v) for k, v in (measurements or {}).items()}
    return {
        "type": "Feature",
        "id": canonical,
        "geometry": {"type": "Polygon", "coordinates": rings},
        "properties": {
            "objectType": "detection",
            "classification": {"name": class_name, "color": [int(c) for c in rgb]},
            "measurements": values,
        },
    }


def annotation_feature(uid: str, exterior: np.ndarray, *, class_name: str, color: tuple[int, int, int],
                       measurements: Mapping[str, float] | None = None, holes: Sequence[np.ndarray] = ()) -> dict[str, Any]:
    """A QuPath *annotation* Feature (a tissue region): :func:`nucleus_feature` with ``objectType: annotation``.

    QuPath shows annotations as editable regions (detections are not), and measures their area itself.
    """
    feature = nucleus_feature(uid, exterior, class_name=class_name, color=color, measurements=measurements, holes=holes)
    feature["properties"]["objectType"] = "annotation"
    return feature


def serialize_feature(feature: Mapping[str, Any]) -> str:
    """The one-line serialisation :class:`GeoJSONWriter` uses (deterministic; no NaN or infinity)."""
    return json.dumps(feature, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class GeoJSONWriter:
    """Stream Features into a QuPath-readable FeatureCollection, atomically.

    Features go to a temporary file in the destination folder as they are written (memory stays
    constant in their number); a clean exit of the ``with`` block completes the collection and
    renames the file into place, an exception deletes it and leaves no output.

    Parameters
    ----------
    path : str or os.PathLike
        Destination file (``.geojson``, ``.json`` or ``.geojson.gz``).
    compress : bool, optional
        Write gzip. ``None`` (default) compresses when ``path`` ends with ``.gz``. The gzip
        stream is deterministic: mtime 0 and no file name in its header.

    Attributes
    ----------
    path : pathlib.Path
        Destination file.
    count : int
        Features written so far.

    Raises
    ------
    OutputError
        If the destination folder does not exist or is not writable.

    Notes
    -----
    The output is deterministic: one header line, one feature per line serialised with
    ``json.dumps(feature, separators=(",", ":"), ensure_ascii=False, allow_nan=False)``, lines
    joined by ``,``, then ``]}`` and a newline.

    Examples
    --------
    >>> with GeoJSONWriter(tmp / "nuclei.geojson") as out:  # doctest: +SKIP
    ...     out.write(nucleus_feature(stable_uuid("s", 1), ring, measurements={"area": 40.0}))
    """

    def __init__(self, path: str | os.PathLike[str], compress: bool | None = None) -> None:
        self.path = Path(path)
        self.compress = self.path.name.endswith(".gz") if compress is None else bool(compress)
        self.count = 0
        self._tmp = self.path.parent / f".{self.path.name}.{uuid.uuid4().hex}.tmp"
        self._raw: BinaryIO | None = None
        self._out: BinaryIO | None = None
        if not self.path.parent.is_dir():
            raise OutputError(f"cannot write {self.path}: folder {self.path.parent} does not exist; create it first")
        if self.path.is_dir():
            raise OutputError(f"cannot write {self.path}: it is a folder; give a file name")
        try:
            self._raw = open(self._tmp, "xb")  # noqa: SIM115 - closed in close()/abort()
        except OSError as exc:
            raise OutputError(f"cannot write in {self.path.parent}: {exc.strerror}; choose a writable folder") from exc
        if self.compress:
            self._out = gzip.GzipFile(filename="", mode="wb", fileobj=self._raw, mtime=0)  # type: ignore[assignment]
        else:
            self._out = self._raw
        self._put(_HEADER)

    def _put(self, data: bytes) -> None:
        if self._out is None:
            raise RuntimeError(f"GeoJSONWriter for {self.path} is already closed")
        try:
            self._out.write(data)
        except OSError as exc:
            self.abort()
            raise OutputError(f"writing {self.path} failed: {exc}") from exc

    def write(self, feature: Mapping[str, Any]) -> None:
        """Append one Feature.

        Parameters
        ----------
        feature : Mapping
            A GeoJSON Feature (e.g. from :func:`nucleus_feature`); it must be JSON-serialisable
            without NaN or infinity.

        Raises
        ------
        ValueError
            If the feature is not a Feature mapping or holds NaN/infinite numbers.
        """
        if not isinstance(feature, Mapping) or feature.get("type") != "Feature":
            raise ValueError(f"expected a GeoJSON Feature mapping, got {type(feature).__name__}")
        self.write_serialized(serialize_feature(feature))

    def write_serialized(self, text: str) -> None:
        """Append one Feature already serialised by :func:`serialize_feature` (e.g. in a worker process)."""
        if not text.startswith('{"type":"Feature"') or "\n" in text:
            raise ValueError("expected one Feature serialised by serialize_feature()")
        self._put((b",\n" if self.count else b"") + text.encode("utf-8"))
        self.count += 1

    def close(self) -> None:
        """Complete the FeatureCollection and rename the temporary file to :attr:`path`."""
        if self._out is None:
            return
        self._put(_FOOTER)
        try:
            if self._out is not self._raw:
                self._out.close()
            assert self._raw is not None
            self._raw.flush()
            os.fsync(self._raw.fileno())
            self._raw.close()
            self._out = self._raw = None
            os.replace(self._tmp, self.path)
        except OSError as exc:
            self.abort()
            raise OutputError(f"finishing {self.path} failed: {exc}") from exc
        log.info("wrote %d features to %s", self.count, self.path)

    def abort(self) -> None:
        """Discard everything written: close and delete the temporary file."""
        for handle in (self._out, self._raw):
            if handle is not None:
                try:
                    handle.close()
                except OSError:  # pragma: no cover - best effort cleanup
                    pass
        self._out = self._raw = None
        self._tmp.unlink(missing_ok=True)

    def __enter__(self) -> GeoJSONWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
        else:
            log.warning("discarding %s after an error (%d features written)", self.path, self.count)
            self.abort()
