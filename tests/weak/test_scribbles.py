"""Scribbles from QuPath GeoJSON: every stroke form, classes, NaN, outside strokes, rasterisation by hand."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import shapely

from wsi_weakseg.errors import ConfigError, GeoJSONError
from wsi_weakseg.weak.scribbles import ScribbleSet, rasterise_scribbles, read_scribbles, scribble_label


def _feature(geometry, cls=None, object_type="annotation"):
    props = {"objectType": object_type}
    if cls is not None:
        props["classification"] = {"name": cls, "color": [255, 0, 0]}
    return {"type": "Feature", "geometry": geometry, "properties": props}


def _line(coords):
    return {"type": "LineString", "coordinates": coords}


def _write(tmp_path, features, name="s.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_every_stroke_form_and_points_skipped(tmp_path):
    brush = {"type": "Polygon", "coordinates": [[[0, 0], [10, 0], [10, 1], [0, 1], [0, 0]]]}
    multi_brush = {"type": "MultiPolygon", "coordinates": [brush["coordinates"], [[[20, 0], [30, 0], [30, 1], [20, 0]]]]}
    multi = {"type": "MultiLineString", "coordinates": [[[0, 5], [5, 5]], [[0, 7], [5, 7]]]}
    feats = [
        _feature(_line([[0, 2], [9, 2]]), "Nucleus"),
        _feature(multi, "background"),  # case-insensitive
        _feature(brush, "Nucleus"),
        _feature(multi_brush, "Background", object_type="detection"),
        _feature({"type": "Point", "coordinates": [3, 3]}, "Nucleus"),
        _feature({"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 50], [0, 0]]]}),  # a region
    ]
    s = read_scribbles(_write(tmp_path, feats))
    assert [g.geom_type for g in s.nucleus] == ["LineString", "Polygon"]
    assert [g.geom_type for g in s.background] == ["LineString", "LineString", "Polygon", "Polygon"]
    assert len(s) == 6 and s.n_ignored == 0 and s.n_unused == 0


def test_class_selectors_ignore_and_unused(tmp_path, caplog):
    feats = [
        _feature(_line([[0, 0], [5, 5]]), "Fg"),
        _feature(_line([[0, 1], [5, 1]]), None),
        _feature(_line([[0, 2], [5, 2]]), "Ignore*"),
        _feature(_line([[0, 3], [5, 3]]), "Tumor"),
    ]
    path = _write(tmp_path, feats)
    with caplog.at_level(logging.WARNING):
        s = read_scribbles(path, nucleus_classes="fg", background_classes=[""])
    assert len(s.nucleus) == 1 and len(s.background) == 1
    assert s.n_ignored == 1 and s.n_unused == 1
    assert "1 line stroke(s) of other classes" in caplog.text
    with pytest.raises(ConfigError, match="both nucleus and background"):
        read_scribbles(path, nucleus_classes=["A"], background_classes=["a"])


def test_no_strokes_is_a_typed_error(tmp_path):
    path = _write(tmp_path, [_feature({"type": "Point", "coordinates": [1, 1]}, "Nucleus"),
                             _feature(_line([[0, 0], [1, 1]]), "Tumor")])
    with pytest.raises(GeoJSONError, match="no scribbles.*Tumor"):
        read_scribbles(path)


def test_nan_coordinate_is_a_typed_error(tmp_path):
    path = tmp_path / "nan.geojson"
    path.write_text('{"type":"FeatureCollection","features":[{"type":"Feature","properties":'
                    '{"classification":{"name":"Nucleus"}},"geometry":{"type":"LineString",'
                    '"coordinates":[[0,0],[NaN,1]]}}]}')
    with pytest.raises(GeoJSONError, match="NaN"):
        read_scribbles(path)


def test_strokes_outside_the_image_are_counted(tmp_path, caplog):
    feats = [
        _feature(_line([[1, 1], [5, 1]]), "Nucleus"),
        _feature(_line([[8, 1], [15, 1]]), "Nucleus"),  # partly outside a 10x10 image
        _feature(_line([[20, 20], [25, 25]]), "Background"),  # wholly outside
    ]
    path = _write(tmp_path, feats)
    with caplog.at_level(logging.WARNING):
        s = read_scribbles(path, image_size=(10, 10))
    assert len(s.nucleus) == 2 and len(s.background) == 0
    assert s.n_dropped_outside == 1 and s.n_clipped == 1
    assert "dropped 1 wholly outside" in caplog.text and "no background strokes" in caplog.text
    with pytest.raises(GeoJSONError, match="all 3 strokes lie outside"):
        read_scribbles(path, image_size=(0, 0))


def test_rasterise_by_hand():
    # A horizontal line through pixel centres of row 1, width 1 px: exactly row 1, columns 0..3.
    # A vertical background line at x = 4.5 (column 4), rows 0..2.
    s = ScribbleSet(nucleus=(shapely.LineString([(0.5, 1.5), (3.5, 1.5)]),),
                    background=(shapely.LineString([(4.5, 0.5), (4.5, 2.5)]),))
    r = rasterise_scribbles(s, (3, 6), width_px=1.0)
    expected = np.array([[2, 2, 2, 2, 0, 2],
                         [1, 1, 1, 1, 0, 2],
                         [2, 2, 2, 2, 0, 2]], np.uint8)
    np.testing.assert_array_equal(r.labels, expected)
    assert r.labels.dtype == np.uint8 and r.n_overlap == 0 and r.n_empty == 0


def test_rasterise_width_and_round_caps():
    # Width 3 px around the centre of pixel (2, 2) (a one-click stroke): a disc of radius 1.5
    # covers the centres at distance 0, 1 and sqrt(2) (<= 1.5), not 2: a 3x3 block.
    s = ScribbleSet(nucleus=(shapely.Point(2.5, 2.5),), background=())
    lab = rasterise_scribbles(s, (5, 5), width_px=3.0).labels
    expected = np.full((5, 5), 2, np.uint8)
    expected[1:4, 1:4] = 1
    np.testing.assert_array_equal(lab, expected)


def test_brush_polygon_rasterised_as_drawn():
    # A thin brush polygon spanning y in [1, 2), x in [1, 4): centres (1.5..3.5, 1.5) -> row 1, cols 1..3.
    poly = shapely.Polygon([(1, 1), (4, 1), (4, 2), (1, 2)])
    lab = rasterise_scribbles(ScribbleSet((), (poly,)), (3, 5), width_px=10.0).labels
    assert (lab == 0).sum() == 3 and (lab[1, 1:4] == 0).all()


def test_overlap_is_unlabelled_and_counted(caplog):
    a = shapely.LineString([(0.5, 0.5), (0.5, 2.5)])  # column 0
    b = shapely.LineString([(0.5, 1.5), (2.5, 1.5)])  # row 1 -> crosses at (1, 0)
    with caplog.at_level(logging.WARNING):
        r = rasterise_scribbles(ScribbleSet((a,), (b,)), (3, 3), width_px=1.0)
    np.testing.assert_array_equal(r.labels, [[1, 2, 2], [2, 0, 0], [1, 2, 2]])
    assert r.n_overlap == 1 and "1 pixel(s) covered by both" in caplog.text


def test_scribble_label_at_model_mpp():
    # Level 0 at 0.25 µm/px, model at 0.5 µm/px: an 8x4 image becomes 4x2; the line y = 1 (level 0)
    # maps to y = 0.5 (row 0's centre); width 0.5 µm = 1 working px.
    s = ScribbleSet(nucleus=(shapely.LineString([(0, 1), (8, 1)]),), background=())
    r = scribble_label(s, (8, 4), level0_mpp=0.25, mpp=0.5, width_um=0.5)
    np.testing.assert_array_equal(r.labels, [[1, 1, 1, 1], [2, 2, 2, 2]])


def test_empty_strokes_counted(caplog):
    thin = shapely.Polygon([(0.1, 0.1), (0.2, 0.1), (0.2, 0.2)])  # covers no pixel centre
    with caplog.at_level(logging.WARNING):
        r = rasterise_scribbles(ScribbleSet((thin,), ()), (2, 2), width_px=1.0)
    assert r.n_empty == 1 and (r.labels == 2).all()
    with pytest.raises(ConfigError):
        rasterise_scribbles(ScribbleSet((thin,), ()), (2, 2), width_px=0.0)
