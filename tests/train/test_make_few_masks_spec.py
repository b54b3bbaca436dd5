"""scripts/make_few_masks_spec.py (issue 16): the seeded, nested labelled subsets of v2's MoNuSeg training images."""

from __future__ import annotations

import json
from pathlib import Path

import shapely
from _scripts import run_script

from wsi_weakseg.weak.masks import read_region
from wsi_weakseg.weak.spec import load_spec

REPO = Path(__file__).resolve().parents[2]


def test_subsets_are_seeded_nested_squares_with_masks_only_inside_training_regions(shared_data: Path, tmp_path):
    v2 = REPO / "configs" / "data" / "points-monuseg-crc-v2.yaml"
    run_script("make_few_masks_spec.py", str(v2), "--masks", str(shared_data / "monuseg-train" / "labels"),
               "--out", str(tmp_path))
    source = load_spec(v2)
    chosen = {}
    for name, n in (("1of32", 10), ("1of8", 38)):
        record = json.loads((tmp_path / name / "squares.json").read_text())
        assert record["squares_total"] == 304 and len(record["squares"]) == n  # 19 images x 16 squares of 250 px
        chosen[name] = {(s["image"], s["x"], s["y"]) for s in record["squares"]}
        spec = load_spec(tmp_path / name / "spec.yaml")
        train = spec.split("train")
        assert len(train) == 19 and all(it.labels is None and it.points is None for it in train)
        labelled = [it for it in train if it.masks is not None]
        assert {it.image.stem for it in labelled} == {s[0] for s in chosen[name]}
        for it in labelled:
            assert it.masks == shared_data.resolve() / "monuseg-train" / "labels" / f"{it.image.stem}.png"
            mine = [shapely.box(x, y, x + 250, y + 250) for s, x, y in chosen[name] if s == it.image.stem]
            assert read_region(it.region).equals(shapely.union_all(mine))
        assert all(it.masks is None and it.region is None for it in train if it not in labelled)
        # validation and test: v2's MoNuSeg items, masks as metrics only
        for split in ("validation", "test"):
            expected = [it.image for it in source.split(split) if it.labels is not None]
            assert [it.image for it in spec.split(split)] == expected and all(it.masks is None for it in spec.split(split))
    assert chosen["1of32"] < chosen["1of8"]
    committed = json.loads((REPO / "configs" / "few-masks-eval" / "labelled-squares.json").read_text())
    assert {k: {tuple(s) for s in committed[k]} for k in chosen} == chosen  # the evaluation's fixed subsets
    points = load_spec(tmp_path / "points" / "spec.yaml").split("train")
    assert len(points) == 19 and all(it.points is not None and it.masks is None for it in points)


def test_evaluation_configs_differ_only_where_the_arms_do():
    """SupOnly = the few-masks config with the unsupervised branch off; 1/8 = 1/32 but for its spec."""
    from wsi_weakseg.train.config import load_config

    folder = REPO / "configs" / "few-masks-eval"
    cfg = {p.stem: load_config(p) for p in folder.glob("*.yaml")}
    assert set(cfg) == {"few-masks-1of32", "few-masks-1of8", "suponly-1of32", "suponly-1of8", "points"}
    for frac in ("1of32", "1of8"):
        few, sup = cfg[f"few-masks-{frac}"], cfg[f"suponly-{frac}"]
        assert few["few_masks"]["unsup_from_epoch"] == 5 and sup["few_masks"]["unsup_from_epoch"] is None
        sup["few_masks"]["unsup_from_epoch"] = 5
        assert sup == few and few["data"]["spec"].endswith(f"runs/few-masks/{frac}/spec.yaml")
    a, b = cfg["few-masks-1of32"], cfg["few-masks-1of8"]
    b["data"]["spec"] = a["data"]["spec"]
    assert a == b
    assert cfg["points"]["optim"]["epochs"] == a["optim"]["epochs"] and cfg["points"]["model"] == a["model"]
