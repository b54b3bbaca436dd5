"""Training configuration: packaged defaults per recipe, layered with a user's YAML.

Unknown keys are rejected with their dotted path named, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError

PACKAGED = Path(__file__).resolve().parents[1] / "configs"
RECIPES = ("points", "scribbles", "few-masks", "cks", "regions")
#: Validation metrics that may pick the shipped epoch: instance metrics of the nucleus recipes, region metrics.
METRICS = {"regions": ("dice", "iou", "object_dice", "pce")}


def packaged_defaults(recipe: str = "points") -> dict[str, Any]:
    """The packaged default configuration of ``recipe``."""
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; available: {list(RECIPES)}")
    return yaml.safe_load((PACKAGED / f"train-{recipe}.yaml").read_text())


def merge(defaults: Mapping[str, Any], user: Mapping[str, Any], where: str = "") -> dict[str, Any]:
    """Overlay ``user`` on ``defaults`` recursively; a key absent from the defaults is an error.

    Examples
    --------
    >>> merge({"a": 1, "b": {"c": 2}}, {"b": {"c": 3}})
    {'a': 1, 'b': {'c': 3}}
    >>> merge({"a": 1}, {"z": 0})
    Traceback (most recent call last):
    ...
    wsi_weakseg.errors.ConfigError: unknown config key 'z'; allowed here: ['a']
    """
    out = copy.deepcopy(dict(defaults))
    for key, value in user.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in defaults:
            raise ConfigError(f"unknown config key {path!r}; allowed here: {sorted(defaults)}")
        if isinstance(defaults[key], Mapping):
            if not isinstance(value, Mapping):
                raise ConfigError(f"config key {path!r} must be a mapping, got {type(value).__name__}")
            out[key] = merge(defaults[key], value, path)
        else:
            out[key] = value
    return out


def _check(cfg: dict[str, Any]) -> None:
    def positive(path: str, integer: bool = False) -> None:
        node: Any = cfg
        for part in path.split("."):
            node = node[part]
        ok = isinstance(node, (int, float)) and not isinstance(node, bool) and math.isfinite(node) and node > 0
        if integer:
            ok = ok and isinstance(node, int)
        if not ok:
            kind = "a positive integer" if integer else "a positive number"
            raise ConfigError(f"config key {path!r} must be {kind}, got {node!r}")

    for p in ("data.mpp", "optim.lr", "optim.lr_gamma"):
        positive(p)
    if "radius_um" in cfg["data"]:  # the detection radius of the nucleus recipes
        positive("data.radius_um")
    for p in ("data.patch", "data.crop", "optim.epochs", "optim.batch_size", "optim.lr_step_epochs", "model.width"):
        positive(p, integer=True)
    if cfg["data"]["crop"] > cfg["data"]["patch"]:
        raise ConfigError("data.crop must not exceed data.patch")
    metrics = METRICS.get(cfg["recipe"], ("aji", "f1"))
    if cfg["data"]["metric"] not in metrics:
        raise ConfigError(f"data.metric must be one of {list(metrics)}, got {cfg['data']['metric']!r}")
    if cfg["data"]["crop"] % 32:
        raise ConfigError(f"data.crop must be a multiple of 32 (the network's stride), got {cfg['data']['crop']}")
    if cfg["optim"]["optimizer"] not in ("adam", "radam"):
        raise ConfigError(f"optim.optimizer must be 'adam' or 'radam', got {cfg['optim']['optimizer']!r}")
    lo, hi = cfg["augment"]["scale"]
    if not 0 < lo <= hi:
        raise ConfigError("augment.scale must be [low, high] with 0 < low <= high")
    if cfg["optim"]["lr_schedule"] not in ("step", "cosine", "poly"):
        raise ConfigError(f"optim.lr_schedule must be 'step', 'cosine' or 'poly', got {cfg['optim']['lr_schedule']!r}")
    stain = cfg["augment"]["stain"]
    if not (isinstance(stain, (int, float)) and not isinstance(stain, bool) and 0 <= stain < 1e6):
        raise ConfigError(f"config key 'augment.stain' must be a number >= 0, got {stain!r}")
    if stain >= 1:
        raise ConfigError("augment.stain must be below 1 (it scales optical densities by U(1 - s, 1 + s))")
    checks = {"points": _check_points, "scribbles": _check_scribbles, "few-masks": _check_few_masks,
              "cks": _check_cks, "regions": _check_regions}
    checks[cfg["recipe"]](cfg, positive)


def _non_negative(cfg: dict[str, Any], path: str) -> None:
    section, key = path.split(".")
    value = cfg[section][key]
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1e6):
        raise ConfigError(f"config key {path!r} must be a number >= 0, got {value!r}")


def _check_few_masks(cfg: dict[str, Any], positive) -> None:
    f = cfg["few_masks"]
    for p in ("patch_um", "temperature", "centre_sigma_um"):
        positive(f"few_masks.{p}")
    for p in ("sup_weight", "contrast_weight", "consistency_weight", "entropy_weight", "centre_weight"):
        _non_negative(cfg, f"few_masks.{p}")
    for p in ("bank_batches", "projector_dim", "consistency_ramp_epochs"):
        positive(f"few_masks.{p}", integer=True)
    for p in ("max_query_patches", "max_negatives"):
        if f[p] is not None:
            positive(f"few_masks.{p}", integer=True)
    start = f["unsup_from_epoch"]
    if start is not None and not (isinstance(start, int) and not isinstance(start, bool) and start >= 0):
        raise ConfigError(f"few_masks.unsup_from_epoch must be an integer >= 0, or null (no unsupervised branch: "
                          f"SupOnly), got {start!r}")
    if not 0.0 <= f["ema_alpha"] < 1.0:
        raise ConfigError(f"few_masks.ema_alpha must be in [0, 1), got {f['ema_alpha']!r}")
    if not 0.0 <= f["bg_score"] < f["fg_score"] <= 1.0:
        raise ConfigError("few_masks.bg_score and fg_score must satisfy 0 <= bg_score < fg_score <= 1")
    if f["inference_net"] not in ("student", "teacher", "best"):
        raise ConfigError("few_masks.inference_net must be 'student', 'teacher' or 'best'")
    patch = round(f["patch_um"] / cfg["data"]["mpp"])
    if patch < 4 or patch % 4 or cfg["data"]["crop"] % patch:
        raise ConfigError(f"few_masks.patch_um {f['patch_um']} is {patch} px at data.mpp {cfg['data']['mpp']}: it "
                          "must be a multiple of 4 px (the projector's feature stride) that divides data.crop "
                          f"({cfg['data']['crop']}); e.g. patch_um 8 at 0.5 µm/px (16 px) with crop 224")



def _check_cks(cfg: dict[str, Any], positive) -> None:
    c = cfg["cks"]
    for p in ("window_um", "det_smooth_um", "focal_gamma", "prior_d_um", "collapse_delta", "point_sigma_um", "nms_um"):
        positive(f"cks.{p}")
    positive("cks.border_channels", integer=True)
    if not (isinstance(c["overlap_ramp_epochs"], int) and not isinstance(c["overlap_ramp_epochs"], bool)
            and c["overlap_ramp_epochs"] >= 0):
        raise ConfigError(f"cks.overlap_ramp_epochs must be an integer >= 0, got {c['overlap_ramp_epochs']!r}")
    for p in ("prior_weight", "edge_um", "mask_prior_weight", "overlap_weight"):
        if not (isinstance(c[p], (int, float)) and not isinstance(c[p], bool) and 0 <= c[p] < 1e6):
            raise ConfigError(f"config key 'cks.{p}' must be a number >= 0, got {c[p]!r}")
    for p in ("focal_alpha", "detection_threshold"):
        if not (isinstance(c[p], (int, float)) and 0 < c[p] < 1):
            raise ConfigError(f"config key 'cks.{p}' must be in (0, 1), got {c[p]!r}")
    if c["share_norm"] not in ("window", "image"):
        raise ConfigError(f"cks.share_norm must be 'window' or 'image', got {c['share_norm']!r}")
    for p in ("consistency_collaborator", "consistency_principal"):
        if c[p] not in ("linear", "ce"):
            raise ConfigError(f"cks.{p} must be 'linear' (the paper's) or 'ce' (its ablation), got {c[p]!r}")
    strides = c["det_strides"]
    if (not isinstance(strides, list) or not strides or len(set(strides)) != len(strides)
            or any(s not in (4, 8, 16, 32) for s in strides)):
        raise ConfigError(f"cks.det_strides must be a list of distinct values of 4, 8, 16, 32, got {strides!r}")
    chans = c["collaborator_channels"]
    if not (isinstance(chans, list) and len(chans) == 3 and all(isinstance(v, int) and v > 0 for v in chans)):
        raise ConfigError(f"cks.collaborator_channels must be three positive integers, got {chans!r}")
    if not isinstance(c["collaborator_balance"], bool):
        raise ConfigError(f"cks.collaborator_balance must be true or false, got {c['collaborator_balance']!r}")
    if c["collaborator_norm"] not in ("group", "none"):
        raise ConfigError(f"cks.collaborator_norm must be 'group' (ours) or 'none' (plain convs), "
                          f"got {c['collaborator_norm']!r}")
    if c["collaborator_norm"] == "group" and any(v % 4 for v in chans):
        raise ConfigError(f"cks.collaborator_channels must be multiples of 4 with collaborator_norm 'group' "
                          f"(4 groups), got {chans!r}")
    mpp = float(cfg["data"]["mpp"])
    if not 8 <= c["window_um"] / mpp <= 240:
        raise ConfigError(f"cks.window_um {c['window_um']} is {c['window_um'] / mpp:.0f} px at data.mpp {mpp}; "
                          "it must span 8 to 240 px")
    if cfg["model"]["architecture"] != "lacss":
        raise ConfigError(f"the cks recipe trains model.architecture 'lacss', got {cfg['model']['architecture']!r}")


def _check_regions(cfg: dict[str, Any], positive) -> None:
    r = cfg["regions"]
    if r["loss"] not in ("cvm", "pce"):
        raise ConfigError(f"regions.loss must be 'cvm' (the method) or 'pce' (the paper's baseline), got {r['loss']!r}")
    for p in ("point_radius_um", "kl_weight"):
        positive(f"regions.{p}")
    for p in ("lam", "tau", "eps", "tol"):
        positive(f"regions.chan_vese.{p}")
    positive("regions.chan_vese.iterations", integer=True)
    if not (isinstance(r["eta"], (int, float)) and 0 <= r["eta"] <= 1):
        raise ConfigError(f"regions.eta must be in [0, 1], got {r['eta']!r}")
    stage, warm = r["feature_stage"], r["warmup_epochs"]
    if not (isinstance(stage, int) and not isinstance(stage, bool) and 0 <= stage <= 4):
        raise ConfigError(f"regions.feature_stage must be a decoder stage 0 to 4, got {stage!r}")
    if not (isinstance(warm, int) and not isinstance(warm, bool) and warm >= 0):
        raise ConfigError(f"regions.warmup_epochs must be an integer >= 0, got {warm!r}")
    if not isinstance(r["tune_thresholds"], bool):
        raise ConfigError(f"regions.tune_thresholds must be true or false, got {r['tune_thresholds']!r}")
    t = r["thresholds"]
    if not (isinstance(t["region"], (int, float)) and 0 < t["region"] < 1):
        raise ConfigError(f"regions.thresholds.region must be a probability in (0, 1), got {t['region']!r}")
    for key in ("min_region_area_um2", "min_hole_area_um2", "simplify_um"):
        v = t[key]
        if not (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and v >= 0):
            raise ConfigError(f"config key 'regions.thresholds.{key}' must be a number >= 0, got {v!r}")
    colour = r["target_color"]
    if not (isinstance(r["target_class"], str) and r["target_class"] and isinstance(colour, list) and len(colour) == 3
            and all(isinstance(c, int) and 0 <= c <= 255 for c in colour)):
        raise ConfigError("regions.target_class must be a class name and regions.target_color [r, g, b] in 0-255")
    if cfg["data"]["items"] is not None:
        raise ConfigError("the regions recipe builds its items from data.spec; data.items is not supported")
    if cfg["model"]["architecture"] != "resnet34-unet":
        raise ConfigError(f"the regions recipe trains model.architecture 'resnet34-unet', got {cfg['model']['architecture']!r}")


def _check_scribbles(cfg: dict[str, Any], positive) -> None:
    for p in ("scribbles.width_um", "scribbles.ema_alpha", "scribbles.lam", "scribbles.centre_weight"):
        positive(p)
    positive("scribbles.gamma_epochs", integer=True)
    w = cfg["scribbles"]["warmup_epochs"]
    if not (isinstance(w, int) and not isinstance(w, bool) and w >= 0):
        raise ConfigError(f"config key 'scribbles.warmup_epochs' must be an integer >= 0, got {w!r}")
    if not 0.5 <= cfg["scribbles"]["tau"] < 1.0:
        raise ConfigError(f"scribbles.tau must be in [0.5, 1), got {cfg['scribbles']['tau']!r}")
    if cfg["scribbles"]["ema_alpha"] > 1.0:
        raise ConfigError("scribbles.ema_alpha must be in (0, 1]")


def _check_points(cfg: dict[str, Any], positive) -> None:
    for p in ("points.point_radius_um", "points.cluster_distance_um", "points.centre_sigma_um",
              "points.crf_radius_um", "points.crf_sigma_um", "points.crf_sigma_rgb"):
        positive(p)
    positive("points.gamma_epochs", integer=True)
    if cfg["points"]["inference_net"] not in ("a", "b", "best"):
        raise ConfigError("points.inference_net must be 'a', 'b' or 'best'")
    if not 0.0 < cfg["points"]["ema_weight"] <= 1.0:
        raise ConfigError("points.ema_weight must be in (0, 1]")
    if cfg["points"]["ramp_epochs"] is not None:
        positive("points.ramp_epochs", integer=True)
    if cfg["points"]["cluster_colour"] not in ("h", "rgb", "rgb+h"):
        raise ConfigError(f"points.cluster_colour must be 'h', 'rgb' or 'rgb+h', got {cfg['points']['cluster_colour']!r}")
    positive("points.cluster_colour_weight")
    for p in ("points.cluster_ring_um", "points.jitter_um", "points.crf_weight"):
        _non_negative(cfg, p)


def load_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Packaged defaults, then the user's YAML file, then ``overrides`` (e.g. from flags); validated.

    Relative ``data.spec``, ``data.items`` and ``data.cache_dir`` paths resolve against the config file's folder.
    """
    user: dict[str, Any] = {}
    base = None
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ConfigError(f"config file {path} must hold a mapping at the top level")
        user = dict(loaded or {})
        base = path.resolve().parent
    return config_from_mapping(user, base, overrides)


def config_from_mapping(user: Mapping[str, Any], base: Path | None = None,
                        overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Packaged defaults, then ``user`` (a config as its YAML file holds it), then ``overrides``; validated.

    Relative ``data.spec``, ``data.items`` and ``data.cache_dir`` paths resolve against ``base`` (default: the
    current folder). Used by :func:`load_config` and by the server, whose configs arrive as JSON objects.
    """
    if not isinstance(user, Mapping):
        raise ConfigError(f"a training config must be a mapping, got {type(user).__name__}")
    base = Path.cwd() if base is None else base
    recipe = (overrides or {}).get("recipe", user.get("recipe", "points"))
    cfg = merge(packaged_defaults(recipe), user)
    if overrides:
        cfg = merge(cfg, overrides)
    _check(cfg)
    for key in ("spec", "items", "cache_dir"):
        value = cfg["data"][key]
        if value is not None:
            cfg["data"][key] = str((base / Path(value).expanduser()).resolve())
    return cfg
