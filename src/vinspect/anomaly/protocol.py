"""Training and the evaluation protocol of anomaly detection from normal images only.

Threshold without defect examples (default): cross-fitting.  The normal training images are split into
``threshold_folds`` folds (default 5); each fold is scored by a model fitted on the other folds only, so every
normal image gets an out-of-sample score, and the ``threshold_quantile`` quantile (default 0.99) of those scores
is the threshold; the model itself is then fitted on every normal image (none is held back from the memory
bank).  The fold models see 80 % of the images, so their scores run slightly high and the threshold errs
towards fewer false alarms.  Cost: the fit runs ``folds + 1`` times (reported apart as ``threshold_seconds``).
The older rule (``holdout`` given, ``threshold_folds`` not): fit on ``1 - holdout`` of them, the quantile of the
held-out part's scores, then the held-out images join the model (PatchCore: the greedy coreset continues from the
bank over their patches).  With labelled images (``calibrate``) the model is fitted on every normal image and the
threshold of the best F1 on the labelled images is used instead.

Evaluation: ``splits`` repeated random splits of the normal images (``train_fraction`` for fitting, the rest
held out); each model (threshold included, as above) is fitted on the training part only and tested on the
held-out normal images plus every anomalous one.  Patch features of every image are extracted once (the
backbone is frozen), kept in memory as float16 and reused by every split.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..errors import BadInputError
from .data import AnomalyData, find_masks, load_anomaly_data, load_mask
from .features import decode_all, map_to_original
from .metrics import PixelAccumulator, image_metrics
from .model import DEFAULTS, AnomalyModel, auto_size, calibrated_threshold, input_spec, quantile_threshold


def _split_normal(idx: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    p = rng.permutation(idx)
    k = int(round(fraction * len(p)))
    k = min(max(k, 1), len(p) - 1)
    return np.sort(p[:k]), np.sort(p[k:])


def fit_with_threshold(model: AnomalyModel, feats: torch.Tensor, holdout: float, quantile: float, seed: int,
                       progress: bool = False) -> dict:
    """Fit on ``1 - holdout`` of the normal images; the threshold is the ``quantile`` of the scores of the others;
    then the held-out images join the model (PatchCore: its coreset selection continues over their patches)."""
    n = len(feats)
    rng = np.random.default_rng(seed + 7919)
    fit_idx, held = _split_normal(np.arange(n), 1 - holdout, rng)
    t0 = time.perf_counter()
    model.fit_features(feats[torch.from_numpy(fit_idx)], progress=progress)
    t1 = time.perf_counter()
    _, held_scores = model.score_features(feats[torch.from_numpy(held)])
    model.threshold = quantile_threshold(held_scores, quantile)
    t2 = time.perf_counter()
    model.extend_features(feats, torch.from_numpy(held), progress=progress)
    t3 = time.perf_counter()
    return {"fit_seconds": (t1 - t0) + (t3 - t2), "threshold_seconds": t2 - t1, "n_threshold_images": int(len(held)),
            "n_fit_images": int(n)}


def crossfit_scores(model: AnomalyModel, feats: torch.Tensor, folds: int, seed: int,
                    progress: bool = False) -> np.ndarray:
    """Out-of-fold image scores of the normal images ``feats``: they are split into ``folds`` folds and each fold
    is scored by a model fitted on the other folds (cross-fitting), so every score is that of an image the
    model has not seen.  ``model`` is left fitted on the last fold's complement; refit it afterwards."""
    n = len(feats)
    k = int(min(max(folds, 2), n))
    order = np.random.default_rng(seed + 7919).permutation(n)
    scores = np.empty(n, dtype=np.float64)
    for f in range(k):
        held = np.sort(order[f::k])
        rest = np.setdiff1d(np.arange(n), held)
        model.fit_features(feats[torch.from_numpy(rest)], progress=progress)
        _, s = model.score_features(feats[torch.from_numpy(held)])
        scores[held] = s
    return scores


def crossfit_threshold(model: AnomalyModel, feats: torch.Tensor, quantile: float, seed: int, folds: int = 5,
                       progress: bool = False) -> float:
    """The ``quantile`` of the out-of-fold scores of the normal images (see :func:`crossfit_scores`)."""
    return quantile_threshold(crossfit_scores(model, feats, folds, seed, progress), quantile)


def fit_crossfit(model: AnomalyModel, feats: torch.Tensor, folds: int, quantile: float, seed: int,
                 progress: bool = False) -> dict:
    """The threshold from ``folds``-fold out-of-fold scores of the normal images, then the model fitted on all
    of them (no image is held back from the memory bank)."""
    t0 = time.perf_counter()
    model.threshold = crossfit_threshold(model, feats, quantile, seed, folds, progress)
    t1 = time.perf_counter()
    model.fit_features(feats, progress=progress)
    t2 = time.perf_counter()
    return {"fit_seconds": t2 - t1, "threshold_seconds": t1 - t0, "n_threshold_images": int(len(feats)),
            "n_fit_images": int(len(feats))}


def fit_threshold(model: AnomalyModel, feats: torch.Tensor, quantile: float, seed: int, folds: int | None = None,
                  holdout: float | None = None, progress: bool = False) -> dict:
    """Fit ``model`` on the normal images ``feats`` and set its threshold without defect examples: cross-fitted
    (``folds`` >= 2; the default) or, with ``holdout`` given and ``folds`` not, from a held-out part that then
    joins the model.  -> timings and ``rule`` (a sentence for the results)."""
    if folds is None and holdout is not None and holdout > 0:
        t = fit_with_threshold(model, feats, holdout, quantile, seed, progress)
        t["rule"] = (f"quantile {quantile} of the scores of {t['n_threshold_images']} normal images ({holdout:.0%}) "
                     "held out of a first fit, then added to the model")
        return t
    k = int(DEFAULTS["threshold_folds"] if folds is None else folds)
    if k < 2:
        raise BadInputError(f"--threshold-folds {k}: must be at least 2")
    t = fit_crossfit(model, feats, k, quantile, seed, progress)
    t["rule"] = (f"quantile {quantile} of the out-of-fold scores of the {len(feats)} normal training images "
                 f"({k}-fold cross-fitting: each scored by a model fitted without it); the model is fitted on all")
    return t


def evaluate(root, normal, splits: int = 5, train_fraction: float = 0.7, masks=None, method: str = "patchcore",
             seed: int = 0, progress: bool = True, model_kwargs: dict | None = None,
             threshold_quantile: float | None = None, holdout: float | None = None, threshold_folds: int | None = None,
             keep_maps: int = 12, data: AnomalyData | None = None, feature_cache: dict | None = None) -> dict:
    """Repeated splits; returns the results dict (see ``vinspect anomaly evaluate --help``)."""
    from tqdm.auto import tqdm

    if splits < 1:
        raise BadInputError(f"--splits {splits}: must be at least 1")
    if not 0 < train_fraction < 1:
        raise BadInputError(f"--train-fraction {train_fraction}: must be between 0 and 1")
    q = DEFAULTS["threshold_quantile"] if threshold_quantile is None else threshold_quantile
    data = data or load_anomaly_data(root, normal, need_anomalous=True)
    mask_files = find_masks(masks, data) if masks else None
    if mask_files is not None:
        _check_masks(mask_files)
    model = AnomalyModel(method, seed=seed, **_with_spec(model_kwargs, data))
    # patch features of every image, once (optionally shared between calls with the same feature settings)
    key = (str(data.root), len(data.paths), model.backbone, tuple(model.layers), model.local, model.border,
           tuple(sorted(model.spec.as_dict().items(), key=str)).__repr__())
    if feature_cache is not None and key in feature_cache:
        dec, feats, per_image_decode, per_image_extract = feature_cache[key]
    else:
        t0 = time.perf_counter()
        dec = decode_all(data.paths, model.spec, data.root, progress)
        t1 = time.perf_counter()
        feats = model.features(dec.pixels, progress)
        t2 = time.perf_counter()
        per_image_extract = (t2 - t1) / len(dec.paths)
        per_image_decode = (t1 - t0) / len(data.paths)
        if feature_cache is not None:
            feature_cache[key] = (dec, feats, per_image_decode, per_image_extract)
    keep = {p: i for i, p in enumerate(data.paths)}
    idx_ok = np.array([keep[p] for p in dec.paths], dtype=int)
    an = data.anomalous[idx_ok]
    normal_idx = np.nonzero(an == 0)[0]
    anomal_idx = np.nonzero(an == 1)[0]
    if len(normal_idx) < 10:
        raise BadInputError(f"only {len(normal_idx)} normal images could be decoded; at least 10 are needed")
    if not len(anomal_idx):
        raise BadInputError("no anomalous image could be decoded")
    per_split = []
    worst = None
    for s in tqdm(range(splits), desc="splits", disable=not progress, leave=False):
        rng = np.random.default_rng(seed + s)
        tr, te_n = _split_normal(normal_idx, train_fraction, rng)
        test = np.concatenate([te_n, anomal_idx])
        y = an[test]
        timing = fit_threshold(model, feats[torch.from_numpy(tr)], q, seed + s, threshold_folds, holdout)
        t3 = time.perf_counter()
        maps, scores = model.score_features(feats[torch.from_numpy(test)])
        t4 = time.perf_counter()
        row = {"split": s, "n_train": int(len(tr)), "n_test_normal": int(len(te_n)),
               "n_test_anomalous": int(len(anomal_idx)), "threshold": model.threshold,
               **image_metrics(y, scores, model.threshold),
               "fit_seconds": timing["fit_seconds"] + per_image_extract * len(tr), "n_fit": timing["n_fit_images"],
               "threshold_seconds": timing["threshold_seconds"],
               "predict_seconds_per_image": per_image_extract + (t4 - t3) / len(test),
               "memory_bank": int(len(model.core.bank)) if method == "patchcore" else None}
        if mask_files is not None:
            pix = _pixel_metrics(maps, test, dec, mask_files, idx_ok, model.spec.resize)
            row.update(pix)
        per_split.append(row)
        if s == 0:
            worst = _worst(maps, scores, y, test, dec, keep_maps)
            worst["scores"], worst["labels"] = scores.tolist(), y.tolist()
    res = _summary(per_split)
    res.update({
        "method": method, "config": model.config(), "backbone": model.backbone,
        "weights_sha256": getattr(model.loaded, "weights_sha256", None),
        "preprocessing": model.spec.as_dict(), "splits": splits, "train_fraction": train_fraction, "seed": seed,
        "threshold_rule": timing["rule"] + " (no defect examples)",
        "n_normal": int(len(normal_idx)), "n_anomalous": int(len(anomal_idx)),
        "anomalous_classes": sorted({data.classes[i] for i in idx_ok[anomal_idx]}),
        "normal_classes": data.normal_classes,
        "decode_seconds_per_image": per_image_decode, "extract_seconds_per_image": per_image_extract,
        "skipped": [k.as_dict() for k in data.skipped + dec.skipped],
        "masks": str(masks) if masks else None,
    })
    res["_worst"] = worst
    return res


def _with_spec(model_kwargs: dict | None, data: AnomalyData) -> dict:
    """Default input (``model_kwargs['resize']`` or the default): squash to a square of the default long side;
    letterbox: the long side with the normal images' median aspect (see ``model.auto_size``)."""
    kw = dict(model_kwargs or {})
    resize = kw.pop("resize", None) or DEFAULTS["resize"]
    if kw.get("spec") is None:
        backbone = kw.get("backbone") or DEFAULTS["backbone"]
        if resize == "letterbox":
            normal = [p for p, a in zip(data.paths, data.anomalous) if a == 0]
            kw["spec"] = input_spec(backbone, auto_size(normal), "letterbox")
        else:
            kw["spec"] = input_spec(backbone, None, resize)
    return kw


def _check_masks(mask_files: dict) -> None:
    from PIL import Image

    for p in mask_files.values():
        try:
            with Image.open(p) as im:
                mode = im.mode
        except Exception as e:  # noqa: BLE001
            raise BadInputError(f"--masks: {p}: unreadable ({type(e).__name__})") from None
        if mode not in ("L", "1", "I", "I;16", "I;16B", "I;16L", "P", "F"):
            raise BadInputError(f"--masks: {p} is not single-channel (mode {mode}); masks must be grey images")


def _pixel_metrics(maps, test, dec, mask_files, idx_ok, resize) -> dict:
    lo, hi = float(maps.min()), float(maps.max())
    acc = PixelAccumulator(lo, hi)
    n_without = 0
    for k, i in enumerate(test):
        w, h = dec.sizes[i]
        mf = mask_files.get(int(idx_ok[i]))
        m = map_to_original(maps[k], w, h, resize)
        mask = load_mask(mf, w, h)
        acc.add(m, mask)
        n_without += mf is None
    return {"pixel_auroc": acc.pixel_auroc(), "pro": acc.pro(), "n_test_without_mask": int(n_without)}


def _worst(maps, scores, y, test, dec, k: int) -> dict:
    """The anomalous images scored lowest and the normal ones scored highest (first split)."""
    a = np.nonzero(y == 1)[0]
    n = np.nonzero(y == 0)[0]
    pick = list(a[np.argsort(scores[a])][: k - k // 3]) + list(n[np.argsort(-scores[n])][: k // 3])
    out = {"items": []}
    for j in pick:
        i = test[j]
        out["items"].append({"path": str(dec.paths[i]), "score": float(scores[j]), "anomalous": int(y[j]),
                             "pixels": dec.pixels[i], "map": maps[j]})
    # the top-scored anomalous images too, for a picture of maps on real defects
    out["best"] = [{"path": str(dec.paths[test[j]]), "score": float(scores[j]), "pixels": dec.pixels[test[j]],
                    "map": maps[j]} for j in a[np.argsort(-scores[a])][:k]]
    return out


def _mean_std(vals):
    v = np.array([x for x in vals if x is not None], dtype=float)
    if not len(v):
        return None, None
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0


def _summary(per_split: list[dict]) -> dict:
    out = {}
    for key in ("image_auroc", "image_ap", "f1_at_threshold", "recall_at_threshold",
                "false_positive_rate_at_threshold", "pixel_auroc", "pro"):
        if key in per_split[0]:
            m, s = _mean_std([r.get(key) for r in per_split])
            out[f"{key}_mean"], out[f"{key}_std"] = m, s
    out["fit_seconds"] = float(np.mean([r["fit_seconds"] for r in per_split]))
    out["threshold_seconds"] = float(np.mean([r["threshold_seconds"] for r in per_split]))
    spi = float(np.mean([r["predict_seconds_per_image"] for r in per_split]))
    out["images_per_second"] = 1.0 / spi if spi > 0 else None
    out["per_split"] = per_split
    return out


def train(root, normal, method: str = "patchcore", seed: int = 0, progress: bool = True,
          model_kwargs: dict | None = None, threshold_quantile: float | None = None, holdout: float | None = None,
          calibrate=None, threshold_folds: int | None = None) -> tuple[AnomalyModel, dict]:
    """Fit on every normal image of ``root``; -> (model with its threshold, training summary)."""
    q = DEFAULTS["threshold_quantile"] if threshold_quantile is None else threshold_quantile
    data = load_anomaly_data(root, normal, need_anomalous=False)
    model = AnomalyModel(method, seed=seed, **_with_spec(model_kwargs, data))
    normal_paths = [p for p, a in zip(data.paths, data.anomalous) if a == 0]
    dec = decode_all(normal_paths, model.spec, data.root, progress)
    if len(dec.paths) < 10:
        raise BadInputError(f"only {len(dec.paths)} normal images could be decoded; at least 10 are needed")
    t0 = time.perf_counter()
    feats = model.features(dec.pixels, progress)
    t1 = time.perf_counter()
    summary = {"root": str(data.root), "normal_classes": data.normal_classes, "n_images": len(dec.paths),
               "ignored_classes": sorted({c for c, a in zip(data.classes, data.anomalous) if a}),
               "skipped": [k.as_dict() for k in data.skipped + dec.skipped], "seed": seed}
    if calibrate:
        model.fit_features(feats, progress=progress)
        cal = load_anomaly_data(calibrate, normal, need_anomalous=True)
        cdec = decode_all(cal.paths, model.spec, cal.root, progress)
        keep = {p: i for i, p in enumerate(cal.paths)}
        y = cal.anomalous[[keep[p] for p in cdec.paths]]
        _, s = model.score_features(model.features(cdec.pixels, progress))
        model.threshold = calibrated_threshold(y, s)
        summary["threshold_rule"] = f"best F1 on {len(y)} labelled images of {cal.root}"
        summary["calibration"] = {"n_normal": int((y == 0).sum()), "n_anomalous": int((y == 1).sum()),
                                  **image_metrics(y, s, model.threshold)}
        summary["skipped"] += [k.as_dict() for k in cal.skipped + cdec.skipped]
    else:
        timing = fit_threshold(model, feats, q, seed, threshold_folds, holdout, progress)
        summary["threshold_rule"] = timing["rule"]
        summary["n_fit_images"] = timing["n_fit_images"]
    summary["fit_seconds"] = time.perf_counter() - t0
    summary["extract_seconds"] = t1 - t0
    return model, summary


def original_map(model: AnomalyModel, amap: np.ndarray, orig_w: int, orig_h: int) -> np.ndarray:
    return map_to_original(amap, orig_w, orig_h, model.spec.resize)


def results_path(out) -> Path:
    return Path(out) / "results.json"
