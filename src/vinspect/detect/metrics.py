"""Detection metrics with a maintained implementation: torchmetrics' MeanAveragePrecision on the pycocotools
backend (COCO's 101-point interpolated AP): mAP@0.5, mAP@0.5:0.95, AP per class and precision-recall curves."""

from __future__ import annotations

import numpy as np


def _to_torch(d: dict, with_scores: bool):
    import torch

    out = {"boxes": torch.as_tensor(np.asarray(d["boxes"], np.float32).reshape(-1, 4)),
           "labels": torch.as_tensor(np.asarray(d["labels"], np.int64).reshape(-1))}
    if with_scores:
        out["scores"] = torch.as_tensor(np.asarray(d["scores"], np.float32).reshape(-1))
    return out


def detection_metrics(preds: list[dict], truths: list[dict], n_classes: int, class_names: list[str] | None = None,
                      summary_only: bool = False) -> dict:
    """``preds``: ``[{boxes (K, 4) xyxy, scores (K,), labels (K,)}]``; ``truths``: ``[{boxes, labels}]`` (same
    image order, same coordinates).  Returns ``map50``, ``map50_95`` and, unless ``summary_only``,
    ``ap50_per_class``/``ap50_95_per_class`` (None for a class absent from the truth) and ``pr_curves``
    (per class: recall points 0..1 and the interpolated precision at IoU 0.5)."""
    from .._torchvision_guard import ensure_nms

    ensure_nms()  # torchmetrics imports torchvision
    from torchmetrics.detection import MeanAveragePrecision

    names = class_names or [str(k) for k in range(n_classes)]
    m = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", class_metrics=not summary_only,
                             extended_summary=not summary_only, backend="pycocotools")
    m.update([_to_torch(p, True) for p in preds], [_to_torch(t, False) for t in truths])
    r = m.compute()
    out = {"map50": _f(r["map_50"]), "map50_95": _f(r["map"]), "mar100": _f(r["mar_100"])}
    if summary_only:
        return out
    present = {int(c) for t in truths for c in np.asarray(t["labels"]).reshape(-1)}
    seen = [int(c) for c in np.atleast_1d(r["classes"].numpy())]  # the order of the K axis
    prec = r["precision"].numpy()  # (T, R, K, A, M): IoU .5:.05:.95, 101 recall points, classes, areas, max dets
    ap50, ap = {}, {}
    curves = {}
    rec = np.linspace(0, 1, prec.shape[1])
    for k, name in enumerate(names):
        if k not in present or k not in seen:
            ap50[name] = ap[name] = None
            continue
        j = seen.index(k)
        p50 = prec[0, :, j, 0, -1]
        pall = prec[:, :, j, 0, -1]
        ap50[name] = float(np.mean(np.clip(p50, 0, None)))
        ap[name] = float(np.mean(np.clip(pall, 0, None)))
        curves[name] = {"recall": rec.round(3).tolist(), "precision": np.clip(p50, 0, None).round(4).tolist()}
    out.update(ap50_per_class=ap50, ap50_95_per_class=ap, pr_curves=curves)
    return out


def _f(t) -> float:
    v = float(t)
    return v if v >= 0 else float("nan")  # -1: nothing to score
