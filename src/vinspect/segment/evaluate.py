"""k-fold evaluation of a segmenter: per-image IoU / Dice / boundary F1, pooled pixel F1, out-of-fold masks.

Each fold trains a fresh network on the other folds' images and masks and predicts its own images, which that
network never saw: the saved out-of-fold probability maps (``oof/<relative path>.png``, p(defect) x 255 at the
image's own size) are honest predicted masks of every image, reusable downstream (wear grading).  A finished
fold is kept (``folds/fold<k>.json``) and skipped when the run is repeated with the same settings, and an
interrupted fold resumes from its last epoch: a long evaluation can be completed by later runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .data import SegData, load_grid
from .masks import read_mask
from .metrics import f1_from, image_metrics
from .train import SegmentConfig, fit_size, predict_proba, preprocessing_for, to_labels, train_segmenter


def kfold_indices(strata: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    from sklearn.model_selection import KFold, StratifiedKFold

    if k < 2:
        raise BadInputError(f"--kfold {k}: must be at least 2")
    x = np.zeros(len(strata))
    counts = np.bincount(strata)
    if len(np.unique(strata)) > 1 and counts[counts > 0].min() >= k:
        return list(StratifiedKFold(k, shuffle=True, random_state=seed).split(x, strata))
    if len(strata) < k:
        raise BadInputError(f"--kfold {k}: only {len(strata)} images")
    return list(KFold(k, shuffle=True, random_state=seed).split(x))


def save_prob_png(p: np.ndarray, path: Path) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(np.rint(p * 255), 0, 255).astype(np.uint8)).save(path)


def read_prob_png(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("L"), np.float32) / 255.0


def evaluate_kfold(data: SegData, cfg: SegmentConfig, kfold: int = 5, out: str | Path = "seg-eval",
                   folds: list[int] | None = None, progress: bool = True, worst: int = 9) -> dict:
    """Run (or resume) the folds in ``folds`` (default all) and summarise every finished fold."""
    from tqdm.auto import tqdm

    out = Path(out)
    (out / "folds").mkdir(parents=True, exist_ok=True)
    size = cfg.input_size or fit_size(data.sizes)
    pre = preprocessing_for(cfg, size)
    n_classes = len(data.class_names)
    splits = kfold_indices(data.strata, kfold, cfg.seed)
    todo = list(range(kfold)) if folds is None else sorted(set(folds))
    bad = [f for f in todo if not 0 <= f < kfold]
    if bad:
        raise BadInputError(f"--folds {bad}: folds are numbered 0..{kfold - 1}")
    fp = cfg.fingerprint(kfold, data.relpaths, data.fmt.as_dict(), list(size))
    images = masks = None
    for f in tqdm(todo, desc="folds", unit="fold", disable=not progress):
        fold_file = out / "folds" / f"fold{f}.json"
        if fold_file.is_file():
            try:
                if json.loads(fold_file.read_text()).get("fingerprint") == fp:
                    continue
            except (OSError, json.JSONDecodeError):
                pass
        if images is None:
            images, masks = load_grid(data, pre, progress=progress)
        tr, te = splits[f]
        t0 = time.perf_counter()
        ckpt = out / "folds" / f"fold{f}.ckpt"
        net, res = train_segmenter(images[tr], masks[tr], n_classes, cfg, strata=data.strata[tr], checkpoint=ckpt,
                                   progress=progress, desc=f"fold {f + 1}/{kfold}")
        train_s = time.perf_counter() - t0
        t1 = time.perf_counter()
        proba = predict_proba(net, images[te], batch_size=max(8, cfg.batch_size))
        predict_s = time.perf_counter() - t1
        rows = []
        tp = fp_ = fn = 0
        for j, i in enumerate(te):
            w, h = data.sizes[i]
            p_orig = np.stack([pre.to_original(proba[j, c], w, h) for c in range(proba.shape[1])])
            if n_classes == 2:
                save_prob_png(p_orig[1], out / "oof" / Path(data.relpaths[i]).with_suffix(".png"))
            else:
                from PIL import Image

                lp = out / "oof" / Path(data.relpaths[i]).with_suffix(".png")
                lp.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(to_labels(p_orig, cfg.threshold)).save(lp)
            pred = to_labels(p_orig, cfg.threshold)
            true = read_mask(data.mask_paths[i], (w, h), data.fmt)
            m = image_metrics(pred, true, n_classes)
            tp, fp_, fn = tp + m["tp"], fp_ + m["fp"], fn + m["fn"]
            rows.append({"path": data.relpaths[i], "folder": data.folders[data.strata[i]], "fold": f, **m})
        fold = {"fingerprint": fp, "fold": f, "n_train": int(len(tr)), "n_test": int(len(te)),
                "train_seconds": train_s, "predict_seconds": predict_s,
                "pixel_f1": f1_from(tp, fp_, fn), "history": res["history"], "best_epochs": res["best_epochs"],
                "resumed_from": res["resumed_from"], "encoder": res["encoder"], "per_image": rows}
        part = fold_file.with_suffix(".part")
        part.write_text(json.dumps(fold, indent=1))
        part.replace(fold_file)
        ckpt.unlink(missing_ok=True)
        from .plots import curves_png

        curves_png(res["history"], out / "folds" / f"fold{f}-curves.png", f"fold {f + 1}/{kfold}")
    return summarise(data, cfg, kfold, out, fp, pre, worst)


def summarise(data: SegData, cfg: SegmentConfig, kfold: int, out: Path, fp: str, pre, worst: int = 9) -> dict:
    done = []
    for f in range(kfold):
        p = out / "folds" / f"fold{f}.json"
        if p.is_file():
            d = json.loads(p.read_text())
            if d.get("fingerprint") == fp:
                done.append(d)
    rows = [r for d in done for r in d["per_image"]]
    res = {"kfold": kfold, "folds_done": [d["fold"] for d in done], "complete": len(done) == kfold,
           "n_images": len(data.paths), "n_evaluated": len(rows), "config": cfg.as_dict(),
           "preprocessing": pre.as_dict(), "data": data.summary(), "classes": data.class_names}
    if not rows:
        return res
    ious = np.array([r["iou"] for r in rows])
    res.update(
        iou_mean=float(ious.mean()), iou_std=float(ious.std(ddof=1)) if len(ious) > 1 else 0.0,
        iou_median=float(np.median(ious)),
        dice_mean=float(np.mean([r["dice"] for r in rows])),
        pixel_f1_mean=float(np.mean([d["pixel_f1"] for d in done])),
        boundary_f1_mean=float(np.mean([r["boundary_f1"] for r in rows])),
        per_fold=[{"fold": d["fold"], "n_test": d["n_test"],
                   "iou_mean": float(np.mean([r["iou"] for r in d["per_image"]])),
                   "dice_mean": float(np.mean([r["dice"] for r in d["per_image"]])),
                   "pixel_f1": d["pixel_f1"],
                   "boundary_f1_mean": float(np.mean([r["boundary_f1"] for r in d["per_image"]])),
                   "train_seconds": d["train_seconds"], "epochs_run": len(d["history"]),
                   "best_epochs": d["best_epochs"]} for d in done],
        per_folder={f: {"n": int(sum(r["folder"] == f for r in rows)),
                        "iou_mean": float(np.mean([r["iou"] for r in rows if r["folder"] == f])),
                        "dice_mean": float(np.mean([r["dice"] for r in rows if r["folder"] == f])),
                        **_pooled([r for r in rows if r["folder"] == f])}
                    for f in data.folders if any(r["folder"] == f for r in rows)},
        pooled=_pooled(rows),
        per_image=[{k: r[k] for k in ("path", "folder", "fold", "iou", "dice", "boundary_f1", "true_pixels",
                                      "pred_pixels") if k in r} for r in rows],
        train_seconds_mean=float(np.mean([d["train_seconds"] for d in done])),
    )
    if len(data.class_names) > 2:
        per = np.array([r["iou_per_class"] for r in rows])
        res["iou_per_mask_class"] = {c: float(per[:, k].mean()) for k, c in enumerate(data.class_names[1:])}
    (out / "results.json").write_text(json.dumps(res, indent=2))
    worst_grid(data, rows, out, cfg.threshold, worst)
    return res


def _pooled(rows: list[dict]) -> dict:
    """Pixel F1 and IoU of the defect with every pixel of ``rows`` pooled (all folds together)."""
    tp, fp, fn = (int(sum(r.get(k, 0) for r in rows)) for k in ("tp", "fp", "fn"))
    return {"pixel_f1": f1_from(tp, fp, fn), "pixel_iou": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)}


def worst_grid(data: SegData, rows: list[dict], out: Path, threshold: float, n: int = 9) -> Path | None:
    """The ``n`` images of lowest IoU: predicted (red) vs true (green) contours."""
    from ..data.decode import open_image
    from .plots import contours_rgb, grid_png

    if n <= 0:
        return None
    index = {r: i for i, r in enumerate(data.relpaths)}
    items = []
    for r in sorted(rows, key=lambda r: r["iou"])[:n]:
        i = index[r["path"]]
        img = np.asarray(open_image(data.paths[i]))
        w, h = data.sizes[i]
        oof = out / "oof" / Path(r["path"]).with_suffix(".png")
        if len(data.class_names) == 2:
            pred = read_prob_png(oof) >= threshold
        else:
            from PIL import Image

            pred = np.asarray(Image.open(oof)) > 0
        true = read_mask(data.mask_paths[i], (w, h), data.fmt)
        items.append((contours_rgb(img, pred, true), f"{r['path']}  IoU {r['iou']:.2f}"))
    return grid_png(items, out / "worst.png", title="lowest IoU: predicted (red) vs true (green)")
