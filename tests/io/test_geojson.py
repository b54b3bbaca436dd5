"""Tests of wsi_weakseg.io.geojson: QuPath conformance, byte-exact round trips, every input form."""

from __future__ import annotations

import gzip
import json
import math
import re
import uuid
import zipfile
from pathlib import Path
from typing import Any

import geojson
import numpy as np
import pytest
import shapely

from wsi_weakseg.errors import GeoJSONError, OutputError
from wsi_weakseg.io.geojson import (
    GeoJSONWriter,
    feature_class_name,
    nucleus_feature,
    read_features,
    read_roi,
    stable_uuid,
)

_TWO_DECIMALS = re.compile(r"^-?\d+(\.\d{1,2})?$")


def assert_qupath_detection(feature: dict[str, Any]) -> None:
    """The oracle: what QuPath's GeoJSON reader needs to load a classified detection."""
    assert list(feature) == ["type", "id", "geometry", "properties"]
    assert feature["type"] == "Feature"
    assert str(uuid.UUID(feature["id"])) == feature["id"]
    props = feature["properties"]
    assert props["objectType"] == "detection"
    assert "type" not in props and "object_type" not in props
    cls = props["classification"]
    assert isinstance(cls["name"], str) and cls["name"]
    assert len(cls["color"]) == 3
    assert all(type(c) is int and 0 <= c <= 255 for c in cls["color"])
    assert isinstance(props["measurements"], dict)
    for value in props["measurements"].values():
        assert type(value) in (int, float) and math.isfinite(value)
    geom = feature["geometry"]
    assert geom["type"] == "Polygon"
    for ring in geom["coordinates"]:
        assert len(ring) >= 4
        assert ring[0] == ring[-1]
        for x, y in ring:
            assert _TWO_DECIMALS.match(json.dumps(x)) and _TWO_DECIMALS.match(json.dumps(y)), (x, y)
    assert shapely.geometry.shape(geom).is_valid


def _square(x0: float, y0: float, side: float) -> np.ndarray:
    return np.array([[x0, y0], [x0 + side, y0], [x0 + side, y0 + side], [x0, y0 + side]])


def _features(n: int = 5) -> list[dict[str, Any]]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        theta = np.linspace(0, 2 * np.pi, 12, endpoint=False)
        ring = np.c_[100.123456 * i + 5 * np.cos(theta), 7.77777 + 5 * np.sin(theta)]
        out.append(
            nucleus_feature(
                stable_uuid("slide", i),
                ring,
                measurements={"area": float(rng.uniform(10, 90)), "probability": 0.5, "n": np.int64(i)},
                class_name="Nucleus" if i % 2 else "Nucléus é",  # non-ASCII stays UTF-8
            )
        )
    return out


# ---------------------------------------------------------------- nucleus_feature / stable_uuid


def test_nucleus_feature_is_qupath_detection() -> None:
    for feature in _features():
        assert_qupath_detection(feature)


def test_nucleus_feature_closes_rounds_and_keeps_holes() -> None:
    ring = np.array([[0.004, 0.0], [10.126, -0.001], [10.0, 10.0], [0.0, 10.0]])
    hole = _square(2, 2, 3)[::-1]
    f = nucleus_feature(stable_uuid(1), ring, holes=[hole], color=(1, 2, 3), measurements={})
    outer, inner = f["geometry"]["coordinates"]
    assert outer == [[0.0, 0.0], [10.13, 0.0], [10.0, 10.0], [0.0, 10.0], [0.0, 0.0]]
    assert "-0.0" not in json.dumps(f)
    assert inner[0] == inner[-1] and len(inner) == 5
    assert f["properties"]["classification"] == {"name": "Nucleus", "color": [1, 2, 3]}
    # an already closed ring is not closed twice
    closed = nucleus_feature(stable_uuid(1), np.vstack([ring, ring[:1]]), measurements={})
    assert closed["geometry"]["coordinates"][0] == outer
    assert_qupath_detection(f)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"uid": "nucleus-1"}, "UUID"),
        ({"measurements": {"area": float("nan")}}, "finite"),
        ({"measurements": {"area": float("inf")}}, "finite"),
        ({"measurements": {"area": "12"}}, "number"),
        ({"measurements": {"flag": True}}, "number"),
        ({"color": (255, 0)}, "color"),
        ({"color": (256, 0, 0)}, "0..255"),
        ({"exterior": np.array([[0.0, 0.0], [1.0, 1.0]])}, "3 distinct"),
        ({"exterior": np.array([[0.0, np.nan], [1.0, 1.0], [2.0, 0.0]])}, "NaN"),
        ({"exterior": np.zeros((4, 3))}, r"\(n, 2\)"),
    ],
)
def test_nucleus_feature_rejects_bad_input(kwargs: dict[str, Any], match: str) -> None:
    args: dict[str, Any] = {"uid": stable_uuid("x"), "exterior": _square(0, 0, 4), "measurements": {}}
    args.update(kwargs)
    uid, exterior = args.pop("uid"), args.pop("exterior")
    with pytest.raises(ValueError, match=match):
        nucleus_feature(uid, exterior, **args)


def test_stable_uuid_is_deterministic_uuid5() -> None:
    a = stable_uuid("slide.svs", 12, 3.5)
    assert a == stable_uuid("slide.svs", 12, 3.5)
    assert a != stable_uuid("slide.svs", 12, 3.6)
    assert stable_uuid("ab", "c") != stable_uuid("a", "bc")
    assert uuid.UUID(a).version == 5
    assert a == "647c697e-ef40-506e-8eb3-652cd15a2f1b"  # pinned: ids must not change between releases
    assert stable_uuid() == stable_uuid()


# ---------------------------------------------------------------- writer


@pytest.mark.parametrize("name", ["nuclei.geojson", "nuclei.geojson.gz"])
def test_write_read_write_is_byte_identical(tmp_path: Path, name: str) -> None:
    first, second = tmp_path / "a" / name, tmp_path / "b" / name
    first.parent.mkdir()
    second.parent.mkdir()
    features = _features(7)
    with GeoJSONWriter(first) as out:
        for f in features:
            out.write(f)
    assert out.count == 7
    back = read_features(first)
    assert back == features
    with GeoJSONWriter(second) as out:
        for f in back:
            out.write(f)
    assert first.read_bytes() == second.read_bytes()
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(["a", "b", name, name])


def test_writer_format_is_documented_layout(tmp_path: Path) -> None:
    path = tmp_path / "n.geojson"
    features = _features(2)
    with GeoJSONWriter(path) as out:
        for f in features:
            out.write(f)
    lines = path.read_text(encoding="utf-8").split("\n")
    assert lines[0] == '{"type":"FeatureCollection","features":['
    assert lines[1] == json.dumps(features[0], separators=(",", ":"), ensure_ascii=False) + ","
    assert lines[2] == json.dumps(features[1], separators=(",", ":"), ensure_ascii=False)
    assert lines[3:] == ["]}", ""]
    doc = json.loads(path.read_text(encoding="utf-8"))
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 2
    independent = geojson.loads(path.read_text(encoding="utf-8"))  # a second, independent parser
    assert independent.is_valid, independent.errors()
    for f in doc["features"]:
        assert_qupath_detection(f)


def test_empty_collection_is_valid_json(tmp_path: Path) -> None:
    path = tmp_path / "empty.geojson"
    with GeoJSONWriter(path) as out:
        pass
    assert out.count == 0
    assert json.loads(path.read_text()) == {"type": "FeatureCollection", "features": []}
    assert read_features(path) == []


def test_gzip_is_deterministic_and_inferred(tmp_path: Path) -> None:
    paths = [tmp_path / "1.geojson.gz", tmp_path / "2.geojson.gz"]
    for p in paths:
        with GeoJSONWriter(p) as out:
            for f in _features(3):
                out.write(f)
    raw = [p.read_bytes() for p in paths]
    assert raw[0] == raw[1]
    assert raw[0][:2] == b"\x1f\x8b"
    assert raw[0][4:8] == b"\x00\x00\x00\x00"  # mtime 0
    assert raw[0][3] & 0x08 == 0  # FNAME flag unset: no file name in the header
    plain = tmp_path / "3.geojson"
    with GeoJSONWriter(plain) as out:
        for f in _features(3):
            out.write(f)
    assert gzip.decompress(raw[0]) == plain.read_bytes()
    forced = tmp_path / "forced.json"
    with GeoJSONWriter(forced, compress=True) as out:
        pass
    assert forced.read_bytes()[:2] == b"\x1f\x8b"


def test_writer_failure_leaves_nothing(tmp_path: Path) -> None:
    path = tmp_path / "nuclei.geojson"
    with pytest.raises(RuntimeError, match="boom"):
        with GeoJSONWriter(path) as out:
            out.write(_features(1)[0])
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_writer_failure_keeps_previous_output(tmp_path: Path) -> None:
    path = tmp_path / "nuclei.geojson"
    path.write_text("previous")
    with pytest.raises(ValueError):
        with GeoJSONWriter(path) as out:
            bad = _features(1)[0]
            bad["properties"]["measurements"]["area"] = float("nan")
            out.write(bad)
    assert path.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["nuclei.geojson"]


def test_writer_rejects_non_feature_and_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(OutputError, match="does not exist"):
        GeoJSONWriter(tmp_path / "missing" / "n.geojson")
    with pytest.raises(OutputError, match="folder"):
        GeoJSONWriter(tmp_path)
    with pytest.raises(ValueError, match="Feature"):
        with GeoJSONWriter(tmp_path / "n.geojson") as out:
            out.write({"type": "Polygon", "coordinates": []})
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- reading every form

_POLY = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 10], [0, 10], [0, 0]]]}
_FEATURE = {
    "type": "Feature",
    "id": "0512d0d4-222b-41bb-b0ef-79a0b0ab21bf",
    "geometry": _POLY,
    "properties": {"objectType": "annotation", "classification": {"name": "Tumor", "color": [200, 0, 0]}},
}
_POINT = {
    "type": "Feature",
    "geometry": {"type": "Point", "coordinates": [3.5, 4.25]},
    "properties": {"objectType": "annotation", "classification": "Nucleus"},
}


def _write(path: Path, doc: Any) -> Path:
    text = json.dumps(doc, indent=2)
    if path.name.endswith(".gz"):
        path.write_bytes(gzip.compress(text.encode()))
    elif path.suffix == ".zip":
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("README.txt", "not json")
            zf.writestr("objects.geojson", text)
            zf.writestr("other.json", "[]")
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("suffix", [".geojson", ".json", ".geojson.gz", ".zip"])
@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        ({"type": "FeatureCollection", "features": [_FEATURE, _POINT]}, [_FEATURE, _POINT]),
        ([_FEATURE, _POINT], [_FEATURE, _POINT]),
        (_FEATURE, [_FEATURE]),
        (_POLY, [{"type": "Feature", "geometry": _POLY, "properties": {}}]),
    ],
    ids=["collection", "array", "feature", "geometry"],
)
def test_read_features_every_form(tmp_path: Path, suffix: str, doc: Any, expected: list[dict[str, Any]]) -> None:
    features = read_features(_write(tmp_path / f"objects{suffix}", doc))
    assert features == expected
    assert [list(f) for f in features] == [list(f) for f in expected]  # key order kept


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ('{"type": "FeatureCollection", "features": [', "invalid JSON"),
        ('{"type": "Feature", "geometry": {"type": "Point", "coordinates": [NaN, 1]}, "properties": {}}', "NaN"),
        ('{"type": "Point", "coordinates": [Infinity, 1]}', "NaN or infinite"),
        ('{"type": "FeatureCollection", "features": {"a": 1}}', "must be an array"),
        ('{"type": "Feature", "geometry": {"type": "Circle", "coordinates": [1, 1]}}', "unknown geometry type"),
        ('{"type": "Topology"}', "unknown GeoJSON type"),
        ('"hello"', "top level"),
        ('[{"type": "Feature", "geometry": null, "properties": {}}]', "no geometry"),
        ('[{"type": "Polygon", "coordinates": []}]', "expected a Feature"),
        ('{"type": "LineString", "coordinates": [[0, 0], [1]]}', "2 or 3 numbers"),
        ('{"type": "LineString", "coordinates": [["0", "1"], ["1", "1"]]}', "2 or 3 numbers"),
        ('{"type": "Polygon", "coordinates": [[0, 0], [1, 1]]}', "2 or 3 numbers|nested"),
        ('{"type": "Feature", "geometry": {"type": "Point", "coordinates": [0, 0]}, "properties": 3}', "properties"),
    ],
)
def test_read_features_rejects_malformed(tmp_path: Path, text: str, match: str) -> None:
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(GeoJSONError, match=match) as info:
        read_features(path)
    assert "bad.geojson" in str(info.value)


def test_read_features_bad_containers(tmp_path: Path) -> None:
    with pytest.raises(GeoJSONError, match="no such"):
        read_features(tmp_path / "missing.geojson")
    truncated = tmp_path / "t.geojson.gz"
    truncated.write_bytes(gzip.compress(b'{"type": "FeatureCollection", "features": []}')[:-6])
    with pytest.raises(GeoJSONError, match="decompress"):
        read_features(truncated)
    empty_zip = tmp_path / "e.zip"
    with zipfile.ZipFile(empty_zip, "w") as zf:
        zf.writestr("a.txt", "x")
    with pytest.raises(GeoJSONError, match="no .geojson"):
        read_features(empty_zip)


def test_read_real_qupath_export(shared_data: Path) -> None:
    features = read_features(shared_data / "qupath" / "qupath-annotations-export.geojson")
    kinds = [f["geometry"]["type"] for f in features]
    assert len(features) == 51
    assert kinds.count("Polygon") == 43 and kinds.count("Point") == 8
    assert all(str(uuid.UUID(f["id"])) == f["id"] for f in features)
    assert all(feature_class_name(f) for f in features)
    roi = read_roi(shared_data / "qupath" / "qupath-annotations-export.geojson")
    assert roi.geom_type in ("Polygon", "MultiPolygon") and roi.is_valid and roi.area > 0
    assert roi.bounds[0] > 1000  # level-0 pixels of a large slide, not normalised coordinates


def test_real_export_survives_a_rewrite(shared_data: Path, tmp_path: Path) -> None:
    features = read_features(shared_data / "qupath" / "qupath-annotations-export.geojson")
    with GeoJSONWriter(tmp_path / "copy.geojson.gz") as out:
        for f in features:
            out.write(f)
    again = read_features(tmp_path / "copy.geojson.gz")
    assert again == features
    assert [json.dumps(f) for f in again] == [json.dumps(f) for f in features]  # key order too


def test_read_monuseg_points(shared_data: Path) -> None:
    path = sorted((shared_data / "monuseg-train" / "points").glob("*.geojson"))[0]
    features = read_features(path)
    by_class = {feature_class_name(f): f for f in features}
    assert set(by_class) == {"Nucleus", "Annotated region"}
    points = by_class["Nucleus"]["geometry"]
    assert points["type"] == "MultiPoint" and len(points["coordinates"]) > 50
    roi = read_roi(path)
    assert roi.equals(shapely.box(0, 0, 1000, 1000))


# ---------------------------------------------------------------- read_roi / feature_class_name


def test_read_roi_unions_polygons_and_ignores_points(tmp_path: Path) -> None:
    second = {
        "type": "Feature",
        "geometry": {"type": "MultiPolygon", "coordinates": [[[[5, 0], [20, 0], [20, 10], [5, 10], [5, 0]]]]},
        "properties": {"name": "no objectType: counts as an annotation"},
    }
    detection = {
        "type": "Feature",
        "geometry": {"type": "Polygon", "coordinates": [[[100, 100], [200, 100], [200, 200], [100, 100]]]},
        "properties": {"objectType": "detection"},
    }
    path = _write(tmp_path / "roi.geojson", {"type": "FeatureCollection", "features": [_FEATURE, _POINT, second, detection]})
    roi = read_roi(path)
    assert roi.equals(shapely.box(0, 0, 20, 10))


def test_read_roi_repairs_bowtie(tmp_path: Path) -> None:
    bowtie = {"type": "Polygon", "coordinates": [[[0, 0], [10, 10], [10, 0], [0, 10], [0, 0]]]}
    roi = read_roi(_write(tmp_path / "bowtie.geojson", bowtie))
    assert roi.is_valid and roi.area == pytest.approx(50.0)


def test_read_roi_errors_without_polygons(tmp_path: Path) -> None:
    with pytest.raises(GeoJSONError, match="no usable polygon"):
        read_roi(_write(tmp_path / "points.geojson", [_POINT]))
    degenerate = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [20, 0], [0, 0]]]}
    with pytest.raises(GeoJSONError, match="no usable polygon"):
        read_roi(_write(tmp_path / "flat.geojson", degenerate))


def test_feature_class_name_forms() -> None:
    assert feature_class_name(_FEATURE) == "Tumor"
    assert feature_class_name(_POINT) == "Nucleus"
    assert feature_class_name({"properties": {"classification": {"names": ["Tumor", "Positive"], "color": [1, 2, 3]}}}) == "Tumor: Positive"
    assert feature_class_name({"properties": {"name": "Annotated region"}}) == "Annotated region"
    assert feature_class_name({"properties": {"classification": {"name": "A"}, "name": "B"}}) == "A"
    assert feature_class_name({"type": "Feature", "geometry": _POLY, "properties": None}) is None
    assert feature_class_name({}) is None
