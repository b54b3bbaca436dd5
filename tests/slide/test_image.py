"""Plain images: oversized ones are refused from their header, before any pixel is decoded."""

from __future__ import annotations

import struct
import time
import tracemalloc
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import wsi_weakseg.slide._image as image_module
from wsi_weakseg.errors import SlideReadError
from wsi_weakseg.slide.reader import open_slide


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header(path: Path, width: int, height: int) -> Path:
    """A PNG whose IHDR claims ``width`` x ``height`` RGB pixels, followed by a token IDAT (not valid data)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + _chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("pil_guard", [True, False], ids=["pil-guard", "pil-guard-disabled"])
def test_huge_png_header_fails_fast_without_allocating(tmp_path, monkeypatch, pil_guard):
    path = png_header(tmp_path / "huge.png", 100_000, 100_000)
    if not pil_guard:  # an embedding application turned PIL's guard off: our own limit still holds
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(SlideReadError, match="too large.*tiled pyramidal TIFF.*vips tiffsave"):
            open_slide(path, mpp=0.5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t0 < 2.0
    assert peak < 50 * 2**20


def test_pil_guard_is_left_in_place(tmp_path):
    before = Image.MAX_IMAGE_PIXELS
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "small.png")
    open_slide(tmp_path / "small.png", mpp=0.5)
    assert Image.MAX_IMAGE_PIXELS == before is not None


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_limit_applies_to_plain_png_and_tiff(tmp_path, monkeypatch, suffix):
    rgb = np.zeros((40, 50, 3), np.uint8)
    path = tmp_path / f"plain{suffix}"
    Image.fromarray(rgb).save(path)
    assert open_slide(path, mpp=0.5).dimensions == (50, 40)
    monkeypatch.setattr(image_module, "MAX_PLAIN_IMAGE_PIXELS", 40 * 50 - 1)
    with pytest.raises(SlideReadError, match="50x40 plain image is too large"):
        open_slide(path, mpp=0.5)
