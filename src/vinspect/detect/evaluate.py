"""Repeated stratified train/test splits of a detector: mAP@0.5, mAP@0.5:0.95 and AP per class on the test part.

Split ``k`` holds out ``test_fraction`` of the images (stratified by class folder, else by each image's most
frequent box class) with ``random_state=k``; the detector trains on the rest, of which ``val_fraction`` is held
out for early stopping (the test part is never seen before it is scored).  A finished split is kept
(``splits/split<k>.json``) and skipped when the run is repeated with the same settings; an interrupted split
resumes from its last epoch (``splits/split<k>.ckpt``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .annotations import DetData
from .metrics import detection_metrics
from .train import DetectConfig, fit_size, load_grid, predict_grid, preprocessing_for, to_original, train_detector


def split_indices(strata: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit

    if not 0.05 <= test_fraction <= 0.9:
        raise BadInputError(f"--test-fraction {test_fraction}: must be between 0.05 and 0.9")
    x = np.zeros(len(strata))
    counts = np.bincount(strata)
    if len(strata) < 4:
        raise BadInputError(f"only {len(strata)} annotated images: too few to split")
    if len(np.unique(strata)) > 1 and counts[counts > 0].min() >= 2:
        return next(StratifiedShuffleSplit(1, test_size=test_fraction, random_state=seed).split(x, strata))
    return next(ShuffleSplit(1, test_size=test_fraction, random_state=seed).split(x))


def evaluate_splits(data: DetData, cfg: DetectConfig, splits: int = 3, out: str | Path = "detect-eval",
                    only: list[int] | None = None, test_fraction: float = 0.3, progress: bool = True,
                    grid: int = 9, on_model=None) -> dict:
    """Run (or resume) the splits in ``only`` (default all ``splits``) and summarise every finished split.

    ``on_model(k, net, fit_info, preprocessing, test_relpaths)`` sees each newly trained split's network (e.g. to
    keep it as a bundle)."""
    from tqdm.auto import tqdm

    from .plots import curves_png

    if splits < 1:
        raise BadInputError(f"--splits {splits}: must be at least 1")
    out = Path(out)
    (out / "splits").mkdir(parents=True, exist_ok=True)
    size = cfg.input_size or fit_size(data)
    pre = preprocessing_for(cfg, size)
    todo = list(range(splits)) if only is None else sorted(set(only))
    bad = [k for k in todo if not 0 <= k < splits]
    if bad:
        raise BadInputError(f"--only {bad}: splits are numbered 0..{splits - 1}")
    rels = [it.relpath for it in data.items]
    fp = cfg.fingerprint(rels, data.classes, list(size), test_fraction)
    images = targets = None
    for k in tqdm(todo, desc="splits", unit="split", disable=not progress):
        f = out / "splits" / f"split{k}.json"
        if f.is_file():
            try:
                if json.loads(f.read_text()).get("fingerprint") == fp:
                    continue
            except (OSError, json.JSONDecodeError):
                pass
        if images is None:
            images, targets = load_grid(data, pre, progress=progress)
        tr, te = split_indices(data.strata, test_fraction, k)
        ckpt = out / "splits" / f"split{k}.ckpt"
        t0 = time.perf_counter()
        net, res = train_detector(images[tr], [targets[i] for i in tr], len(data.classes), cfg,
                                  strata=data.strata[tr], checkpoint=ckpt, progress=progress,
                                  desc=f"split {k + 1}/{splits}")
        wall = time.perf_counter() - t0
        t1 = time.perf_counter()
        dets = predict_grid(net, images[te], batch_size=16, score_thresh=cfg.score_threshold)
        pred_s = time.perf_counter() - t1
        preds, truths, rows = [], [], []
        for j, i in enumerate(te):
            it = data.items[i]
            p = to_original(dets[j], it.width, it.height, pre.size_hw)
            preds.append(p)
            truths.append({"boxes": it.boxes, "labels": data.label_indices(it)})
            keep = p["scores"] >= cfg.display_threshold  # what the pictures show (mAP above used every box)
            rows.append({"path": it.relpath, "boxes": p["boxes"][keep].round(1).tolist(),
                         "scores": p["scores"][keep].round(4).tolist(), "labels": p["labels"][keep].tolist()})
        m = detection_metrics(preds, truths, len(data.classes), data.classes)
        split = {"fingerprint": fp, "split": k, "n_train": int(len(tr)) - res["n_val"], "n_val": res["n_val"],
                 "n_test": int(len(te)), "train_seconds": res["train_seconds"], "train_wall_seconds": wall,
                 "predict_seconds": pred_s, "images_per_second": len(te) / max(pred_s, 1e-9),
                 "epochs_run": len(res["history"]), "best_epochs": res["best_epochs"],
                 "resumed_from": res["resumed_from"], "history": res["history"], "backbone": res["backbone"],
                 **m, "test_predictions": rows}
        part = f.with_suffix(".part")
        part.write_text(json.dumps(split, indent=1))
        part.replace(f)
        ckpt.unlink(missing_ok=True)
        if on_model is not None:
            on_model(k, net, res, pre, [data.items[i].relpath for i in te])
        curves_png(res["history"], out / "splits" / f"split{k}-curves.png", f"split {k + 1}/{splits}")
    return summarise(data, cfg, splits, out, fp, pre, grid)


def summarise(data: DetData, cfg: DetectConfig, splits: int, out: Path, fp: str, pre, grid: int = 9) -> dict:
    from .plots import pr_curves_png

    done = []
    for k in range(splits):
        p = out / "splits" / f"split{k}.json"
        if p.is_file():
            d = json.loads(p.read_text())
            if d.get("fingerprint") == fp:
                done.append(d)
    res = {"splits": splits, "splits_done": [d["split"] for d in done], "complete": len(done) == splits,
           "n_images": len(data.items), "classes": data.classes, "config": cfg.as_dict(),
           "preprocessing": pre.as_dict(), "data": data.summary(),
           "problems": [p.as_dict() for p in data.problems[:200]],
           "metric": "torchmetrics MeanAveragePrecision (pycocotools backend), original image pixels"}
    if not done:
        return res
    m50 = np.array([d["map50"] for d in done])
    m95 = np.array([d["map50_95"] for d in done])

    def per_class(key):
        out_ = {}
        for c in data.classes:
            v = [d[key][c] for d in done if d[key].get(c) is not None]
            out_[c] = float(np.mean(v)) if v else None
        return out_

    res.update(
        map50_mean=float(m50.mean()), map50_std=float(m50.std(ddof=1)) if len(m50) > 1 else 0.0,
        map50_95_mean=float(m95.mean()), map50_95_std=float(m95.std(ddof=1)) if len(m95) > 1 else 0.0,
        ap50_per_class=per_class("ap50_per_class"), ap50_95_per_class=per_class("ap50_95_per_class"),
        images_per_second=float(np.median([d["images_per_second"] for d in done])),
        train_seconds_mean=float(np.mean([d["train_seconds"] for d in done])),
        per_split=[{k: d[k] for k in ("split", "n_train", "n_val", "n_test", "map50", "map50_95", "mar100",
                                      "ap50_per_class", "ap50_95_per_class", "train_seconds", "epochs_run",
                                      "best_epochs", "images_per_second")} for d in done],
    )
    curves = {}
    for c in data.classes:
        cs = [d["pr_curves"][c] for d in done if c in d.get("pr_curves", {})]
        if cs:
            curves[c] = {"recall": cs[0]["recall"],
                         "precision": np.mean([x["precision"] for x in cs], axis=0).round(4).tolist()}
    pr_curves_png(curves, out / "pr_curves.png",
                  f"precision-recall at IoU 0.5, mean over {len(done)} split(s)")
    (out / "results.json").write_text(json.dumps(res, indent=2))
    predictions_grid(data, done[0], out / "predictions.png", cfg.display_threshold, grid)
    return res


def predictions_grid(data: DetData, split: dict, path: Path, threshold: float, n: int = 9) -> Path | None:
    """Test images of one split: predicted boxes (class colours, score >= ``threshold``) vs truth (green)."""
    from ..data.decode import open_image
    from .plots import draw_boxes, grid_png

    if n <= 0 or not split.get("test_predictions"):
        return None
    index = {it.relpath: it for it in data.items}
    rows = split["test_predictions"]
    step = max(1, len(rows) // n)
    items = []
    for r in rows[::step][:n]:
        it = index.get(r["path"])
        if it is None:
            continue
        keep = [j for j, s in enumerate(r["scores"]) if s >= threshold]
        img = draw_boxes(open_image(it.path), [r["boxes"][j] for j in keep],
                         [data.classes[r["labels"][j]] for j in keep], [r["scores"][j] for j in keep],
                         truth=it.boxes, truth_labels=it.labels, classes=data.classes)
        items.append((img, f"{r['path']}  truth: {', '.join(sorted(set(it.labels)))}"))
    return grid_png(items, path, title=f"split {split['split']}: predicted (score >= {threshold:g}) vs true boxes "
                                       f"(green)")
