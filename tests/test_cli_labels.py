"""`wsi-weakseg labels`: one overlay panel per spec item and a JSON summary of the label fractions."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from wsi_weakseg.cli import main
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.dataset import derive_targets, label_params, read_item
from wsi_weakseg.weak.spec import load_spec


def test_labels_panels_show_the_derived_targets(shared_data: Path, tmp_path: Path, capsys):
    m = shared_data / "monuseg-train"
    name = sorted(p.stem for p in (m / "images").glob("*.png"))[0]
    spec = tmp_path / "spec.yaml"
    spec.write_text(json.dumps({"defaults": {"mpp": 0.25}, "items": [
        {"image": str(m / "images" / f"{name}.png"), "points": str(m / "points" / f"{name}.geojson")}]}))
    assert main(["labels", str(spec), "-o", str(tmp_path / "out")]) == 0
    assert json.loads(capsys.readouterr().out) == {"items": 1, "output": str(tmp_path / "out")}
    panel = np.asarray(Image.open(tmp_path / "out" / f"{name}.png"))
    assert panel.shape == (500, 4 * 500 + 3 * 4, 3)  # 0.25 µm/px read at 0.5: four 500 px tiles and gaps
    summary = json.loads((tmp_path / "out" / "labels.json").read_text())["items"][0]
    # The panel's Voronoi tile is the image where the label is ignored and tinted elsewhere, exactly.
    r = read_item(load_spec(spec).items[0], 0.5)
    t = derive_targets(r.image, r.points_rc, r.annotated, label_params(load_config(), r.mpp))
    vor_tile = panel[:, 504:1004]
    clicks = np.zeros(t["voronoi"].shape, bool)
    pts = np.rint(r.points_rc).astype(int)
    for dy, dx in ((0, 0), (-1, 0), (1, 0), (0, -1), (0, 1)):
        clicks[np.clip(pts[:, 0] + dy, 0, 499), np.clip(pts[:, 1] + dx, 0, 499)] = True
    ignored = (t["voronoi"] == 2) & ~clicks
    np.testing.assert_array_equal(vor_tile[ignored], r.image[ignored])
    assert (np.abs(vor_tile[t["voronoi"] == 0].astype(int) - r.image[t["voronoi"] == 0]).sum(axis=1) > 0).mean() > 0.95
    assert (vor_tile[clicks] == 255).all()
    for key in ("voronoi", "cluster"):
        fractions = summary[key]
        assert sum(fractions.values()) == 1.0 or abs(sum(fractions.values()) - 1.0) < 1e-9
        assert fractions["nucleus"] == float(np.mean(t[key] == 1))
    assert summary["points"] == len(r.points_rc)


def test_labels_missing_spec_exits_2(tmp_path: Path, capsys):
    assert main(["labels", str(tmp_path / "nope.yaml"), "-o", str(tmp_path / "out")]) == 2
    assert "data spec not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
