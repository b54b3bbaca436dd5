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
from scipy import ndimage as ndi

from wsi_weakseg.engine.inference import Predictor
from wsi_weakseg.engine.segment import SegmentOptions, segment
from wsi_weakseg.model.card import ModelCard, save_model
from wsi_weakseg.model.context import measure_context
from wsi_weakseg.model.resnet_unet import ResNet34UNet
from wsi_weakseg.slide.testing import write_pyramid_tiff


def _targets(labels: np.ndarray, sigma: float = 2.0) -> np.ndarray:
    """Foreground and a Gaussian centre heatmap (peak 1 at each nucleus centroid)."""
    centres = np.zeros(labels.shape, bool)
    for sl, i in zip(ndi.find_objects(labels), range(1, labels.max() + 1)):
        if sl is not None:
            cy, cx = ndi.center_of_mass(labels[sl] == i)
            centres[int(round(sl[0].start + cy)), int(round(sl[1].start + cx))] = True
    d = ndi.distance_transform_edt(~centres)
    return np.stack([labels > 0, np.exp(-(d**2) / (2 * sigma**2))]).astype(np.float32)


def _fit(images: list[np.ndarray], labels: list[np.ndarray], steps: int = 60, seed: int = 0, crop: int = 96) -> ResNet34UNet:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = ResNet34UNet(out_channels=2, width=8)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    targets = [_targets(lab) for lab in labels]
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    net.train()
    for _ in range(steps):
        xs, ys = [], []
        for _ in range(4):
            i = rng.integers(len(images))
            y0, x0 = rng.integers(0, images[i].shape[0] - crop, size=2)
            xs.append(images[i][y0 : y0 + crop, x0 : x0 + crop])
            ys.append(targets[i][:, y0 : y0 + crop, x0 : x0 + crop])
        x = (torch.from_numpy(np.stack(xs)).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), torch.from_numpy(np.stack(ys)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def monuseg_half(shared_data: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    names = sorted((shared_data / "monuseg-train" / "images").glob("*.png"))[4:7]
    images = [np.asarray(Image.open(p).convert("RGB"))[::2, ::2].copy() for p in names]  # ~0.5 µm/px
    labels = [np.asarray(Image.open(p.parent.parent / "labels" / p.name))[::2, ::2].astype(np.int32) for p in names]
    return images, labels


@pytest.fixture(scope="module")
def tiny_model(monuseg_half, tmp_path_factory) -> Path:
    images, labels = monuseg_half
    net = _fit(images[1:], labels[1:])
    card = ModelCard(name="tiny", architecture="resnet34-unet", mpp=0.5, arch_kwargs={"width": 8}, tile_size=128,
                     context_px=32, trained=False, description="test: width-8 net fitted for 60 steps")
    context, _ = measure_context(Predictor(net, card, "cpu"), images[:1], tile=128, tolerance=0.01,
                                 candidates=(64, 128, 192, 256))
    card.context_px = context
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
