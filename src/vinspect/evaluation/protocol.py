"""The lab's protocol: a head fitted and scored on repeated stratified splits (or k-fold) of features."""

from __future__ import annotations

import time

import numpy as np
from joblib import Parallel, delayed
from sklearn.base import clone

from ..data.splits import check_class_sizes, repeated_splits
from .metrics import split_metrics, summarize


def _fit_score(head, X, y, train, test, n_classes):
    t = time.perf_counter()
    model = clone(head).fit(X[train], y[train])
    fit_s = time.perf_counter() - t
    m = split_metrics(y[test], model.predict(X[test]), n_classes)
    m["fit_seconds"] = fit_s
    return m


def evaluate_features(X: np.ndarray, y: np.ndarray, classes: list[str], head, splits: int = 10,
                      test_size: float = 0.3, seed: int = 0, kfold: int | None = None, n_jobs: int = -1,
                      progress: bool = True, min_train: int = 1) -> dict:
    """Fit a fresh clone of ``head`` on each training part, score it on the test part; summary dict.

    Splits are stratified and reproducible from ``seed``; splits run in parallel over the cores.
    """
    check_class_sizes(y, classes, None if kfold else test_size, kfold, min_train)
    folds = list(repeated_splits(y, splits, test_size, seed, kfold))
    from tqdm.auto import tqdm

    t = time.perf_counter()
    jobs = (delayed(_fit_score)(head, X, y, tr, te, len(classes)) for tr, te in folds)
    # threads: no process start-up, and the solvers release the GIL (faster here than processes)
    per = list(tqdm(Parallel(n_jobs=n_jobs, prefer="threads", return_as="generator")(jobs), total=len(folds),
                    desc="splits", unit="split", disable=not progress))
    out = summarize(per, classes)
    counts = np.bincount(y, minlength=len(classes))
    out.update(
        protocol="kfold" if kfold else "repeated_stratified_shuffle_split",
        splits=len(folds), test_size=None if kfold else test_size, kfold=kfold, seed=seed,
        fit_seconds_mean=float(np.mean([p["fit_seconds"] for p in per])),
        # the same key as the CNN methods: the time to train one split's model (features come from the cache)
        train_seconds_mean=float(np.mean([p["fit_seconds"] for p in per])),
        evaluate_seconds=time.perf_counter() - t,
        majority_baseline=float(counts.max() / counts.sum()),
        class_counts={c: int(n) for c, n in zip(classes, counts)},
    )
    return out
