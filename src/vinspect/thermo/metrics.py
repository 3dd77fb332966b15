"""Scoring a defect map and depth estimates against simulated ground truth.

Scope: the defects no deeper than half the plate thickness (``in_scope``).  Pixels of the deeper defects and
a margin around them (half their depth, at least 2 pixels) are left out of the pixel counts: finding them is
neither rewarded nor punished.  Every other pixel predicted as defect is a false positive (surface marks
included, unless the analysis flagged them as surface marks and left them out of the defect map).

* ``pixel_f1``: F1 of the defect map against the in-scope defect footprints, pooled over pixels;
* a defect is *found* when detected regions cover at least ``FOUND_OVERLAP`` of its footprint;
* its depth estimate is the one of the region that covers it most; ``depth_mean_relative_error`` is the mean
  of ``|estimate - true| / true`` over the in-scope defects that were found and given a depth.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from .io import GroundTruth

FOUND_OVERLAP = 0.25


def _f1(tp, fp, fn) -> float:
    return float(2 * tp / (2 * tp + fp + fn)) if (tp + fp + fn) else 1.0


def score(labels: np.ndarray, depths: dict, gt: GroundTruth, surface: dict | None = None) -> dict:
    """``labels``: region label image (0 background); ``depths``: region id -> estimated depth in mm (or None);
    ``surface``: region id -> True for regions flagged as surface marks (excluded from the defect map)."""
    surface = surface or {}
    lab = np.where(np.isin(labels, [k for k, v in surface.items() if v]), 0, labels)
    pred = lab > 0
    ids = gt.defect_ids
    half = gt.thickness_mm / 2
    n_def = int(ids.max())
    depth_of = {}
    for k in range(1, n_def + 1):
        m = ids == k
        if m.any():
            depth_of[k] = float(np.median(gt.depth_map[m]))
    in_scope = {k for k, d in depth_of.items() if d <= half + 1e-9}
    ignore = np.zeros(ids.shape, bool)
    for k, d in depth_of.items():
        if k not in in_scope:
            r = max(2, int(round(0.5 * d / gt.pixel_mm)))
            ignore |= ndi.binary_dilation(ids == k, iterations=r)
    scope_mask = np.isin(ids, list(in_scope))
    ignore &= ~scope_mask
    counted = ~ignore
    tp = int(np.sum(pred & scope_mask))
    fp = int(np.sum(pred & ~scope_mask & counted & (ids == 0)))
    fn = int(np.sum(~pred & scope_mask))
    per = []
    errs = []
    found = 0
    region_hits = set()
    for k in sorted(depth_of):
        m = ids == k
        hole = gt.holes[k - 1] if k - 1 < len(gt.holes) else {}
        cover = float(np.mean(pred[m]))
        overl = np.bincount(lab[m], minlength=int(lab.max()) + 1)
        overl[0] = 0
        best = int(np.argmax(overl)) if overl.sum() else 0
        region_hits.update(int(i) for i in np.nonzero(overl)[0])
        is_found = cover >= FOUND_OVERLAP
        est = depths.get(best) if (is_found and best) else None
        rel = abs(est - depth_of[k]) / depth_of[k] if est is not None else None
        zone = ndi.binary_dilation(m, iterations=max(2, int(round(0.5 * np.sqrt(m.sum() / np.pi)))))
        zone &= counted
        f1k = _f1(int(np.sum(pred & m)), int(np.sum(pred & zone & ~m & (ids == 0))), int(np.sum(~pred & m)))
        row = {"id": k, "diameter_mm": hole.get("diameter_mm"), "depth_mm": depth_of[k], "in_scope": k in in_scope,
               "found": bool(is_found), "coverage": round(cover, 4), "pixel_f1": round(f1k, 4),
               "region": best or None, "estimated_depth_mm": None if est is None else round(float(est), 3),
               "depth_relative_error": None if rel is None else round(float(rel), 4)}
        per.append(row)
        if k in in_scope and is_found:
            found += 1
            if rel is not None:
                errs.append(rel)
    fp_regions = [int(i) for i in np.unique(lab[lab > 0]) if int(i) not in region_hits
                  and not np.any(ignore[lab == i])]
    return {
        "pixel_f1": round(_f1(tp, fp, fn), 4),
        "pixel_precision": round(tp / (tp + fp), 4) if tp + fp else None,
        "pixel_recall": round(tp / (tp + fn), 4) if tp + fn else None,
        "defects_found": found,
        "defects_total": len(in_scope),
        "depth_mean_relative_error": round(float(np.mean(errs)), 4) if errs else None,
        "depth_max_relative_error": round(float(np.max(errs)), 4) if errs else None,
        "depths_estimated": len(errs),
        "false_positive_regions": len(fp_regions),
        "scope": f"defects no deeper than half the plate thickness ({half:g} mm)",
        "per_defect": per,
    }
