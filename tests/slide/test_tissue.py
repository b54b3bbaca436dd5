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
        assert tissue.mask.shape == (32, 32)  # ceil(1000 px * 0.25 µm / 8 µm): partial edge cells kept


def test_cmu1_has_background(shared_data):
    with open_slide(shared_data / "slides" / "cmu-1-small-region.svs") as s:
        tissue = compute_tissue_mask(s)
    # visually about 35-45 % of this region is tissue, the rest is glass
    assert 0.3 < tissue.fraction < 0.6
    assert tissue.mask.shape == (185, 139)  # ceil: partial edge cells kept
    assert tissue.scale == pytest.approx(8.0 / 0.499, rel=1e-6)
    # top-left corner: glass, except a cell cluster ~40 µm from the corner (visible at 1 µm/px), kept
    assert tissue.tissue[3:5, 0:3].all()
    assert not tissue.mask[:25, 6:25].any() and not tissue.mask[12:25, :25].any()


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


def test_thin_faint_strands_are_kept():
    """Fat septa 2 µm wide, split across classification pixels, survive; an 8 µm average would lose them."""
    rgb = np.full((1600, 1600, 3), 245, np.uint8)
    for c in range(102, 1600, 200):  # strands every 100 µm, 4 px (2 µm) wide, straddling 2 µm cells
        rgb[:, c : c + 4] = (225, 180, 210)
        rgb[c : c + 4, :] = (225, 180, 210)
    # the strand colour averaged over an 8 µm pixel (a quarter strand) is glass to the classifier
    mixed = (0.25 * np.array([225, 180, 210]) + 0.75 * 245).round().astype(np.uint8)
    assert not classify_tissue(mixed[None, None])[0, 0]
    tissue = compute_tissue_mask(ImageSlide(rgb, mpp=0.5))
    assert tissue.scale == 16.0
    # every strand is tissue (columns 102..105 fall in mask column 6, rows everywhere)
    assert tissue.tissue[:, 6].all() and tissue.tissue[6, :].all()
    assert tissue.region_has_tissue(0, 0, 1600, 100)
    # the fat between the strands is filled as holes (cells ~ 98 µm wide, under MAX_HOLE_UM2), except the
    # cells open to the image border
    assert tissue.tissue[7:94, 7:94].all()
    assert not tissue.tissue[:5, :5].any()


def test_area_and_fraction_come_from_the_tissue_not_the_selection():
    rgb = np.full((1600, 1600, 3), 245, np.uint8)
    rgb[400:1200, 800:1600] = _PINK  # 400 x 400 µm
    tissue = compute_tissue_mask(ImageSlide(rgb, mpp=0.5))
    assert tissue.area_um2(0.5) == pytest.approx(400 * 400, rel=0.01)
    assert tissue.fraction == pytest.approx(0.25, rel=0.01)
    # the selection mask is grown by DILATE_UM (16 µm = 2 mask px) on the three inner sides
    assert tissue.selected_fraction == pytest.approx((54 * 52) / 100**2, rel=0.01)
    assert tissue.mask.sum() > tissue.tissue.sum()


@pytest.mark.parametrize("name", ["img73.png", "img75.png"])
def test_pale_loose_stroma_crops_have_tissue(shared_data, name):
    """Two CRC crops of pale loose stroma (about 40 % of each is tissue, saturation ~0.035 where glass
    is < 0.03) that the 8 µm-average mask with the old thresholds (OD 0.08, saturation 0.06) found empty."""
    with open_slide(shared_data / "crchisto-points" / "images" / name, mpp=0.55) as s:
        tissue = compute_tissue_mask(s)
    assert 0.3 < tissue.fraction < 0.6
    assert tissue.tissue[:, :8].mean() > 0.6  # the stroma strip on the left edge
    assert not tissue.tissue[:, -3:].any()  # glass on the right


def test_tissue_area_counts_edge_mask_pixels_by_their_part_inside_the_image(tmp_path):
    """1000 x 1000 px of tissue at 0.25 µm/px is 0.0625 mm², though 8 µm mask pixels overhang its edge."""
    from PIL import Image

    from wsi_weakseg.slide import compute_tissue_mask, open_slide

    path = tmp_path / "all-tissue.png"
    Image.fromarray(np.tile(np.array(_PINK, np.uint8), (1000, 1000, 1))).save(path)
    with open_slide(path, mpp=0.25) as s:
        tm = compute_tissue_mask(s)
    assert tm.scale * tm.tissue.shape[1] > 1000  # the last mask column overhangs the image
    assert tm.area_um2(0.25) / 1e6 == pytest.approx(0.0625, rel=1e-6)
    assert tm.fraction == pytest.approx(1.0)
