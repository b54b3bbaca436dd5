"""Augmentation moves image and targets together."""

from __future__ import annotations

import numpy as np

from wsi_weakseg.train.augment import AugmentParams, sample_patch


def _coded(h=120, w=150):
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.stack([yy % 256, xx % 256, (yy + xx) % 256], axis=-1).astype(np.uint8)
    return image, {"cluster": (yy * 1000 + xx).astype(np.int64), "centre": (yy * 1000 + xx).astype(np.float64)}


def test_geometry_is_shared_between_image_and_targets():
    image, targets = _coded()
    rng = np.random.default_rng(0)
    params = AugmentParams(flip=True, rotate90=True, scale=(1.0, 1.0), color_jitter=0.0)
    for _ in range(20):
        img, t = sample_patch(rng, image, targets, 64, params)
        # the image encodes (row % 256, col % 256); the target encodes row * 1000 + col
        rows, cols = t["cluster"] // 1000, t["cluster"] % 1000
        np.testing.assert_array_equal(img[..., 0], rows % 256)
        np.testing.assert_array_equal(img[..., 1], cols % 256)
        np.testing.assert_array_equal(t["centre"], t["cluster"])


def test_zoom_keeps_label_maps_categorical_and_is_reproducible():
    image, _ = _coded()
    labels = np.zeros(image.shape[:2], np.uint8)
    labels[40:80, 50:100] = 1
    labels[:, :10] = 2
    params = AugmentParams(scale=(0.7, 1.4), color_jitter=0.1)
    a = sample_patch(np.random.default_rng(3), image, {"voronoi": labels}, 48, params)
    b = sample_patch(np.random.default_rng(3), image, {"voronoi": labels}, 48, params)
    assert set(np.unique(a[1]["voronoi"])) <= {0, 1, 2}
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1]["voronoi"], b[1]["voronoi"])
    assert a[0].dtype == np.uint8 and a[0].shape == (48, 48, 3)


def test_stain_augment_is_identity_at_unit_scale_and_pales_hematoxylin():
    from skimage.color import hed_from_rgb

    from wsi_weakseg.train.augment import stain_augment

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, size=(16, 16, 3)).astype(np.float64)
    np.testing.assert_allclose(stain_augment(rgb, np.ones(3), np.zeros(3)), rgb, atol=1e-9)
    # a hematoxylin-blue pixel: halving H halves its H optical density (hand-worked in OD space)
    blue = np.array([[[80.0, 60.0, 160.0]]])
    od = lambda x: (-np.log((x + 1.0) / 256.0)) @ hed_from_rgb  # noqa: E731
    pale = stain_augment(blue, np.array([0.5, 1.0, 1.0]), np.zeros(3))
    assert (pale > blue).all()  # paler: every channel lighter
    np.testing.assert_allclose(od(pale)[0, 0, 0], 0.5 * od(blue)[0, 0, 0], rtol=1e-6)
    np.testing.assert_allclose(od(pale)[0, 0, 1:], od(blue)[0, 0, 1:], atol=1e-6)


def test_stain_augmentation_off_keeps_the_random_stream():
    image, targets = _coded()
    off = AugmentParams(stain=0.0)
    a = sample_patch(np.random.default_rng(5), image, targets, 32, off)
    b = sample_patch(np.random.default_rng(5), image, targets, 32, AugmentParams())
    np.testing.assert_array_equal(a[0], b[0])
    on = sample_patch(np.random.default_rng(5), image, targets, 32, AugmentParams(stain=0.4))
    assert on[0].shape == a[0].shape and not np.array_equal(on[0], a[0])
