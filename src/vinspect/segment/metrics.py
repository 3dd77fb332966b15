"""Per-image segmentation metrics on the defect region (every nonzero class together, or one class)."""

from __future__ import annotations

import numpy as np


def iou(pred: np.ndarray, true: np.ndarray) -> float:
    """Intersection over union of two boolean masks; both empty counts 1 (nothing to find, nothing found)."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    u = np.logical_or(p, t).sum()
    return 1.0 if u == 0 else float(np.logical_and(p, t).sum() / u)


def dice(pred: np.ndarray, true: np.ndarray) -> float:
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    s = p.sum() + t.sum()
    return 1.0 if s == 0 else float(2 * np.logical_and(p, t).sum() / s)


def confusion(pred: np.ndarray, true: np.ndarray) -> tuple[int, int, int]:
    """(true positive, false positive, false negative) pixels."""
    p, t = np.asarray(pred, bool), np.asarray(true, bool)
    return int((p & t).sum()), int((p & ~t).sum()), int((~p & t).sum())


def f1_from(tp: int, fp: int, fn: int) -> float:
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def boundary(mask: np.ndarray) -> np.ndarray:
    from scipy import ndimage as ndi

    m = np.asarray(mask, bool)
    return m & ~ndi.binary_erosion(m, border_value=0)


def boundary_f1(pred: np.ndarray, true: np.ndarray, tolerance: float = 2.0) -> float:
    """F1 of the region boundaries (Csurka et al. 2013): a boundary pixel counts as matched when the other
    mask's boundary lies within ``tolerance`` pixels.  Both empty: 1; one empty: 0."""
    from scipy import ndimage as ndi

    bp, bt = boundary(pred), boundary(true)
    if not bp.any() and not bt.any():
        return 1.0
    if not bp.any() or not bt.any():
        return 0.0
    dt_t = ndi.distance_transform_edt(~bt)
    dt_p = ndi.distance_transform_edt(~bp)
    precision = float((dt_t[bp] <= tolerance).mean())
    recall = float((dt_p[bt] <= tolerance).mean())
    return 0.0 if precision + recall == 0 else 2 * precision * recall / (precision + recall)


def image_metrics(pred: np.ndarray, true: np.ndarray, n_classes: int = 2) -> dict:
    """IoU, Dice, boundary F1 of the defect region (all nonzero classes), pixel counts, per-class IoU."""
    p, t = np.asarray(pred) > 0, np.asarray(true) > 0
    tp, fp, fn = confusion(p, t)
    out = {"iou": iou(p, t), "dice": dice(p, t), "boundary_f1": boundary_f1(p, t), "tp": tp, "fp": fp, "fn": fn,
           "true_pixels": int(t.sum()), "pred_pixels": int(p.sum())}
    if n_classes > 2:
        out["iou_per_class"] = [iou(np.asarray(pred) == k, np.asarray(true) == k) for k in range(1, n_classes)]
    return out
