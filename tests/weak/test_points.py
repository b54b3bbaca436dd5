"""Point clicks from QuPath GeoJSON: containers, classes, merging, regions, dropping, errors, round trip."""

from __future__ import annotations

import gzip
import json
import logging
import uuid
import zipfile
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from scipy import ndimage as ndi

from wsi_weakseg.errors import GeoJSONError
from wsi_weakseg.weak.points import PointSet, is_default_region, merge_duplicates, read_points, write_points

SQUARE = {"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 50], [0, 50], [0, 0]]]}


def _feature(geometry, classification=None, name=None, object_type="annotation"):
    props = {}
    if object_type is not None:
        props["objectType"] = object_type
    if name is not None:
        props["name"] = name
    if classification is not None:
        props["classification"] = classification
    return {"type": "Feature", "id": str(uuid.uuid4()), "geometry": geometry, "properties": props}


def _mp(coords):
    return {"type": "MultiPoint", "coordinates": coords}


def _pt(xy):
    return {"type": "Point", "coordinates": xy}


def _nucleus(name="Nucleus"):
    return {"name": name, "color": [255, 0, 0]}


def _write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def _fc(*features):
    return {"type": "FeatureCollection", "features": list(features)}


# ---------------------------------------------------------------------------------------------
# containers and classes


def _container_file(tmp_path: Path, form: str) -> tuple[Path, np.ndarray]:
    """A file of the given container form; returns it and the expected xy."""
    multi = _feature(_mp([[10.5, 20.25], [30.0, 40.0]]), _nucleus())
    single = _feature(_pt([5.0, 6.5]), _nucleus())
    both = np.array([[10.5, 20.25], [30.0, 40.0], [5.0, 6.5]])
    if form == "collection":
        return _write(tmp_path / "p.geojson", _fc(multi, single)), both
    if form == "array":
        return _write(tmp_path / "p.json", [multi, single]), both
    if form == "feature-point":
        return _write(tmp_path / "p.geojson", single), both[2:]
    if form == "feature-multipoint":
        return _write(tmp_path / "p.geojson", multi), both[:2]
    if form == "geometry-point":
        return _write(tmp_path / "p.geojson", _pt([5.0, 6.5])), both[2:]
    if form == "geometry-multipoint":
        return _write(tmp_path / "p.geojson", _mp([[10.5, 20.25], [30.0, 40.0]])), both[:2]
    if form == "gzip":
        path = tmp_path / "p.geojson.gz"
        path.write_bytes(gzip.compress(json.dumps(_fc(multi, single)).encode()))
        return path, both
    if form == "zip":
        path = tmp_path / "p.zip"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("export/points.geojson", json.dumps(_fc(multi, single)))
        return path, both
    raise AssertionError(form)


@pytest.mark.parametrize(
    "form",
    [
        "collection",
        "array",
        "feature-point",
        "feature-multipoint",
        "geometry-point",
        "geometry-multipoint",
        "gzip",
        "zip",
    ],
)
def test_every_container_form(tmp_path, form):
    path, expected = _container_file(tmp_path, form)
    ps = read_points(path)
    np.testing.assert_array_equal(ps.xy, expected)
    assert ps.xy.dtype == np.float64 and ps.xy.shape == (len(expected), 2)
    want_class = "" if form.startswith("geometry") else "Nucleus"
    assert ps.classes == (want_class,) * len(expected)
    assert ps.regions is None and ps.n_dropped_outside == 0 and ps.n_merged_duplicates == 0
    assert ps.source == str(path)


def test_class_from_every_classification_form(tmp_path):
    path = _write(
        tmp_path / "c.geojson",
        _fc(
            _feature(_pt([1.5, 1.5]), {"name": "Tumor", "color": [1, 2, 3]}),
            _feature(_pt([11.5, 1.5]), {"names": ["Tumor", "Positive"]}),
            _feature(_pt([21.5, 1.5]), "Stroma"),
            _feature(_pt([31.5, 1.5]), name="Lymphocyte"),
            _feature(_pt([41.5, 1.5])),
            _feature(_pt([51.5, 1.5, 7.0]), "Stroma", object_type="detection"),  # 3D position, detection
        ),
    )
    ps = read_points(path)
    assert ps.classes == ("Tumor", "Tumor: Positive", "Stroma", "Lymphocyte", "", "Stroma")
    np.testing.assert_array_equal(ps.xy[:, 0], [1.5, 11.5, 21.5, 31.5, 41.5, 51.5])
    # filter: case-insensitive; "" selects the unclassified point
    sel = read_points(path, point_classes=["stroma", ""])
    assert sel.classes == ("Stroma", "", "Stroma")
    assert read_points(path, point_classes="tumor").classes == ("Tumor",)  # a single name, not its letters
    np.testing.assert_array_equal(sel.xy[:, 0], [21.5, 41.5, 51.5])


def test_rc_is_pixel_centre_row_col():
    ps = PointSet(np.array([[10.5, 3.5], [0.0, 0.0]]), ("a", "b"))
    np.testing.assert_array_equal(ps.rc(), [[3.0, 10.0], [-0.5, -0.5]])
    assert len(ps) == 2 and not ps.xy.flags.writeable
    with pytest.raises(ValueError, match="classes"):
        PointSet(np.zeros((2, 2)), ("a",))


# ---------------------------------------------------------------------------------------------
# merging


def test_merge_prefers_specific_class_and_does_not_chain():
    xy = np.array([[0.0, 0.0], [0.9, 0.0], [1.8, 0.0], [10.0, 10.0], [10.0, 10.5], [10.0, 10.0]])
    classes = ["Nucleus", "Nucleus", "Nucleus", "", "Nucleus", "Fibroblast"]
    keep, conflicts = merge_duplicates(xy, classes, 1.0)
    # 0 absorbs 0.9; 1.8 is 1.8 from the kept point: kept (no chaining through 0.9).
    # At (10, 10): Fibroblast (specific) beats Nucleus beats unclassified, wherever it is in the file.
    assert keep.tolist() == [0, 2, 5] and conflicts == 0
    keep, conflicts = merge_duplicates(np.array([[1.0, 1.0]] * 3), ["Other", "Epithelial", "Nucleus"], 1.0)
    assert keep.tolist() == [0] and conflicts == 1  # two specific classes disagree: first in file order
    keep, _ = merge_duplicates(np.array([[1.0, 1.0], [1.0, 1.5]]), ["a", "a"], 0.0)
    assert keep.tolist() == [0, 1]  # radius 0 merges identical positions only
    with pytest.raises(ValueError, match="radius"):
        merge_duplicates(xy, classes, -1.0)


def test_duplicates_merged_and_counted(tmp_path):
    path = _write(
        tmp_path / "d.geojson",
        _fc(
            _feature(_mp([[5.0, 5.0], [20.0, 20.0], [40.0, 5.0]]), _nucleus()),
            _feature(_mp([[20.5, 20.0], [5.0, 5.0]]), {"name": "Epithelial", "color": [0, 0, 0]}),
        ),
    )
    ps = read_points(path)
    assert ps.n_merged_duplicates == 2
    # kept points are the specific ones, at their own positions, where their group first appears
    np.testing.assert_array_equal(ps.xy, [[5.0, 5.0], [20.5, 20.0], [40.0, 5.0]])
    assert ps.classes == ("Epithelial", "Epithelial", "Nucleus")
    assert len(read_points(path, merge_radius=0.0)) == 4


# ---------------------------------------------------------------------------------------------
# regions and dropping


def test_default_region_rule():
    poly = SQUARE
    assert is_default_region(_feature(poly))  # unclassified, unnamed
    assert is_default_region(_feature(poly, name="my outline"))  # unclassified, any name
    assert is_default_region(_feature(poly, object_type=None))  # objectType missing = annotation
    assert is_default_region(_feature(poly, {"name": "Region", "color": [0, 0, 0]}))
    assert is_default_region(_feature(poly, "annotated REGION 3"))
    assert is_default_region(_feature(poly, {"name": "Tumor", "color": [0, 0, 0]}, name="Region*"))
    assert not is_default_region(_feature(poly, {"name": "Tumor", "color": [0, 0, 0]}))
    assert not is_default_region(_feature(poly, "Regional node"))
    assert not is_default_region(_feature(poly, object_type="detection"))
    assert not is_default_region(_feature(_pt([1.0, 1.0])))


def test_regions_union_and_selection(tmp_path):
    other = {"type": "Polygon", "coordinates": [[[100, 0], [150, 0], [150, 50], [100, 50], [100, 0]]]}
    multi = {"type": "MultiPolygon", "coordinates": [other["coordinates"], [[[200, 0], [210, 0], [210, 10], [200, 0]]]]}
    path = _write(
        tmp_path / "r.geojson",
        _fc(
            _feature(_mp([[10.0, 10.0], [120.0, 10.0], [205.0, 2.0], [300.0, 300.0]]), _nucleus()),
            _feature(SQUARE, name="Annotated region"),
            _feature(multi, {"name": "Tumor", "color": [9, 9, 9]}),
            _feature(other, "Stroma", object_type="detection"),  # detections are never regions
        ),
    )
    ps = read_points(path)
    assert ps.regions.equals(shapely.from_geojson(json.dumps(SQUARE)))
    assert ps.xy.tolist() == [[10.0, 10.0]] and ps.n_dropped_outside == 3
    ps = read_points(path, region_classes=["tumor", "annotated region"])
    assert ps.regions.area == pytest.approx(2500 + 2500 + 50)
    assert ps.xy.tolist() == [[10.0, 10.0], [120.0, 10.0], [205.0, 2.0]]
    with pytest.raises(GeoJSONError, match=r"no polygon annotation of class \['Lymph'\].*Tumor"):
        read_points(path, region_classes=["Lymph"])
    with pytest.raises(GeoJSONError, match=r"no polygon annotation of class \['Stroma'\]"):
        read_points(path, region_classes=["Stroma"])


def test_points_outside_image_or_region_dropped_with_one_warning(tmp_path, caplog):
    path = _write(
        tmp_path / "o.geojson",
        _fc(
            _feature(
                _mp(
                    [[1.0, 1.0], [49.99, 49.99], [50.0, 25.0], [60.0, 10.0], [-0.01, 5.0], [10.0, 80.0], [99.99, 79.99]]
                ),
                _nucleus(),
            ),
        ),
    )
    # image only: x in [0, 100), y in [0, 80)
    with caplog.at_level(logging.WARNING, logger="wsi_weakseg"):
        ps = read_points(path, image_size=(100, 80))
    assert ps.n_dropped_outside == 2
    assert ps.xy.tolist() == [[1.0, 1.0], [49.99, 49.99], [50.0, 25.0], [60.0, 10.0], [99.99, 79.99]]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dropped 2 of 7 points" in warnings[0].getMessage()
    assert "2 outside the 100x80 image" in warnings[0].getMessage()

    # and a region [0, 50] x [0, 50] (boundary included)
    with_region = _write(tmp_path / "o2.geojson", _fc(*json.loads(path.read_text())["features"], _feature(SQUARE)))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="wsi_weakseg"):
        ps = read_points(with_region, image_size=(100, 80))
    assert ps.xy.tolist() == [[1.0, 1.0], [49.99, 49.99], [50.0, 25.0]]
    assert ps.n_dropped_outside == 4
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    message = warnings[0].getMessage()
    assert "dropped 4 of 7 points (2 outside the 100x80 image, 2 outside every annotated region)" in message


def test_all_points_outside_is_an_error(tmp_path):
    path = _write(tmp_path / "a.geojson", _fc(_feature(_mp([[200.0, 5.0], [5.0, 300.0]]), _nucleus())))
    with pytest.raises(GeoJSONError, match=r"all 2 points lie outside.*2 outside the 100x100 image"):
        read_points(path, image_size=(100, 100))


def test_require_regions(tmp_path):
    pts = _feature(_mp([[10.0, 10.0], [20.0, 20.0]]), _nucleus())
    tumour = _feature(SQUARE, {"name": "Tumor", "color": [1, 1, 1]})
    path = _write(tmp_path / "n.geojson", _fc(pts, tumour))
    assert read_points(path).regions is None  # a plain image: fully annotated
    with pytest.raises(GeoJSONError, match=r"draw an annotation region in QuPath.*Tumor \(1\)"):
        read_points(path, require_regions=True)
    ok = _write(tmp_path / "y.geojson", _fc(pts, _feature(SQUARE, name="Annotated region")))
    assert read_points(ok, require_regions=True).regions.area == 2500


# ---------------------------------------------------------------------------------------------
# errors


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity", "1e999"])
@pytest.mark.parametrize("kind", ["Point", "MultiPoint"])
def test_non_finite_coordinates_rejected(tmp_path, bad, kind):
    coords = f"[3.0, {bad}]" if kind == "Point" else f"[[1.0, 2.0], [3.0, {bad}]]"
    text = (
        '{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": '
        f'{{"type": "{kind}", "coordinates": {coords}}}, "properties": {{"objectType": "annotation"}}}}]}}'
    )
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(GeoJSONError, match="NaN or infinite"):
        read_points(path)


def test_no_points_is_an_error(tmp_path):
    only_region = _write(tmp_path / "empty.geojson", _fc(_feature(SQUARE, name="Annotated region")))
    with pytest.raises(GeoJSONError, match=r"empty\.geojson: no point annotations.*Polygon \(1\)"):
        read_points(only_region)
    nothing = _write(tmp_path / "nothing.geojson", _fc())
    with pytest.raises(GeoJSONError, match="no point annotations"):
        read_points(nothing)
    empty_mp = _write(tmp_path / "mp.geojson", _fc(_feature(_mp([]), _nucleus())))
    with pytest.raises(GeoJSONError, match="no point annotations"):
        read_points(empty_mp)
    classed = _write(
        tmp_path / "classed.geojson",
        _fc(_feature(_mp([[1.0, 1.0], [5.0, 5.0]]), _nucleus()), _feature(_pt([9.0, 9.0]), "Other")),
    )
    expected = r"classed\.geojson: no points of class \['Tumor'\].*Nucleus \(2\), Other \(1\)"
    with pytest.raises(GeoJSONError, match=expected):
        read_points(classed, point_classes=["Tumor"])


# ---------------------------------------------------------------------------------------------
# writing


def test_write_read_round_trip(tmp_path):
    hole = [(20, 20), (30, 20), (30, 30), (20, 30)]
    regions = shapely.union_all(
        [shapely.Polygon([(0, 0), (100, 0), (100, 100), (0, 100)], [hole]), shapely.box(200.5, 0, 260.25, 40)]
    )
    xy = np.array([[10.123, 5.0], [50.25, 60.5], [210.0, 10.0], [90.0, 90.0], [5.5, 95.5], [220.0, 35.0]])
    classes = ("Nucleus", "Epithelial", "Nucleus", "", "Epithelial", "My class")
    ps = PointSet(xy, classes, regions=regions)
    for name in ("out.geojson", "out.geojson.gz"):
        path = write_points(tmp_path / name, ps, class_colors={"My class": (1, 2, 3)})
        back = read_points(path, image_size=(300, 300))
        # written grouped by class in order of first appearance
        order = [0, 2, 1, 4, 3, 5]
        np.testing.assert_allclose(back.xy, np.round(xy[order], 2), atol=0, rtol=0)
        assert back.classes == tuple(classes[i] for i in order)
        assert back.regions.equals(regions)
        assert back.n_dropped_outside == 0 and back.n_merged_duplicates == 0

    data = json.loads((tmp_path / "out.geojson").read_text())
    feats = data["features"]
    assert [f["geometry"]["type"] for f in feats] == ["MultiPoint", "MultiPoint", "Point", "Point", "MultiPolygon"]
    for f in feats:
        assert f["properties"]["objectType"] == "annotation"
        assert str(uuid.UUID(f["id"])) == f["id"]
    assert feats[0]["properties"]["classification"]["name"] == "Nucleus"
    assert feats[3]["properties"]["classification"] == {"name": "My class", "color": [1, 2, 3]}
    assert "classification" not in feats[2]["properties"]  # unclassified points
    assert feats[4]["properties"] == {"objectType": "annotation", "name": "Annotated region"}
    assert feats[0]["geometry"]["coordinates"][0] == [10.12, 5.0]
    # deterministic: same input and file name, same bytes
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = write_points(tmp_path / "a" / "p.geojson", ps).read_bytes()
    assert first == write_points(tmp_path / "b" / "p.geojson", ps).read_bytes()


def test_write_single_polygon_region_and_bad_colour(tmp_path):
    ps = PointSet(np.array([[1.0, 2.0]]), ("Nucleus",), regions=shapely.box(0, 0, 10, 10))
    path = write_points(tmp_path / "one.geojson", ps)
    feats = json.loads(path.read_text())["features"]
    assert [f["geometry"]["type"] for f in feats] == ["Point", "Polygon"]
    assert read_points(path).regions.equals(shapely.box(0, 0, 10, 10))
    with pytest.raises(ValueError, match="colour"):
        write_points(tmp_path / "bad.geojson", ps, class_colors={"Nucleus": (0, 0, 300)})
    assert not (tmp_path / "bad.geojson").exists()


# ---------------------------------------------------------------------------------------------
# real data


def test_monuseg_points_one_per_nucleus_at_bbox_centre(shared_data):
    image_id = "TCGA-18-5592-01Z-00-DX1"
    root = shared_data / "monuseg-train"
    ps = read_points(root / "points" / f"{image_id}.geojson", image_size=(1000, 1000))
    labels = np.asarray(Image.open(root / "labels" / f"{image_id}.png"))
    n = int(labels.max())
    assert len(np.unique(labels)) - 1 == n
    assert len(ps) == n == 480
    assert ps.classes == ("Nucleus",) * n
    assert ps.n_dropped_outside == 0 and ps.n_merged_duplicates == 0
    assert ps.regions.equals(shapely.box(0, 0, 1000, 1000))
    # each point is exactly the centre of its nucleus' bounding box in continuous coordinates,
    # and (for this image) lies in a pixel of that nucleus
    centres = []
    for sl in ndi.find_objects(labels):
        rows, cols = sl
        centres.append(((cols.start + cols.stop) / 2, (rows.start + rows.stop) / 2))
    centres = np.array(centres)
    order_pts = np.lexsort((ps.xy[:, 1], ps.xy[:, 0]))
    order_bb = np.lexsort((centres[:, 1], centres[:, 0]))
    np.testing.assert_array_equal(ps.xy[order_pts], centres[order_bb])
    col, row = np.floor(ps.xy).astype(int).T
    hit = labels[row, col]
    assert (hit > 0).all()
    np.testing.assert_array_equal(centres[hit - 1], ps.xy)  # the pixel's nucleus is the point's nucleus
    # rc(): the pixel-centre coordinates round to the same pixel
    np.testing.assert_array_equal(np.floor(ps.rc() + 0.5).astype(int), np.stack([row, col], axis=1))


def _class_sets(path: Path) -> dict[str, np.ndarray]:
    sets: dict[str, list] = {}
    for f in json.loads(path.read_text())["features"]:
        g = f["geometry"]
        if g["type"] in ("Point", "MultiPoint"):
            sets.setdefault(f["properties"]["classification"]["name"], []).extend(
                [g["coordinates"]] if g["type"] == "Point" else g["coordinates"]
            )
    return {k: np.array(v, dtype=float).reshape(-1, 2) for k, v in sets.items()}


def test_crc_class_subsets_merge_into_nucleus_points(shared_data):
    path = shared_data / "crchisto-points" / "points" / "img1.geojson"
    sets = _class_sets(path)
    ps = read_points(path, image_size=(500, 500))
    assert len(ps) == len(sets["Nucleus"]) == 29
    np.testing.assert_array_equal(ps.xy, sets["Nucleus"])  # Nucleus comes first in the file
    assert ps.n_merged_duplicates == 11 + 7 + 2
    assert ps.class_counts() == {"Nucleus": 9, "Fibroblast": 11, "Inflammatory": 7, "Other": 2}
    for name in ("Fibroblast", "Inflammatory", "Other"):
        got = ps.xy[np.array(ps.classes) == name]
        np.testing.assert_array_equal(got[np.lexsort(got.T)], sets[name][np.lexsort(sets[name].T)])
    assert ps.regions.equals(shapely.box(0, 0, 500, 500))
    # only the specific classes
    sub = read_points(path, point_classes=["Fibroblast", "other"])
    assert sub.class_counts() == {"Fibroblast": 11, "Other": 2} and sub.n_merged_duplicates == 0


def test_crc_file_with_duplicate_clicks_and_a_class_conflict(shared_data, caplog):
    # img12: the Nucleus set repeats one click exactly, and one click is both Inflammatory and Other
    path = shared_data / "crchisto-points" / "points" / "img12.geojson"
    sets = _class_sets(path)
    assert len(sets["Nucleus"]) == 171 and len(np.unique(sets["Nucleus"], axis=0)) == 170
    with caplog.at_level(logging.WARNING, logger="wsi_weakseg"):
        ps = read_points(path, image_size=(500, 500))
    assert len(ps) == 170
    assert "1 duplicate point(s) carried a different specific class" in caplog.text
    specific = sum(len(v) for k, v in sets.items() if k != "Nucleus")
    assert sum(n for k, n in ps.class_counts().items() if k != "Nucleus") == specific - 1


def test_qupath_export_points_without_default_regions(shared_data, caplog):
    path = shared_data / "qupath" / "qupath-annotations-export.geojson"
    # the 43 polygons are all classified (Primary_*): none is a region under the default rule,
    # so the 8 calibration points are kept and the whole image counts as annotated, with a warning
    with caplog.at_level(logging.WARNING, logger="wsi_weakseg"):
        ps = read_points(path)
    assert len(ps) == 8 and ps.classes == ("calibpoints",) * 8 and ps.regions is None
    assert "43 polygon annotation(s) found but none is an annotated region" in caplog.text
    assert ps.xy[0].tolist() == [41311.48, 31575.46]
    with pytest.raises(GeoJSONError, match="draw an annotation region"):
        read_points(path, require_regions=True)
    # selecting the polygons as regions: every calibration point lies outside them
    classes = {f["properties"]["classification"]["name"] for f in json.loads(path.read_text())["features"]}
    with pytest.raises(GeoJSONError, match=r"all 8 points lie outside.*8 outside every annotated region"):
        read_points(path, region_classes=sorted(classes - {"calibpoints"}))
