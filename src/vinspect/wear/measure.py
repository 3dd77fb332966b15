"""Flank wear of a cutting insert from its wear-region mask: VB max / VB mean perpendicular to the cutting edge,
worn length, area, and a breakage flag; in pixels, and in millimetres when a scale is known.

The cutting edge is found from the insert's outline, not from the mask: the insert is the largest bright region
(the background of the crops is dark), its outline on the edge side (``edge="bottom"``: the lowest insert pixel
of every column) is fitted with a straight line robust to notches (trimmed least squares), and the fitted line
stands for the original, unworn edge.  For every mask pixel, ``s`` is its position along the edge and ``d`` its
distance from the edge line towards the insert, both through the pixel's centre; the wear-land width at
position ``s`` (1 px bins) is the largest ``d`` + 0.5 (the pixel's far half): a band of ``w`` rows along a
straight edge measures exactly ``w``.  Wear regions that do not reach within ``tol`` px of the edge outline are
not flank wear and are ignored (a false detection inside the insert does not become a huge VB).

* ``vb_max``: the largest width (ISO 3685 VB max); ``vb_mean``: the mean width over the worn part of the edge;
  ``vb_mean_edge``: the mean over the whole edge length (unworn positions count 0);
* ``worn_length``: the length of edge with wear; ``area``: the wear pixels kept;
* ``notch_depth``: how far the outline recedes behind the fitted edge line (median of 3 columns);
  ``breakage``: notch_depth >= ``notch_px`` over at least ``notch_width`` columns (a chipped or broken edge),
  looked for away from the insert's corners (``notch_trim`` of the edge length cut at each end).
  A heuristic: the datasets at hand have no breakage ground truth.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from ..errors import BadInputError

SIDES = ("bottom", "top", "left", "right")


def _to_bottom(a: np.ndarray, side: str) -> np.ndarray:
    """Rotate/flip an (H, W, ...) array so that the cutting edge ``side`` lies at the bottom."""
    if side == "bottom":
        return a
    if side == "top":
        return a[::-1]
    if side == "left":
        return np.rot90(a, 1)  # the left column becomes the bottom row
    if side == "right":
        return np.rot90(a, -1)
    raise BadInputError(f"--edge {side!r}: use one of {', '.join(SIDES)}")


def _from_bottom(a: np.ndarray, side: str) -> np.ndarray:
    if side in ("bottom", "top"):
        return _to_bottom(a, side)
    return np.rot90(a, -1) if side == "left" else np.rot90(a, 1)


def insert_region(grey: np.ndarray, level: float | None = None) -> np.ndarray:
    """The insert: the largest region brighter than ``level`` (default: Otsu's threshold, at least 12),
    opened and hole-filled."""
    from scipy import ndimage as ndi

    g = np.asarray(grey, np.float64)
    if level is None:
        level = max(12.0, _otsu(g))
    fg = ndi.binary_fill_holes(ndi.binary_opening(g > level, iterations=2))
    lab, n = ndi.label(fg)
    if n == 0:
        raise BadInputError("no insert found: the image has no region brighter than its background")
    return lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1)


def _otsu(g: np.ndarray) -> float:
    hist, _ = np.histogram(g, bins=256, range=(0, 256))
    p = hist / max(hist.sum(), 1)
    w0 = np.cumsum(p)
    mu = np.cumsum(p * np.arange(256))
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (mu[-1] * w0 - mu) ** 2 / (w0 * (1 - w0))
    return float(np.nanargmax(between))


@dataclass
class Edge:
    """The fitted cutting edge in the bottom-edge frame: the line y = slope * x + offset (the outer boundary
    of the edge pixels), the columns it spans and the outline's bottom row per column."""

    slope: float
    offset: float
    x0: int
    x1: int
    profile: np.ndarray  # (x1 - x0 + 1,) lowest insert row per column (nan where the insert is absent)

    def y(self, x):
        return self.slope * np.asarray(x, np.float64) + self.offset

    @property
    def length(self) -> float:
        return float((self.x1 - self.x0 + 1) * np.sqrt(1 + self.slope ** 2))


def fit_edge(insert: np.ndarray, trim: float = 0.05) -> Edge:
    """Robust straight-line fit of the insert's bottom outline (columns of its middle, ``trim`` cut each side)."""
    cols = np.flatnonzero(insert.any(axis=0))
    if cols.size < 10:
        raise BadInputError("the insert is too small to find its cutting edge")
    x0, x1 = int(cols[0]), int(cols[-1])
    h = insert.shape[0]
    bottom = np.full(x1 - x0 + 1, np.nan)
    sub = insert[:, x0:x1 + 1]
    has = sub.any(axis=0)
    bottom[has] = h - 1 - np.argmax(sub[::-1, has], axis=0)
    k = int(round((x1 - x0 + 1) * trim))
    xs = np.arange(x0, x1 + 1)[k:len(bottom) - k]
    ys = bottom[k:len(bottom) - k]
    ok = np.isfinite(ys)
    xs, ys = xs[ok].astype(np.float64), ys[ok]
    keep = np.ones(len(xs), bool)
    a, b = 0.0, float(np.median(ys))
    for _ in range(5):
        a, b = np.polyfit(xs[keep], ys[keep], 1)
        r = ys - (a * xs + b)
        mad = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))
        new = np.abs(r) <= max(1.5, 2.5 * mad)
        if new.sum() < 10 or np.array_equal(new, keep):
            break
        keep = new
    return Edge(float(a), float(b) + 0.5, x0, x1, bottom)


@dataclass
class WearMeasure:
    vb_max: float
    vb_mean: float
    vb_mean_edge: float
    vb_median: float
    worn_length: float
    area: float
    notch_depth: float
    breakage: bool
    edge_length: float
    edge_angle_deg: float
    vb_max_at: tuple[float, float, float, float] | None  # (x, y) on the edge -> (x, y) of the farthest point
    mm_per_px: float | None = None

    def as_dict(self) -> dict:
        d = asdict(self)
        d["vb_max_at"] = list(self.vb_max_at) if self.vb_max_at else None
        s = self.mm_per_px
        for k in ("vb_max", "vb_mean", "vb_mean_edge", "vb_median", "worn_length", "notch_depth", "edge_length"):
            d[f"{k}_mm"] = d[k] * s if s else None
        d["area_mm2"] = self.area * s * s if s else None
        return d


def measure(grey: np.ndarray, mask: np.ndarray, edge: str = "bottom", mm_per_px: float | None = None,
            tol: float = 4.0, notch_px: float = 5.0, notch_width: int = 3, notch_trim: float = 0.08,
            insert: np.ndarray | None = None) -> tuple[WearMeasure, dict]:
    """Measure one insert: ``grey`` (H, W) image, ``mask`` (H, W) wear region (nonzero).

    Returns the measures and the geometry for drawing (edge line, kept wear pixels, VB max segment) in the
    image's own coordinates."""
    from scipy import ndimage as ndi

    grey = np.asarray(grey)
    mask = np.asarray(mask) > 0
    if grey.shape != mask.shape:
        raise BadInputError(f"image {grey.shape[1]}x{grey.shape[0]} and mask {mask.shape[1]}x{mask.shape[0]} "
                            "differ in size")
    ins0 = insert_region(grey) if insert is None else np.asarray(insert, bool)
    g_ins, g_mask = _to_bottom(ins0, edge), _to_bottom(mask, edge)
    e = fit_edge(g_ins)
    norm = np.sqrt(1 + e.slope ** 2)
    # wear regions reaching the edge outline (within tol px of the insert's bottom row in their columns)
    lab, n = ndi.label(g_mask)
    keep = np.zeros_like(g_mask)
    if n:
        ys, xs = np.nonzero(g_mask)
        prof = np.interp(xs, np.arange(e.x0, e.x1 + 1), np.nan_to_num(e.profile, nan=-1e9))
        line = e.y(xs) - 0.5
        near = (ys >= np.minimum(prof, line) - tol) & (xs >= e.x0 - tol) & (xs <= e.x1 + tol)
        good = np.unique(lab[ys[near], xs[near]])
        keep = np.isin(lab, good[good > 0])
    ys, xs = np.nonzero(keep)
    d = (e.slope * xs + e.offset - ys) / norm  # towards the insert: positive
    s = (xs + e.slope * (ys - e.offset)) / norm  # position along the edge
    vb_max = vb_mean = vb_median = worn = 0.0
    seg = None
    if xs.size:
        d = np.maximum(d, 0.0)
        bins = np.floor(s).astype(int)
        order = np.argsort(bins)
        b_sorted, d_sorted = bins[order], d[order]
        starts = np.r_[0, np.flatnonzero(np.diff(b_sorted)) + 1]
        width = np.maximum.reduceat(d_sorted, starts) + 0.5
        vb_max, vb_mean, vb_median = float(width.max()), float(width.mean()), float(np.median(width))
        worn = float(len(width))
        j = int(np.argmax(d))
        fx, fy = float(xs[j]), float(ys[j])
        # the foot of the perpendicular from the farthest pixel onto the edge line
        t = (fx + e.slope * (fy - e.offset)) / (1 + e.slope ** 2)
        seg = (t, e.slope * t + e.offset, fx, fy)
    edge_len = e.length
    # notches: the outline behind the fitted line
    r = e.y(np.arange(e.x0, e.x1 + 1)) - 0.5 - e.profile
    r = np.nan_to_num(r, nan=0.0)
    r = ndi.median_filter(r, size=3, mode="nearest")
    k = int(round(len(r) * notch_trim))  # the insert's corners are chamfered or rounded: not notches
    r = r[k:len(r) - k]
    notch = float(max(0.0, r.max())) if r.size else 0.0
    deep = r >= notch_px
    run = 0
    longest = 0
    for v in deep:
        run = run + 1 if v else 0
        longest = max(longest, run)
    wm = WearMeasure(vb_max, vb_mean, vb_max and float(width.sum() / max(edge_len, 1.0)) or 0.0, vb_median, worn,
                     float(keep.sum()), notch, bool(longest >= notch_width), edge_len,
                     float(np.degrees(np.arctan(e.slope))), None, mm_per_px)
    geo = {"edge": e, "side": edge, "kept": _from_bottom(keep, edge), "segment_bottom_frame": seg,
           "shape": grey.shape}
    if seg is not None:
        wm.vb_max_at = _seg_to_image(seg, edge, g_mask.shape)
    return wm, geo


def _pt_to_image(x: float, y: float, side: str, frame_shape: tuple[int, int]) -> tuple[float, float]:
    """A point in the bottom-edge frame -> the image's own (x, y)."""
    H, W = frame_shape
    if side == "bottom":
        return x, y
    if side == "top":
        return x, H - 1 - y
    if side == "left":  # frame = rot90(img, 1): frame[i, j] = img[j, W_img - 1 - i], W_img = H
        return H - 1 - y, x
    return y, W - 1 - x  # right: frame = rot90(img, -1): frame[i, j] = img[H_img - 1 - j, i]


def _seg_to_image(seg, side, frame_shape):
    x0, y0 = _pt_to_image(seg[0], seg[1], side, frame_shape)
    x1, y1 = _pt_to_image(seg[2], seg[3], side, frame_shape)
    return (x0, y0, x1, y1)


def edge_line_image(geo: dict) -> tuple[float, float, float, float]:
    """The fitted edge as a segment (x0, y0, x1, y1) in image coordinates (pixel centres)."""
    e = geo["edge"]
    H, W = _to_bottom(np.zeros(geo["shape"], bool), geo["side"]).shape
    a = _pt_to_image(e.x0, e.y(e.x0) - 0.5, geo["side"], (H, W))
    b = _pt_to_image(e.x1, e.y(e.x1) - 0.5, geo["side"], (H, W))
    return (*a, *b)
