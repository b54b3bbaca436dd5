"""Training and validation items from a data spec, read at the model's pixel size through the engine's readers.

For each spec item: read the image (or, for a whole slide, the bounding box of its annotated regions) at
``data.mpp`` with :class:`~wsi_weakseg.slide.WorkingView`, map its QuPath points into working pixels,
estimate its stain matrix, and compute the weak-label targets of the points recipe (Voronoi, cluster,
centre heatmap) once, cached by content and parameters. Pixels outside every annotated region are
``IGNORE`` in the class targets and masked out of the centre loss (``annotated`` = 0).

Readers, shapely and the point parser are imported lazily: a set of built items saved with
:func:`save_items` trains on a machine that has only torch, numpy, scipy and scikit-image.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from ..weak.centres import centre_heatmap, jitter_points
from ..weak.clusters import cluster_label, ignore_ring
from ..weak.stain import estimate_stain_matrix, hematoxylin
from ..weak.voronoi import voronoi_label

log = logging.getLogger(__name__)

IGNORE = 2

#: What to do with a training or validation item too large to hold in memory.
_SPLIT_ADVICE = (
    "annotate smaller regions and give each its own spec item (a slide item is read over the bounding box of "
    "its annotated regions); to score a model on a large region, run `wsi-weakseg segment` on it and evaluate "
    "its outputs with `wsi-weakseg evaluate`"
)


@dataclass
class TrainItem:
    """One training image at the working pixel size with its weak-label targets.

    Attributes
    ----------
    name : str
    image : ndarray (H, W, 3) uint8
    voronoi, cluster : ndarray (H, W) uint8
        0 background, 1 nucleus, 2 ignored.
    centre : ndarray (H, W) float32
        Gaussian centre heatmap of the clicks.
    annotated : ndarray (H, W) uint8
        1 inside the annotated regions (where every nucleus was clicked), 0 outside.
    """

    name: str
    image: np.ndarray
    voronoi: np.ndarray
    cluster: np.ndarray
    centre: np.ndarray
    annotated: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.annotated is None:
            self.annotated = np.ones(self.image.shape[:2], np.uint8)

    def targets(self) -> dict[str, np.ndarray]:
        return {"voronoi": self.voronoi, "cluster": self.cluster, "centre": self.centre, "annotated": self.annotated}


@dataclass
class EvalItem:
    """One validation image at the working pixel size.

    Attributes
    ----------
    name : str
    image : ndarray (H, W, 3) uint8
    points_rc : ndarray (n, 2)
        Clicked centres, pixel-centre (row, col) working coordinates.
    labels : ndarray (H, W) int32 or None
        Ground-truth instances resampled (nearest) onto the working grid, when the spec gives them.
    """

    name: str
    image: np.ndarray
    points_rc: np.ndarray
    labels: np.ndarray | None = None


@dataclass
class ReadItem:
    """Pixels and points of one spec item in working coordinates (before any label is derived)."""

    name: str
    image: np.ndarray
    points_rc: np.ndarray
    annotated: np.ndarray
    mpp: float
    source_mpp: float
    labels: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _nearest_grid(centres0: np.ndarray, size: int) -> np.ndarray:
    """Level-0 indices of the pixels holding level-0 positions ``centres0`` (nearest neighbour), clipped."""
    return np.clip(np.floor(centres0).astype(np.int64), 0, size - 1)


def read_item(item, mpp: float, points=None) -> ReadItem:
    """Read one :class:`~wsi_weakseg.weak.spec.SpecItem` at ``mpp`` µm/px.

    ``points`` (a :class:`~wsi_weakseg.weak.points.PointSet`; default: the item's ``points`` file) are mapped
    to working pixels in their order. Plain images are read whole; slides are read over the bounding box of
    their annotated regions, refused
    (:class:`~wsi_weakseg.errors.ConfigError`) above :data:`~wsi_weakseg.engine.whole.MAX_REGION_PIXELS` working
    pixels before any pixel is read.
    """
    import shapely

    from ..engine.whole import check_region_size
    from ..evaluate import read_label_map
    from ..slide import WorkingView, open_slide
    from ..weak.spec import load_item_points

    points = load_item_points(item) if points is None else points
    with open_slide(item.image, mpp=item.mpp) as slide:
        view = WorkingView(slide, mpp)
        b = np.asarray(slide.bounds[:2], np.float64)  # QuPath coordinates are relative to the bounds origin
        H, W = view.shape
        if points.regions is not None and item.kind == "slide":
            x0, y0, x1, y1 = points.regions.bounds
            (c0, c1), (r0, r1) = view.from_level0(np.array([x0, x1]) + b[0], np.array([y0, y1]) + b[1])
            c0, r0 = max(int(math.floor(c0)), 0), max(int(math.floor(r0)), 0)
            c1, r1 = min(int(math.ceil(c1)), W), min(int(math.ceil(r1)), H)
        else:
            r0, c0, r1, c1 = 0, 0, H, W
        h, w = r1 - r0, c1 - c0
        check_region_size((h, w), item.image, advice=_SPLIT_ADVICE)
        rgb = view.read(r0, c0, h, w)
        source_mpp, level0 = slide.mpp, (slide.dimensions[1], slide.dimensions[0])
    px, py = view.from_level0(points.xy[:, 0] + b[0], points.xy[:, 1] + b[1])
    rc = np.stack([py - r0 - 0.5, px - c0 - 0.5], axis=1)
    if points.regions is not None:
        yy, xx = np.mgrid[r0:r1, c0:c1]
        ax, ay = view.to_level0(xx + 0.5, yy + 0.5)
        annotated = shapely.contains_xy(points.regions, ax - b[0], ay - b[1]).astype(np.uint8)
    else:
        annotated = np.ones((h, w), np.uint8)
    labels = None
    if item.labels is not None:
        gt, _ = read_label_map(item.labels)
        if gt.shape != level0:
            raise ConfigError(f"{item.labels}: label map is {gt.shape[1]}x{gt.shape[0]} but the image is "
                              f"{level0[1]}x{level0[0]}; they must share the pixel grid")
        cx, cy = view.to_level0(np.arange(c0, c1) + 0.5, np.arange(r0, r1) + 0.5)
        rows, cols = _nearest_grid(cy, gt.shape[0]), _nearest_grid(cx, gt.shape[1])
        labels = gt[np.ix_(rows, cols)].astype(np.int32)
    return ReadItem(item.image.stem, rgb, rc, annotated, view.mpp, source_mpp, labels,
                    {"points": len(points), "dropped_outside": points.n_dropped_outside,
                     "merged_duplicates": points.n_merged_duplicates})


def label_params(cfg: Mapping, mpp: float) -> dict:
    """Everything that changes the derived targets (the cache key's parameters)."""
    p = cfg["points"]
    out = {"mpp": round(mpp, 6), "point_radius_um": p["point_radius_um"], "cluster_distance_um": p["cluster_distance_um"],
           "centre_sigma_um": p["centre_sigma_um"], "seed": cfg["seed"]}
    cluster = {"cluster_colour": p["cluster_colour"], "cluster_colour_weight": p["cluster_colour_weight"],
               "cluster_ring_um": p["cluster_ring_um"]}
    if cluster != {"cluster_colour": "h", "cluster_colour_weight": 0.5, "cluster_ring_um": 0.0}:
        out.update(cluster)  # only when set: the defaults keep the cache keys of models trained before them
    if p["jitter_um"]:
        out["jitter_um"] = p["jitter_um"]
    return out


def derive_targets(rgb: np.ndarray, points_rc: np.ndarray, annotated: np.ndarray, params: Mapping) -> dict[str, np.ndarray]:
    """Voronoi, cluster and centre targets of one image (the points recipe's weak labels).

    One Macenko stain matrix per image (``stain``, recorded) feeds the hematoxylin channel of the
    cluster features.
    """
    mpp = float(params["mpp"])
    shape = rgb.shape[:2]
    stain = estimate_stain_matrix(rgb, seed=int(params["seed"]))
    h = hematoxylin(rgb, stain)
    vor = voronoi_label(points_rc, shape, point_radius=params["point_radius_um"] / mpp)
    clu = cluster_label(rgb, points_rc, mpp=mpp, h=h, clip_um=params["cluster_distance_um"], seed=int(params["seed"]),
                        colour=params.get("cluster_colour", "h"), colour_weight=params.get("cluster_colour_weight", 0.5))
    clu = ignore_ring(clu, params.get("cluster_ring_um", 0.0) / mpp)
    centre = centre_heatmap(points_rc, shape, sigma=params["centre_sigma_um"] / mpp)
    outside = annotated == 0
    vor[outside] = IGNORE
    clu[outside] = IGNORE
    return {"voronoi": vor.astype(np.uint8), "cluster": clu.astype(np.uint8), "centre": centre.astype(np.float32),
            "stain": np.asarray(stain, np.float64)}


def build_items(spec_items: Sequence, cfg: Mapping, cache_dir: Path) -> tuple[list[TrainItem], list[dict]]:
    """Training items of ``spec_items`` with cached targets, and a per-item summary (for the card)."""
    from ..weak.cache import array_digest, cached_labels

    items, summary = [], []
    for index, spec_item in enumerate(spec_items):
        r = read_item(spec_item, float(cfg["data"]["mpp"]))
        params = label_params(cfg, r.mpp)
        if params.get("jitter_um"):  # simulated click noise, seeded per item (the cache key holds jitter_um)
            r.points_rc = jitter_points(r.points_rc, params["jitter_um"] / r.mpp, seed=int(cfg["seed"]) * 100_003 + index)
        key = {**params, "annotated": array_digest(r.annotated)}
        t = cached_labels(r.image, r.points_rc, key, lambda: derive_targets(r.image, r.points_rc, r.annotated, params),
                          cache_dir)
        items.append(TrainItem(r.name, r.image, t["voronoi"], t["cluster"], t["centre"], r.annotated))
        summary.append({"name": r.name, "source": str(spec_item.image), "source_mpp": r.source_mpp, "mpp": r.mpp,
                        "shape": list(r.image.shape[:2]), **r.info,
                        "stain_matrix": np.round(t["stain"], 4).tolist()})
        log.info("%s: %d points, %dx%d working px", r.name, len(r.points_rc), r.image.shape[1], r.image.shape[0])
    return items, summary


def build_eval_items(spec_items: Sequence, mpp: float) -> list[EvalItem]:
    """Validation items: working-resolution images, their points and (when given) label maps."""
    out = []
    for spec_item in spec_items:
        r = read_item(spec_item, mpp)
        out.append(EvalItem(r.name, r.image, r.points_rc, r.labels))
    return out


def save_items(path: Path, train: Sequence[TrainItem], val: Sequence[EvalItem]) -> Path:
    """Write built items to one ``.npz`` (to carry training to a machine without the readers)."""
    arrays: dict[str, np.ndarray] = {}
    for i, it in enumerate(train):
        for k, v in {"image": it.image, **it.targets()}.items():
            arrays[f"train/{i}/{k}"] = v
        arrays[f"train/{i}/name"] = np.array(it.name)
    for i, it in enumerate(val):
        arrays[f"val/{i}/image"] = it.image
        arrays[f"val/{i}/points_rc"] = it.points_rc
        arrays[f"val/{i}/name"] = np.array(it.name)
        if it.labels is not None:
            arrays[f"val/{i}/labels"] = it.labels
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez_compressed(tmp, **arrays)
    tmp.replace(path)
    return path


def load_items(path: Path) -> tuple[list[TrainItem], list[EvalItem]]:
    """Inverse of :func:`save_items`."""
    with np.load(path, allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    train, val = [], []
    i = 0
    while f"train/{i}/image" in data:
        g = lambda k: data[f"train/{i}/{k}"]  # noqa: E731
        if f"train/{i}/scribble" in data:  # an item of the scribbles recipe
            from .scribble_items import ScribbleItem

            train.append(ScribbleItem(str(g("name")), g("image"), g("scribble")))
        elif f"train/{i}/annotated" in data and f"train/{i}/voronoi" not in data:  # cks: heatmap + region only
            from .point_items import PointItem

            train.append(PointItem(str(g("name")), g("image"), g("centre"), g("annotated")))
        elif f"train/{i}/mask" in data or f"train/{i}/voronoi" not in data:  # few-masks: labelled or unlabelled
            from .mask_items import MaskItem

            targets = [g(k) if f"train/{i}/{k}" in data else None for k in ("mask", "centre", "centre_known")]
            train.append(MaskItem(str(g("name")), g("image"), *targets))
        else:
            train.append(TrainItem(str(g("name")), g("image"), g("voronoi"), g("cluster"), g("centre"), g("annotated")))
        i += 1
    i = 0
    while f"val/{i}/image" in data:
        val.append(EvalItem(str(data[f"val/{i}/name"]), data[f"val/{i}/image"], data[f"val/{i}/points_rc"],
                            data.get(f"val/{i}/labels")))
        i += 1
    return train, val
