"""scripts/make_glas_split.py and scripts/simulate_region_points.py (issue 18): the committed split is what the
seeded script writes, and the simulated points are seeded, nested, and never read from test items."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from _scripts import run_script

from wsi_weakseg.weak.region_points import load_item_region_points
from wsi_weakseg.weak.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_glas_split_is_the_seeded_scripts_output(shared_data, tmp_path):
    out = tmp_path / "split.yaml"
    run_script("make_glas_split.py", "--data", str(shared_data / "glas-train"), "--out", str(out))
    committed = REPO / "configs" / "data" / "glas-split.yaml"
    # the same items (paths resolved: the two files sit in different folders) and the same header
    assert load_spec(out).items == load_spec(committed).items
    assert out.read_text().split("defaults:")[0] == committed.read_text().split("defaults:")[0]
    spec = load_spec(committed)
    assert [len(spec.split(s)) for s in ("train", "validation", "test")] == [54, 14, 17]
    assert len({it.image.name for it in spec.items}) == 85


def test_simulated_points_are_seeded_nested_and_skip_test_items(shared_data, tmp_path):
    glas = shared_data / "glas-train"
    rows = "".join(f"- image: {glas / 'images' / n}.png\n  labels: {glas / 'masks' / n}.png\n  split: {s}\n"
                   for n, s in (("train_1", "train"), ("train_2", "validation"), ("train_3", "test")))
    (tmp_path / "spec.yaml").write_text(f"defaults:\n  mpp: 0.62\nitems:\n{rows}")
    for out in ("a", "b"):
        run_script("simulate_region_points.py", str(tmp_path / "spec.yaml"), "--out", str(tmp_path / out), "--pairs", "3", "5")
    for n in (3, 5):
        a, b = tmp_path / "a" / f"{n}pairs", tmp_path / "b" / f"{n}pairs"
        assert sorted(p.name for p in (a / "points").iterdir()) == ["train_1.geojson", "train_2.geojson"]
        assert all((a / "points" / p).read_bytes() == (b / "points" / p).read_bytes() for p in ("train_1.geojson",))
    three, five = (load_spec(tmp_path / "a" / f"{n}pairs" / "spec.yaml") for n in (3, 5))
    assert [it.split for it in three.items] == ["train", "validation"] and three.items[1].labels is not None
    p3, p5 = load_item_region_points(three.items[0]), load_item_region_points(five.items[0])
    assert len(p3.xy_in) == 3 and len(p5.xy_out) == 5
    assert np.array_equal(p3.xy_in, p5.xy_in[:3]) and np.array_equal(p3.xy_out, p5.xy_out[:3])
