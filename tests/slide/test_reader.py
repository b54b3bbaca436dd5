"""Tests of wsi_weakseg.slide.reader: formats, pixel sizes, bounds, errors."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsi_weakseg.errors import (
    ConfigError,
    MissingMppError,
    SlideNotFoundError,
    SlideReadError,
    UnsupportedFormatError,
)
from wsi_weakseg.slide import Slide, open_slide, slide_info
from wsi_weakseg.slide.reader import ImageSlide
from wsi_weakseg.slide.testing import write_leica_scn, write_pyramid_tiff


def _random_rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


# --- real slides -------------------------------------------------------------------------------


def test_cmu1_aperio(shared_data):
    with open_slide(shared_data / "slides" / "cmu-1-small-region.svs") as s:
        assert isinstance(s, Slide)
        assert s.vendor == "aperio"
        assert s.level_dimensions == ((2220, 2967),)
        assert s.level_downsamples == (1.0,)
        assert s.mpp == pytest.approx(0.499)
        assert s.mpp_source == "metadata"
        assert s.objective == 20.0
        assert s.bounds == (0, 0, 2220, 2967)
        region = s.read_region(0, 1000, 1000, 64, 32)
        assert region.shape == (32, 64, 3) and region.dtype == np.uint8
        # beyond the right/bottom edge is white
        edge = s.read_region(0, 2200, 2950, 40, 40)
        assert (edge[20:, :] == 255).all() and (edge[:, 20:] == 255).all()


def test_tcga_jp2k_needs_mpp(shared_data):
    path = shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(MissingMppError, match="--mpp"):
        open_slide(path)
    with open_slide(path, mpp=0.25) as s:
        assert s.level_dimensions == ((4443, 3567), (2221, 1783))
        assert s.level_downsamples[1] == pytest.approx(2.0005, abs=1e-4)
        assert s.mpp == 0.25 and s.mpp_source == "user"
        assert s.objective is None
        assert s.read_region(1, 2000, 2000, 16, 16).shape == (16, 16, 3)


def test_small_he_levels_has_screen_default_resolution(shared_data, caplog):
    """Its tags say 28.34 px/cm (72 dpi, 352.9 µm/px): a screen default, treated as no pixel size."""
    path = shared_data / "slides" / "small-he-levels.tiff"
    with caplog.at_level(logging.WARNING), pytest.raises(MissingMppError, match="--mpp"):
        open_slide(path)
    assert "implausible pixel size 352.9" in caplog.text
    with open_slide(path, mpp=1.0) as s:
        assert s.vendor == "generic-tiff"
        assert s.level_dimensions == ((300, 250), (150, 125), (75, 62), (37, 31))
        assert s.mpp_source == "user"
        assert s.properties["openslide.mpp-x"].startswith("352.858")


def test_non_integer_downsample_level_reads_are_position_independent(shared_data):
    """OpenSlide resamples sub-pixel at non-integer downsamples; read_level_region must not care."""
    with open_slide(shared_data / "slides" / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.25) as s:
        big = s.read_level_region(1, 200, 150, 400, 300)
        for lx, ly in [(201, 151), (255, 255), (256, 256), (511, 257), (333, 199)]:
            sub = s.read_level_region(1, lx, ly, 57, 41)
            np.testing.assert_array_equal(sub, big[ly - 150 : ly - 150 + 41, lx - 200 : lx - 200 + 57])


# --- generated slides --------------------------------------------------------------------------


def test_generated_pyramid_tiff(tmp_path):
    rgb = _random_rgb(512, 768)
    path = write_pyramid_tiff(tmp_path / "p.tiff", rgb, mpp=0.5, levels=3, tile=128)
    with open_slide(path) as s:
        assert s.vendor == "generic-tiff"
        assert s.level_dimensions == ((768, 512), (384, 256), (192, 128))
        assert s.level_downsamples == (1.0, 2.0, 4.0)
        assert s.mpp == pytest.approx(0.5) and s.mpp_source == "tiff-resolution"
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 768, 512), rgb)
        np.testing.assert_array_equal(s.read_region(0, 100, 37, 50, 60), rgb[37:97, 100:150])
        level1 = s.read_region(1, 0, 0, 384, 256)
        expected = np.rint(rgb.astype(np.float32).reshape(256, 2, 384, 2, 3).mean(axis=(1, 3)))
        np.testing.assert_array_equal(level1, expected.astype(np.uint8))
        # level coordinates: level-1 pixel (10, 20) is level-0 (20, 40)
        np.testing.assert_array_equal(s.read_region(1, 20, 40, 5, 5), level1[20:25, 10:15])
        # left/top of the slide is white
        assert (s.read_region(0, -10, -10, 10, 10) == 255).all()


def test_generated_jpeg_pyramid_and_user_override(tmp_path, caplog):
    rgb = np.full((256, 256, 3), (200, 100, 150), np.uint8)
    path = write_pyramid_tiff(tmp_path / "j.tiff", rgb, mpp=0.25, levels=2, compression="jpeg")
    with caplog.at_level(logging.WARNING), open_slide(path, mpp=0.5) as s:
        assert s.mpp == 0.5 and s.mpp_source == "user"
        assert np.abs(s.read_region(0, 0, 0, 64, 64).astype(int) - rgb[:64, :64]).max() <= 3
    assert "overrides" in caplog.text


def test_leica_scn_bounds(tmp_path):
    rgb = _random_rgb(384, 512, seed=1)
    path = write_leica_scn(tmp_path / "s.scn", rgb, mpp=0.5, offset=(101, 61), slide_size=(1000, 800))
    with open_slide(path) as s:
        assert s.vendor == "leica"
        assert s.bounds == (101, 61, 512, 384)
        assert s.level_dimensions[0] == (1000, 800)
        assert s.mpp == pytest.approx(0.5)
        assert s.objective == 20.0
        np.testing.assert_array_equal(s.read_region(0, 101, 61, 512, 384), rgb)
        # outside the scanned area: transparent in OpenSlide, white here
        assert (s.read_region(0, 0, 0, 100, 60) == 255).all()


def test_anisotropic_pixels_use_mean(tmp_path, caplog):
    path = tmp_path / "a.tiff"
    rgb = _random_rgb(256, 256)
    tifffile.imwrite(
        path, rgb, tile=(128, 128), photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.52), resolutionunit="CENTIMETER"
    )
    with caplog.at_level(logging.WARNING), open_slide(path) as s:
        assert s.mpp == pytest.approx(0.51)
    assert "non-square" in caplog.text


# --- plain images ------------------------------------------------------------------------------


def test_png_without_and_with_mpp(tmp_path):
    rgb = _random_rgb(100, 120)
    Image.fromarray(rgb).save(tmp_path / "a.png")
    with pytest.raises(MissingMppError, match="--mpp"):
        open_slide(tmp_path / "a.png")
    with open_slide(tmp_path / "a.png", mpp=0.25) as s:
        assert s.vendor == "image" and s.mpp_source == "user"
        assert s.level_dimensions == ((120, 100),) and s.level_downsamples == (1.0,)
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 120, 100), rgb)
        out = s.read_region(0, 110, 95, 20, 10)
        np.testing.assert_array_equal(out[:5, :10], rgb[95:, 110:])
        assert (out[5:] == 255).all() and (out[:, 10:] == 255).all()


def test_png_phys_metadata(tmp_path):
    rgb = _random_rgb(50, 50)
    Image.fromarray(rgb).save(tmp_path / "m.png", dpi=(25400 / 0.25, 25400 / 0.25))
    with open_slide(tmp_path / "m.png") as s:
        assert s.mpp == pytest.approx(0.25, rel=1e-3) and s.mpp_source == "metadata"
    Image.fromarray(rgb).save(tmp_path / "d.png", dpi=(72, 72))  # screen default: ignored
    with pytest.raises(MissingMppError):
        open_slide(tmp_path / "d.png")


def test_rgba_png_composited_on_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "t.png")
    with open_slide(tmp_path / "t.png", mpp=1.0) as s:
        px = s.read_region(0, 0, 0, 4, 4)
    assert (px[:2] == (255, 0, 0)).all() and (px[2:] == 255).all()


@pytest.mark.parametrize("unit,res", [("CENTIMETER", 1e4 / 0.25), ("INCH", 25400 / 0.25)])
def test_stripped_tiff_read_as_image_with_resolution(tmp_path, unit, res):
    rgb = _random_rgb(64, 80)
    path = tmp_path / "strip.tif"
    tifffile.imwrite(path, rgb, photometric="rgb", resolution=(res, res), resolutionunit=unit)
    with open_slide(path) as s:
        assert s.vendor == "image"
        assert s.mpp == pytest.approx(0.25) and s.mpp_source == "tiff-resolution"
        np.testing.assert_array_equal(s.read_region(0, 0, 0, 80, 64), rgb)


def test_image_slide_from_array_and_info():
    s = ImageSlide(np.zeros((10, 20, 3), np.uint8), mpp=0.5)
    info = slide_info(s)
    assert info["levels"] == [{"width": 20, "height": 10, "downsample": 1.0, "mpp": 0.5}]
    assert info["bounds"] == {"x": 0, "y": 0, "width": 20, "height": 10}
    assert info["vendor"] == "image" and info["mpp_source"] == "user"
    with pytest.raises(ValueError):
        s.read_region(1, 0, 0, 1, 1)


def test_slide_info_is_json(shared_data):
    import json

    with open_slide(shared_data / "slides" / "cmu-1-small-region.svs") as s:
        info = json.loads(json.dumps(slide_info(s)))
    assert info["vendor"] == "aperio" and info["mpp"] == pytest.approx(0.499)
    assert info["objective"] == 20.0 and len(info["levels"]) == 1
    assert 0.1 < info["tissue_fraction"] < 0.9


# --- bad inputs --------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    with pytest.raises(SlideNotFoundError):
        open_slide(tmp_path / "nope.svs")
    with pytest.raises(FileNotFoundError):  # also a builtin
        open_slide(tmp_path / "nope.svs")


def test_empty_svs(tmp_path):
    (tmp_path / "e.svs").write_bytes(b"")
    with pytest.raises(SlideReadError, match="empty"):
        open_slide(tmp_path / "e.svs")


@pytest.mark.parametrize("compression", [None, "jpeg"])
def test_truncated_tiff(tmp_path, compression):
    path = write_pyramid_tiff(tmp_path / "p.tiff", _random_rgb(512, 512), 0.5, levels=3, compression=compression)
    data = path.read_bytes()
    cut = tmp_path / "cut.tiff"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError):
        open_slide(cut)


def test_truncated_png(tmp_path):
    Image.fromarray(_random_rgb(200, 200)).save(tmp_path / "a.png")
    data = (tmp_path / "a.png").read_bytes()
    (tmp_path / "b.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(SlideReadError):
        open_slide(tmp_path / "b.png", mpp=0.5)


def test_text_file_unsupported(tmp_path):
    (tmp_path / "x.txt").write_text("not an image\n")
    with pytest.raises(UnsupportedFormatError):
        open_slide(tmp_path / "x.txt")
    (tmp_path / "fake.svs").write_bytes(b"\x00garbage" * 100)
    with pytest.raises(UnsupportedFormatError):
        open_slide(tmp_path / "fake.svs")


@pytest.mark.parametrize("bad", [0, -0.25, float("nan"), float("inf"), "abc"])
def test_bad_user_mpp(tmp_path, bad):
    Image.fromarray(_random_rgb(8, 8)).save(tmp_path / "a.png")
    with pytest.raises(ConfigError):
        open_slide(tmp_path / "a.png", mpp=bad)
