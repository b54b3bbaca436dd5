"""Shared picture helpers: hand-worked outlines, exact paint, colour maps that read in grey, atomic PNGs."""

from __future__ import annotations

import numpy as np
from PIL import Image

from wsi_weakseg.viz import OKABE_ITO, colorize, outline_mask, paint, save_png


def test_outline_mask_hand_worked():
    lab = np.zeros((5, 6), np.int32)
    lab[1:4, 1:4] = 1  # a 3x3 square: its ring of 8 pixels is outline, the centre is not
    lab[1:4, 4] = 2  # touching column of another instance
    out = outline_mask(lab)
    expect = np.zeros_like(out)
    expect[1:4, 1:5] = True
    expect[2, 2] = False
    np.testing.assert_array_equal(out, expect)


def test_paint_blends_only_the_mask():
    rgb = np.full((2, 2, 3), 100, np.uint8)
    m = np.array([[True, False], [False, False]])
    out = paint(rgb, m, (200, 0, 100), alpha=0.5)
    assert out[0, 0].tolist() == [150, 50, 100] and (out[1:] == 100).all() and (rgb == 100).all()


def test_colour_map_lightness_is_monotonic_so_it_reads_in_grey():
    rgb = colorize(np.linspace(0, 1, 64), 0, 1).astype(float)
    grey = rgb @ [0.299, 0.587, 0.114]
    assert (np.diff(grey) > 0).all()
    assert len(set(OKABE_ITO.values())) == len(OKABE_ITO)


def test_save_png_round_trip_and_no_temporary_left(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    p = save_png(tmp_path / "a.png", rgb)
    np.testing.assert_array_equal(np.asarray(Image.open(p)), rgb)
    assert [q.name for q in tmp_path.iterdir()] == ["a.png"]
