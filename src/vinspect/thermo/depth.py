"""Depth of each detected defect from its time signature.

For a region, the measured rise of its core pixels (the brightest 20 % of the region in the late frames) is
compared with the sound area (median of the pixels away from every region): the log contrast
C(t) = ln T_core - ln T_sound, normalised to 0 at the first frames, on an even grid of ln t, smoothed by a
Gaussian of 0.25 (in ln t).  Its time derivatives give the signature times:

* ``t_slope``: the peak of dC/d ln t, the moment the contrast grows fastest (the heat reflected by the hole
  bottom arriving at the surface).  The depth is estimated from it;
* ``t_star``: the peak of d2C/d(ln t)^2 (Shepard's second-derivative peak time), reported for reference;
* the peak-contrast time and value, reported.

For a laterally infinite defect at depth ``d`` these times are proportional to d^2 / alpha_z; a finite hole
lets heat flow around it and shifts them earlier, the more so the smaller the hole relative to its depth.
Hence the calibrated relation, with mu = sqrt(alpha_z t_slope) and D the region's equivalent diameter:

    ln d = b0 + b1 ln(mu) + b2 ln(D / mu)            (b2 = 0 when the pixel size is unknown)

fitted by robust least squares on simulated plates with known depths (``vinspect thermo calibrate``, seeds
that are never used for evaluation).  The first derivative was chosen over the second on development plates
(course-plate seeds 0-3, random plates 1000-1007): 3-4 % against 5-10 % mean error (the second derivative
amplifies noise).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import BadInputError

# Fitted by benchmarks/thermo.py (the same as `vinspect thermo calibrate`) on the 24 random GFRP training plates
# (seeds 1000-1007 and 1010-1025, `vinspect thermo simulate --preset random --seed N`); never on evaluation seeds.
DEFAULT_CALIBRATION: dict = {
    "b0": 0.6788267930294877,
    "b1": 1.0263042356344836,
    "b2": -0.21770294461591758,
    "b0_nosize": 0.2146626616491386,
    "b1_nosize": 1.1367578197906578,
    "fitted_on": "benchmarks/thermo.py: random GFRP plates, seeds 1000-1007 and 1010-1025 (24 files)",
    "n_defects": 67,
    "rms_log_error": 0.018764273286283988,
    "rms_log_error_nosize": 0.04667356121425622,
    "valid_mu_mm": [2.0841661968243064, 5.585936888070014],
}


@dataclass
class DepthCalibration:
    b0: float
    b1: float
    b2: float
    b0_nosize: float
    b1_nosize: float
    fitted_on: str = ""
    n_defects: int = 0
    rms_log_error: float | None = None
    rms_log_error_nosize: float | None = None
    valid_mu_mm: list = field(default_factory=list)   # range of mu seen in the calibration

    def predict(self, t_slope_s: float, alpha_m2_s: float, d_eq_mm: float | None) -> float:
        mu = math.sqrt(alpha_m2_s * t_slope_s) * 1e3
        if d_eq_mm is not None and d_eq_mm > 0:
            return math.exp(self.b0 + self.b1 * math.log(mu) + self.b2 * math.log(d_eq_mm / mu))
        return math.exp(self.b0_nosize + self.b1_nosize * math.log(mu))

    def to_json(self, path) -> Path:
        Path(path).write_text(json.dumps(asdict(self), indent=2))
        return Path(path)

    @classmethod
    def load(cls, path=None) -> "DepthCalibration":
        if path is None:
            if not DEFAULT_CALIBRATION:
                return cls(*_physical_default())
            return cls(**DEFAULT_CALIBRATION)
        p = Path(path)
        try:
            d = json.loads(p.read_text())
            return cls(**d)
        except FileNotFoundError:
            raise BadInputError(f"--calibration {p}: no such file") from None
        except (OSError, json.JSONDecodeError, TypeError) as e:
            raise BadInputError(f"--calibration {p}: not a depth calibration written by 'vinspect thermo "
                                f"calibrate' ({e})") from None


def _physical_default():
    # 1-D theory, adiabatic slab: the log contrast grows fastest at about t = d^2 / (2 alpha)  =>  d = sqrt(2) mu
    b0 = 0.5 * math.log(2.0)
    return (b0, 1.0, 0.0, b0, 1.0, "1-D theory (uncalibrated)", 0, None, None, [])


@dataclass
class Signature:
    """Time signature of one region."""
    times: np.ndarray
    log_contrast: np.ndarray      # C(t): core ln T minus the sound reference, normalised at the first times
    d1: np.ndarray                # dC / d ln t
    d2_diff: np.ndarray           # d2C / d(ln t)^2 (= core d2 ln T minus the sound's)
    t_slope: float | None         # peak of d1 (None when it lies at the end of the sequence)
    t_star: float | None          # peak of d2 (None when at the end)
    t_peak_contrast: float        # peak of the log contrast
    peak_contrast: float          # max of the log contrast (ln units ~ relative contrast)
    at_end: bool                  # the d1 peak is not reached before the end of the sequence


def core_mask(region: np.ndarray, contrast_img: np.ndarray, frac: float = 0.8) -> np.ndarray:
    vals = contrast_img[region]
    if vals.size <= 4:
        return region
    cut = np.percentile(vals, 100 * frac)
    core = region & (contrast_img >= cut)
    return core if core.sum() >= 2 else region


def background_mask(labels: np.ndarray, margin: int = 8) -> np.ndarray:
    bg = ~ndi.binary_dilation(labels > 0, iterations=margin)
    if bg.sum() < 0.05 * bg.size:
        bg = labels == 0
    return bg


def _binned_log(prep, n_bins: int = 96):
    """Log-time bins of the measured rise: (bin times, list of frame-index arrays)."""
    from .processing import log_bins

    bins = log_bins(prep.time, n_bins)
    tb = np.array([math.exp(np.log(prep.time[b]).mean()) for b in bins])
    return tb, bins


def signatures(prep, labels: np.ndarray, contrast_img: np.ndarray | None = None, n: int = 256,
               smooth: float = 0.25, exclude: np.ndarray | None = None) -> dict[int, Signature]:
    """Signature of every region of ``labels`` from the measured rise (see the module docstring)."""
    tb, bins = _binned_log(prep)
    lgrid = np.linspace(math.log(tb[0]), math.log(tb[-1]), n)
    times = np.exp(lgrid)
    step = lgrid[1] - lgrid[0]
    sig_px = smooth / step
    # peaks are searched away from the ends (two smoothing widths) and where the frames are dense enough in
    # ln t for the smoothing (spacing below half its width): earlier, the curve is a few linear pieces
    dt = float(np.median(np.diff(prep.time)))
    dense = times >= 2.0 * dt / smooth
    lo = int(max(2 * sig_px + 1, np.argmax(dense) if dense.any() else n))
    hi = int(n - 2 * sig_px - 1)
    if hi - lo < 4:
        lo, hi = 1, n - 1
    bg = background_mask(labels)
    if exclude is not None:
        bg &= ~exclude
    bgi = np.flatnonzero(bg.ravel())
    if bgi.size > 5000:
        bgi = bgi[:: bgi.size // 5000]
    flat = prep.rise.reshape(prep.rise.shape[0], -1)
    sound = np.array([np.median(flat[b][:, bgi].mean(axis=0)) for b in bins])
    if contrast_img is None:
        contrast_img = np.log(prep.rise[-max(1, len(prep.time) // 10):].mean(axis=0))
    out = {}
    for i in range(1, int(labels.max()) + 1):
        reg = labels == i
        if not reg.any():
            continue
        core = core_mask(reg, contrast_img)
        ci = np.flatnonzero(core.ravel())
        cur = np.array([flat[b][:, ci].mean() for b in bins])
        lc_b = np.log(np.maximum(cur, 1e-12)) - np.log(np.maximum(sound, 1e-12))
        lc = np.interp(lgrid, np.log(tb), lc_b)
        lc = lc - lc[: max(2, n // 50)].mean()
        lc_s = ndi.gaussian_filter1d(lc, sig_px, mode="nearest")
        d1 = ndi.gaussian_filter1d(lc, sig_px, order=1, mode="nearest") / step
        d2 = ndi.gaussian_filter1d(lc, sig_px, order=2, mode="nearest") / step ** 2
        j1 = lo + int(np.argmax(d1[lo:hi]))
        j2 = lo + int(np.argmax(d2[lo:hi]))
        at_end = j1 >= hi - 2
        out[i] = Signature(times, lc_s, d1, d2, None if at_end else float(times[j1]),
                           None if j2 >= hi - 2 else float(times[j2]), float(times[int(np.argmax(lc_s))]),
                           float(lc_s.max()), at_end)
    return out


def equivalent_diameter(region: np.ndarray, pixel_mm: float | None) -> float | None:
    if not pixel_mm:
        return None
    return 2.0 * math.sqrt(region.sum() / math.pi) * pixel_mm


def estimate(sig: Signature, calib: DepthCalibration, alpha_m2_s: float | None, time_unit: str,
             d_eq_mm: float | None) -> float | None:
    """Depth in mm, or None when it cannot be given (unknown frame rate or diffusivity, or no slope peak)."""
    if sig.t_slope is None or alpha_m2_s is None or time_unit != "s":
        return None
    return calib.predict(sig.t_slope, alpha_m2_s, d_eq_mm)


def _robust_lstsq(A: np.ndarray, y: np.ndarray, iterations: int = 5, k: float = 2.5):
    """Least squares with iterative trimming of outliers (|residual| > k robust sigma): a mis-detected region
    (two defects merged, a mark next to a hole) must not bend the calibration."""
    keep = np.ones(len(y), bool)
    for _ in range(iterations):
        coef, *_ = np.linalg.lstsq(A[keep], y[keep], rcond=None)
        r = y - A @ coef
        s = 1.4826 * np.median(np.abs(r[keep] - np.median(r[keep])))
        new = np.abs(r) <= k * max(s, 0.02)
        if new.sum() < A.shape[1] + 2 or np.array_equal(new, keep):
            break
        keep = new
    r = y - A @ coef
    return coef, float(np.sqrt(np.mean(r[keep] ** 2))), keep


def fit_calibration(records: list[dict], fitted_on: str = "") -> DepthCalibration:
    """``records``: dicts with ``t_slope`` (s), ``alpha`` (m^2/s), ``d_eq_mm``, ``depth_mm`` (true).  Robust
    least squares in log space (outliers trimmed)."""
    rec = [r for r in records if r.get("t_slope") and r.get("depth_mm") and r.get("alpha") and r.get("d_eq_mm")]
    if len(rec) < 6:
        raise BadInputError(f"calibration: only {len(rec)} defects with a measurable contrast-slope peak; "
                            "need at least 6")
    mu = np.array([math.sqrt(r["alpha"] * r["t_slope"]) * 1e3 for r in rec])
    D = np.array([r["d_eq_mm"] for r in rec])
    y = np.log([r["depth_mm"] for r in rec])
    A = np.stack([np.ones_like(mu), np.log(mu), np.log(D / mu)], axis=1)
    coef, rms, keep = _robust_lstsq(A, y)
    coef2, rms2, keep2 = _robust_lstsq(A[:, :2], y)
    return DepthCalibration(float(coef[0]), float(coef[1]), float(coef[2]), float(coef2[0]), float(coef2[1]),
                            fitted_on, int(keep.sum()), rms, rms2, [float(mu[keep].min()), float(mu[keep].max())])
