"""The image scale from a scale bar drawn in the image: a thin, long, saturated horizontal bar."""

from __future__ import annotations

import numpy as np


def find_scale_bar(grey: np.ndarray, min_level: int = 230) -> tuple[int, tuple[int, int, int, int]] | None:
    """``(length in px, (x0, y0, x1, y1))`` of the longest thin horizontal bar of pixels >= ``min_level`` (at
    most 6 % of the image high, at least 8 times as long as high and 5 % of the width), or None."""
    from scipy import ndimage as ndi

    g = np.asarray(grey)
    h, w = g.shape
    lab, _ = ndi.label(g >= min_level)
    best = None
    for i, sl in enumerate(ndi.find_objects(lab), start=1):
        if sl is None:
            continue
        bh, bw = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        if bh <= max(2, 0.06 * h) and bw >= 8 * bh and bw >= 0.05 * w:
            fill = (lab[sl] == i).mean()
            if fill >= 0.8 and (best is None or bw > best[0]):
                best = (int(bw), (int(sl[1].start), int(sl[0].start), int(sl[1].stop - 1), int(sl[0].stop - 1)))
    return best
