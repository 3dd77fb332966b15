"""``evaluate --auto`` and ``train --auto``: the automatic model selection (:mod:`vinspect.selection`) on an
image folder: every feature variant extracted once (cached), then the nested protocol, or the search on
every image followed by a normal head bundle of the chosen configuration."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from ..backbones.registry import DEFAULT_BACKBONE, get_spec
from ..errors import BadInputError
from ..models.bundle import versions
from ..selection import nested as _nested
from ..selection.report import auto_text
from ..selection.search import DEFAULT_SELECT, Clock, search
from ..selection.space import describe_space, feature_variants, head_grid, image_sizes, resolutions, stage_layers
from ..selection.variants import load_variants

DEFAULT_BUDGET = "10m"


def prepare(ds, backbone: str = DEFAULT_BACKBONE, cache_dir=None, engine: str = "auto", batch_size: int = 32,
            workers: int | None = None, weights=None, progress: bool = True) -> dict:
    """The search space for ``ds`` and the features of every variant (extracted once, cached)."""
    spec = get_spec(backbone)
    if not spec.default_layer:
        raise BadInputError(f"--auto: backbone {backbone!r} has no default layer to build the search space on")
    stages = stage_layers(spec.default_layer)
    res = resolutions(image_sizes(ds.paths), spec.preprocessing.input_size)
    variants = feature_variants(spec.default_layer, res)
    heads = head_grid()
    t = time.perf_counter()
    loaded = load_variants(ds, variants, stages, backbone, cache_dir, engine, batch_size, workers, weights, progress)
    y = loaded["labels"]
    missing = [c for i, c in enumerate(ds.classes) if not np.any(y == i)]
    if missing:
        raise BadInputError(f"class(es) {', '.join(missing)}: no decodable image left (see the skipped files)")
    loaded.update(variants=variants, heads=heads, stages=stages, extract_seconds=time.perf_counter() - t,
                  space=describe_space(variants, heads))
    return loaded


def _common(ds, loaded: dict, backbone: str) -> dict:
    st = loaded["stats"]
    return {"data": str(ds.root), "method": "head-auto", "classes": list(ds.classes),
            "n_images": len(loaded["labels"]), "skipped": [s.as_dict() for s in loaded["skipped"]],
            "backbone": backbone, "weights_sha256": loaded["weights_sha256"], "search_space": loaded["space"],
            "extract_seconds": loaded["extract_seconds"], "n_computed": st["n_computed"],
            "extraction_passes": st["passes"], **loaded["engine"], "versions": versions()}


def evaluate_auto(data, backbone: str = DEFAULT_BACKBONE, classes=None, splits: int = 10, test_size: float = 0.3,
                  kfold: int | None = None, seed: int = 0, budget=DEFAULT_BUDGET, select: str = DEFAULT_SELECT,
                  cache_dir=None, engine: str = "auto", batch_size: int = 32, workers: int | None = None,
                  weights=None, out=None, progress: bool = True, n_jobs: int = 2, folds=None) -> dict:
    """Nested model selection on an image folder; writes results.json and results.txt to ``out``."""
    from . import load_dataset

    t0 = time.perf_counter()
    budget_s = _nested.parse_budget(budget)
    ds = load_dataset(data, classes, test_size, kfold, 1)
    loaded = prepare(ds, backbone, cache_dir, engine, batch_size, workers, weights, progress)
    y = loaded["labels"]
    ev = _nested.nested_evaluate(loaded["features"], y, list(ds.classes), loaded["variants"], loaded["heads"],
                                 splits, test_size, seed, kfold, folds, budget_s, select, n_jobs, progress)
    res = {**_common(ds, loaded, backbone), **ev}
    res["total_seconds"] = time.perf_counter() - t0
    if out is not None:
        import json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "results.txt").write_text(auto_text(res))
    res["_loaded"] = loaded  # for callers in-process (the benchmark); not written
    return res


def train_auto(data, out, backbone: str = DEFAULT_BACKBONE, classes=None, seed: int = 0, budget=DEFAULT_BUDGET,
               select: str = DEFAULT_SELECT, cache_dir=None, engine: str = "auto", batch_size: int = 32,
               workers: int | None = None, weights=None, progress: bool = True, n_jobs: int = 2):
    """The search on every image, then a normal head bundle of the chosen configuration (the search summary in
    its ``metrics.selection`` and ``training.selection``)."""
    from ..features.extract import Extractor
    from ..models.head import save_head_bundle
    from . import load_dataset

    budget_s = _nested.parse_budget(budget)
    if budget_s < _nested.MIN_SEARCH_SECONDS:
        raise BadInputError(f"--budget {budget_s:g} s: too small; the search needs at least "
                            f"{_nested.MIN_SEARCH_SECONDS:g} s")
    ds = load_dataset(data, classes, test_size=None)
    loaded = prepare(ds, backbone, cache_dir, engine, batch_size, workers, weights, progress)
    X, y = loaded["features"], loaded["labels"]
    from tqdm.auto import tqdm

    from ..selection.search import INNER_FOLDS, inner_repeats, planned_fits

    k = INNER_FOLDS * inner_repeats(len(y))  # the inner folds (repeated passes on small data)
    with tqdm(total=planned_fits(len(loaded["variants"]), len(loaded["heads"]), k), desc="auto search", unit="fit",
              disable=not progress) as bar:
        res = search(X, y, loaded["variants"], loaded["heads"], select, seed, Clock(budget_s), n_jobs,
                     on_fit=bar.update)
    best = res.best
    v = best.variant
    model = best.head.make(X[v].shape[1], seed).fit(X[v], y)
    ex = Extractor(backbone, weights=weights, batch_size=batch_size, workers=workers, engine=engine,
                   **v.extractor_kwargs())
    rec = next(r for r in res.records if r["label"] == best.label)
    summary = res.summary(select)
    metrics = {"train_accuracy": float((model.predict(X[v]) == y).mean()),
               "inner_cv_" + select: rec["mean_" + select],
               "inner_cv_accuracy": rec["mean_accuracy"], "inner_cv_balanced_accuracy": rec["mean_balanced_accuracy"],
               "inner_cv_note": "the search's own estimate of the chosen candidate (the best of many: optimistic); "
                                "vinspect evaluate --auto gives the honest nested figure",
               "selection": {k: summary[k] for k in ("chosen", "select", "inner_folds", "fits", "seconds",
                                                     "budget_reached", "excluded_heads")}}
    training = {"classes": list(ds.classes), "root": str(ds.root), "n_images": len(y),
                "class_counts": {c: int((y == i).sum()) for i, c in enumerate(ds.classes)},
                "skipped": [s.as_dict() for s in loaded["skipped"]],
                "selection": {**summary, "search_space": loaded["space"], "budget_seconds": budget_s}}
    return save_head_bundle(out, model, ex, best.head.bundle_config(X[v].shape[1], seed), X[v].shape[1], metrics,
                            training)
