"""The cks recipe (issue 17): hand-worked targets and losses, a real short run, exact resume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _resume import straight_and_resumed

from wsi_weakseg.model.lacss import LacssNet, window_cells, window_origin, window_reach
from wsi_weakseg.train.augment import AugmentParams, sample_patch
from wsi_weakseg.train.cks_losses import (
    collapse_loss,
    detection_targets,
    instance_foreground,
    linear_consistency,
    points_from_heatmap,
    prior_logit,
    share_loss,
    window_pixels,
)
from wsi_weakseg.train.cks_recipe import PRINCIPAL, CksRecipe, Instances
from wsi_weakseg.train.config import load_config
from wsi_weakseg.train.loop import run
from wsi_weakseg.train.point_items import PointItem
from wsi_weakseg.weak.centres import centre_heatmap

NORM = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def disks(seed: int, size: int = 96, n: int = 12) -> tuple[PointItem, np.ndarray]:
    """Purple disks (radius 2.5-4 µm at 0.5 µm/px) on pink with noise, and their centres (seeded)."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (232, 168, 200)
    yy, xx = np.mgrid[0:size, 0:size]
    pts = rng.uniform(6, size - 6, size=(n, 2))
    for cy, cx in pts:
        r = rng.uniform(5, 8)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (92, 60, 140)
    img = np.clip(img + rng.normal(0, 6, img.shape), 0, 255).astype(np.uint8)
    heat = centre_heatmap(pts, (size, size), 2.0)
    return PointItem(f"d{seed}", img, heat, np.ones((size, size), np.uint8)), pts


def _cfg(epochs: int, **cks):
    return load_config(overrides={
        "recipe": "cks", "model": {"width": 8}, "data": {"patch": 64, "crop": 64},
        "optim": {"epochs": epochs, "batch_size": 2, "lr": 3e-3}, "cks": cks,
    })


def _recipe(cfg) -> CksRecipe:
    torch.manual_seed(cfg["seed"])
    return CksRecipe(cfg, [disks(0)[0], disks(1)[0]], NORM, torch.device("cpu"))


def test_detection_targets_of_two_points_by_hand():
    """Stride 4 on 16 x 16 px: cells [4i, 4i+4); centres at continuous 4i + 2 (pixel-centre row r is at r + 0.5)."""
    pts = np.array([[5.5, 9.0],  # continuous (6, 9.5): cell (1, 2), centre (6, 10) -> offset (0, -0.125)
                    [12.0, 2.5]])  # continuous (12.5, 3): cell (3, 0), centre (14, 2) -> offset (-0.375, 0.25)
    pos, off = detection_targets(pts, (16, 16), 4, smooth_px=0.0)
    expected = np.zeros((4, 4))
    expected[1, 2] = expected[3, 0] = 1
    np.testing.assert_array_equal(pos, expected)
    np.testing.assert_allclose(off[:, 1, 2], [0.0, -0.125])
    np.testing.assert_allclose(off[:, 3, 0], [-0.375, 0.25])
    assert (off[:, pos == 0] == 0).all()
    # label smoothing: cells whose centre is within 2.7 px of a point turn positive and regress to it
    pos, off = detection_targets(pts, (16, 16), 4, smooth_px=2.7)
    expected[2, 0] = 1  # centre (10, 2) is 2.69 px from (12.5, 3); (14, 6) is 3.35 px away, (6, 6) 3.5: negative
    np.testing.assert_array_equal(pos, expected)
    np.testing.assert_allclose(off[:, 2, 0], [(12.5 - 10) / 4, (3 - 2) / 4])
    # stride 8: one cell per point, offsets in units of 8 px
    pos, off = detection_targets(pts, (16, 16), 8, smooth_px=0.0)
    np.testing.assert_array_equal(pos, [[0, 1], [1, 0]])
    np.testing.assert_allclose(off[:, 0, 1], [(6 - 4) / 8, (9.5 - 12) / 8])


def test_clicks_survive_augmentation_as_heatmap_peaks():
    item, pts = disks(3, size=128, n=10)
    pts = np.rint(pts)  # centre_heatmap puts each click on its nearest pixel
    assert np.abs(np.sort(points_from_heatmap(item.centre), 0) - np.sort(pts, 0)).max() < 1e-6
    rng = np.random.default_rng(0)
    params = AugmentParams(flip=False, rotate90=False, scale=(1.1, 1.1), color_jitter=0.0)
    _, maps = sample_patch(rng, item.image, item.targets(), 96, params, nearest=frozenset({"annotated"}))
    found = points_from_heatmap(maps["centre"])
    rng = np.random.default_rng(0)  # replay sample_patch's draws (fixed zoom: the crop origin comes first)
    zoom = 1.1
    y0 = rng.uniform(0, 128 - 96 / zoom)
    x0 = rng.uniform(0, 128 - 96 / zoom)
    moved = (pts - [y0, x0]) * zoom  # patch pixel i samples source y0 + i / zoom
    inner = moved[((moved > 1) & (moved < 95)).all(axis=1)]
    assert len(inner) >= 4
    assert np.linalg.norm(inner[:, None] - found[None], axis=2).min(axis=1).max() < 0.3  # each inner click found
    assert np.linalg.norm(found[:, None] - moved[None], axis=2).min(axis=1).max() < 1.0  # nothing else found


def _sigmoid(v: float) -> float:
    return 1.0 / (1.0 + np.exp(-v))


def _prior(dy: float, dx: float, d: float) -> float:
    g = min(max(np.exp(-(dy * dy + dx * dx) / (2 * d * d)), 0.001), 0.999)
    return float(np.log(g / (1 - g)))


def test_eq4_on_a_hand_made_pair_of_instances():
    """Two 4 x 4 windows overlapping on a 1 x 2 patch: M_p = max_i sigmoid(l_i + pi l_prior) pixel by pixel."""
    d, pi = 1.5, 2.0
    points = torch.tensor([[1.0, 1.0], [1.0, 3.0]])  # pixel-centre (row, col) in a 4 x 6 image
    origins = torch.tensor([[0, 0], [0, 2]])
    logits = torch.zeros(2, 4, 4)
    logits[0] += 1.0  # instance 0 is confident everywhere in its window
    logits[1, :, 1] = -3.0  # instance 1 rejects its window's column 1 (image column 3)
    prior = prior_logit(points, origins, 4, d)
    g = np.exp(-1.0 / (2 * d * d))  # one pixel from the point
    assert prior[0, 1, 2].item() == pytest.approx(np.log(g / (1 - g)), rel=1e-5)
    assert prior[0, 1, 1].item() == pytest.approx(np.log(0.999 / 0.001), rel=1e-5)  # clamped at the point
    index, inside = window_pixels(torch.tensor([0, 0]), origins, 4, (4, 6))
    m_p = instance_foreground(logits, prior, pi, index, inside, (1, 4, 6))[0]
    for r in range(4):
        for c in range(6):
            cands = []
            if c < 4:
                cands.append(_sigmoid(1.0 + pi * _prior(r - 1, c - 1, d)))
            if c >= 2:
                cands.append(_sigmoid((-3.0 if c == 3 else 0.0) + pi * _prior(r - 1, c - 3, d)))
            assert m_p[r, c].item() == pytest.approx(max(cands), rel=1e-5), (r, c)
    # at (1, 3), instance 1's own point, its -3 logit is outweighed by the prior (+2 x 6.9) ...
    assert m_p[1, 3] > 0.99
    # ... and without the prior (pi = 0) instance 0's sigmoid(1) wins there
    assert instance_foreground(logits, prior, 0.0, index, inside, (1, 4, 6))[0, 1, 3].item() == pytest.approx(_sigmoid(1.0))


def test_linear_loss_gradient_sign_follows_the_target_side_of_one_half():
    """Eq. 7: dL/dM_c = (1 - 2 M_p) / (H W): M_c rises where M_p > 0.5, falls where < 0.5, is left alone at 0.5."""
    target = torch.tensor([[0.9, 0.2], [0.5, 0.6]])
    pred = torch.full((2, 2), 0.3, requires_grad=True)
    linear_consistency(pred, target, torch.ones(2, 2, dtype=torch.bool)).backward()
    np.testing.assert_allclose(pred.grad.numpy(), (1 - 2 * target.numpy()) / 4, rtol=1e-6)
    descent = -pred.grad
    assert descent[0, 0] > 0 and descent[1, 1] > 0 and descent[0, 1] < 0 and descent[1, 0] == 0


def test_balanced_linear_loss_weights_each_class_to_half_and_ignores_a_constant_prediction():
    """(sum t (1 - p) / sum t + sum (1 - t) p / sum (1 - t)) / 2 by hand; a constant prediction gets no push."""
    from wsi_weakseg.train.cks_losses import balanced_linear_consistency

    p = torch.tensor([0.9, 0.2, 0.4, 0.1, 0.7])
    t = torch.tensor([1.0, 0.0, 0.0, 0.0, 0.5])
    mask = torch.tensor([True, True, True, True, False])  # the last pixel does not count
    assert balanced_linear_consistency(p, t, mask).item() == pytest.approx((0.1 / 1 + 0.7 / 3) / 2)
    const = torch.full((4,), 0.3, requires_grad=True)
    balanced_linear_consistency(const, t[:4], mask[:4]).backward()
    assert const.grad.sum().item() == pytest.approx(0.0, abs=1e-7)  # plain Eq. 6 would give (3 - 1) / 4


def test_mask_prior_is_the_gaussian_logit_about_the_locations_cell():
    """With the head's output zeroed, a mask is 0.5 x logit(Gaussian, s.d. 6 px) about the centre of the location's
    stride-4 cell: pixel-centre (4 w/2 + 1.5) in the window, symmetric, 0.5 x 6.907 at most."""
    from wsi_weakseg.model.lacss import gaussian_logit

    assert gaussian_logit(torch.tensor([0.0]), 6.0).item() == pytest.approx(np.log(0.999 / 0.001), rel=1e-5)
    assert gaussian_logit(torch.tensor([2 * 36 * np.log(2)]), 6.0).item() == pytest.approx(0.0, abs=1e-5)  # g = 1/2
    net = LacssNet(width=8, mask_prior_px=6.0, mask_prior_weight=0.5).eval()
    with torch.no_grad():
        net.segment_head.convs[-1].weight.zero_()
        net.segment_head.convs[-1].bias.zero_()
        out = net(torch.randn(1, 3, 64, 64))
        m = net.segment(out.features, torch.tensor([[0, 8, 8]]), window_cells(48))[0]
    rows = torch.arange(48, dtype=torch.float32) - 25.5  # 4 * 6 + 1.5
    expected = 0.5 * gaussian_logit(rows[:, None] ** 2 + rows[None, :] ** 2, 6.0)
    torch.testing.assert_close(m, expected)
    assert m.argmax().item() in {25 * 48 + 25, 25 * 48 + 26, 26 * 48 + 25, 26 * 48 + 26}
    assert torch.equal(m, m.T) and m.max().item() < 0.5 * 6.91


def test_share_loss_penalises_overlap_and_the_collapse_term_grows_as_masks_vanish():
    """Two 1 x 2 windows share one pixel: the overlap term is m_0 m_1 there, counted from each side."""
    masks = torch.tensor([[[0.5, 0.8]], [[0.6, 0.1]]])
    origins = torch.tensor([[0, 0], [0, 1]])
    index, inside = window_pixels(torch.tensor([0, 0]), origins, 1, (1, 3))  # 1 x 1 windows: no overlap
    assert share_loss(masks[:, :, :1], torch.ones(1, 1, 3), index, inside, (1, 1, 3)).item() == pytest.approx((0.5 + 0.4) / 2)
    # 2 x 2 windows (second row outside the 1-row image): pixels (0, 0), (0, 1) and (0, 1), (0, 2)
    m = torch.zeros(2, 2, 2)
    m[:, 0] = masks[:, 0]
    index, inside = window_pixels(torch.tensor([0, 0]), origins, 2, (1, 3))
    mc = torch.tensor([[[1.0, 1.0, 0.0]]])
    follow = (1 - 0.5) + (1 - 0.8) + (1 - 0.6) + 0.1  # (1 - M_c) m + M_c (1 - m) on the four pixels
    overlap = 2 * 0.8 * 0.6  # pixel (0, 1): m_0 m_1 + m_1 m_0
    assert share_loss(m, mc, index, inside, (1, 1, 3)).item() == pytest.approx((follow + overlap) / 4)
    assert share_loss(m, mc, index, inside, (1, 1, 3), overlap_weight=0.25).item() == pytest.approx(
        (follow + 0.25 * overlap) / 4)
    # K = the image pixels that count (cks.share_norm: image) instead of the 4 window pixels
    assert share_loss(m, mc, index, inside, (1, 1, 3), norm=3).item() == pytest.approx((follow + overlap) / 3)
    from wsi_weakseg.train.cks_recipe import overlap_weight

    assert [overlap_weight(e, 4) for e in (0, 1, 4, 7)] == [0.0, 0.25, 1.0, 1.0] and overlap_weight(0, 0) == 1.0
    assert [overlap_weight(e, 4, 0.2) for e in (0, 2, 9)] == [0.0, 0.1, 0.2] and overlap_weight(3, 0, 0.2) == 0.2
    small, large = torch.full((1, 4, 4), 0.01), torch.full((1, 4, 4), 0.5)
    ones = torch.ones(1, 4, 4, dtype=torch.bool)
    assert collapse_loss(small, ones, 1e-3).item() == pytest.approx(0.1)
    assert collapse_loss(large, ones, 1e-3).item() == pytest.approx(2e-3)


def test_principal_windows_are_on_the_stride_4_grid_and_masks_come_out_per_location():
    assert [window_origin(a, 48) for a in (24, 27, 28)] == [0, 0, 4] and window_reach(48) == 27
    torch.manual_seed(0)
    net = LacssNet(width=8).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        out = net(x)
        assert [tuple(d.shape) for d in out.detections] == [(2, 3, 16, 24), (2, 3, 8, 12), (2, 3, 4, 6)]
        cells = torch.tensor([[0, 3, 5], [1, 15, 0], [0, 3, 5]])
        masks = net.segment(out.features, cells, window_cells(48))
    assert masks.shape == (3, 48, 48)
    assert torch.equal(masks[0], masks[2]) and not torch.equal(masks[0], masks[1])
    inst = Instances.of([np.array([[13.6, 21.2]]), np.zeros((0, 2))], (64, 96), 48, torch.device("cpu"))
    assert inst.cells.tolist() == [[0, 3, 5]] and inst.origins.tolist() == [[-12, -4]]


def test_short_run_lowers_the_loss(tmp_path):
    cfg = _cfg(epochs=4)
    seen = []
    run(cfg, _recipe(cfg), tmp_path, max_steps=3, on_step=lambda s, logs: seen.append(logs))
    assert len(seen) == 12 and {"detection", "foreground", "share", "border", "collapse"} <= set(seen[0])
    first, last = np.mean([s["loss"] for s in seen[:3]]), np.mean([s["loss"] for s in seen[-3:]])
    assert last < first
    assert np.mean([s["detection"] for s in seen[-3:]]) < np.mean([s["detection"] for s in seen[:3]])


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_resume_continues_bit_exactly(tmp_path, one_thread):
    # Bit-exact on one thread only: with 2 threads one full-suite run of 2026-12-07 saw conv1 differ after resume
    # (suspect: the scatter_reduce pastes in cks_losses reduce in thread order; not verified). Left open (issue 17).
    cfg = _cfg(epochs=3, consistency_collaborator="ce")  # the ablation's loss runs too
    straight, resumed, history = straight_and_resumed(cfg, _recipe, tmp_path, stop_epoch=1)
    assert [h["epoch"] for h in history] == [0, 1, 2]
    for name in straight.nets:
        for (key, p), q in zip(straight.nets[name].state_dict().items(), resumed.nets[name].state_dict().values()):
            assert torch.equal(p, q), f"{name}.{key} differs after resume"
    assert PRINCIPAL in straight.candidates()


@pytest.mark.parametrize("override, match", [
    ({"cks": {"consistency_collaborator": "kl"}}, "linear"),
    ({"cks": {"det_strides": [4, 4]}}, "det_strides"),
    ({"cks": {"window_um": 200.0}}, "window_um"),
    ({"model": {"architecture": "resnet34-unet"}}, "lacss"),
    ({"cks": {"collaborator_norm": "batch"}}, "collaborator_norm"),
    ({"cks": {"overlap_ramp_epochs": -1}}, "overlap_ramp_epochs"),
    ({"cks": {"overlap_weight": -0.5}}, "overlap_weight"),
    ({"cks": {"share_norm": "pixels"}}, "share_norm"),
    ({"cks": {"collaborator_channels": [16, 30, 64]}}, "multiples of 4"),
])
def test_bad_cks_configs_are_refused(override, match):
    from wsi_weakseg.errors import ConfigError

    with pytest.raises(ConfigError, match=match):
        load_config(overrides={"recipe": "cks", **override})


@pytest.mark.parametrize("norm, learns", [("group", True), ("none", False)])
def test_collaborator_learns_disks_with_the_linear_loss_only_with_group_norm(norm, learns):
    """The issue 17 collapse in miniature: the paper's U-Net trained by Eq. 6 towards fixed disk targets (13 % of
    pixels) for 40 Adam steps. Plain convolutions go to all-background (both classes' mean < 0.01, saturated);
    with group norm the disks are found (pixel accuracy > 0.99, disks > 0.5, background < 0.3)."""
    from wsi_weakseg.train.cks_collaborator import ShallowUNet

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:48]

    def batch(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        t = np.zeros((n, 48, 48), np.float32)
        for k in range(n):
            for cy, cx in rng.uniform(5, 43, (5, 2)):
                t[k][(yy - cy) ** 2 + (xx - cx) ** 2 < 20] = 1
        x = np.stack([0.6 - 2 * t, 0.4 - 2 * t, 0.8 - 0.8 * t], axis=1) + rng.normal(0, 0.2, (n, 3, 48, 48))
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(t)

    torch.manual_seed(0)
    net = ShallowUNet(norm=norm)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for _ in range(40):
        x, t = batch(2)
        loss = linear_consistency(torch.sigmoid(net(x)), t, torch.ones_like(t, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    x, t = batch(4)
    with torch.no_grad():
        p = torch.sigmoid(net(x))
    fg, bg, acc = p[t > 0].mean(), p[t == 0].mean(), ((p > 0.5) == (t > 0)).float().mean()
    if learns:
        assert acc > 0.99 and fg > 0.5 and bg < 0.3, (acc, fg, bg)
    else:
        assert fg < 0.01 and bg < 0.01, (fg, bg)


def test_packaged_cks_defaults_mark_the_papers_values():
    from wsi_weakseg.train.config import PACKAGED

    text = (PACKAGED / "train-cks.yaml").read_text()
    for key in ("prior_weight: 2.0", "consistency_collaborator: linear", "collaborator_channels: [16, 32, 64]",
                "border_channels: 32", "lr: 1.0e-3"):
        line = next(ln for ln in text.splitlines() if key in ln)
        assert "# paper" in line, line
    cfg = load_config(overrides={"recipe": "cks"})
    assert cfg["model"]["architecture"] == "lacss" and cfg["cks"]["prior_weight"] == 2.0


def test_train_writes_a_detect_segment_model_that_loads_and_segments(tmp_path, capsys):
    """``train`` with ``recipe: cks`` -> a model folder; ``load_model`` loads it, ``segment --model`` runs it."""
    import json

    from PIL import Image

    from wsi_weakseg import cli
    from wsi_weakseg.model.card import load_model
    from wsi_weakseg.train.dataset import EvalItem, load_items, save_items
    from wsi_weakseg.train.trainer import train

    (a, _), (b, _) = disks(0), disks(1)
    val_item, val_pts = disks(5, size=128, n=14)
    yy, xx = np.mgrid[0:128, 0:128]
    gt = np.zeros((128, 128), np.int32)
    for k, (cy, cx) in enumerate(val_pts, start=1):
        gt[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] = k
    val = [EvalItem("val", val_item.image, val_pts - 0.0, gt)]
    saved = save_items(tmp_path / "items.npz", [a, b], val)
    train_items, val_items = load_items(saved)
    assert isinstance(train_items[0], PointItem) and np.array_equal(train_items[1].centre, b.centre)
    cfg = _cfg(epochs=2)
    result = train(cfg, tmp_path / "m", progress=False, max_steps=1, data=(train_items, val_items, [{"name": "x"}]))
    card = json.loads((tmp_path / "m" / "card.json").read_text())
    assert card["model_type"] == "detect-segment" and card["architecture"] == "lacss" and card["window_um"] == 24.0
    assert card["training"]["recipe"] == "cks" and "no watershed" in card["training"]["instances"]
    assert card["arch_kwargs"] == {"width": 8, "det_strides": [4, 8, 16], "mask_prior_px": 6.0,
                                   "mask_prior_weight": 0.5} and result.best["net"] == PRINCIPAL  # 3 µm at 0.5
    assert set(card["training"]["thresholds_tuning"]["chosen"]) == {"foreground", "centre"}
    model = load_model(tmp_path / "m")
    assert model.card.model_type == "detect-segment"
    Image.fromarray(val_item.image).save(tmp_path / "small.png")
    code = cli.main(["segment", str(tmp_path / "small.png"), "--model", str(tmp_path / "m"), "--mpp", "0.5",
                     "-o", str(tmp_path / "out"), "--device", "cpu", "--no-progress", "--no-preview"])
    assert code == 0
    run = json.loads((tmp_path / "out" / "small.run.json").read_text())
    assert run["model"]["sha256"] == model.sha256 and run["config"]["instance_params"]["window"] == 48
    assert (tmp_path / "out" / "small.geojson").is_file() and (tmp_path / "out" / "small.ome.zarr").is_dir()
