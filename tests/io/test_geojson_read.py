"""GeoJSON reading is capped: plain, gzip and zip inputs over the limit are refused while streaming."""

from __future__ import annotations

import gzip
import json
import zipfile
from pathlib import Path

import pytest

import wsi_weakseg.io._geojson_read as reader
from wsi_weakseg.errors import GeoJSONError
from wsi_weakseg.io.geojson import read_features

CAP = 4096


def _doc(n: int) -> bytes:
    """A valid FeatureCollection of ``n`` points (about 90 bytes each)."""
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [i, i]}, "properties": {}}
                for i in range(n)]
    return json.dumps({"type": "FeatureCollection", "features": features}).encode()


def _write(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        path.write_bytes(gzip.compress(data))
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
            zf.writestr("objects.geojson", data)
    else:
        path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", ["a.geojson", "a.geojson.gz", "a.zip"])
def test_input_over_the_cap_is_refused(tmp_path, monkeypatch, name):
    monkeypatch.setattr(reader, "MAX_GEOJSON_BYTES", CAP)
    small = _write(tmp_path / f"small-{name}", _doc(5))
    assert len(read_features(small)) == 5
    big = _write(tmp_path / name, _doc(200))  # ~18 kB of text; compressed it stays under the cap
    assert big.stat().st_size < CAP or name == "a.geojson"
    with pytest.raises(GeoJSONError, match="larger than the .* MiB wsi-weakseg reads"):
        read_features(big)


def test_cap_is_checked_while_decompressing(tmp_path, monkeypatch):
    """A gzip bomb is refused after reading about the cap, not after inflating it all."""
    monkeypatch.setattr(reader, "MAX_GEOJSON_BYTES", CAP)
    seen = []
    real = reader._read_capped

    def spy(fh, path, what):
        class Counting:
            def read(self, n):
                chunk = fh.read(n)
                seen.append(len(chunk))
                return chunk

        return real(Counting(), path, what)

    monkeypatch.setattr(reader, "_read_capped", spy)
    bomb = tmp_path / "bomb.geojson.gz"
    bomb.write_bytes(gzip.compress(b" " * (64 * 2**20)))  # 64 MiB of blanks in ~64 kB
    with pytest.raises(GeoJSONError, match="decompressed gzip content is larger"):
        read_features(bomb)
    assert sum(seen) == CAP + 1

