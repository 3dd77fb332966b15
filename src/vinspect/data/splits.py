"""Stratified, seeded train/test splits and the checks that refuse too-small classes up front."""

from __future__ import annotations

import math

import numpy as np
from sklearn.model_selection import StratifiedKFold, StratifiedShuffleSplit

from ..errors import BadInputError


def min_per_class(test_size: float | None = None, kfold: int | None = None, min_train: int = 1) -> int:
    """Images a class needs so that every split has it in both parts (and ``min_train`` in training)."""
    if kfold:
        k = int(kfold)
        return max(k, math.ceil(min_train * k / (k - 1)))
    t = float(test_size)
    return max(2, math.ceil(1.0 / min(t, 1.0 - t)), math.ceil(min_train / (1.0 - t)))


def check_class_sizes(labels, classes, test_size: float | None = None, kfold: int | None = None,
                      min_train: int = 1) -> None:
    """Refuse before any fitting when a class is too small for the protocol."""
    if test_size is not None and not 0.0 < float(test_size) < 1.0:
        raise BadInputError(f"--test-size {test_size}: must be between 0 and 1 (e.g. 0.3)")
    if kfold is not None and int(kfold) < 2:
        raise BadInputError(f"--kfold {kfold}: must be at least 2")
    need = min_per_class(test_size, kfold, min_train)
    counts = np.bincount(np.asarray(labels), minlength=len(classes))
    small = [f"{classes[i]} ({n})" for i, n in enumerate(counts) if n < need]
    if small:
        what = f"{kfold}-fold cross-validation" if kfold else \
            f"{round((1 - test_size) * 100)}/{round(test_size * 100)} splits"
        raise BadInputError(f"class(es) with too few images: {', '.join(small)}; {what} need at least "
                            f"{need} images per class")
    if len(counts) < 2:
        raise BadInputError("a single class: a classifier needs at least two")


def repeated_splits(labels, n_splits: int = 10, test_size: float = 0.3, seed: int = 0, kfold: int | None = None):
    """Yield ``(train_idx, test_idx)``: ``n_splits`` stratified shuffle splits, or stratified k-fold."""
    y = np.asarray(labels)
    x = np.zeros(len(y))
    if kfold:
        yield from StratifiedKFold(n_splits=int(kfold), shuffle=True, random_state=seed).split(x, y)
    else:
        if n_splits < 1:
            raise BadInputError(f"--splits {n_splits}: must be at least 1")
        yield from StratifiedShuffleSplit(n_splits=n_splits, test_size=test_size, random_state=seed).split(x, y)
