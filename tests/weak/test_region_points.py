"""In/out points of tissue regions (issue 18): reading QuPath GeoJSON, typed errors, the seeded simulation."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
from PIL import Image

from wsi_weakseg.errors import ConfigError, GeoJSONError
from wsi_weakseg.weak.region_points import (
    load_item_region_points,
    read_region_points,
    simulate_region_points,
    write_region_points,
)
from wsi_weakseg.weak.spec import load_spec


def _point(cls, coords, kind="MultiPoint"):
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": coords},
            "properties": {"objectType": "annotation", "classification": {"name": cls, "color": [1, 2, 3]}}}


REGION = {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [50, 0], [50, 40], [0, 40], [0, 0]]]},
          "properties": {"objectType": "annotation", "name": "Annotated region"}}


def _write(tmp_path, *features, name="p.geojson"):
    path = tmp_path / name
    path.write_text(json.dumps({"type": "FeatureCollection", "features": list(features)}))
    return path


def test_in_and_out_points_are_split_by_class_and_other_classes_ignored(tmp_path, caplog):
    path = _write(tmp_path, _point("Gland", [[10.5, 5.5], [20.0, 30.0]]), _point("Other", [3.0, 4.0], "Point"),
                  _point("background", [[40.0, 2.0], [70.0, 10.0]]), _point("Nucleus", [[1.0, 1.0]]))
    with caplog.at_level(logging.WARNING):
        pts = read_region_points(path, in_classes=["gland"], image_size=(60, 40))
    assert pts.xy_in.tolist() == [[10.5, 5.5], [20.0, 30.0]]
    assert pts.xy_out.tolist() == [[3.0, 4.0], [40.0, 2.0]]  # (70, 10) lies outside the 60 px wide image
    assert pts.n_dropped_outside == 1 and "dropped 1 of 5 points" in caplog.text
    assert pts.regions is None


def test_the_annotated_region_bounds_the_points(tmp_path):
    path = _write(tmp_path, _point("Tumor", [[10.0, 10.0]]), _point("Other", [[45.0, 35.0], [55.0, 35.0]]), REGION)
    pts = read_region_points(path, image_size=(100, 100), require_region=True)
    assert pts.regions is not None and pts.regions.area == 2000
    assert pts.xy_out.tolist() == [[45.0, 35.0]] and pts.n_dropped_outside == 1


def test_bad_input_raises_typed_errors(tmp_path):
    only_in = _write(tmp_path, _point("Tumor", [[10.0, 10.0]]), name="in.geojson")
    with pytest.raises(GeoJSONError, match="no out-points"):
        read_region_points(only_in)
    both = _write(tmp_path, _point("Tumor", [[1.0, 1.0]]), _point("Other", [[2.0, 2.0]]), name="both.geojson")
    with pytest.raises(ConfigError, match="both in_classes and out_classes"):
        read_region_points(both, in_classes=["Tumor"], out_classes=["tumor"])
    with pytest.raises(GeoJSONError, match="no annotated region"):
        read_region_points(both, require_region=True)
    with pytest.raises(GeoJSONError, match="no points of class"):
        read_region_points(both, in_classes=["Gland"], out_classes=["Stroma"])


def test_a_spec_item_names_its_region_points_and_classes(tmp_path):
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "im.png")
    _write(tmp_path, _point("Gland", [[10.0, 10.0]]), _point("Stroma", [[30.0, 20.0], [80.0, 20.0]]))
    (tmp_path / "spec.yaml").write_text("defaults:\n  mpp: 0.62\n  in_classes: [Gland]\n"
                                        "items:\n- image: im.png\n  region_points: p.geojson\n  out_classes: Stroma\n")
    item = load_spec(tmp_path / "spec.yaml").items[0]
    assert item.in_classes == ("Gland",) and item.out_classes == ("Stroma",) and not item.unlabelled
    pts = load_item_region_points(item)
    assert pts.xy_in.tolist() == [[10.0, 10.0]] and pts.xy_out.tolist() == [[30.0, 20.0]]


def test_simulation_is_seeded_nested_and_round_trips_through_qupath_geojson(tmp_path):
    mask = np.zeros((30, 40), np.uint8)
    mask[5:20, 10:30] = 255
    a_in, a_out = simulate_region_points(mask, 5, seed=0, name="train_1")
    b_in, b_out = simulate_region_points(mask, 5, seed=0, name="train_1")
    assert np.array_equal(a_in, b_in) and np.array_equal(a_out, b_out)
    c_in, _ = simulate_region_points(mask, 5, seed=1, name="train_1")
    assert not np.array_equal(a_in, c_in)
    three_in, three_out = simulate_region_points(mask, 3, seed=0, name="train_1")
    assert np.array_equal(three_in, a_in[:3]) and np.array_equal(three_out, a_out[:3])
    rows_in, cols_in = (a_in[:, 1] - 0.5).astype(int), (a_in[:, 0] - 0.5).astype(int)
    rows_out, cols_out = (a_out[:, 1] - 0.5).astype(int), (a_out[:, 0] - 0.5).astype(int)
    assert (mask[rows_in, cols_in] > 0).all() and (mask[rows_out, cols_out] == 0).all()
    assert len({tuple(p) for p in a_in}) == 5  # drawn without replacement
    path = write_region_points(tmp_path / "p.geojson", a_in, a_out, in_class="Gland")
    back = read_region_points(path, in_classes=["Gland"])
    assert np.allclose(back.xy_in, a_in) and np.allclose(back.xy_out, a_out)
    with pytest.raises(ValueError, match="fewer than 5"):
        simulate_region_points(np.ones((3, 3)), 5, 0, "full")
