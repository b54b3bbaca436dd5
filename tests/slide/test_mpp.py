"""Pixel size from metadata: one TIFF ResolutionUnit table for slides, plain images and label maps."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image

from wsi_weakseg.evaluate import read_label_map
from wsi_weakseg.slide import _mpp
from wsi_weakseg.slide._image import read_plain_image


def test_tiff_resolution_units_table():
    assert _mpp.TIFF_RESOLUTION_UNITS == {1: "none", 2: "inch", 3: "centimeter"}
    assert _mpp.tiff_resolution({"XResolution": (20000, 1), "YResolution": (40000, 2), "ResolutionUnit": 3}) == (
        20000.0, 20000.0, "centimeter")
    assert _mpp.tiff_resolution({"XResolution": (101600, 1)}) == (101600.0, None, "inch")  # absent unit: inch
    assert _mpp.tiff_resolution({"ResolutionUnit": 7})[2] is None
    assert _mpp.mpp_from_tiff_tags({"XResolution": (101600, 1), "YResolution": (101600, 1)}, "t") == pytest.approx(0.25)
    assert _mpp.mpp_from_tiff_tags({"XResolution": (72, 1), "ResolutionUnit": 1}, "t") is None
    assert _mpp.mpp_from_dpi((101600.0, 101600.0), "t") == pytest.approx(0.25)
    assert _mpp.mpp_from_dpi(None, "t") is None


@pytest.mark.parametrize("unit,res,mpp", [("CENTIMETER", 1e4 / 0.25, 0.25), ("INCH", 25400 / 0.5, 0.5),
                                          ("NONE", 4000.0, None)])
def test_images_and_label_maps_read_the_same_pixel_size(tmp_path, unit, res, mpp):
    rgb, labels = tmp_path / "rgb.tif", tmp_path / "labels.tif"
    tifffile.imwrite(rgb, np.zeros((8, 8, 3), np.uint8), photometric="rgb", resolution=(res, res),
                     resolutionunit=unit)
    tifffile.imwrite(labels, np.zeros((8, 8), np.uint16), resolution=(res, res), resolutionunit=unit)
    _, image_mpp, _, props = read_plain_image(rgb)
    assert props["tiff.ResolutionUnit"] == _mpp.TIFF_RESOLUTION_UNITS[{"NONE": 1, "INCH": 2, "CENTIMETER": 3}[unit]]
    assert image_mpp == (pytest.approx(mpp) if mpp else None)
    assert read_label_map(labels)[1] == image_mpp


def test_png_density_is_read_alike(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "rgb.png", dpi=(25400 / 0.5, 25400 / 0.5))
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "labels.png", dpi=(25400 / 0.5, 25400 / 0.5))
    assert read_plain_image(tmp_path / "rgb.png")[1] == pytest.approx(0.5)
    assert read_label_map(tmp_path / "labels.png")[1] == pytest.approx(0.5, rel=1e-4)
