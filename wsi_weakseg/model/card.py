"""Model folders: a ``card.json`` describing the model plus an optional weights file.

A model is loaded by name (a folder packaged under ``wsi_weakseg/models/``) or by path. The card carries
everything the engine needs to run it correctly on a slide: working pixel size, tile size, inference context,
the largest nucleus the merge supports, normalisation, thresholds, classes and colours, and the sha256 of the
weights, which is checked on load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ModelCardError
from ._identity import (  # noqa: F401
    LATER_FIELDS,
    LEGACY_KEYS,
    NON_RESULT_FIELDS,
    bare_file_name,
    identity_sha256,
)
from .region_card import REQUIRED_REGION_THRESHOLDS, region_card_problems

log = logging.getLogger(__name__)

CARD_NAME = "card.json"
PACKAGED = Path(__file__).resolve().parents[1] / "models"
#: The untrained, exactly local colour-deconvolution model (tests' stub, classical comparison).
BASELINE_MODEL = "hematoxylin-baseline"
#: The model ``segment`` uses when none is given: trained from point clicks only (issue 4, docs/training.md).
DEFAULT_MODEL = "nuclei-points-v2"
HEADS = ("foreground", "centre")
#: Model types (the card's ``model_type``): how the engine turns a network's output into nuclei.
#: ``dense-maps``: foreground + centre maps, engine markers and geodesic split (every model before issue 17);
#: ``detect-segment``: the network detects nuclei and segments each in a window (LACSS, :mod:`.lacss`);
#: ``regions``: one probability map of a tissue class, written as region annotations (:mod:`.region_card`).
DENSE_MAPS = "dense-maps"
DETECT_SEGMENT = "detect-segment"
REGIONS = "regions"
MODEL_TYPES = (DENSE_MAPS, DETECT_SEGMENT, REGIONS)

DEFAULT_THRESHOLDS = {
    "foreground": 0.5,  # foreground probability above which a pixel can belong to a nucleus
    "centre": 0.3,  # minimum centre-heatmap value of a nucleus marker
    "peak_radius_um": 2.0,  # markers are maxima of the centre map within this radius
    "min_area_um2": 6.0,  # smaller instances are dropped
    "path_weight": 2.0,  # weight of (1 - centre) in the geodesic cost that splits touching nuclei
}


@dataclass
class ModelCard:
    """Everything the engine needs to know about a model.

    Attributes
    ----------
    name : str
        Model name.
    architecture : str
        ``"resnet34-unet"``, ``"hematoxylin-baseline"`` or ``"lacss"``.
    arch_kwargs : dict
        Keyword arguments of the architecture's constructor.
    mpp : float
        Working pixel size in microns per pixel.
    tile_size : int
        Default tile core size in working pixels (multiple of 32).
    context_px : int
        Inference context added on every side of a tile (working pixels, multiple of 32); measured so that
        tiled and whole-image maps agree within tolerance.
    max_reach_um : float
        Geodesic cost budget of a nucleus, in microns: every pixel of a nucleus is reached from its marker
        by a path of cost at most this. Step costs are at least one per pixel step, so it also bounds the
        straight-line distance from marker to any pixel of the nucleus (a nucleus spans at most twice it);
        pixels beyond the budget are cut off and the nucleus is counted as oversized. It sets the merge halo
        (:meth:`~wsi_weakseg.engine.instances.InstanceParams.halo`). Cards written before this name say
        ``max_nucleus_um``, which is read as this field.
    heads : list of str
        Names of the output channels.
    activation : str
        ``"sigmoid"`` when the network outputs logits, ``"identity"`` when it outputs probabilities.
    normalization : dict
        ``mean`` and ``std`` per RGB channel on the [0, 1] scale.
    thresholds : dict
        Post-processing thresholds (see ``DEFAULT_THRESHOLDS``).
    classes : list of dict
        ``{"name", "color"}`` of each output class; the first is the nucleus class.
    weights : str or None
        File name of the state_dict inside the model folder.
    weights_sha256 : str or None
        sha256 of the weights file.
    trained : bool
        False for untrained/heuristic models; outputs are then labelled as such.
    description : str
        Free text.
    license : str
        Terms of use of the weights (they inherit the licences of their training data).
    training : dict or None
        Summary of the training data and recipe.
    metrics : dict or None
        Validation metrics.
    model_type : str
        How nuclei come out of the network (:data:`MODEL_TYPES`): ``"dense-maps"`` (default; foreground and
        centre maps, engine markers and geodesic split) or ``"detect-segment"`` (detections, each with a mask in
        a window; the thresholds then read: ``centre`` = detection probability, ``peak_radius_um`` = the radius
        within which a detection must be the best to be kept, ``foreground`` = mask probability;
        ``path_weight`` is unused) or ``"regions"`` (one tissue-class map; keys in :mod:`.region_card`).
    window_um : float or None
        ``detect-segment`` only: side of the square mask window around each detection, in microns (rounded to
        a multiple of 8 working pixels). No pixel of a nucleus is farther than half of it (plus 3 px) from its
        detected location, which sets the merge halo in place of ``max_reach_um``.
    """

    name: str
    architecture: str
    mpp: float
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    tile_size: int = 512
    context_px: int = 64
    max_reach_um: float = 20.0
    heads: list[str] = field(default_factory=lambda: list(HEADS))
    activation: str = "sigmoid"
    normalization: dict[str, list[float]] = field(
        default_factory=lambda: {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    )
    thresholds: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_THRESHOLDS))
    classes: list[dict[str, Any]] = field(default_factory=lambda: [{"name": "Nucleus", "color": [220, 40, 40]}])
    weights: str | None = None
    weights_sha256: str | None = None
    trained: bool = True
    description: str = ""
    license: str = ""
    training: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None
    model_type: str = DENSE_MAPS
    window_um: float | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.mpp, (int, float)) and math.isfinite(self.mpp) and self.mpp > 0):
            problems.append(f"mpp must be a positive number, got {self.mpp!r}")
        if self.tile_size <= 0 or self.tile_size % 32:
            problems.append(f"tile_size must be a positive multiple of 32, got {self.tile_size}")
        if self.context_px < 0 or self.context_px % 32:
            problems.append(f"context_px must be a non-negative multiple of 32, got {self.context_px}")
        if not self.max_reach_um > 0:
            problems.append("max_reach_um must be positive")
        if self.model_type != REGIONS and list(self.heads[:2]) != list(HEADS):
            problems.append(f"heads must start with {list(HEADS)}, got {self.heads}")
        if self.activation not in ("sigmoid", "identity"):
            problems.append(f"activation must be 'sigmoid' or 'identity', got {self.activation!r}")
        missing = set(REQUIRED_REGION_THRESHOLDS if self.model_type == REGIONS else DEFAULT_THRESHOLDS) - set(self.thresholds)
        if missing:
            problems.append(f"thresholds lack {sorted(missing)}")
        if not self.classes or any("name" not in c or len(c.get("color", ())) != 3 for c in self.classes):
            problems.append("classes must be a non-empty list of {name, color: [r, g, b]}")
        if self.weights is not None and not bare_file_name(self.weights):
            problems.append(
                f"weights must be the bare name of a file in the model folder (e.g. 'weights.pt'), got "
                f"{self.weights!r}; copy the weights into the folder and give their file name"
            )
        problems += self._type_problems()
        if problems:
            raise ModelCardError(f"invalid model card {self.name!r}: " + "; ".join(problems))

    def _type_problems(self) -> list[str]:
        """What is wrong with ``model_type`` and ``window_um``."""
        if self.model_type not in MODEL_TYPES:
            return [f"model_type must be one of {list(MODEL_TYPES)}, got {self.model_type!r}"]
        if (self.architecture == "lacss") != (self.model_type == DETECT_SEGMENT):
            return ["architecture 'lacss' goes with model_type 'detect-segment' (and only it)"]
        if self.model_type == REGIONS:
            return region_card_problems(self)
        if self.model_type == DENSE_MAPS:
            return [] if self.window_um is None else ["window_um is for model_type 'detect-segment' only"]
        if not (isinstance(self.window_um, (int, float)) and math.isfinite(self.window_um) and self.window_um > 0):
            return [f"model_type 'detect-segment' needs a positive window_um, got {self.window_um!r}"]
        if not 8 <= self.window_px() <= 240:
            return [f"window_um {self.window_um} is {self.window_px()} px at {self.mpp} µm/px; it must be 8 to 240 px"]
        return []

    def window_px(self, mpp: float | None = None) -> int:
        """The mask window in working pixels at ``mpp`` (default the card's): ``window_um`` rounded to a multiple of 8."""
        if self.window_um is None:
            raise ModelCardError(f"model {self.name!r} is not a detect-segment model: it has no mask window")
        return 8 * max(1, round(self.window_um / (mpp or self.mpp) / 8))

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "card") -> ModelCard:
        """Build a card from its JSON mapping, rejecting unknown keys by name (legacy names are read as theirs)."""
        data = dict(data)
        for old, new in LEGACY_KEYS.items():
            if old in data:
                if new in data:
                    raise ModelCardError(f"{source}: give {new!r} only ({old!r} is its former name)")
                data[new] = data.pop(old)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ModelCardError(f"{source}: unknown model-card keys {unknown}; {_key_advice(unknown, known)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelCardError(f"{source}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def px(self, microns: float) -> float:
        """Convert a length in microns to working pixels."""
        return microns / self.mpp


def _key_advice(unknown: list[str], known: set[str]) -> str:
    """What to write instead of unknown card keys: the closest known key of each, or where the keys are listed.

    The whole list of known keys would make the one-line error longer than a terminal line.

    Examples
    --------
    >>> _key_advice(["tile_sise"], {"tile_size", "mpp"})
    "did you mean 'tile_size'? (known keys: the fields of wsi_weakseg.model.card.ModelCard)"
    """
    import difflib

    close = [m[0] for k in unknown if (m := difflib.get_close_matches(k, sorted(known), n=1))]
    hint = f"did you mean {', '.join(repr(c) for c in close)}? " if close else "remove them or fix their names "
    return hint + "(known keys: the fields of wsi_weakseg.model.card.ModelCard)"


@dataclass
class Model:
    """A loaded model: its card, its network (eval mode) and its folder."""

    card: ModelCard
    net: nn.Module
    path: Path | None = None
    weights_sha256: str | None = None

    @property
    def sha256(self) -> str:
        """Identity of the model: weights *and* result-affecting card fields (see :func:`identity_sha256`).

        It keys the cohort's done-manifest and the detection UUIDs, so re-tuned thresholds count as a
        new model while an edited description does not. ``weights_sha256`` is the digest of the weights
        file as loaded (the card's own ``weights_sha256`` when the model was built in memory).
        """
        return identity_sha256(self.card, self.weights_sha256 or self.card.weights_sha256)


def build_net(card: ModelCard) -> nn.Module:
    """Instantiate the card's architecture with its kwargs (weights not loaded)."""
    try:
        if card.architecture == "resnet34-unet":
            from .resnet_unet import ResNet34UNet

            return ResNet34UNet(out_channels=len(card.heads), **card.arch_kwargs)
        if card.architecture == "hematoxylin-baseline":
            from .baseline import HematoxylinBaseline

            return HematoxylinBaseline(**card.arch_kwargs)
        if card.architecture == "lacss":
            from .lacss import LacssNet

            return LacssNet(**card.arch_kwargs)
    except (TypeError, ValueError) as exc:
        raise ModelCardError(f"model {card.name!r}: bad arch_kwargs {card.arch_kwargs}: {exc}") from None
    raise ModelCardError(
        f"model {card.name!r}: unknown architecture {card.architecture!r}; "
        "use 'resnet34-unet', 'hematoxylin-baseline' or 'lacss'"
    )


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def available_models() -> list[str]:
    """Names of the models packaged with wsi-weakseg."""
    return sorted(p.parent.name for p in PACKAGED.glob(f"*/{CARD_NAME}"))


def resolve_model_dir(name_or_path: str | Path) -> Path:
    """Map a model name or folder path to the folder holding its card."""
    p = Path(name_or_path)
    if (p / CARD_NAME).is_file():
        return p
    if p.is_file() and p.name == CARD_NAME:
        return p.parent
    if (PACKAGED / str(name_or_path) / CARD_NAME).is_file():
        return PACKAGED / str(name_or_path)
    raise ModelCardError(
        f"no model named or at {str(name_or_path)!r}: give a folder containing {CARD_NAME} "
        f"or one of the packaged models {available_models()}"
    )


def load_model(name_or_path: str | Path = DEFAULT_MODEL) -> Model:
    """Load a model folder (or packaged model by name), checking the weights' sha256.

    Raises
    ------
    ModelCardError
        The folder or card is missing or malformed, or the weights are missing or do not match the card.
    """
    folder = resolve_model_dir(name_or_path)
    card_path = folder / CARD_NAME
    try:
        data = json.loads(card_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelCardError(f"cannot read model card {card_path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelCardError(f"model card {card_path} must hold a JSON object")
    card = ModelCard.from_dict(data, source=str(card_path))  # refuses a weights name that is not a bare file name
    net = build_net(card)
    digest = None
    if card.weights:
        wpath = folder / card.weights
        if not wpath.is_file():
            raise ModelCardError(f"model {card.name!r}: weights file {wpath} is missing")
        digest = file_sha256(wpath)
        if card.weights_sha256 and digest != card.weights_sha256:
            raise ModelCardError(
                f"model {card.name!r}: weights {wpath.name} have sha256 {digest[:12]}..., the card says "
                f"{card.weights_sha256[:12]}...; the file is corrupt or belongs to another model"
            )
        try:
            state = torch.load(wpath, map_location="cpu", weights_only=True)
            net.load_state_dict(state)
        except Exception as exc:  # noqa: BLE001 - any failure here means the weights do not fit the card
            raise ModelCardError(f"model {card.name!r}: weights {wpath.name} do not load: {exc}") from None
    elif card.architecture != "hematoxylin-baseline":
        log.warning("model %r has no weights: running an untrained network", card.name)
    net.eval()
    return Model(card=card, net=net, path=folder, weights_sha256=digest)


def save_model(folder: str | Path, card: ModelCard, net: nn.Module) -> Path:
    """Write ``net``'s state_dict and ``card`` (with the weights' sha256) into ``folder``."""
    return _write_folder(Path(folder), card, net.state_dict())


def _write_folder(folder: Path, card: ModelCard, state: dict[str, torch.Tensor]) -> Path:
    """Weights (if any) then card into ``folder``, each under a temporary name renamed into place."""
    folder.mkdir(parents=True, exist_ok=True)
    if state:
        card.weights = card.weights or "weights.pt"
        tmp = folder / (card.weights + ".tmp")
        torch.save(state, tmp)
        tmp.replace(folder / card.weights)
        card.weights_sha256 = file_sha256(folder / card.weights)
    tmp_card = folder / (CARD_NAME + ".tmp")
    tmp_card.write_text(json.dumps(card.to_dict(), indent=2) + "\n")
    tmp_card.replace(folder / CARD_NAME)
    return folder


def export_model(
    src: str | Path, dst: str | Path, half: bool = True, state: dict[str, torch.Tensor] | None = None, **card_updates: Any
) -> Path:
    """Copy a model folder's card and weights into ``dst``, optionally as float16 weights and with card changes.

    Parameters
    ----------
    src : path
        Model folder (``card.json`` + weights), e.g. the output of ``wsi-weakseg train``.
    dst : path
        Folder to write (created); its ``card.json`` is written last.
    half : bool
        Store floating-point tensors as float16 (half the size; the net computes in float32 after loading).
    state : dict, optional
        A state_dict replacing ``src``'s weights (e.g. averaged weights of the same architecture).
    **card_updates
        Card fields to set (``name``, ``description``, ``license``, ``thresholds``, ``metrics`` ...).

    Returns
    -------
    Path
        ``dst``.
    """
    model = load_model(src)
    if state is not None:
        model.net.load_state_dict(state)
    card = dataclasses.replace(model.card, weights="weights.pt", **card_updates)
    weights = {k: (v.half() if half and v.is_floating_point() else v) for k, v in model.net.state_dict().items()}
    return _write_folder(Path(dst), card, weights)
