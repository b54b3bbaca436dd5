"""scripts/pseudo_masks.py (issue 11, self-training): which round-1 nuclei the clicks confirm, hand-worked."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
from shapely.geometry import Point

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "pseudo_masks.py"
confirm = runpy.run_path(str(SCRIPT))["confirm"]


def test_one_click_keeps_a_nucleus_merges_unconfirmed_and_missed_clicks_are_cut_out():
    labels = np.zeros((20, 30), np.int32)
    labels[2:5, 2:5] = 4    # one click: kept (becomes 1)
    labels[2:5, 10:16] = 7  # two clicks: a merge, unsupervised
    labels[10:13, 2:4] = 9  # no click: unconfirmed, unsupervised
    # clicks as pixel-centre (row, col): inside 4; twice inside 7; one on background (a missed nucleus)
    rc = np.array([[3.0, 3.0], [3.0, 11.0], [3.0, 14.0], [15.0, 25.0]])
    kept, region, counts = confirm(labels, rc, margin_px=1.0, miss_radius_px=2.0)
    assert kept.dtype == np.uint16 and set(np.unique(kept)) == {0, 1}
    assert np.array_equal(kept == 1, labels == 4)
    assert counts == {"instances": 3, "kept": 1, "merged": 1, "unconfirmed": 1, "clicks": 4, "missed_clicks": 1,
                      "supervised_fraction": counts["supervised_fraction"]}
    # holes: the merge's box [10, 16) x [2, 5) grown by 1 -> 8 x 5; the unconfirmed [2, 4) x [10, 13) -> 4 x 5;
    # a disc of radius 2 around the missed click's point (25.5, 15.5); all disjoint and inside the image
    disc = Point(0, 0).buffer(2.0).area  # shapely's polygon of the circle (16 segments a quadrant)
    assert region.area == pytest.approx(600 - 40 - 20 - disc, abs=1e-3)
    assert region.is_valid
    assert not region.contains(Point(25.5, 15.5)) and not region.contains(Point(12.0, 3.0))
    assert region.contains(Point(3.5, 3.5))  # the kept nucleus is supervised


def test_unconfirmed_nuclei_become_background_on_request():
    labels = np.zeros((10, 10), np.int32)
    labels[1:3, 1:3] = 1  # clicked
    labels[6:8, 6:8] = 2  # not clicked
    kept, region, counts = confirm(labels, np.array([[1.0, 1.0]]), 1.0, 2.0, unconfirmed="background")
    assert np.array_equal(kept, (labels == 1).astype(np.uint16)) and counts["unconfirmed"] == 1
    assert region.area == 100  # nothing cut out: nucleus 2's pixels are supervised background
    _, ignored, _ = confirm(labels, np.array([[1.0, 1.0]]), 1.0, 2.0)
    assert ignored.area == 100 - 16  # the default leaves its box grown by 1 px unsupervised


def test_self_training_configs_differ_only_where_the_arms_do():
    """round2-bg = round2 but for its labels; the ceiling = round2 on true masks, epochs scaled to the same steps."""
    from wsi_weakseg.train.config import load_config

    folder = SCRIPT.parents[1] / "configs" / "self-train"
    cfg = {p.stem: load_config(p) for p in folder.glob("*.yaml")}
    assert set(cfg) == {"round2", "round2-bg", "ceiling-masks"}
    assert cfg["round2"]["recipe"] == "few-masks" and cfg["round2"]["few_masks"]["unsup_from_epoch"] is None
    specs = {k: c["data"].pop("spec") for k, c in cfg.items()}
    assert specs["round2"].endswith("runs/self-train/round2/spec.yaml")
    assert specs["round2-bg"].endswith("runs/self-train/round2-bg/spec.yaml")
    assert specs["ceiling-masks"].endswith("runs/ceiling/spec.yaml")
    assert cfg["round2-bg"] == cfg["round2"]
    assert cfg["ceiling-masks"]["optim"]["epochs"] == 96 and cfg["round2"]["optim"]["epochs"] == 24  # 19 vs 79 images
    cfg["ceiling-masks"]["optim"]["epochs"] = 24
    assert cfg["ceiling-masks"] == cfg["round2"]
