"""Data spec items with ``scribbles`` (issue 15): alone, with points, class selectors, loading."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wsi_weakseg.errors import ConfigError
from wsi_weakseg.weak.spec import load_item_points, load_item_scribbles, load_spec


def _stroke(cls, coords):
    return {"type": "Feature", "geometry": {"type": "LineString", "coordinates": coords},
            "properties": {"objectType": "annotation", "classification": {"name": cls}}}


@pytest.fixture()
def project(tmp_path: Path) -> Path:
    Image.fromarray(np.full((30, 40, 3), 180, np.uint8)).save(tmp_path / "a.png")
    feats = [_stroke("Fg", [[1, 1], [10, 1]]), _stroke("Background", [[1, 20], [30, 20]]),
             _stroke("Nucleus", [[100, 100], [120, 100]]),  # outside the 40x30 image
             {"type": "Feature", "geometry": {"type": "Point", "coordinates": [5, 5]},
              "properties": {"objectType": "annotation", "classification": {"name": "Nucleus"}}}]
    (tmp_path / "s.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": feats}))
    return tmp_path


def _spec(folder: Path, text: str) -> Path:
    (folder / "spec.yaml").write_text(text)
    return folder / "spec.yaml"


def test_scribbles_only_item(project):
    spec = load_spec(_spec(project, "defaults: {mpp: 0.5, nucleus_classes: [Fg, Nucleus]}\n"
                                    "items:\n  - {image: a.png, scribbles: s.geojson}\n"))
    item = spec.items[0]
    assert item.points is None and item.scribbles == (project / "s.geojson").resolve()
    assert item.nucleus_classes == ("Fg", "Nucleus") and item.background_classes is None
    s = load_item_scribbles(item)
    assert len(s.nucleus) == 1 and len(s.background) == 1 and s.n_dropped_outside == 1
    with pytest.raises(ConfigError, match="no 'points'"):
        load_item_points(item)


def test_points_and_scribbles_in_one_item(project):
    spec = load_spec(_spec(project, "items:\n  - {image: a.png, points: s.geojson, scribbles: s.geojson, mpp: 0.5,"
                                    " background_classes: Background}\n"))
    item = spec.items[0]
    assert len(load_item_points(item)) == 1  # the one Point; strokes are not points
    assert item.background_classes == ("Background",)
    s = load_item_scribbles(item)  # default nucleus class: the only Nucleus stroke is outside, Fg is unused
    assert len(s.nucleus) == 0 and len(s.background) == 1 and s.n_unused == 1


def test_an_item_without_labels_is_unlabelled(project):
    """Issue 16: an item with no points, scribbles or masks is an unlabelled image; the points reader refuses it."""
    item = load_spec(_spec(project, "items:\n  - {image: a.png, mpp: 0.5}\n")).items[0]
    assert item.unlabelled and item.points is None and item.scribbles is None and item.masks is None
    with pytest.raises(ConfigError, match="no 'points'"):
        load_item_points(item)
    with pytest.raises(ConfigError, match="scribbles file not found"):
        load_spec(_spec(project, "items:\n  - {image: a.png, scribbles: nope.geojson}\n"))
