"""The block formatter writes, byte for byte, what the general GeoJSON path writes for the same nucleus."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from wsi_weakseg.engine.features import DetectionFormat
from wsi_weakseg.engine.records import BlockNuclei, Nucleus
from wsi_weakseg.engine.outlines import trace_outlines
from wsi_weakseg.io.geojson import PROJECT_NAMESPACE, stable_uuid


def _nuclei(rng: np.random.Generator, n: int = 40) -> list[Nucleus]:
    """Traced outlines of random blobs (some with holes), at random global positions."""
    out = []
    for k in range(n):
        lab = np.zeros((24, 24), np.int32)
        yy, xx = np.ogrid[:24, :24]
        lab[(yy - 12) ** 2 + (xx - 12) ** 2 <= rng.integers(3, 11) ** 2] = 1
        if k % 3 == 0:
            lab[10:13, 11:13] = 2  # an enclosed nucleus: a hole
        lab[rng.random((24, 24)) < 0.05] = 0
        from scipy import ndimage as ndi

        comp, _ = ndi.label(lab == 1)
        lab = np.where(comp == np.bincount(comp.ravel())[1:].argmax() + 1, 1, np.where(lab == 2, 2, 0)).astype(np.int32)
        rings = trace_outlines(lab, [1])[1]
        oy, ox = rng.integers(-50, 100000, size=2)
        out.append(Nucleus(key=k + 1, anchor=(int(oy) + 12, int(ox) + 12), rings=[r + (ox, oy) for r in rings],
                           area_px=int((lab == 1).sum()), mean_foreground=float(rng.random()),
                           centre_score=float(rng.random()), oversized=False))
    return out


@pytest.mark.parametrize(("scale", "offset", "mpp"), [
    (2.0, (0.0, 0.0), 0.5),  # 40x slide read at 0.5 µm/px
    (1.0, (-3.0, 17.0), 0.2501),
    (1.9996, (12.5, -0.25), 0.49876),  # non-integer scale and a half-pixel offset: 2-decimal rounding everywhere
    (0.3333333, (1e-3, 7.123456), 1.0),
])
def test_block_formatter_equals_the_general_path(scale, offset, mpp):
    fmt = DetectionFormat(fingerprint="fp", model_sha="sha", scale=scale, offset=offset, mpp=mpp,
                          class_name='Nucleus "µ"', color=(160, 90, 160))
    nuclei = _nuclei(np.random.default_rng(int(scale * 1000)))
    block = fmt.format_block(BlockNuclei.from_nuclei(nuclei))
    assert [block.texts(i) for i in range(len(nuclei))] == [fmt.reference(n) for n in nuclei]
    assert fmt(nuclei[0]) == fmt.reference(nuclei[0])


def test_block_formatter_falls_back_and_raises_like_the_general_path():
    """A ring that rounds to fewer than 3 vertices is refused with the general path's message."""
    fmt = DetectionFormat("fp", "sha", 1e-4, (0.0, 0.0), 0.5, "Nucleus", (1, 2, 3))
    tiny = Nucleus(1, (0, 0), [np.array([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], float)], 1, 0.5, 0.5, False)
    with pytest.raises(ValueError, match="at least 3 distinct vertices"):
        fmt.format_block(BlockNuclei.from_nuclei([tiny]))


def test_stable_uuid_is_uuid5():
    for parts in [("a",), ("slide.svs", 3, 7), ("fp", "sha" * 20, 123456, 9), ("µ", "\x1f")]:
        assert stable_uuid(*parts) == str(uuid.uuid5(PROJECT_NAMESPACE, "\x1f".join(map(str, parts))))


@pytest.mark.parametrize(("scale", "offset"), [(2.0, (0.0, 0.0)), (1.9996, (12.5, -0.25)), (1.0, (-3.0, 17.0))])
def test_block_formatter_equals_the_general_path_on_smooth_outlines(scale, offset):
    """Smooth outlines (half-pixel vertices, oblique edges): same text, perimeter from the written outline."""
    from wsi_weakseg.engine.smooth import smooth_ragged

    fmt = DetectionFormat("fp", "sha", scale, offset, 0.5, "Nucleus", (160, 90, 160))
    block = BlockNuclei.from_nuclei(_nuclei(np.random.default_rng(7)))
    block.xy, block.ring_starts, block.poly_starts = smooth_ragged(block.xy, block.ring_starts, block.poly_starts)
    nuclei = [block.nucleus(i) for i in range(len(block))]
    out = fmt.format_block(block)
    assert [out.texts(i) for i in range(len(nuclei))] == [fmt.reference(n) for n in nuclei]
    ring = nuclei[0].rings[0]
    perimeter = float(np.hypot(*np.diff(ring, axis=0).T).sum()) * 0.5
    assert f'"Nucleus: Perimeter µm":{round(perimeter, 4)}' in out.texts(0)[1] or abs(
        float(out.texts(0)[1].split('"Nucleus: Perimeter µm":')[1].split(",")[0]) - perimeter) < 1e-3
