"""A tiny real ResNet34-UNet (width 8) through the real engine: tiled agrees with whole-image.

The net is fitted for a few dozen steps to MoNuSeg masks and Gaussian centre targets (what the trained
model's heads predict), so its maps look like nuclei rather than noise; its context is *measured* (tiled vs
whole maps) and stored in its card, as for any model.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

from wsi_weakseg.engine.inference import Predictor, predict_image
from wsi_weakseg.engine.segment import SegmentOptions, segment
from wsi_weakseg.model.card import ModelCard, save_model
from wsi_weakseg.model.context import measure_context
from wsi_weakseg.model.fit import fit_dense
from wsi_weakseg.model.resnet_unet import ResNet34UNet
from wsi_weakseg.slide.testing import write_pyramid_tiff
from wsi_weakseg.weak import centre_heatmap, label_centroids


def _targets(labels: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Foreground and a Gaussian centre heatmap (peak 1 at each nucleus centroid)."""
    centres = centre_heatmap(label_centroids(labels), labels.shape, sigma)
    return np.stack([(labels > 0).astype(np.float32), centres])


@pytest.fixture(scope="module")
def monuseg_half(shared_data: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    names = sorted((shared_data / "monuseg-train" / "images").glob("*.png"))[4:7]
    images = [np.asarray(Image.open(p).convert("RGB"))[::2, ::2].copy() for p in names]  # ~0.5 µm/px
    labels = [np.asarray(Image.open(p.parent.parent / "labels" / p.name))[::2, ::2].astype(np.int32) for p in names]
    return images, labels


@pytest.fixture(scope="module")
def tiny_model(monuseg_half, tmp_path_factory) -> Path:
    images, labels = monuseg_half
    torch.manual_seed(1)
    card = ModelCard(name="tiny", architecture="resnet34-unet", mpp=0.5, arch_kwargs={"width": 8}, tile_size=128,
                     context_px=32, trained=False, description="test: width-8 net fitted for 100 steps")
    net = fit_dense(ResNet34UNet(out_channels=2, width=8), images[1:], [_targets(lab) for lab in labels[1:]],
                    card.normalization, steps=100, seed=1)
    predictor = Predictor(net, card, "cpu")
    context, _ = measure_context(predictor, images[:1], tile=128, tolerance=0.01, candidates=(64, 128, 192, 256))
    card.context_px = context
    # A 100-step net is far from converged, so its thresholds are calibrated on its own whole-image maps
    # (as a card's thresholds are tuned on validation data): ~35 % foreground, markers in the top centre values.
    maps = predict_image(predictor, images[0], context)
    card.thresholds["foreground"] = float(np.percentile(maps[0], 65)) / 255.0
    card.thresholds["centre"] = 0.5 * float(np.percentile(maps[1], 99.5)) / 255.0
    return save_model(tmp_path_factory.mktemp("tiny"), card, net)


def test_tiny_net_tiled_matches_whole(tiny_model: Path, monuseg_half, tmp_path: Path):
    slide = write_pyramid_tiff(tmp_path / "img.tiff", monuseg_half[0][0], 0.5, levels=1, tile=128)
    runs = {}
    for name, tile, block in (("whole", 512, 512), ("tiled", 128, 192)):
        res = segment(slide, tmp_path / name, model=tiny_model,
                      options=SegmentOptions(tile_size=tile, block_size=block, progress=False))
        runs[name] = zarr.open_array(res.zarr / "labels" / "nuclei" / "0")[:]
    whole, tiled = runs["whole"], runs["tiled"]
    assert whole.max() >= 100  # the distilled net finds nuclei; an empty map could not fail
    # Per-nucleus IoU of each whole-image nucleus with its best tiled counterpart.
    ious = []
    for i in range(1, whole.max() + 1):
        m = whole == i
        j = np.bincount(tiled[m]).argmax()
        if j == 0:
            ious.append(0.0)
            continue
        n = tiled == j
        ious.append((m & n).sum() / (m | n).sum())
    ious = np.array(ious)
    assert ious.mean() >= 0.99, f"mean IoU {ious.mean():.4f}, worst {ious.min():.3f}"
    assert abs(int(tiled.max()) - int(whole.max())) <= 0.01 * whole.max()
