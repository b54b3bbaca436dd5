"""``segment``'s run options (the CLI flags) and how they are recorded in ``run.json``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any

from ..errors import ConfigError
from .inference import STRIDE
from .pictures import MAX_OVERLAYS
from .regions import check_tissue_option
from .smooth import OUTLINE_MODES


@dataclass
class SegmentOptions:
    """Run options (the CLI flags). ``None`` means the model card's value."""

    tile_size: int | None = None
    batch_size: int = 8
    num_workers: int = 2
    device: str = "auto"
    block_size: int = 1024
    mpp: float | None = None
    roi: str | None = None
    tissue: str = "auto"
    #: QuPath GeoJSON of classified region annotations: nuclei per region (engine/nuclei_regions.py)
    regions: str | None = None
    compress: bool = False
    progress: bool = True
    preview: bool = True
    overlays: int = 0
    outlines: str = OUTLINE_MODES[0]  # "pixel" or "smooth" (docs/design.md, "Outline modes")
    #: ``on_progress(fraction)`` as tiles and blocks finish (from worker threads; 1.0 once published). Not a
    #: result option: it is left out of the resume key and of run.json (:data:`NOT_RECORDED`).
    on_progress: Callable[[float], None] | None = field(default=None, compare=False, repr=False)

    def validate(self, card_tile: int) -> int:
        """Check the options; return the tile size to use (the card's unless given)."""
        tile = card_tile if self.tile_size is None else self.tile_size
        if not isinstance(tile, int) or tile <= 0 or tile % STRIDE:
            raise ConfigError(f"--tile-size must be a positive multiple of {STRIDE} (e.g. 512), got {tile}")
        if self.block_size <= 0 or self.block_size % STRIDE:
            raise ConfigError(f"--block-size must be a positive multiple of {STRIDE}, got {self.block_size}")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.num_workers < 1:
            raise ConfigError(f"--num-workers must be >= 1, got {self.num_workers}")
        if not isinstance(self.overlays, int) or not 0 <= self.overlays <= MAX_OVERLAYS:
            raise ConfigError(f"--overlays must be an integer from 0 to {MAX_OVERLAYS}, got {self.overlays}")
        if self.outlines not in OUTLINE_MODES:
            raise ConfigError(f"--outlines must be one of {', '.join(OUTLINE_MODES)}, got {self.outlines!r}")
        check_tissue_option(self.tissue)
        return tile


#: SegmentOptions fields that are not written into run.json (nor the resume key): callables, not settings.
NOT_RECORDED = ("on_progress",)


def options_record(opts: SegmentOptions) -> dict[str, Any]:
    """The options as plain values (run.json's ``config``), without :data:`NOT_RECORDED` fields."""
    return {f.name: getattr(opts, f.name) for f in fields(opts) if f.name not in NOT_RECORDED}
