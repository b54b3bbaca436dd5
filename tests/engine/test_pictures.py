"""segment's pictures: hand-worked density grid, pixel-exact preview layout, heat map read back from the PNG,
tissue outline on the tissue edge, overlay outlines on the GeoJSON polygons' edges, stale pictures removed."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
import pytest
import shapely
from PIL import Image
from shapely.geometry import shape

from wsi_weakseg.demo import synthetic_he
from wsi_weakseg.engine.pictures import overlay_box
from wsi_weakseg.engine.segment import SegmentOptions, segment
from wsi_weakseg.model.card import BASELINE_MODEL
from wsi_weakseg.slide import WorkingView, open_slide
from wsi_weakseg.slide.testing import write_pyramid_tiff
from wsi_weakseg.viz import colorize, outline_mask, save_png
from wsi_weakseg.viz.preview import (
    HEAT_ALPHA,
    TISSUE_COLOUR,
    DensityGrid,
    choose_overlay_cells,
    density_grid,
    heat_composite,
    render_preview,
)

MPP = 0.5
CLUSTER = (300, 900)  # working (row, col) of the planted dense cluster's centre


def test_density_grid_hand_worked():
    # 5 x 7 px image, 4 px cells (2 um at 0.5 um/px): cells 2 x 2, the last row/column partial
    g = density_grid(np.array([0, 1, 3, 4, 4]), np.array([0, 5, 3, 6, 0]), (5, 7), 0.5, 2.0)
    assert g.cell_px == 4 and g.cell_um == 2.0
    np.testing.assert_array_equal(g.counts, [[2, 1], [1, 1]])
    area = np.array([[16, 12], [4, 3]]) * 0.25 / 1e6  # in-image px x 0.25 um² per px, in mm²
    np.testing.assert_allclose(g.per_mm2, g.counts / area)
    assert g.scale_top() == pytest.approx(2 / area[0, 0])  # the slivers (4 and 3 px) do not set the scale


def test_overlay_cells_dense_median_sparse_then_between_deterministic():
    counts = np.array([[5, 1, 0], [3, 2, 4]])
    g = DensityGrid(counts, counts.astype(float), 1, 1.0, np.ones((2, 3)))
    assert choose_overlay_cells(g, 3) == [(0, 0), (1, 0), (0, 1)]  # densest 5, median 3 (of 5,4,3,2,1), sparsest 1
    assert choose_overlay_cells(g, 10) == [(0, 0), (1, 0), (0, 1), (1, 2), (1, 1)]  # only cells with nuclei
    assert choose_overlay_cells(g, 0) == []


def test_preview_layout_is_pixel_exact():
    rng = np.random.default_rng(0)
    thumb = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    counts = rng.integers(0, 9, (3, 5))
    g = DensityGrid(counts, counts * 100.0, 30, 30.0, np.ones((3, 5)))
    rows, cols = np.arange(90) // 30, np.minimum(np.arange(130) // 30, 4)
    tissue = np.zeros((90, 130), bool)
    tissue[20:70, 30:100] = True
    comp = heat_composite(thumb, rows, cols, g, tissue, 800.0)
    heat = colorize(g.per_mm2[np.ix_(rows, cols)], 0, 800.0).astype(float)
    shown = (g.counts[np.ix_(rows, cols)] > 0) | tissue
    edge = outline_mask(tissue.astype(int))
    expect = np.where(shown[..., None], np.round(thumb * (1 - HEAT_ALPHA) + heat * HEAT_ALPHA), thumb)
    expect[edge] = TISSUE_COLOUR
    np.testing.assert_array_equal(comp, expect.astype(np.uint8))
    rgb, layout = render_preview(comp, "t", (0.065, 0.045), 800.0)
    with tempfile.TemporaryDirectory() as d:
        png = np.asarray(Image.open(save_png(Path(d) / "p.png", rgb)).convert("RGB"))
    assert png.shape[:2] == (90 + 36 + 50, 130 + 70 + 110)  # thumbnail + margins
    assert (png[:36] != 255).any(axis=(0, 2)).sum() > 10  # the title is drawn above
    assert (png[36:126, 200 + 12:200 + 26] != 255).any()  # the colour bar beside
    x0, y0 = layout.image_origin
    np.testing.assert_array_equal(png[y0:y0 + 90, x0:x0 + 130], comp)


@pytest.fixture(scope="module")
def clustered(tmp_path_factory) -> tuple[Path, Path]:
    """Synthetic H&E (an elliptical tissue piece) with a planted dense cluster of nuclei, segmented once."""
    d = tmp_path_factory.mktemp("pictures")
    rgb, _ = synthetic_he(size=(768, 1280), mpp=MPP, seed=3)
    yy, xx = np.mgrid[0:rgb.shape[0], 0:rgb.shape[1]]
    for dy in range(-3, 4):
        for dx in range(-3, 4):  # 49 nuclei of 6 um on a 9 um grid around CLUSTER
            cy, cx = CLUSTER[0] + dy * 18, CLUSTER[1] + dx * 18
            rgb[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = (92, 60, 140)
    slide = write_pyramid_tiff(d / "clustered.tiff", rgb, MPP, levels=3, tile=256)
    out = d / "out"
    segment(slide, out, BASELINE_MODEL, SegmentOptions(progress=False, overlays=3))
    return slide, out


def _run(out: Path) -> dict:
    return json.loads((out / "clustered.run.json").read_text())


def _polygons(out: Path) -> dict[int, object]:
    """Label id -> shapely polygon of the GeoJSON (one feature per line), in level-0 px (= working px here)."""
    polys = {}
    for line in (out / "clustered.geojson").read_text().splitlines():
        if '"geometry"' in line:
            f = json.loads(line.rstrip(","))
            polys[f["properties"]["measurements"]["Label"]] = shape(f["geometry"])
    return polys


def _heat_read_back(png: np.ndarray, thumb: np.ndarray, vmax: float) -> np.ndarray:
    """Density per pixel recovered from the PNG: unblend the thumbnail, nearest colour-map entry."""
    heat = (png.astype(float) - thumb * (1 - HEAT_ALPHA)) / HEAT_ALPHA
    lut = colorize(np.linspace(0, vmax, 256), 0, vmax).astype(float)
    d2 = ((heat[..., None, :] - lut[None, None]) ** 2).sum(-1)
    return np.linspace(0, vmax, 256)[d2.argmin(-1)]


def test_preview_heat_map_peaks_where_the_nuclei_are_densest(clustered):
    slide, out = clustered
    run = _run(out)
    pv = run["pictures"]["preview"]
    assert pv["file"] in run["pictures"]["files"] and (out / pv["file"]).exists()
    png = np.asarray(Image.open(out / pv["file"]).convert("RGB"))
    th, tw = pv["thumbnail_shape"]
    assert max(th, tw) <= 2048
    with open_slide(slide) as s:
        thumb = WorkingView(s, pv["thumbnail_mpp"]).read(0, 0, th, tw)
    x0, y0 = pv["image_origin_px"]
    cell = pv["cell_px"]  # the thumbnail is the working grid here (0.5 um/px, small image)
    cy = np.minimum(np.arange(-(-th // cell)) * cell + cell // 2, th - 1)  # one pixel per cell: near its centre
    cx = np.minimum(np.arange(-(-tw // cell)) * cell + cell // 2, tw - 1)
    dens = _heat_read_back(png[y0:y0 + th, x0:x0 + tw][np.ix_(cy, cx)], thumb[np.ix_(cy, cx)], pv["vmax_per_mm2"])
    # the oracle: nucleus centroids of the GeoJSON, counted per cell
    cent = np.array([p.centroid.coords[0] for p in _polygons(out).values()])
    counts = np.zeros((-(-768 // cell), -(-1280 // cell)), int)
    np.add.at(counts, ((cent[:, 1] // cell).astype(int), (cent[:, 0] // cell).astype(int)), 1)
    densest = np.unravel_index(counts.argmax(), counts.shape)
    assert densest == (CLUSTER[0] // cell, CLUSTER[1] // cell)
    assert dens[densest] >= 0.9 * pv["vmax_per_mm2"]
    assert np.unravel_index(np.argmax(dens), dens.shape) == densest
    # cells without nuclei or tissue are not painted; elsewhere the read-back follows the centroid counts
    held = counts > 0
    assert np.corrcoef(dens[held], counts[held])[0, 1] > 0.8


def test_preview_tissue_outline_follows_the_tissue_edge(clustered):
    _, out = clustered
    pv = _run(out)["pictures"]["preview"]
    png = np.asarray(Image.open(out / pv["file"]).convert("RGB")).astype(int)
    x0, y0 = pv["image_origin_px"]
    th, tw = pv["thumbnail_shape"]
    img = png[y0:y0 + th, x0:x0 + tw]
    r, c = np.nonzero(np.abs(img - TISSUE_COLOUR).sum(-1) == 0)
    assert len(r) > 200
    # synthetic_he's tissue is the ellipse ((y - h/2) / 0.42h)^2 + ((x - w/2) / 0.44w)^2 < 1; the 8 um mask
    # pixels put the outline within a mask pixel or two (16 working px) of it
    e = np.sqrt(((r + 0.5 - 384) / (0.42 * 768)) ** 2 + ((c + 0.5 - 640) / (0.44 * 1280)) ** 2)
    assert np.abs(e - 1).max() < 32 / (0.42 * 768)


def test_overlays_outline_every_nucleus_on_its_polygon_edges(clustered):
    import zarr

    slide, out = clustered
    run = _run(out)
    overlays = run["pictures"]["overlays"]
    assert len(overlays) == 3 and len({tuple(o["working_box"]) for o in overlays}) == 3
    assert overlays[0]["nuclei_per_mm2"] >= overlays[1]["nuclei_per_mm2"] >= overlays[2]["nuclei_per_mm2"]
    labels = zarr.open_group(out / "clustered.ome.zarr", mode="r")["labels/nuclei/0"]
    polys = _polygons(out)
    with open_slide(slide) as s:
        view = WorkingView(s, MPP)
        for o in overlays:
            y, x, h, w = o["working_box"]
            assert (y, x, h, w) == overlay_box(view.shape, run["pictures"]["preview"]["cell_px"], tuple(o["cell"]))
            png = np.asarray(Image.open(out / o["file"]).convert("RGB"))
            lab = np.asarray(labels[y:y + h, x:x + w])
            edge = outline_mask(lab)
            rgb = view.read(y, x, h, w)
            np.testing.assert_array_equal(png[~edge], rgb[~edge])
            assert (png[edge] == (240, 228, 66)).all() and edge.sum() > 100
            rr, cc = np.nonzero(edge)
            for k in range(0, len(rr), 7):  # each outline pixel's square touches its nucleus' polygon boundary
                poly = polys[int(lab[rr[k], cc[k]])]
                px, py = x + cc[k] + 0.5, y + rr[k] + 0.5
                assert poly.exterior.distance(shapely.Point(px, py)) <= 0.5 * np.sqrt(2) + 1e-9 or any(
                    i.distance(shapely.Point(px, py)) <= 0.5 * np.sqrt(2) + 1e-9 for i in poly.interiors)


def test_pictures_a_rerun_does_not_write_are_removed_and_nothing_else(clustered, tmp_path):
    slide, _ = clustered
    out = tmp_path / "o"
    segment(slide, out, BASELINE_MODEL, SegmentOptions(progress=False, overlays=3))
    (out / "keep.png").write_bytes(b"x")
    run = json.loads((out / "clustered.run.json").read_text())
    run["pictures"]["files"].append("keep.png")  # a doctored record must not delete other files
    (out / "clustered.run.json").write_text(json.dumps(run))
    res = segment(slide, out, BASELINE_MODEL, SegmentOptions(progress=False, preview=False, overlays=1))
    assert [p.name for p in res.pictures] == ["clustered.overlay-1.png"]
    assert sorted(p.name for p in out.glob("*.png")) == ["clustered.overlay-1.png", "keep.png"]
    assert json.loads((out / "clustered.run.json").read_text())["pictures"]["files"] == ["clustered.overlay-1.png"]
