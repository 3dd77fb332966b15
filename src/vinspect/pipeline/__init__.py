"""The pipelines: the steps composed (data -> features/networks -> heads -> evaluation -> reporting -> bundles).

This module: the lab pipeline as functions: extract, evaluate, train, predict, compare; :mod:`.cnn`: the same
for trained CNNs (transfer, finetune, scratch).

Each step is the composition of the modules below it (data -> features -> heads -> evaluation ->
reporting); the CLI only parses options and prints what these return.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from ..data.dataset import Dataset, Skipped, scan_folder
from ..data.splits import check_class_sizes
from ..errors import BadInputError
from ..evaluation.protocol import evaluate_features
from ..features.extract import Extractor, FeatureSet, calibration_images, extract
from ..heads.factory import MIN_TRAIN_PER_CLASS, make_head
from ..models.bundle import versions
from ..reporting.plots import comparison_png, confusion_matrix_png
from ..reporting.results import write_results


def load_dataset(data, classes=None, test_size: float | None = 0.3, kfold: int | None = None,
                 min_train: int = 1) -> Dataset:
    """Scan ``data`` and refuse, before any work, classes too small for the protocol."""
    ds = scan_folder(data, classes)
    if test_size is not None or kfold:
        check_class_sizes(ds.labels, ds.classes, None if kfold else test_size, kfold, min_train)
    return ds


def _features(ds: Dataset, extractor: Extractor, cache_dir, use_cache, progress) -> FeatureSet:
    fs = extract(ds, extractor, cache_dir=cache_dir, use_cache=use_cache, progress=progress)
    missing = [c for i, c in enumerate(fs.classes) if not np.any(fs.labels == i)]
    if missing:
        raise BadInputError(f"class(es) {', '.join(missing)}: no decodable image left "
                            f"(see the skipped files); the features computed are kept in the cache")
    return fs


def evaluate(data, extractor: Extractor | None = None, head: str = "logreg", class_weight: str | None = None,
             splits: int = 10, test_size: float = 0.3, seed: int = 0, kfold: int | None = None,
             classes=None, cache_dir=None, use_cache: bool = True, out=None, progress: bool = True,
             n_jobs: int = -1) -> dict:
    """The lab's protocol on an image folder; writes results.json, results.txt and the confusion matrix to ``out``."""
    t0 = time.perf_counter()
    extractor = extractor or Extractor()
    make_head(head, class_weight)  # refuse an unknown head before any work
    ds = load_dataset(data, classes, test_size, kfold, MIN_TRAIN_PER_CLASS[head])
    fs = _features(ds, extractor, cache_dir, use_cache, progress)
    ev = evaluate_features(fs.features, fs.labels, fs.classes, make_head(head, class_weight, seed),
                           splits=splits, test_size=test_size, seed=seed, kfold=kfold, n_jobs=n_jobs,
                           progress=progress, min_train=MIN_TRAIN_PER_CLASS[head])
    st = fs.stats
    res = {
        "data": str(ds.root),
        "method": "head",
        **ev,
        "classes": fs.classes,
        "n_images": len(fs.labels),
        "skipped": [s.as_dict() for s in fs.skipped],
        "backbone": extractor.backbone,
        "arch": extractor.spec.arch,
        "layer": extractor.layer,
        "pool": extractor.pool,
        "image_size": extractor.preprocessing.input_size,
        "resize": extractor.preprocessing.resize,
        "weights_sha256": extractor.weights_sha256,
        "head": head,
        "class_weight": class_weight,
        "feature_dim": st["feature_dim"],
        "extract_images_per_second": st["images_per_second"],
        "extract_rate_source": st["images_per_second_source"],
        "extract_seconds": st["seconds"],
        "n_computed": st["n_computed"],
        "cache_hits": st["cache_hits"],
        "cache_path": st["cache_path"],
        "cache_bytes": st["cache_bytes"],
        **extractor.engine_info(),  # engine, precision, engine_reason, cpu_flags
        "versions": versions(),
    }
    res["total_seconds"] = time.perf_counter() - t0
    if out is not None:
        out = Path(out)
        write_results(out, res)
        confusion_matrix_png(res["confusion_matrix"], res["classes"], out / "confusion_matrix.png",
                             f"{res['backbone']}/{res['layer']} + {head}: accuracy {res['accuracy_mean']:.4f}")
    return res


def extract_to(data, out, extractor: Extractor | None = None, classes=None, cache_dir=None,
               use_cache: bool = True, progress: bool = True) -> FeatureSet:
    """``out/features.h5`` for an image folder (features streamed to disk, not held in memory)."""
    ds = scan_folder(data, classes, min_classes=1)
    return extract(ds, extractor or Extractor(), cache_dir=cache_dir, use_cache=use_cache,
                   out=Path(out) / "features.h5", keep=False, progress=progress)


def train(data, out, extractor: Extractor | None = None, head: str = "logreg", class_weight: str | None = None,
          classes=None, cache_dir=None, use_cache: bool = True, eval_splits: int = 5, test_size: float = 0.3,
          seed: int = 0, progress: bool = True) -> dict:
    """Fit the head on every image and save a bundle; ``eval_splits`` > 0 also records the protocol's accuracy."""
    extractor = extractor or Extractor()
    make_head(head, class_weight)
    ds = load_dataset(data, classes, test_size=None)
    need = MIN_TRAIN_PER_CLASS[head]
    small = [f"{c} ({n})" for c, n in ds.class_counts().items() if n < need]
    if small:
        raise BadInputError(f"head {head} needs at least {need} images per class; too few: {', '.join(small)}")
    fs = _features(ds, extractor, cache_dir, use_cache, progress)
    model = make_head(head, class_weight, seed).fit(fs.features, fs.labels)
    metrics: dict = {"train_accuracy": float((model.predict(fs.features) == fs.labels).mean())}
    if eval_splits:
        try:
            ev = evaluate_features(fs.features, fs.labels, fs.classes, make_head(head, class_weight, seed),
                                   splits=eval_splits, test_size=test_size, seed=seed, progress=progress,
                                   min_train=MIN_TRAIN_PER_CLASS[head])
            metrics.update({k: ev[k] for k in ("accuracy_mean", "accuracy_std", "balanced_accuracy_mean",
                                               "per_class", "splits", "test_size", "majority_baseline")})
        except BadInputError as e:  # too few images for the protocol: the model is still trained
            metrics["evaluation_skipped"] = str(e)
    if extractor.quantize and extractor.calibration is None:
        extractor.calibration = lambda: calibration_images(extractor, ds.paths)
    if extractor.quantize:
        _ = extractor.engine  # exported and quantised now if every feature came from the cache
    from ..models.head import save_head_bundle

    training = {"classes": fs.classes, "root": str(ds.root), "n_images": len(fs.labels),
                "class_counts": {c: int((fs.labels == i).sum()) for i, c in enumerate(fs.classes)},
                "skipped": [s.as_dict() for s in fs.skipped]}
    return save_head_bundle(out, model, extractor, {"name": head, "class_weight": class_weight, "seed": seed},
                            fs.feature_dim, metrics, training)


def predict(model_dir, inputs: list, progress: bool = True, weights=None, batch_size: int = 32,
            engine: str | None = None, on_result=None, **runtime) -> tuple[list[dict], list[Skipped]]:
    """Rows ``{path, label, ...}`` for every decodable image in ``inputs`` (files/folders), with a bundle of
    any task (classification rows carry ``probabilities``, anomaly rows a ``score`` ...)."""
    from ..models.predictor import load_predictor

    predictor = load_predictor(model_dir, weights=weights, batch_size=batch_size, engine=engine, **runtime)
    return predictor.predict(inputs, progress=progress, on_result=on_result)


def compare(data, backbones: list[str], out, progress: bool = True, **kw) -> dict:
    """Run :func:`evaluate` per backbone; write ``comparison.json``, ``comparison.txt`` and ``comparison.png``."""
    ex_kw = {k: kw.pop(k) for k in ("layer", "pool", "image_size", "resize", "batch_size", "workers", "engine",
                                    "onnx_dir") if k in kw}
    if ex_kw.get("layer") and len(backbones) > 1:
        raise BadInputError("--layer names one backbone's layer; compare uses each backbone's default layer")
    extractors = [Extractor(b, **ex_kw) for b in backbones]  # refuse unknown backbones before any work
    out = Path(out)
    rows = []
    for ex in extractors:
        res = evaluate(data, ex, out=out / ex.backbone, progress=progress, **kw)
        rows.append({"backbone": ex.backbone, "layer": res["layer"], "feature_dim": res["feature_dim"],
                     "accuracy_mean": res["accuracy_mean"], "accuracy_std": res["accuracy_std"],
                     "balanced_accuracy_mean": res["balanced_accuracy_mean"],
                     "images_per_second": res["extract_images_per_second"],
                     "images_per_second_source": res["extract_rate_source"],
                     "cache_mb": res["cache_bytes"] / 1e6, "image_size": res["image_size"],
                     "top1_imagenet": ex.spec.top1, "fit_seconds_mean": res["fit_seconds_mean"],
                     "n_images": res["n_images"]})
    summary = {"data": str(Path(data).resolve()), "head": kw.get("head", "logreg"), "splits": kw.get("splits", 10),
               "rows": rows}
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "comparison.txt").write_text(comparison_table(rows) + "\n")
    comparison_png(rows, out / "comparison.png")
    return summary


def comparison_table(rows: list[dict]) -> str:
    head = f"{'backbone':<20}{'layer':<10}{'dim':>6}{'input':>7}{'accuracy':>20}{'images/s':>10}{'cache MB':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        rate = "n/a" if r["images_per_second"] is None else f"{r['images_per_second']:.1f}"
        lines.append(f"{r['backbone']:<20}{r['layer']:<10}{r['feature_dim']:>6}{r['image_size']:>7}"
                     f"{r['accuracy_mean']:>12.4f} +- {r['accuracy_std']:.4f}"[:20].rjust(20) +
                     f"{rate:>10}{r['cache_mb']:>10.2f}")
    return "\n".join(lines)
