"""Processing of pulsed-thermography sequences: cold-image subtraction and normalisation, thermographic signal
reconstruction (TSR), principal component thermography (PCT) and pulsed phase thermography (PPT).

All functions take a :class:`Prepared` sequence (the temperature rise after the flash, with its time axis) and
return arrays; the images are drawn by :mod:`vinspect.thermo.plots`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..errors import BadInputError
from .io import MIN_FRAMES, Sequence


@dataclass
class Prepared:
    rise: np.ndarray            # (n, H, W) temperature rise after the flash (cold image subtracted), > 0
    time: np.ndarray            # (n,) time after the flash: seconds, or frames when the frame rate is unknown
    time_unit: str              # "s" or "frame"
    flash_frame: int            # index (in the input) of the first frame after the flash
    n_cold: int                 # frames before the flash, averaged into the cold image
    cold: np.ndarray | None     # (H, W) cold image, or None
    notes: list = field(default_factory=list)

    @property
    def shape(self):
        return self.rise.shape


def prepare(seq: Sequence, offset: float | None = None, flash_frame: int | None = None) -> Prepared:
    """Cold-image subtraction.  The flash is the frame of highest mean level; the frames before it are
    averaged into the cold image and subtracted.  Without cold frames, ``offset`` (default 0) is subtracted
    and the values are taken as the temperature rise (noted)."""
    frames = seq.frames
    n = frames.shape[0]
    notes = []
    means = frames.reshape(n, -1).mean(axis=1)
    if flash_frame is None:
        flash_frame = int(seq.meta.get("flash_frame", -1)) if "flash_frame" in seq.meta else int(np.argmax(means))
    if not (0 <= flash_frame < n):
        raise BadInputError(f"{seq.source}: flash frame {flash_frame} outside the sequence of {n} frames")
    if n - flash_frame < MIN_FRAMES:
        raise BadInputError(f"{seq.source}: only {n - flash_frame} frames after the flash (frame {flash_frame}, the "
                            f"brightest); at least {MIN_FRAMES} are needed")
    if flash_frame > 0 and offset is None:
        cold = frames[:flash_frame].mean(axis=0)
        rise = frames[flash_frame:] - cold
        n_cold = flash_frame
    else:
        cold = None
        n_cold = 0
        rise = frames[flash_frame:] - (offset or 0.0)
        if offset is None:
            notes.append("no cold frames before the flash: the values are taken as the temperature rise "
                         "(give --offset to subtract an ambient level)")
    if seq.time_s is not None:
        time = np.asarray(seq.time_s[flash_frame:], np.float64)
        unit = "s"
    elif seq.fps:
        time = (np.arange(rise.shape[0]) + 1.0) / seq.fps
        unit = "s"
    else:
        time = np.arange(rise.shape[0]) + 1.0
        unit = "frame"
        notes.append("frame rate unknown: times are in frames (give --fps for seconds and depths in mm)")
    if not np.all(np.diff(time) > 0) or time[0] <= 0:
        raise BadInputError(f"{seq.source}: the time axis after the flash must start above 0 and increase")
    level = float(np.median(rise[0]))
    if level <= 0:
        raise BadInputError(f"{seq.source}: no heating after the flash (median rise {level:.3g} in the first "
                            "frame); is this a pulsed-thermography sequence?")
    floor = 1e-3 * level
    low = rise < floor
    if low.any():
        frac = low.mean()
        if frac > 0.001:
            notes.append(f"{100 * frac:.1f} % of the values were at or below the ambient level and were clipped")
        rise = np.maximum(rise, floor)
    return Prepared(rise, time, unit, flash_frame, n_cold, cold, notes)


def log_bins(time: np.ndarray, n_bins: int = 64) -> list[np.ndarray]:
    """Frame indices grouped into bins evenly spaced in log(time) (empty bins dropped)."""
    lt = np.log(time)
    edges = np.linspace(lt[0], lt[-1], n_bins + 1)
    idx = np.clip(np.searchsorted(edges, lt, side="right") - 1, 0, n_bins - 1)
    return [np.flatnonzero(idx == b) for b in range(n_bins) if np.any(idx == b)]


@dataclass
class TSR:
    """Per-pixel polynomial of ln(rise) in ln(time), Chebyshev basis on the scaled log time."""
    coef: np.ndarray            # (order+1, H, W)
    lt0: float                  # ln t mapped to -1
    lt1: float                  # ln t mapped to +1
    order: int
    residual: np.ndarray        # (H, W) rms residual of the fit (in ln units)

    def _x(self, t):
        return (2 * np.log(np.asarray(t, np.float64)) - self.lt0 - self.lt1) / (self.lt1 - self.lt0)

    def evaluate(self, t, derivative: int = 0) -> np.ndarray:
        """ln(rise) (0), d ln T / d ln t (1) or d2 ln T / d(ln t)2 (2) at times ``t``: (len(t), H, W)."""
        from numpy.polynomial import chebyshev as C

        x = self._x(t)
        c = self.coef.reshape(self.coef.shape[0], -1)
        scale = 2.0 / (self.lt1 - self.lt0)
        if derivative:
            c = C.chebder(c, m=derivative, axis=0) * scale ** derivative
        basis = C.chebvander(x, c.shape[0] - 1)              # (len(t), k)
        return (basis @ c).reshape(len(x), *self.coef.shape[1:])


def tsr_fit(prep: Prepared, order: int = 7, n_bins: int = 64) -> TSR:
    """Thermographic signal reconstruction (Shepard): fit ln(rise) = P(ln t) per pixel.  Frames are averaged in
    log-time bins first; the bins are weighted by their inverse variance (frames per bin x rise^2)."""
    from numpy.polynomial import chebyshev as C

    bins = log_bins(prep.time, n_bins)
    rise = prep.rise
    binned = np.stack([rise[b].mean(axis=0) for b in bins])       # (nb, H, W)
    tb = np.array([math.exp(np.log(prep.time[b]).mean()) for b in bins])
    nb = len(bins)
    order = int(min(order, nb - 2))
    if order < 2:
        raise BadInputError(f"TSR: only {nb} distinct log-time bins; the sequence is too short")
    y = np.log(binned).reshape(nb, -1)
    lt0, lt1 = math.log(prep.time[0]), math.log(prep.time[-1])
    x = (2 * np.log(tb) - lt0 - lt1) / (lt1 - lt0)
    V = C.chebvander(x, order)
    level = np.median(binned.reshape(nb, -1), axis=1)
    w = np.array([len(b) for b in bins]) * level ** 2
    w = w / w.max()
    sw = np.sqrt(w)[:, None]
    coef, *_ = np.linalg.lstsq(V * sw, y * sw, rcond=None)
    res = np.sqrt(np.average((V @ coef - y) ** 2, axis=0, weights=w))
    h, wd = rise.shape[1:]
    return TSR(coef.reshape(order + 1, h, wd), lt0, lt1, order, res.reshape(h, wd))


def sample_times(prep: Prepared, n: int = 64, start_frac: float = 0.0) -> np.ndarray:
    """``n`` times evenly spaced in log time over the sequence (from ``start_frac`` of the log range)."""
    lt0, lt1 = math.log(prep.time[0]), math.log(prep.time[-1])
    return np.exp(np.linspace(lt0 + start_frac * (lt1 - lt0), lt1, n))


def robust_center_scale(img: np.ndarray, axis=None, mask: np.ndarray | None = None):
    """Median and MAD-based standard deviation (over ``mask`` pixels when given)."""
    if mask is not None:
        vals = img[..., mask] if img.ndim > mask.ndim else img[mask]
        med = np.median(vals, axis=-1, keepdims=False)
        mad = np.median(np.abs(vals - (med[..., None] if np.ndim(med) else med)), axis=-1)
    else:
        med = np.median(img, axis=axis)
        mad = np.median(np.abs(img - (np.expand_dims(med, axis) if axis is not None else med)), axis=axis)
    return med, np.maximum(1.4826 * mad, 1e-12)


def spatial_z(stack: np.ndarray, background: np.ndarray | None = None) -> np.ndarray:
    """Each image of (n, H, W) as robust z-scores against its own (background) pixels."""
    n = stack.shape[0]
    flat = stack.reshape(n, -1)
    if background is not None:
        vals = flat[:, background.ravel()]
    else:
        vals = flat
    med = np.median(vals, axis=1)
    mad = 1.4826 * np.median(np.abs(vals - med[:, None]), axis=1)
    return ((flat - med[:, None]) / np.maximum(mad, 1e-12)[:, None]).reshape(stack.shape)


@dataclass
class TSRImages:
    times: np.ndarray           # (k,)
    log_contrast: np.ndarray    # (k, H, W): ln T - ln T(t_first) - its spatial median (normalised contrast)
    d1: np.ndarray              # (k, H, W) first log derivative
    d2: np.ndarray              # (k, H, W) second log derivative


def tsr_images(tsr: TSR, times: np.ndarray, background: np.ndarray | None = None) -> TSRImages:
    """Images of the TSR fit at ``times``.  The log contrast is normalised by the first time (so the flash
    pattern and the emissivity, both multiplicative, cancel) and by the spatial median (the sound reference)."""
    lnT = tsr.evaluate(times)
    lc = lnT - lnT[:1]
    ref = np.median(lc.reshape(len(times), -1)[:, background.ravel()] if background is not None
                    else lc.reshape(len(times), -1), axis=1)
    return TSRImages(times, lc - ref[:, None, None], tsr.evaluate(times, 1), tsr.evaluate(times, 2))


@dataclass
class PCT:
    eofs: np.ndarray            # (k, H, W) empirical orthogonal functions (spatial), unit norm
    pcs: np.ndarray             # (k, n) temporal principal components
    explained: np.ndarray       # (k,) fraction of variance


def pct(prep: Prepared, n_components: int = 6, max_frames: int = 200) -> PCT:
    """Principal component thermography (Rajic 2002): each pixel's time series is standardised (zero mean,
    unit variance), the (time x pixels) matrix is decomposed by SVD, and the right singular vectors are the
    EOF images.  Long sequences are averaged down to ``max_frames`` frames first.  Each EOF's sign is chosen
    so that its outliers (defects) are positive."""
    rise = prep.rise
    n, h, w = rise.shape
    if n > max_frames:
        groups = np.array_split(np.arange(n), max_frames)
        rise = np.stack([rise[g].mean(axis=0) for g in groups])
        n = rise.shape[0]
    A = rise.reshape(n, -1)
    A = (A - A.mean(axis=0)) / np.maximum(A.std(axis=0), 1e-12)
    # SVD through the (time x time) Gram matrix: the same singular vectors, far cheaper when pixels >> frames
    evals, evecs = np.linalg.eigh(A @ A.T)
    order = np.argsort(evals)[::-1]
    S = np.sqrt(np.maximum(evals[order], 0.0))
    U = evecs[:, order]
    k = min(n_components, int(np.sum(S > S[0] * 1e-9)))
    Vt = (U[:, :k].T @ A) / S[:k, None]
    eofs = Vt.reshape(k, h, w).copy()
    pcs = (U[:, :k] * S[:k]).T
    for i in range(k):
        e = eofs[i].ravel()
        med = np.median(e)
        hi, lo = np.percentile(e, 99.5) - med, med - np.percentile(e, 0.5)
        if lo > hi:
            eofs[i] *= -1
            pcs[i] *= -1
    return PCT(eofs, pcs, (S[:k] ** 2) / np.sum(S ** 2))


@dataclass
class PPT:
    freqs: np.ndarray           # (k,) Hz (or 1/frame)
    phase: np.ndarray           # (k, H, W) radians
    amplitude: np.ndarray       # (k, H, W)


def ppt(prep: Prepared, n_freqs: int = 8) -> PPT:
    """Pulsed phase thermography (Maldague 1996): the FFT of each pixel's rise; the phase images of the
    lowest non-zero frequencies (deeper defects appear at lower frequencies).  The time axis must be
    evenly sampled (it is, for camera frames)."""
    rise = prep.rise
    n = rise.shape[0]
    dt = float(np.median(np.diff(prep.time)))
    F = np.fft.rfft(rise, axis=0)
    k = int(min(n_freqs, F.shape[0] - 1))
    freqs = np.fft.rfftfreq(n, d=dt)[1:k + 1]
    sel = F[1:k + 1]
    return PPT(freqs, np.angle(sel), np.abs(sel))
