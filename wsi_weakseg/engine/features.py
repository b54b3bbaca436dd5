"""Nuclei to QuPath detection features, serialised where they are computed (in the block workers).

Serialising in the workers keeps the final GeoJSON pass to string concatenation. Only the id is unknown
there (it is the anchor's global rank, known after all blocks finish), so a feature is stored as the text
before and after its ``Label`` value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..io.geojson import nucleus_feature, serialize_feature, stable_uuid

_LABEL = '"measurements":{"Label":'


@dataclass(frozen=True)
class DetectionFormat:
    """How nuclei become features: output frame, units, class, and what makes ids stable.

    Attributes
    ----------
    fingerprint, model_sha : str
        Slide content fingerprint and model sha256: with the anchor they make the feature UUID.
    scale : float
        Level-0 pixels per working pixel.
    offset : (float, float)
        Output-frame (x, y) of working pixel (0, 0)'s top-left corner.
    mpp : float
        Working µm/px (for areas and perimeters).
    class_name : str
    color : (int, int, int)
    """

    fingerprint: str
    model_sha: str
    scale: float
    offset: tuple[float, float]
    mpp: float
    class_name: str
    color: tuple[int, int, int]

    def __call__(self, nucleus) -> tuple[str, str]:
        """``(head, tail)`` such that ``head + str(id) + tail`` is the serialised feature."""
        rings = [r * self.scale + np.asarray(self.offset) for r in nucleus.rings]
        ay, ax = nucleus.anchor
        ext = nucleus.rings[0]
        perimeter = float(np.hypot(*np.diff(ext, axis=0).T).sum()) * self.mpp
        feature = nucleus_feature(
            stable_uuid(self.fingerprint, self.model_sha, ax, ay),
            rings[0],
            holes=rings[1:],
            class_name=self.class_name,
            color=self.color,
            measurements={
                "Label": 0,
                "Nucleus: Area µm^2": round(nucleus.area_px * self.mpp**2, 4),
                "Nucleus: Perimeter µm": round(perimeter, 4),
                "Nucleus: Mean probability": round(nucleus.mean_foreground, 4),
                "Nucleus: Centre score": round(nucleus.centre_score, 4),
            },
        )
        head, sep, tail = serialize_feature(feature).partition(_LABEL + "0")
        assert sep, "Label placeholder missing"
        return head + _LABEL, tail
