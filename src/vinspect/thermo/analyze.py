"""The thermo pipeline: process a sequence, detect defects with one method, describe them (contrast, depth),
write the images and ``defects.json``; score against simulated ground truth (``metrics.json``).

Methods: ``tsr``, ``pct``, ``ppt`` (unsupervised score maps, automatic threshold) and ``cnn1d``, ``lstm``
(learned per-pixel classifiers, which need a model trained by ``vinspect thermo train``).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import BadInputError
from . import depth as depthmod
from .detect import (half_max_refine, regions_from_labels, score_pct, score_ppt, score_tsr, surface_flags,
                     threshold_regions, MIN_AREA_PX, Z_HIGH, Z_LOW, MASS_MIN)
from .io import Sequence, load_sequence
from .processing import Prepared, pct, ppt, prepare, sample_times, tsr_fit, tsr_images

UNSUPERVISED = ("tsr", "pct", "ppt")
LEARNED = ("cnn1d", "lstm")
METHODS = UNSUPERVISED + LEARNED
# The method `evaluate` uses when none is named: the best of the benchmark (benchmarks/results/thermo.md),
# with the model bundled in vinspect/thermo/models/cnn1d (trained by benchmarks/thermo.py --install-models).
BEST_METHOD = "cnn1d"


@dataclass
class Processed:
    seq: Sequence
    prep: Prepared
    tsr: object
    ti: object
    pct: object
    ppt: object
    first_log: np.ndarray
    seconds: dict = field(default_factory=dict)


def process(seq: Sequence, offset: float | None = None, tsr_order: int = 7, n_images: int = 48) -> Processed:
    """Cold-image subtraction, TSR (fit, log contrast, derivatives), PCT and PPT of a sequence."""
    secs = {}
    t = time.perf_counter()
    prep = prepare(seq, offset=offset)
    secs["prepare"] = time.perf_counter() - t
    t = time.perf_counter()
    tsr = tsr_fit(prep, order=tsr_order)
    ti = tsr_images(tsr, sample_times(prep, n_images))
    secs["tsr"] = time.perf_counter() - t
    t = time.perf_counter()
    p = pct(prep)
    secs["pct"] = time.perf_counter() - t
    t = time.perf_counter()
    q = ppt(prep)
    secs["ppt"] = time.perf_counter() - t
    return Processed(seq, prep, tsr, ti, p, q, np.log(prep.rise[0]), secs)


@dataclass
class Detection:
    method: str
    score: np.ndarray          # score map (z-score, or probability for learned models)
    labels: np.ndarray         # region labels, 0 background
    surface: dict              # region id -> True for surface marks
    threshold: str
    seconds: float = 0.0

    @property
    def defect_map(self) -> np.ndarray:
        flagged = [k for k, v in self.surface.items() if v]
        return (self.labels > 0) & ~np.isin(self.labels, flagged)


MODELS_DIR = Path(__file__).resolve().parent / "models"


def bundled_model(method: str) -> Path | None:
    """The model folder shipped with vinspect for ``method`` (trained by benchmarks/thermo.py), or None."""
    p = MODELS_DIR / method
    return p if (p / "model.json").is_file() else None


def _load_model(method: str, model):
    from .learn import PixelModel

    if model is None:
        model = bundled_model(method)
    if model is None:
        raise BadInputError(f"method {method!r} needs a trained model: --model DIR (train one with "
                            f"'vinspect thermo train --arch {method}')")
    m = model if isinstance(model, PixelModel) else PixelModel.load(model)
    if m.arch != method:
        raise BadInputError(f"the model in {model} is a {m.arch!r} model, not {method!r}")
    return m


def detect(proc: Processed, method: str, model=None) -> Detection:
    """Defect regions of one method.  Unsupervised: hysteresis threshold on the score map, then each region cut
    at half its own peak.  Learned: probability >= 0.5, regions of at least MIN_AREA_PX pixels."""
    if method not in METHODS:
        raise BadInputError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    t = time.perf_counter()
    if method in UNSUPERVISED:
        score = {"tsr": lambda: score_tsr(proc.ti), "pct": lambda: score_pct(proc.pct),
                 "ppt": lambda: score_ppt(proc.ppt)}[method]()
        zh, mm = Z_HIGH[method], MASS_MIN[method]
        lab = half_max_refine(threshold_regions(score, zh, mm, Z_LOW), score, z_high=zh, mass_min=mm)
        how = (f"components of the robust z-score >= {Z_LOW:g} whose peak reaches {zh:g} or whose mass reaches "
               f"{mm:g}, each cut at half its peak")
    else:
        m = _load_model(method, model)
        score = m.predict_proba(proc.prep)
        mask = ndi.binary_fill_holes(ndi.binary_opening(score >= m.threshold))
        lab, n = ndi.label(mask)
        if n:
            sizes = ndi.sum(np.ones_like(score), lab, index=np.arange(1, n + 1))
            keep = np.zeros(n + 1, bool)
            keep[1:] = np.asarray(sizes) >= MIN_AREA_PX
            lab, _ = ndi.label(keep[lab])
        how = f"probability >= {m.threshold:g} (the threshold of best pixel F1 on the validation plates)"
    surface = surface_flags(lab, proc.first_log)
    return Detection(method, score, lab, surface, how, time.perf_counter() - t)


def describe(proc: Processed, det: Detection, calib: depthmod.DepthCalibration, alpha_m2_s: float | None,
             pixel_mm: float | None) -> tuple[list[dict], list[dict], dict]:
    """(defects, surface marks, signatures) with contrast and depth of every region."""
    sigs = depthmod.signatures(proc.prep, det.labels)
    prep = proc.prep
    sound = depthmod.background_mask(det.labels)
    early = prep.rise[: max(1, min(3, len(prep.time) // 20))].mean(axis=0)
    defects, marks = [], []
    n_def = 0
    for reg in regions_from_labels(det.labels, det.score, det.surface):
        sig = sigs.get(reg.id)
        if sig is None:
            continue
        # normalised contrast at the region's peak-contrast time (measured frames, early frames as reference:
        # uneven heating and emissivity cancel), against the sound ring 5-15 px around the region
        k = int(np.argmin(np.abs(np.log(prep.time) - math.log(sig.t_peak_contrast))))
        ratio = prep.rise[k] / early
        ring = (ndi.binary_dilation(reg.mask, iterations=15) & ~ndi.binary_dilation(reg.mask, iterations=5)
                & (det.labels == 0))
        ref = float(np.median(ratio[ring if ring.sum() >= 20 else sound]))
        expected = early[reg.mask] * ref
        d_eq = depthmod.equivalent_diameter(reg.mask, pixel_mm)
        est = None if reg.surface else depthmod.estimate(sig, calib, alpha_m2_s, prep.time_unit, d_eq)
        x0, y0, x1, y1 = reg.bbox()
        row = {
            "bbox": {"x": x0, "y": y0, "width": x1 - x0 + 1, "height": y1 - y0 + 1},
            "area_px": reg.area,
            "area_mm2": round(reg.area * pixel_mm ** 2, 2) if pixel_mm else None,
            "equivalent_diameter_mm": round(d_eq, 2) if d_eq else None,
            "centroid_xy": [round(c, 1) for c in reg.centroid()],
            "mean_contrast": round(float(np.mean(ratio[reg.mask]) / ref - 1.0), 5),
            "mean_contrast_rise": round(float(np.mean(prep.rise[k][reg.mask] - expected)), 5),
            "peak_contrast_time": round(sig.t_peak_contrast, 4),
            "contrast_slope_peak_time": None if sig.t_slope is None else round(sig.t_slope, 4),
            "d2_peak_time": None if sig.t_star is None else round(sig.t_star, 4),
            "time_unit": prep.time_unit,
            "estimated_depth_mm": None if est is None else round(est, 2),
            "score_peak": round(reg.peak_score, 3),
            "_label": reg.id,
        }
        if est is None and not reg.surface:
            row["depth_note"] = ("the contrast still grows fastest at the end of the sequence (deeper than the "
                                 "sequence can show)"
                                 if sig.at_end else "frame rate or diffusivity unknown (--fps, --material)"
                                 if (alpha_m2_s is None or prep.time_unit != "s") else "no contrast-slope peak")
        if reg.surface:
            row["kind"] = "surface mark"
            marks.append(row)
        else:
            n_def += 1
            defects.append({"id": n_def, **row})
    return defects, marks, sigs


def material_alpha(material: str | None, diffusivity_mm2_s: float | None) -> float | None:
    from .simulate import material as get_material

    if diffusivity_mm2_s is not None:
        if not (diffusivity_mm2_s > 0 and math.isfinite(diffusivity_mm2_s)):
            raise BadInputError(f"--diffusivity must be a positive number (mm^2/s), got {diffusivity_mm2_s}")
        return diffusivity_mm2_s * 1e-6
    if material:
        return get_material(material).alpha_z
    return None


def _public(rows):
    return [{k: v for k, v in r.items() if not k.startswith("_")} for r in rows]


def analyze(source, out, method: str | None = None, fps: float | None = None, model=None, calibration=None,
            material: str | None = None, diffusivity: float | None = None, pixel_mm: float | None = None,
            offset: float | None = None, key: str | None = None, frames_axis: int | None = None,
            images: bool = True, progress: bool = False) -> dict:
    """Analyse one sequence (a path or a :class:`Sequence`) and write to ``out``: processed images,
    ``defect_map.png``, ``contrast_curves.png``, ``defects.json``.  Returns the content of defects.json."""
    from . import plots

    t0 = time.perf_counter()
    seq = source if isinstance(source, Sequence) else load_sequence(source, fps, key, frames_axis)
    method = method or "tsr"
    if material is None and seq.meta.get("material") and diffusivity is None:
        material = str(seq.meta["material"])
    alpha = material_alpha(material, diffusivity)
    if pixel_mm is None and seq.meta.get("pixel_mm"):
        pixel_mm = float(seq.meta["pixel_mm"])
    calib = depthmod.DepthCalibration.load(calibration)
    proc = process(seq, offset)
    det = detect(proc, method, model)
    defects, marks, sigs = describe(proc, det, calib, alpha, pixel_mm)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if images:
        written += plots.processed_images(proc, out)
        written.append(plots.defect_map(proc, det, defects, marks, out / "defect_map.png"))
        written.append(plots.contrast_curves(proc, det.labels, sigs, defects, marks, out / "contrast_curves.png"))
    n, h, w = seq.frames.shape
    result = {
        "source": seq.source, "method": method, "frames": n, "height": h, "width": w,
        "fps": seq.fps, "time_unit": proc.prep.time_unit, "flash_frame": proc.prep.flash_frame,
        "cold_frames": proc.prep.n_cold, "material": material,
        "alpha_z_mm2_s": None if alpha is None else round(alpha * 1e6, 5), "pixel_mm": pixel_mm,
        "threshold": det.threshold, "depth_calibration": calib.fitted_on,
        "contrast_definition": "mean_contrast: mean over the region of (rise / early rise) / (the same for the "
                               "sound ring 5-15 px around the region, median) - 1 at the region's peak-contrast "
                               "time (early: the first frames after the flash); mean_contrast_rise: the same excess "
                               "in the input's units",
        "defects": _public(defects), "surface_marks": _public(marks), "notes": proc.prep.notes,
        "seconds": round(time.perf_counter() - t0, 2),
        "files": sorted(str(Path(p).name) for p in written) + ["defects.json"],
    }
    (out / "defects.json").write_text(json.dumps(result, indent=2))
    np.save(out / "score_map.npy", det.score.astype(np.float32))
    return result


def evaluate(path, out, method: str | None = None, model=None, calibration=None, material: str | None = None,
             images: bool = True, proc: Processed | None = None) -> dict:
    """Analyse a simulated sequence (HDF5 with ground truth) and score it: ``out/metrics.json``."""
    from . import plots
    from .io import load_ground_truth
    from .metrics import score

    t0 = time.perf_counter()
    method = method or BEST_METHOD
    gt = load_ground_truth(path)
    if proc is None:
        proc = process(load_sequence(path))
    material = material or gt.material
    alpha = material_alpha(material, None)
    calib = depthmod.DepthCalibration.load(calibration)
    det = detect(proc, method, model)
    defects, marks, _ = describe(proc, det, calib, alpha, gt.pixel_mm)
    depths = {d["_label"]: d["estimated_depth_mm"] for d in defects}
    m = score(det.labels, depths, gt, det.surface)
    res = {"file": str(path), "method": method, **m, "regions_detected": len(defects),
           "surface_marks_flagged": len(marks), "material": material, "depth_calibration": calib.fitted_on,
           "seconds": round(time.perf_counter() - t0, 2)}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(res, indent=2))
        if images:
            plots.evaluation_figure(proc, det, gt, res, out / "evaluation.png")
    return res


def match_regions(labels: np.ndarray, gt, min_overlap: float = 0.25) -> dict[int, int]:
    """region id -> ground-truth defect id, for regions covering at least ``min_overlap`` of a defect."""
    out = {}
    for k in range(1, int(gt.defect_ids.max()) + 1):
        m = gt.defect_ids == k
        if not m.any():
            continue
        cnt = np.bincount(labels[m], minlength=int(labels.max()) + 1)
        cnt[0] = 0
        if cnt.sum() >= min_overlap * m.sum():
            out[int(np.argmax(cnt))] = k
    return out


def calibration_records(files, method: str = "tsr", progress: bool = False) -> list[dict]:
    """(t*, diffusivity, equivalent diameter, true depth) of every detected defect of simulated files."""
    from tqdm.auto import tqdm

    from .io import load_ground_truth

    recs = []
    for f in tqdm(list(files), desc="calibrate", disable=not progress, leave=False):
        gt = load_ground_truth(f)
        proc = process(load_sequence(f))
        det = detect(proc, method)
        sigs = depthmod.signatures(proc.prep, det.labels)
        alpha = material_alpha(gt.material, None)
        for reg_id, k in match_regions(det.labels, gt).items():
            if det.surface.get(reg_id):
                continue
            sig = sigs[reg_id]
            m = det.labels == reg_id
            recs.append({"file": str(f), "defect": k, "t_slope": sig.t_slope, "t_star": sig.t_star, "alpha": alpha,
                         "d_eq_mm": depthmod.equivalent_diameter(m, gt.pixel_mm),
                         "depth_mm": float(np.median(gt.depth_map[gt.defect_ids == k])),
                         "t_peak_contrast": sig.t_peak_contrast})
    return recs


def calibrate(files, out=None, method: str = "tsr", progress: bool = False) -> depthmod.DepthCalibration:
    """Fit the depth calibration on simulated files with known depths (never the evaluation seeds)."""
    files = list(files)
    recs = calibration_records(files, method, progress)
    cal = depthmod.fit_calibration(recs, fitted_on=f"{len(files)} simulated files: " +
                                   ", ".join(Path(f).name for f in files))
    if out is not None:
        cal.to_json(out)
    return cal


def sound_plate_thresholds(files, margin_px: int = 12) -> dict:
    """Calibrate Z_HIGH / MASS_MIN of each unsupervised method on simulated sound plates (no holes)."""
    from .detect import calibrate_thresholds
    from .io import load_ground_truth

    maps = {m: [] for m in UNSUPERVISED}
    masks = []
    for f in files:
        gt = load_ground_truth(f)
        if gt.defect_ids.max() > 0:
            raise BadInputError(f"{f}: not a sound plate (it has defects)")
        proc = process(load_sequence(f))
        masks.append(ndi.binary_dilation(gt.surface_mask, iterations=margin_px) if gt.surface_mask is not None
                     else np.zeros(gt.defect_ids.shape, bool))
        maps["tsr"].append(score_tsr(proc.ti))
        maps["pct"].append(score_pct(proc.pct))
        maps["ppt"].append(score_ppt(proc.ppt))
    out = {}
    for m, ss in maps.items():
        zh, mm, st = calibrate_thresholds(ss, masks)
        out[m] = {"z_high": zh, "mass_min": mm, **st}
    return out
