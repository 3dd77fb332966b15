"""Unsupervised detection: a score map per processing method, an automatic threshold, connected regions,
their sizing (half maximum of their own contrast) and the flagging of surface marks.

Score maps are robust z-scores (median and MAD of the image, i.e. mostly sound area):

* ``tsr``: the TSR log contrast (normalised at the first frame and by the spatial median), high-pass filtered
  (a robust quadratic and a coarse median remove the slow pattern of uneven heating), cleared of detector
  row/column offsets (medians over the pixels that are not defect candidates), smoothed over a scale that
  grows with time (1 to 2.5 pixels, like the diffusion length), z-scored per time and maximised over time;
* ``pct``: the same maximum over the EOF images 2..6 (EOF 1 is the mean cooling);
* ``ppt``: the same over the phase images of the six lowest frequencies, in both signs.

The threshold is automatic and region-level: the connected components of ``score >= Z_LOW`` are kept when
their peak reaches ``Z_HIGH`` or their mass (the sum of ``score - Z_LOW`` over the component) reaches
``MASS_MIN`` (a faint but wide defect is as significant as a small bright one; noise makes small blobs).
Both are calibrated per method on three simulated sound plates (no holes; seeds 2000-2002, never used for
evaluation): the largest peak seen there plus 10 % and the largest mass times 1.5 (``calibrate_thresholds``),
so that a sound plate gives no detection.  Each kept region is then re-cut at half of its own peak.  A frame
of ``BORDER`` pixels is left out (plate edges and filter borders).

Surface marks (emissivity or absorptivity patches) show in the very first frame after the flash, before any
subsurface feature can: the pixels whose first-frame log rise stands out (|z| >= 10 after high-pass) form the
surface mask; regions lying mostly on it (dilated by the lateral diffusion halo) are flagged as surface marks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from .processing import PCT, PPT, TSRImages, spatial_z

# calibrated with calibrate_thresholds() on the sound plates 2000-2002 (see benchmarks/thermo.py)
Z_HIGH = {"tsr": 5.5, "pct": 7.0, "ppt": 6.0}
MASS_MIN = {"tsr": 15.0, "pct": 75.0, "ppt": 20.0}
Z_LOW = 3.0
MIN_AREA_PX = 6
BORDER = 5


def _robust_quadratic(img: np.ndarray, iterations: int = 3) -> np.ndarray:
    """A quadratic surface fitted to an image, ignoring outliers (defects) by iterative trimming."""
    h, w = img.shape
    yy, xx = np.mgrid[0:h, 0:w]
    u, v = (xx / max(w - 1, 1) - 0.5).ravel(), (yy / max(h - 1, 1) - 0.5).ravel()
    A = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=1)
    y = img.ravel()
    keep = np.ones(y.shape, bool)
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(A[keep], y[keep], rcond=None)
        r = y - A @ coef
        s = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))
        keep = np.abs(r) <= 3 * max(s, 1e-12)
    return (A @ coef).reshape(h, w)


def highpass(stack: np.ndarray, size: int = 41) -> np.ndarray:
    """Remove the slowly varying background of each image (uneven heating): a robust quadratic surface, then a
    median over ``size`` pixels computed on a 4x coarser grid (defects smaller than half the window do not
    bias it)."""
    st = stack if stack.ndim == 3 else stack[None]
    n, h, w = st.shape
    f = 4 if min(h, w) >= 64 else 2 if min(h, w) >= 24 else 1
    hh, ww = (h // f) * f, (w // f) * f
    out = np.empty_like(st)
    for i in range(n):
        img = st[i] - _robust_quadratic(st[i])
        small = img[:hh, :ww].reshape(hh // f, f, ww // f, f).mean(axis=(1, 3)) if f > 1 else img
        k = max(3, (size // f) | 1)
        bg = ndi.median_filter(small, size=k, mode="nearest")
        if f > 1:
            bg = ndi.zoom(bg, f, order=1, mode="nearest", grid_mode=True)
            bg = np.pad(bg, ((0, h - hh), (0, w - ww)), mode="edge")
        out[i] = img - bg
    return out if stack.ndim == 3 else out[0]


def _smooth_stack(stack: np.ndarray, sigmas) -> np.ndarray:
    return np.stack([ndi.gaussian_filter(img, s, mode="nearest") if s > 0 else img for img, s in zip(stack, sigmas)])


def _window(shape) -> int:
    return int(max(15, min(61, round(min(shape) * 0.25)))) | 1


def _destripe(stack: np.ndarray, exclude: np.ndarray) -> np.ndarray:
    """Subtract each image's row medians, then column medians, over the pixels not in ``exclude``."""
    out = np.empty_like(stack)
    keep = ~exclude
    rows_ok = keep.sum(axis=1) >= max(4, keep.shape[1] // 4)
    cols_ok = keep.sum(axis=0) >= max(4, keep.shape[0] // 4)
    for i, img in enumerate(stack):
        masked = np.where(keep, img, np.nan)
        r = np.where(rows_ok, np.nanmedian(np.where(rows_ok[:, None], masked, 0.0), axis=1), 0.0)
        img = img - r[:, None]
        masked = np.where(keep, img, np.nan)
        c = np.where(cols_ok, np.nanmedian(np.where(cols_ok[None, :], masked, 0.0), axis=0), 0.0)
        out[i] = img - c[None, :]
    return out


def _zmax(st: np.ndarray, sigmas, two_sided: bool) -> np.ndarray:
    z = spatial_z(_smooth_stack(st, sigmas))
    s = np.abs(z).max(axis=0) if two_sided else z.max(axis=0)
    return spatial_z(s[None])[0]


def score_from_stack(stack: np.ndarray, sigmas, two_sided: bool = False) -> np.ndarray:
    """max over the images of their robust z-scores (after high-pass, destriping and smoothing),
    re-standardised; the border frame is set to 0."""
    st = highpass(stack, _window(stack.shape[1:]))
    first = _zmax(st, sigmas, two_sided)
    candidates = ndi.binary_dilation(first >= Z_LOW, iterations=3)
    s = _zmax(_destripe(st, candidates), sigmas, two_sided)
    b = min(BORDER, (min(s.shape) - 1) // 4)
    if b > 0:
        s[:b], s[-b:], s[:, :b], s[:, -b:] = 0.0, 0.0, 0.0, 0.0
    return s


def growing_sigmas(n: int, lo: float = 1.0, hi: float = 2.5) -> np.ndarray:
    return np.linspace(lo, hi, n)


def score_tsr(ti: TSRImages) -> np.ndarray:
    k = len(ti.times)
    start = k // 8  # the first times carry no subsurface information yet
    return score_from_stack(ti.log_contrast[start:], growing_sigmas(k - start))


def score_pct(p: PCT) -> np.ndarray:
    ims = p.eofs[1:6]
    return score_from_stack(ims, np.full(len(ims), 1.5))


def score_ppt(q: PPT) -> np.ndarray:
    ims = q.phase[:6]
    return score_from_stack(ims, np.full(len(ims), 1.5), two_sided=True)


@dataclass
class Region:
    id: int
    mask: np.ndarray = field(repr=False)
    peak_score: float = 0.0
    surface: bool = False

    @property
    def area(self) -> int:
        return int(self.mask.sum())

    def bbox(self) -> list[int]:
        ys, xs = np.nonzero(self.mask)
        return [int(xs.min()), int(ys.min()), int(xs.max()), int(ys.max())]  # x0, y0, x1, y1 (inclusive)

    def centroid(self) -> list[float]:
        ys, xs = np.nonzero(self.mask)
        return [float(xs.mean()), float(ys.mean())]


def components(score: np.ndarray, z_low: float = Z_LOW):
    """Connected components of ``score >= z_low``: (labels, peaks, masses, areas) with index 0 unused."""
    lab, n = ndi.label(score >= z_low)
    idx = np.arange(1, n + 1)
    if n == 0:
        return lab, np.zeros(1), np.zeros(1), np.zeros(1)
    peaks = np.concatenate([[0.0], np.asarray(ndi.maximum(score, lab, idx))])
    masses = np.concatenate([[0.0], np.asarray(ndi.sum(score - z_low, lab, idx))])
    areas = np.concatenate([[0.0], np.asarray(ndi.sum(np.ones_like(score), lab, idx))])
    return lab, peaks, masses, areas


def threshold_regions(score: np.ndarray, z_high: float = 6.5, mass_min: float = 30.0, z_low: float = Z_LOW,
                      min_area: int = MIN_AREA_PX) -> np.ndarray:
    """Region-level threshold (see the module docstring); labelled regions (int array, 0 background)."""
    lab, peaks, masses, areas = components(score, z_low)
    keep = ((peaks >= z_high) | (masses >= mass_min)) & (areas >= min_area)
    keep[0] = False
    lab, _ = ndi.label(keep[lab])
    return lab


def split_component(score: np.ndarray, reg: np.ndarray, min_prominence: float = 2.0,
                    rel_prominence: float = 0.3) -> list[np.ndarray]:
    """Split a component holding several defects: its local maxima that stand out by at least
    ``max(min_prominence, rel_prominence * height)`` above the saddle to any higher maximum become markers of a
    watershed on the score, restricted to the component."""
    peaks = reg & (score == ndi.maximum_filter(score, size=5)) & (score >= Z_LOW + min_prominence)
    ys, xs = np.nonzero(peaks)
    if len(ys) <= 1:
        return [reg]
    order = np.argsort(score[ys, xs])[::-1]
    markers: list[tuple[int, int]] = []
    for i in order:
        y, x = int(ys[i]), int(xs[i])
        v = float(score[y, x])
        level = v - max(min_prominence, rel_prominence * v)
        lab, _ = ndi.label(reg & (score >= level))
        if all(lab[my, mx] != lab[y, x] for my, mx in markers):
            markers.append((y, x))
    if len(markers) <= 1:
        return [reg]
    y0, y1 = np.nonzero(reg.any(axis=1))[0][[0, -1]]
    x0, x1 = np.nonzero(reg.any(axis=0))[0][[0, -1]]
    sub = (slice(y0, y1 + 1), slice(x0, x1 + 1))
    r = reg[sub]
    sc = score[sub]
    top = float(sc[r].max())
    elev = np.where(r, np.round((top - sc) / max(top - Z_LOW, 1e-9) * 60000), 65535).astype(np.uint16)
    mk = np.zeros(r.shape, np.int16)
    for k, (y, x) in enumerate(markers, start=1):
        mk[y - y0, x - x0] = k
    mk[~r] = -1
    ws = ndi.watershed_ift(elev, mk)
    out = []
    for k in range(1, len(markers) + 1):
        m = np.zeros(reg.shape, bool)
        m[sub] = (ws == k) & r
        if m.any():
            out.append(m)
    return out


def half_max_refine(labels: np.ndarray, contrast: np.ndarray, fraction: float = 0.5, grow: int = 3,
                    min_area: int = MIN_AREA_PX, z_high: float | None = None, mass_min: float | None = None
                    ) -> np.ndarray:
    """Split each region at its significant maxima (``split_component``; parts must reach ``z_high`` or
    ``mass_min`` when given), then re-cut each part at ``fraction`` of its own peak contrast above the local
    background, inside the part dilated by ``grow`` pixels; keeps the piece connected to the peak."""
    out = np.zeros_like(labels)
    n = int(labels.max())
    nxt = 1
    parts = []
    for i in range(1, n + 1):
        reg = labels == i
        if reg.any():
            for p in split_component(contrast, reg):
                if z_high is not None and mass_min is not None:
                    if contrast[p].max() < z_high and np.sum(contrast[p] - Z_LOW) < mass_min:
                        continue
                parts.append(p)
    taken = np.zeros(labels.shape, bool)
    for reg in parts:
        zone = ndi.binary_dilation(reg, iterations=grow) & ~taken
        ring = ndi.binary_dilation(zone, iterations=4) & ~zone & (labels == 0)
        base = float(np.median(contrast[ring])) if ring.sum() >= 8 else 0.0
        peak = float(np.percentile(contrast[reg], 98))
        if peak <= base:
            continue
        cut = zone & (contrast >= base + fraction * (peak - base))
        lab, m = ndi.label(cut)
        if m == 0:
            continue
        best = np.bincount(lab[reg & cut], minlength=m + 1)
        best[0] = 0
        if best.max() == 0:
            continue
        part = ndi.binary_fill_holes(lab == int(np.argmax(best))) & ~taken
        if part.sum() >= min_area:
            out[part] = nxt
            taken |= part
            nxt += 1
    return out


def surface_mask(first_log_rise: np.ndarray, z: float = 10.0) -> np.ndarray:
    """Pixels whose log rise in the first frame after the flash stands out from the smooth background."""
    hp = highpass(first_log_rise, _window(first_log_rise.shape))
    zz = np.abs(spatial_z(ndi.gaussian_filter(hp, 1.0)[None])[0])
    return zz >= z


def surface_flags(labels: np.ndarray, first_log_rise: np.ndarray, halo_px: int = 6,
                  min_fraction: float = 0.3) -> dict[int, bool]:
    """Region id -> True when at least ``min_fraction`` of the region lies on the surface mask dilated by
    ``halo_px`` (the halo that lateral diffusion spreads around a mark)."""
    zone = ndi.binary_dilation(surface_mask(first_log_rise), iterations=halo_px)
    flags = {}
    for i in range(1, int(labels.max()) + 1):
        reg = labels == i
        if reg.any():
            flags[i] = bool(zone[reg].mean() >= min_fraction)
    return flags


def regions_from_labels(labels: np.ndarray, score: np.ndarray, surface: dict | None = None) -> list[Region]:
    regs = []
    for i in range(1, int(labels.max()) + 1):
        m = labels == i
        if m.any():
            regs.append(Region(i, m, float(score[m].max()), bool(surface.get(i, False)) if surface else False))
    return regs


def calibrate_thresholds(score_maps: list, exclude_masks: list, peak_margin: float = 1.1,
                         mass_margin: float = 1.5) -> tuple[float, float, dict]:
    """(z_high, mass_min, stats) from score maps of sound plates (``exclude_masks``: surface-mark zones): the
    largest component peak times ``peak_margin`` rounded up to 0.5, the largest mass times ``mass_margin``
    rounded up to 5."""
    max_peak, max_mass = 0.0, 0.0
    for s, ex in zip(score_maps, exclude_masks):
        s = np.where(ex, 0.0, s)
        _, peaks, masses, _ = components(s)
        max_peak = max(max_peak, float(peaks.max()))
        max_mass = max(max_mass, float(masses.max()))
    z_high = math.ceil(2 * peak_margin * max(max_peak, Z_LOW)) / 2
    mass_min = math.ceil(mass_margin * max(max_mass, 1.0) / 5) * 5
    return z_high, float(mass_min), {"max_peak": round(max_peak, 3), "max_mass": round(max_mass, 3),
                                     "plates": len(score_maps)}
