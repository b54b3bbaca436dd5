"""Tests of wsi_weakseg.slide.tissue."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_weakseg.slide import TissueMask, compute_tissue_mask, open_slide
from wsi_weakseg.slide.reader import ImageSlide
from wsi_weakseg.slide.testing import write_leica_scn
from wsi_weakseg.slide.tissue import classify_tissue

_PINK = (214, 150, 190)
_PURPLE = (120, 70, 150)


def test_monuseg_crops_are_all_tissue(shared_data):
    images = sorted((shared_data / "monuseg-train" / "images").glob("*.png"))
    assert len(images) == 30
    for path in images[::5]:
        with open_slide(path, mpp=0.25) as s:
            tissue = compute_tissue_mask(s)
        assert tissue.fraction > 0.95, path.name
        assert tissue.mask.shape == (31, 31)  # 1000 px * 0.25 µm / 8 µm


def test_cmu1_has_background(shared_data):
    with open_slide(shared_data / "slides" / "cmu-1-small-region.svs") as s:
        tissue = compute_tissue_mask(s)
    # visually about 35-45 % of this region is tissue, the rest is glass
    assert 0.3 < tissue.fraction < 0.6
    assert tissue.mask.shape == (185, 138)
    assert tissue.scale == pytest.approx(8.0 / 0.499, rel=1e-6)
    assert not tissue.mask[:20, :20].any()  # top-left corner is glass


def test_white_image_has_no_tissue():
    slide = ImageSlide(np.full((800, 600, 3), 255, np.uint8), mpp=0.5)
    tissue = compute_tissue_mask(slide)
    assert tissue.fraction == 0.0 and tissue.area_um2(0.5) == 0.0
    assert not tissue.region_has_tissue(0, 0, 600, 800)
    # near-white glass with slight noise is not tissue either
    rng = np.random.default_rng(0)
    glass = np.clip(rng.normal(238, 3, (800, 600, 3)), 0, 255).astype(np.uint8)
    assert compute_tissue_mask(ImageSlide(glass, mpp=0.5)).fraction == 0.0


def test_synthetic_tissue_block():
    rgb = np.full((1600, 1600, 3), 245, np.uint8)
    rgb[400:1200, 800:1600] = _PINK  # 800x800 px = 400x400 µm
    rgb[700:900, 1000:1200] = 250  # a 100 µm "lumen": filled as a hole
    rgb[100:104, 100:104] = _PURPLE  # a 2 µm speck: removed
    slide = ImageSlide(rgb, mpp=0.5)
    tissue = compute_tissue_mask(slide)
    assert tissue.scale == 16.0 and tissue.origin == (0, 0)
    assert tissue.mask.shape == (100, 100)
    assert tissue.mask[35:65, 60:100].all()  # block, lumen included
    assert not tissue.mask[:15, :15].any()  # speck removed
    # area: the block plus a dilation rim of about 16 µm
    assert 0.9 * 400 * 400 < tissue.area_um2(0.5) < 1.3 * 400 * 400


def test_classify_tissue_thresholds():
    px = np.array([[[255, 255, 255], [235, 235, 238], [214, 150, 190], [120, 70, 150], [20, 20, 20]]], np.uint8)
    np.testing.assert_array_equal(classify_tissue(px), [[False, False, True, True, True]])


def test_region_has_tissue_synthetic_mask():
    mask = np.zeros((4, 5), bool)
    mask[1, 2] = True  # level-0 x in [20+2*10, 20+3*10) = [40, 50), y in [5+10, 5+20) = [15, 25)
    tm = TissueMask(mask=mask, scale=10.0, origin=(20, 5))
    assert tm.fraction == pytest.approx(1 / 20)
    assert tm.area_um2(0.5) == pytest.approx(100 * 0.25)
    assert tm.region_has_tissue(40, 15, 50, 25)
    assert tm.region_has_tissue(45, 20, 46, 21)
    assert tm.region_has_tissue(0, 0, 40.01, 15.01)  # touches the pixel's corner from inside
    assert not tm.region_has_tissue(0, 0, 40, 15)  # half-open: ends exactly at the corner
    assert not tm.region_has_tissue(50, 15, 60, 25)  # starts exactly at its right edge
    assert not tm.region_has_tissue(-100, -100, 0, 0)  # outside the mask
    assert tm.region_has_tissue(-1e6, -1e6, 1e6, 1e6)
    assert not tm.region_has_tissue(45, 20, 45, 30)  # empty box


def test_mask_follows_bounds_origin(tmp_path):
    rgb = np.full((256, 256, 3), 245, np.uint8)
    rgb[128:, :] = _PINK
    path = write_leica_scn(tmp_path / "s.scn", rgb, mpp=0.5, offset=(300, 200), slide_size=(1000, 800))
    with open_slide(path) as s:
        tissue = compute_tissue_mask(s)
    assert tissue.origin == (300, 200) and tissue.mask.shape == (16, 16)
    assert tissue.mask[10:].all() and not tissue.mask[:5].any()
    assert tissue.region_has_tissue(300, 200 + 200, 310, 200 + 210)
    assert not tissue.region_has_tissue(300, 200, 556, 250)
    assert not tissue.region_has_tissue(0, 0, 300, 800)  # left of the bounds
