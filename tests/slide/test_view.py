"""Tests of wsi_weakseg.slide.view.WorkingView: level choice, origin mapping, crop consistency."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_weakseg.errors import ConfigError
from wsi_weakseg.slide import WorkingView, open_slide
from wsi_weakseg.slide.reader import ImageSlide
from wsi_weakseg.slide.testing import write_leica_scn, write_pyramid_tiff


def _texture(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Random texture: any interpolation or alignment error shows."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


@pytest.fixture(scope="module")
def pyramid_slide(tmp_path_factory):
    path = write_pyramid_tiff(tmp_path_factory.mktemp("v") / "p.tiff", _texture(512, 768), 0.5, levels=3, tile=128)
    with open_slide(path) as s:
        yield s


def _assert_crop_consistent(view: WorkingView, big: tuple[int, int, int, int], subs) -> None:
    y, x, h, w = big
    whole = view.read(y, x, h, w)
    assert whole.shape == (h, w, 3) and whole.dtype == np.uint8
    for sy, sx, sh, sw in subs:
        part = view.read(sy, sx, sh, sw)
        np.testing.assert_array_equal(part, whole[sy - y : sy - y + sh, sx - x : sx - x + sw])


def test_monuseg_like_mpp_is_not_resampled():
    rgb = _texture(100, 120)
    view = WorkingView(ImageSlide(rgb, mpp=0.2456), 0.25)
    assert not view.resampled and view.level == 0 and view.scale == 1.0
    assert view.mpp == pytest.approx(0.2456) and view.origin == (0, 0) and view.shape == (100, 120)
    np.testing.assert_array_equal(view.read(10, 20, 30, 40), rgb[10:40, 20:60])
    view = WorkingView(ImageSlide(rgb, mpp=0.2527), 0.25)
    assert not view.resampled


def test_level_selection_reads_level_directly(pyramid_slide):
    view = WorkingView(pyramid_slide, 1.0)  # 2x the slide's 0.5 µm/px
    assert view.level == 1 and not view.resampled and view.scale == 2.0
    assert view.mpp == pytest.approx(1.0) and view.shape == (256, 384)
    level1 = pyramid_slide.read_region(1, 0, 0, 384, 256)
    np.testing.assert_array_equal(view.read(0, 0, 256, 384), level1)
    np.testing.assert_array_equal(view.read(13, 17, 50, 70), level1[13:63, 17:87])
    view = WorkingView(pyramid_slide, 2.05)  # within 5 % of level 2
    assert view.level == 2 and not view.resampled and view.scale == 4.0


@pytest.mark.parametrize("target", [0.75, 0.9, 1.6, 2.7, 0.3, 0.25])
def test_resampled_crop_consistency(pyramid_slide, target):
    view = WorkingView(pyramid_slide, target)
    assert view.resampled
    assert view.scale == pytest.approx(target / 0.5) and view.mpp == pytest.approx(target)
    H, W = view.shape
    assert (H, W) == (int(512 / view.scale + 1e-9), int(768 / view.scale + 1e-9))
    h, w = min(H, 150), min(W, 170)
    subs = [(0, 0, 10, 10), (1, 3, 17, 29), (7, 11, 40, 33), (h - 9, w - 12, 9, 12), (50 % h, 60 % w, 1, 1)]
    _assert_crop_consistent(view, (0, 0, h, w), subs)
    # also a block touching the bottom-right corner of the view
    _assert_crop_consistent(view, (H - 40, W - 40, 40, 40), [(H - 7, W - 5, 7, 5), (H - 40, W - 33, 20, 30)])


@pytest.mark.parametrize("target", [0.75, 1.6, 0.3])
def test_large_resampled_reads_in_bands_equal_one_read(pyramid_slide, target, monkeypatch):
    import wsi_weakseg.slide.view as view_module

    view = WorkingView(pyramid_slide, target)
    H, W = view.shape
    whole = view.read(0, 0, H, W)  # H <= 512 rows here: one read
    monkeypatch.setattr(view_module, "_BAND_ROWS", 7)  # bands of 7 rows, the last one shorter
    np.testing.assert_array_equal(view.read(0, 0, H, W), whole)
    np.testing.assert_array_equal(view.read(5, 3, H - 9, W - 4), whole[5 : H - 4, 3 : W - 1])


def test_resampled_level_choice(pyramid_slide):
    view = WorkingView(pyramid_slide, 0.75)  # scale 1.5 -> level 0
    assert view.level == 0
    view = WorkingView(pyramid_slide, 1.6)  # scale 3.2 -> level 1 (ds 2)
    assert view.level == 1
    view = WorkingView(pyramid_slide, 2.7)  # scale 5.4 -> level 2 (ds 4)
    assert view.level == 2


@pytest.mark.parametrize("target", [0.25, 0.75, 1.6, 3.0])
def test_resampled_uniform_colour_is_preserved(target):
    colour = (212, 97, 160)
    slide = ImageSlide(np.broadcast_to(np.array(colour, np.uint8), (300, 260, 3)).copy(), mpp=0.5)
    view = WorkingView(slide, target)
    out = view.read(0, 0, *view.shape)
    assert (out == colour).all()


def test_resampled_gradient_is_interpolated_at_pixel_centres():
    """A linear ramp stays a linear ramp: working pixel centre x+0.5 maps to level-0 (x+0.5)*scale."""
    w = 200
    ramp = np.repeat(np.repeat(np.arange(w, dtype=np.uint8)[None, :, None], 10, axis=0), 3, axis=2)
    slide = ImageSlide(ramp, mpp=0.5)
    view = WorkingView(slide, 0.6)  # scale 1.2, no anti-alias
    out = view.read(0, 0, view.shape[0], view.shape[1])[0, :, 0].astype(float)
    x = np.arange(view.shape[1])
    expected = (x + 0.5) * 1.2 - 0.5
    np.testing.assert_allclose(out[1:-1], np.rint(expected[1:-1]), atol=0.51)


def test_upsampling_real_slide(shared_data):
    with open_slide(shared_data / "slides" / "cmu-1-small-region.svs") as s:
        view = WorkingView(s, 0.25)
        assert view.resampled and view.level == 0
        assert view.scale == pytest.approx(0.25 / 0.499)
        assert view.shape == (int(2967 / view.scale), int(2220 / view.scale))
        _assert_crop_consistent(
            view, (1000, 1200, 300, 260), [(1000, 1200, 31, 17), (1001, 1203, 100, 99), (1150, 1300, 150, 160)]
        )


def test_downsampling_real_slide_non_integer_downsample(shared_data):
    with open_slide(shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.25) as s:
        direct = WorkingView(s, 0.5)
        assert direct.level == 1 and not direct.resampled
        assert direct.scale == pytest.approx(2.0005, abs=1e-4)
        _assert_crop_consistent(direct, (100, 200, 300, 300), [(101, 255, 57, 41), (256, 256, 20, 30)])
        view = WorkingView(s, 1.5)  # scale 6 from level 1, residual 3 -> anti-aliased
        assert view.resampled and view.level == 1
        _assert_crop_consistent(view, (100, 100, 200, 200), [(101, 103, 30, 40), (150, 170, 50, 60)])


def test_bounds_origin_and_shape(tmp_path):
    rgb = _texture(384, 512, seed=3)
    path = write_leica_scn(tmp_path / "s.scn", rgb, mpp=0.5, offset=(101, 61), slide_size=(1000, 800))
    with open_slide(path) as s:
        view0 = WorkingView(s, 0.5)
        assert view0.origin == (101, 61) and view0.shape == (384, 512) and view0.level == 0
        np.testing.assert_array_equal(view0.read(0, 0, 384, 512), rgb)
        # level 1 (ds 2): the odd origin is snapped to the level grid, at or after the bounds corner
        view1 = WorkingView(s, 1.0)
        assert view1.level == 1 and not view1.resampled
        assert view1.origin == (102, 62) and view1.shape == (191, 255)
        level1 = s.read_region(1, 0, 0, 500, 400)
        np.testing.assert_array_equal(view1.read(0, 0, 191, 255), level1[31:222, 51:306])
        # resampled: the origin is the bounds origin exactly
        view = WorkingView(s, 0.8)
        assert view.resampled and view.origin == (101, 61)
        assert view.shape == (int(384 / 1.6), int(512 / 1.6))
        assert view.to_level0(10, 20) == (101 + 16.0, 61 + 32.0)
        # QuPath's half-pixel convention: working pixel (0, 0) spans level-0 [101, 102.6) x [61, 62.6),
        # so its centre is at (101.8, 61.8); from_level0 inverts to_level0, on arrays too.
        assert view.to_level0(0.5, 0.5) == pytest.approx((101.8, 61.8))
        xs, ys = np.array([0.0, 0.5, 10.25]), np.array([3.0, 7.5, 0.0])
        back = view.from_level0(*view.to_level0(xs, ys))
        np.testing.assert_allclose(back, (xs, ys), rtol=0, atol=1e-12)
        _assert_crop_consistent(view, (0, 0, 100, 120), [(3, 5, 20, 20), (50, 60, 50, 60)])


def test_read_outside_raises(pyramid_slide):
    view = WorkingView(pyramid_slide, 0.5)
    H, W = view.shape
    for args in [(-1, 0, 5, 5), (0, -1, 5, 5), (H - 4, 0, 5, 5), (0, W - 4, 5, 5), (0, 0, -1, 3)]:
        with pytest.raises(ValueError):
            view.read(*args)
    assert view.read(0, 0, 0, 5).shape == (0, 5, 3)


@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), "x"])
def test_bad_target_mpp(pyramid_slide, bad):
    with pytest.raises(ConfigError):
        WorkingView(pyramid_slide, bad)
