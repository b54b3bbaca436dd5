"""A regions model's pictures: the class's translucent fill, its outlines (holes too) and a legend.

Pure drawing on arrays; :mod:`wsi_weakseg.engine.region_pictures` reads the slide and writes the files. The
same composite is drawn on the preview's thumbnail (labels sampled at its pixel centres) and on the overlays
(labels at working resolution), so both show the same outline rule: the inner boundary pixels of each region
(:func:`~wsi_weakseg.viz.outline_mask`), painted opaque in the class colour over a fill at :data:`FILL_ALPHA`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import outline_mask, paint

#: Opacity of the class colour over a region's pixels.
FILL_ALPHA = 0.35
RGB = tuple[int, int, int]


def region_composite(rgb: np.ndarray, labels: np.ndarray, colour: RGB, alpha: float = FILL_ALPHA) -> np.ndarray:
    """``rgb`` with labelled pixels filled at ``alpha`` and each region's inner outline opaque, in ``colour``.

    Examples
    --------
    A region with a one-pixel hole: the image's edge is no outline, the hole's rim and the side facing
    background are.

    >>> labels = np.zeros((5, 5), int); labels[:, :4] = 1; labels[2, 1] = 0
    >>> region_composite(np.zeros((5, 5, 3), np.uint8), labels, (200, 100, 0), alpha=0.5)[..., 0]
    array([[100, 100, 100, 200,   0],
           [100, 200, 100, 200,   0],
           [200,   0, 200, 200,   0],
           [100, 200, 100, 200,   0],
           [100, 100, 100, 200,   0]], dtype=uint8)
    """
    labels = np.asarray(labels)
    return paint(paint(rgb, labels != 0, colour, alpha), outline_mask(labels), colour)


def legend_side(regions: tuple[str, RGB], tissue: RGB | None = None,
                alpha: float = FILL_ALPHA) -> Callable[[object, object], None]:
    """A ``side`` for :func:`~wsi_weakseg.viz.preview.render_framed`: a legend of the class and the tissue outline."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    name, colour = regions
    rgb = np.asarray(colour) / 255.0
    handles = [Patch(facecolor=(*rgb, alpha), edgecolor=rgb, linewidth=1.5, label=name)]
    if tissue is not None:
        handles.append(Line2D([], [], color=np.asarray(tissue) / 255.0, label="tissue"))

    def side(fig, cax) -> None:
        cax.set_axis_off()
        cax.legend(handles=handles, loc="upper left", bbox_to_anchor=(0.0, 1.0), borderaxespad=0.0, frameon=False,
                   fontsize=8, handlelength=1.2)

    return side
