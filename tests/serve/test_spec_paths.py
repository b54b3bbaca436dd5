"""The server's spec check covers every key that names a file (issue 16 added ``masks`` and ``region``, issue 18
``region_points``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from wsi_weakseg.serve.paths import PathOutsideRootsError, Roots
from wsi_weakseg.serve.training import _frozen_spec, check_spec_paths
from wsi_weakseg.weak.spec import load_spec


@pytest.mark.parametrize("key", ["points", "scribbles", "masks", "region", "region_points", "labels"])
def test_a_file_outside_the_roots_is_refused_before_it_is_opened(tmp_path: Path, key: str):
    root, outside = tmp_path / "root", tmp_path / "secret.geojson"
    root.mkdir()
    item = {"image": "a.png", key: str(outside)}
    (root / "spec.yaml").write_text(json.dumps({"items": [item]}))
    with pytest.raises(PathOutsideRootsError, match=f"its {key} file is outside"):
        check_spec_paths(root / "spec.yaml", Roots([root]))


def test_the_frozen_spec_keeps_masks_regions_and_class_selectors(tmp_path: Path):
    for name in ("a.png", "m.png", "r.geojson"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "spec.yaml").write_text("items:\n- {image: a.png, masks: m.png, region: r.geojson, "
                                        "nucleus_classes: [Cell]}\n- {image: a.png}\n")
    frozen = _frozen_spec(load_spec(tmp_path / "spec.yaml"), Roots([tmp_path]))
    first, second = frozen["items"]
    assert first["masks"] == str(tmp_path / "m.png") and first["region"] == str(tmp_path / "r.geojson")
    assert first["nucleus_classes"] == ["Cell"] and second == {"image": str(tmp_path / "a.png"), "split": "train"}
    (tmp_path / "spec.yaml").write_text("items:\n- {image: a.png, region_points: r.geojson, in_classes: [Gland]}\n")
    (item,) = _frozen_spec(load_spec(tmp_path / "spec.yaml"), Roots([tmp_path]))["items"]
    assert item["region_points"] == str(tmp_path / "r.geojson") and item["in_classes"] == ["Gland"]
    (tmp_path / "elsewhere").mkdir()
    with pytest.raises(PathOutsideRootsError):
        _frozen_spec(load_spec(tmp_path / "spec.yaml"), Roots([tmp_path / "elsewhere"]))
