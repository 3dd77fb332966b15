"""The inner search: successive halving over the candidates, on stratified folds of the data it is given.

It sees only the rows handed to it (in the nested protocol: the outer training part), so it cannot use the
outer test part.  Two stages, each a successive halving over inner folds (cheap first, the best promoted):

1. every feature variant with the default head (logistic regression C=1): scored on inner fold 1, the best
   third on folds 1-3, the best third of those on every fold;
2. the ``TOP_VARIANTS`` best variants x every head of the grid, halved the same way.

The choice follows the one-standard-error rule (Breiman et al. 1984; Hastie et al., Elements of Statistical
Learning, 7.10): among the candidates scored on every inner fold, the best mean inner score (``select``:
accuracy or balanced accuracy) is found, and the first candidate in the space's order (the default first, then
stage 1's variants, then stage 2) whose mean is within one standard error (over the inner folds) of it is
chosen: on small data a candidate that is only luckier on a few folds does not displace a simpler one.

The budget is a wall-clock limit checked between batches of fits: when it is reached, the rung in progress
stops and the choice is made among the candidates scored on the most folds.  Everything else is determined
by the seed, so with a budget that is not reached two runs give the same choice and scores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import StratifiedKFold

from ..errors import BadInputError
from .space import REFERENCE_HEAD, Candidate, FeatureVariant, HeadConfig

SELECT = ("accuracy", "balanced_accuracy")
DEFAULT_SELECT = "balanced_accuracy"
INNER_FOLDS = 5
ETA = 3  # successive halving: a third of the candidates is promoted at each rung
TOP_VARIANTS = 3


def inner_folds(y: np.ndarray, seed: int, k: int = INNER_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds of ``y`` (k lowered to the smallest class's size; at least 2)."""
    counts = np.bincount(y)
    counts = counts[counts > 0]
    k = int(min(k, counts.min()))
    if k < 2:
        raise BadInputError("a class has a single image in a training part: the nested selection needs at least "
                            "2 images of every class inside each outer training part (more images, or fewer "
                            "classes with --classes)")
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(len(y)), y))


def _score(y_true, y_pred) -> dict:
    return {"accuracy": float(accuracy_score(y_true, y_pred)),
            "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred))}


class Clock:
    """The search budget (seconds, wall clock)."""

    def __init__(self, seconds: float):
        self.seconds = float(seconds)
        self.start = time.perf_counter()
        self.reached = False

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def expired(self) -> bool:
        if self.left() <= 0:
            self.reached = True
        return self.reached


@dataclass
class SearchResult:
    best: Candidate
    records: list[dict]  # one per candidate scored: candidate, stage, fold scores, mean
    folds: int
    fits: int
    seconds: float
    budget_reached: bool
    excluded_heads: list[str] = field(default_factory=list)

    def summary(self, select: str) -> dict:
        return {"chosen": self.best.as_dict(), "select": select, "inner_folds": self.folds, "fits": self.fits,
                "seconds": self.seconds, "budget_reached": self.budget_reached,
                "excluded_heads": self.excluded_heads,
                "candidates": self.records}


def search(X: dict[FeatureVariant, np.ndarray], y: np.ndarray, variants: list[FeatureVariant],
           heads: list[HeadConfig], select: str = DEFAULT_SELECT, seed: int = 0, clock: Clock | None = None,
           n_jobs: int = 2, on_fit=None) -> SearchResult:
    """Choose a candidate on ``X`` (variant -> rows) and ``y`` only.  ``on_fit(n)`` is called after each batch of
    fits (progress)."""
    if select not in SELECT:
        raise BadInputError(f"--select {select!r}: use one of {', '.join(SELECT)}")
    from joblib import Parallel, delayed

    clock = clock or Clock(math.inf)
    t0 = time.perf_counter()
    folds = inner_folds(y, seed)
    k = len(folds)
    smallest_train = min(int(np.bincount(y[tr]).min()) for tr, _ in folds)
    excluded = sorted({h.label for h in heads if h.min_train > smallest_train})
    heads = [h for h in heads if h.min_train <= smallest_train]
    scores: dict[Candidate, dict[int, dict]] = {}
    stage_of: dict[Candidate, int] = {}
    fits = 0

    def fit_one(c: Candidate, f: int):
        tr, te = folds[f]
        Xv = X[c.variant]
        model = c.head.make(Xv.shape[1], seed).fit(Xv[tr], y[tr])
        return c, f, _score(y[te], model.predict(Xv[te]))

    def run(jobs: list[tuple[Candidate, int]]) -> bool:
        """Fit ``jobs`` in batches; False when the budget ran out first."""
        nonlocal fits
        todo = [(c, f) for c, f in jobs if f not in scores.get(c, {})]
        step = max(1, 2 * n_jobs)
        for i in range(0, len(todo), step):
            if clock.expired() and fits > 0:
                return False
            batch = todo[i:i + step]
            for c, f, s in Parallel(n_jobs=n_jobs, prefer="threads")(delayed(fit_one)(c, f) for c, f in batch):
                scores.setdefault(c, {})[f] = s
            fits += len(batch)
            if on_fit:
                on_fit(len(batch))
            if fits == len(batch) and clock.expired():
                raise BadInputError(f"--budget: {clock.seconds:.3g} s per search is too small to score one "
                                    f"candidate (the first {len(batch)} fits took "
                                    f"{time.perf_counter() - clock.start:.2f} s here)")
        return True

    def mean(c: Candidate) -> float:
        return float(np.mean([s[select] for s in scores[c].values()]))

    def halving(cands: list[Candidate], stage: int) -> list[Candidate]:
        for c in cands:
            stage_of.setdefault(c, stage)
        alive = list(cands)
        for n_folds in rungs(k):
            if not run([(c, f) for c in alive for f in range(n_folds)]):
                break
            done = [c for c in alive if len(scores.get(c, {})) >= n_folds]
            if n_folds == k:
                return done
            keep = max(1, math.ceil(len(done) / ETA))
            alive = sorted(done, key=lambda c: (-mean(c), cands.index(c)))[:keep]
        return alive

    first = [Candidate(v, REFERENCE_HEAD) for v in variants]
    finalists = halving(first, 1)
    if not clock.reached:
        ranked = sorted((c for c in first if c in scores), key=lambda c: (-len(scores[c]), -mean(c), first.index(c)))
        top = [c.variant for c in ranked[:TOP_VARIANTS]]
        second = [Candidate(v, h) for v in top for h in heads]
        finalists = finalists + halving(second, 2)
    # the choice (one-standard-error rule): among the candidates scored on the most folds, the first in the
    # space's order (the default first) whose mean is within one standard error of the best mean
    most = max(len(s) for s in scores.values())
    order = list(scores)
    pool_ = [c for c in order if len(scores[c]) == most]
    top = sorted(pool_, key=lambda c: (-mean(c), order.index(c)))[0]
    vals = [s[select] for s in scores[top].values()]
    se = float(np.std(vals, ddof=1) / np.sqrt(len(vals))) if len(vals) > 1 else 0.0
    best = next(c for c in pool_ if mean(c) >= mean(top) - se - 1e-12)
    records = [{"label": c.label, **c.as_dict(), "stage": stage_of.get(c, 1),
                "folds": {str(f): s for f, s in sorted(scores[c].items())},
                "mean_accuracy": float(np.mean([s["accuracy"] for s in scores[c].values()])),
                "mean_balanced_accuracy": float(np.mean([s["balanced_accuracy"] for s in scores[c].values()])),
                "n_folds": len(scores[c])} for c in order]
    return SearchResult(best, records, k, fits, time.perf_counter() - t0, clock.reached, excluded)


def rungs(k: int) -> list[int]:
    """Folds scored at each rung: 1, 3, k (fewer when k is small)."""
    return sorted({min(1, k), min(3, k), k})


def planned_fits(n_variants: int, n_heads: int, k: int) -> int:
    """Fits of a search that is not cut by the budget (for the progress bar)."""
    def halving(n: int, carried: int = 0) -> int:
        total, alive, prev = 0, n, 0
        for r in rungs(k):
            total += alive * (r - prev)
            prev = r
            alive = max(1, math.ceil(alive / ETA))
        return total - carried

    top = min(TOP_VARIANTS, n_variants)
    return halving(n_variants) + halving(top * n_heads)
