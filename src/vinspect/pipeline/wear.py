"""Measure the wear of a folder of inserts from masks (given, or predicted by a segment model)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..wear.measure import measure

COLUMNS = ["path", "vb_max", "vb_mean", "vb_mean_edge", "vb_median", "worn_length", "area", "notch_depth",
           "breakage", "edge_length", "edge_angle_deg", "mm_per_px", "vb_max_mm", "vb_mean_mm", "vb_mean_edge_mm",
           "worn_length_mm", "area_mm2", "notch_depth_mm", "scale_note"]


def _images_under(inputs: list) -> list[tuple[Path, str]]:
    """(path, relative path) of every image: relative to the folder given (a file: its name)."""
    from ..data.dataset import collect_images

    out = []
    for inp in inputs:
        p = Path(inp)
        paths, _ = collect_images([p])
        for q in paths:
            out.append((Path(q), str(Path(q).relative_to(p)) if p.is_dir() else Path(q).name))
    if not out:
        raise BadInputError("no image files (" + ", ".join(map(str, inputs)) + ")")
    return out


def measure_folder(inputs: list, csv_path: str | Path, masks: str | Path | None = None, model: str | None = None,
                   mm_per_px: float | None = None, scale_bar_mm: float | None = None, edge: str = "bottom",
                   mask_align: str = "exact", plots: str | Path | None = None, progress: bool = True) -> list[dict]:
    """One CSV row per insert; ``plots``: a picture per insert (edge, wear land, VB max) in that folder."""
    from tqdm.auto import tqdm

    from ..data.decode import open_image
    from ..segment.masks import MaskFormat, mask_path, read_mask
    from ..wear.plots import measure_png
    from ..wear.scale import find_scale_bar

    if (masks is None) == (model is None):
        raise BadInputError("give either a segment MODEL or --masks DIR")
    if mm_per_px is not None and scale_bar_mm is not None:
        raise BadInputError("--mm-per-px and --scale-bar exclude each other")
    if mm_per_px is not None and not mm_per_px > 0:
        raise BadInputError(f"--mm-per-px {mm_per_px}: must be positive")
    items = _images_under(inputs)
    pred = None
    if model is not None:
        from ..models import segment as _seg  # noqa: F401 - registers the unet kind
        from ..models.predictor import load_predictor

        pred = load_predictor(model)
        if pred.task != "segment":
            raise BadInputError(f"{model}: a {pred.task} model; wear measure needs a segment model (or --masks)")
    else:
        missing = [r for _, r in items if not mask_path(masks, r).is_file()]
        if missing:
            raise BadInputError(f"--masks {masks}: no mask for {len(missing)} image(s): {', '.join(missing[:8])}"
                                f"{' ...' if len(missing) > 8 else ''}")
    fmt = MaskFormat(align=mask_align)
    rows = []
    for p, rel in tqdm(items, desc="measure", unit="img", disable=not progress):
        img = open_image(p)
        rgb = np.asarray(img.convert("RGB"))
        grey = np.asarray(img.convert("L"))
        if pred is not None:
            from ..segment.train import to_labels

            proba = pred.proba(pred.decode(p)[None])[0]
            po = np.stack([pred.preprocessing.to_original(proba[c], *img.size) for c in range(proba.shape[0])])
            m = to_labels(po, pred.threshold) > 0
        else:
            m = read_mask(mask_path(masks, rel), img.size, fmt) > 0
        scale, note = mm_per_px, ""
        if scale_bar_mm is not None:
            bar = find_scale_bar(grey)
            if bar is None:
                scale, note = None, "no scale bar found"
            else:
                scale, note = scale_bar_mm / bar[0], f"scale bar {bar[0]} px at {list(bar[1])}"
        wm, geo = measure(grey, m, edge, scale)
        d = wm.as_dict()
        rows.append({"path": rel, **{k: d.get(k) for k in COLUMNS if k in d}, "scale_note": note})
        if plots is not None:
            measure_png(rgb, wm, geo, Path(plots) / Path(rel).with_suffix(".png"), rel)
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if r.get(k) is None else (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]))
                        for k in COLUMNS})
    return rows


def cnn_features(paths: list, backbone: str, progress: bool = False) -> np.ndarray:
    """Pooled CNN features of every whole image (the backbone's default layer and input, torch engine), for the
    joined candidate of wear grading: no label is used, so computing them once for all images leaks nothing
    between the training and test parts of a split."""
    from ..features.extract import Extractor, stream_features

    ex = Extractor(backbone, engine="torch")
    out = None
    for ok, feats, failures in stream_features(ex, list(paths), progress=progress, desc=f"CNN {backbone}"):
        if failures:
            raise BadInputError(f"{paths[failures[0][0]]}: {failures[0][1]}")
        if out is None:
            out = np.zeros((len(paths), feats.shape[1]), np.float64)
        out[ok] = feats
    return out
