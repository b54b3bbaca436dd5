"""Drawn nuclei (issue 16): QuPath polygons and regions read with typed errors and counted warnings, rasterised."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image

from wsi_weakseg.errors import ConfigError, GeoJSONError
from wsi_weakseg.weak.masks import (
    MaskSet,
    instances_from_image,
    mask_target,
    rasterise_masks,
    read_masks,
    read_region,
)
from wsi_weakseg.weak.spec import load_item_masks, load_item_points, load_spec


def _polygon(cls, rings, kind="Polygon", name=None):
    props = {"objectType": "annotation"}
    if cls is not None:
        props["classification"] = {"name": cls}
    if name is not None:
        props["name"] = name
    return {"type": "Feature", "geometry": {"type": kind, "coordinates": rings}, "properties": props}


def _square(x0, y0, x1, y1):
    return [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]


def _write(path: Path, features) -> Path:
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def test_nuclei_and_region_are_read_with_every_case_counted(tmp_path, caplog):
    features = [
        _polygon(None, _square(0, 0, 20, 10), name="Annotated region"),
        _polygon("Nucleus", _square(2, 2, 5, 5)),                                   # inside
        _polygon("nucleus", [_square(6, 2, 8, 4), _square(9, 2, 11, 4)], "MultiPolygon"),  # two nuclei
        _polygon("Nucleus", _square(18, 2, 23, 6)),                                 # crosses the region's edge
        _polygon("Nucleus", _square(30, 30, 33, 33)),                               # wholly outside the region
        _polygon("Nucleus", _square(3, 3, 6, 6)),                                   # overlaps the first
        _polygon("Tumor", _square(0, 0, 40, 40)),                                   # neither nucleus nor region
    ]
    with caplog.at_level(logging.INFO, logger="wsi_weakseg.weak.masks"):
        m = read_masks(_write(tmp_path / "m.geojson", features), image_size=(40, 40))
    assert len(m) == 5 and m.region.equals(shapely.box(0, 0, 20, 10))
    assert (m.n_outside, m.n_crossing, m.n_overlapping, m.n_repaired) == (1, 1, 1, 0)
    text = caplog.text
    assert "dropped 1 wholly outside" in text and "1 pair(s) of nucleus polygons overlap" in text
    assert "1 nucleus polygon(s) cross the region's edge" in text


def test_a_bow_tie_is_repaired_and_counted(tmp_path, caplog):
    bow = [[[0, 0], [4, 4], [4, 0], [0, 4], [0, 0]]]
    with caplog.at_level(logging.WARNING, logger="wsi_weakseg.weak.masks"):
        m = read_masks(_write(tmp_path / "m.geojson", [_polygon("Nucleus", bow)]))
    assert m.n_repaired == 1 and len(m) == 2 and m.region is None  # two triangles; no region = whole image
    assert abs(sum(p.area for p in m.nuclei) - 8.0) < 1e-9 and "repaired" in caplog.text


def test_typed_errors(tmp_path):
    nan = tmp_path / "nan.geojson"
    nan.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "properties": {"classification": '
                   '{"name": "Nucleus"}}, "geometry": {"type": "Polygon", "coordinates": [[[0, 0], [NaN, 0], [1, 1], '
                   '[0, 0]]]}}]}')
    with pytest.raises(GeoJSONError, match="NaN"):
        read_masks(nan)
    with pytest.raises(GeoJSONError, match="no nucleus polygons of classes.*Tumor"):
        read_masks(_write(tmp_path / "t.geojson", [_polygon("Tumor", _square(0, 0, 4, 4))]))
    with pytest.raises(GeoJSONError, match="a whole slide needs one"):
        read_masks(_write(tmp_path / "n.geojson", [_polygon("Nucleus", _square(0, 0, 4, 4))]), require_region=True)
    out = [_polygon(None, _square(0, 0, 10, 10)), _polygon("Nucleus", _square(20, 20, 24, 24))]
    with pytest.raises(GeoJSONError, match="all 1 nucleus polygons lie outside"):
        read_masks(_write(tmp_path / "o.geojson", out))
    with pytest.raises(GeoJSONError, match="no annotated region"):
        read_region(_write(tmp_path / "r.geojson", [_polygon("Nucleus", _square(0, 0, 4, 4))]))


def test_rasterised_on_a_half_resolution_window_by_pixel_centres():
    """Level-0 square [4, 12) x [2, 8) at scale 0.5 is working [2, 6) x [1, 4); a window from working (x 1, y 0)."""
    m = MaskSet(nuclei=(shapely.box(4, 2, 12, 8), shapely.box(8, 2, 16, 6)), region=shapely.box(0, 0, 14, 10))
    r = rasterise_masks(m, (5, 8), scale=0.5, offset=(1.0, 0.0))
    # nucleus 1: working x [2, 6) -> window columns [1, 5), rows [1, 4); nucleus 2: x [4, 8) -> columns [3, 7),
    # rows [1, 3). Shared: columns 3, 4 of rows 1, 2 (4 px), given to neither. Region x [0, 7) -> columns [0, 6).
    expected = np.zeros((5, 8), np.int32)
    expected[1:4, 1:5] = 1
    expected[1:3, 3:7] = 2
    expected[1:3, 3:5] = 0
    np.testing.assert_array_equal(r.labels, expected)
    labelled = np.zeros((5, 8), np.uint8)
    labelled[:, 0:6] = 1
    labelled[1:3, 3:5] = 0
    np.testing.assert_array_equal(r.labelled, labelled)
    assert (r.n_overlap, r.n_empty) == (4, 0)
    target = mask_target(r.labels, r.labelled)
    assert target[0, 0] == 0 and target[1, 1] == 1 and target[1, 3] == 2 and target[1, 6] == 2 and target[0, 7] == 2
    tiny = rasterise_masks(MaskSet(nuclei=(shapely.box(0.1, 0.1, 0.4, 0.4),), region=None), (2, 2))
    assert tiny.n_empty == 1 and not tiny.labels.any() and tiny.labelled.all()


def test_label_images_binary_or_instances():
    np.testing.assert_array_equal(instances_from_image(np.array([[1, 1, 0, 1], [0, 0, 0, 1]], np.uint8)),
                                  [[1, 1, 0, 2], [0, 0, 0, 2]])
    np.testing.assert_array_equal(instances_from_image(np.array([[3, 3, 0, 1]], np.uint16)), [[3, 3, 0, 1]])


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    Image.fromarray(np.full((30, 40, 3), 180, np.uint8)).save(tmp_path / "a.png")
    labels = np.zeros((30, 40), np.uint16)
    labels[2:6, 2:6], labels[20:25, 30:35] = 5, 9
    Image.fromarray(labels).save(tmp_path / "lab.png")
    _write(tmp_path / "region.geojson", [_polygon(None, _square(0, 0, 10, 10))])
    _write(tmp_path / "m.geojson", [_polygon(None, _square(0, 0, 10, 10)), _polygon("Cell", _square(2, 2, 5, 5))])
    return tmp_path


def _spec(folder: Path, text: str) -> Path:
    (folder / "spec.yaml").write_text(text)
    return folder / "spec.yaml"


def test_spec_items_with_masks_regions_or_nothing(project):
    spec = load_spec(_spec(project, "defaults: {mpp: 0.5}\nitems:\n"
                                    "  - {image: a.png, masks: m.geojson, nucleus_classes: [Cell]}\n"
                                    "  - {image: a.png, masks: lab.png, region: region.geojson}\n"
                                    "  - {image: a.png}\n"))
    poly, label_map, bare = spec.items
    assert bare.unlabelled and not poly.unlabelled and poly.masks == (project / "m.geojson").resolve()
    masks, image = load_item_masks(poly)
    assert len(masks) == 1 and image is None and masks.region.equals(shapely.box(0, 0, 10, 10))
    masks, image = load_item_masks(label_map)
    assert len(masks) == 0 and masks.region.equals(shapely.box(0, 0, 10, 10))
    assert image.shape == (30, 40) and set(np.unique(image)) == {0, 5, 9}
    with pytest.raises(ConfigError, match="no 'points'"):
        load_item_points(bare)


def test_spec_refuses_a_region_beside_geojson_masks_and_a_label_image_of_another_size(project):
    with pytest.raises(ConfigError, match="holds its own annotated region"):
        load_spec(_spec(project, "items:\n  - {image: a.png, masks: m.geojson, region: region.geojson}\n"))
    Image.fromarray(np.zeros((10, 10), np.uint16)).save(project / "small.png")
    item = load_spec(_spec(project, "items:\n  - {image: a.png, mpp: 0.5, masks: small.png}\n")).items[0]
    with pytest.raises(ConfigError, match="label image is 10x10 but the image is 40x30"):
        load_item_masks(item)
