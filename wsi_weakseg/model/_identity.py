"""Model identity: the sha256 over a model's weights and every card field that changes its results.

Kept apart from :mod:`.card` so the card's schema and the identity format can be read on their own. The format
is fixed ("identity 1"): a renamed field keeps its former name here and a field added later is left out while it
holds its default, so no existing model's sha256 (its detections' ids, a cohort's done-manifests) ever changes.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .card import ModelCard

#: Former card key -> current field. The identity hash keeps the former names (identity format 1), so a
#: renamed field never changes a model's sha256, its detections' ids or a cohort's done-manifest.
LEGACY_KEYS = {"max_nucleus_um": "max_reach_um"}

#: Card fields that do not change what the model outputs for a slide; every other field does and is part
#: of :attr:`Model.sha256`. (The weights file name is covered by the weights' content instead.)
NON_RESULT_FIELDS = frozenset({"name", "description", "license", "training", "metrics", "weights", "weights_sha256"})

#: Fields added after identity format 1 was fixed, with their defaults: left out of the identity while they hold
#: the default, so every card written before them keeps its sha256 (and its detections' ids).
LATER_FIELDS = {"model_type": "dense-maps", "window_um": None}


def identity_sha256(card: ModelCard, weights_sha256: str | None) -> str:
    """Model identity: sha256 over the weights' sha256 and a canonical JSON of the result-affecting card fields.

    Parameters
    ----------
    card : ModelCard
    weights_sha256 : str or None
        sha256 of the weights file's bytes (None for a parameter-free model).

    Returns
    -------
    str
        Hex digest. It changes when the weights or any field outside :data:`NON_RESULT_FIELDS`
        (thresholds, mpp, architecture, normalisation, tile/context, classes ...) changes, and stays
        the same when only the name, description, licence, metrics or training history change.
    """
    current = {new: old for old, new in LEGACY_KEYS.items()}
    fields = {current.get(k, k): v for k, v in card.to_dict().items()
              if k not in NON_RESULT_FIELDS and not (k in LATER_FIELDS and v == LATER_FIELDS[k])}
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), allow_nan=False)
    h = hashlib.sha256(b"wsi-weakseg model identity 1\n")
    h.update((weights_sha256 or "no-weights").encode() + b"\n")
    h.update(canonical.encode())
    return h.hexdigest()


def bare_file_name(name: object) -> bool:
    """True for a plain file name: no folder part, no ``..``, not absolute, not empty.

    Examples
    --------
    >>> [bare_file_name(n) for n in ("weights.pt", "../w.pt", "/tmp/w.pt", "a\\\\w.pt", "C:w.pt", "")]
    [True, False, False, False, False, False]
    """
    return (isinstance(name, str) and name.strip() == name and name not in ("", ".")
            and not any(c in name for c in "/\\:\0") and ".." not in name)
