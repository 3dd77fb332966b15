"""The inner search over the candidates, on stratified folds of the data it is given.

It sees only the rows handed to it (in the nested protocol: the outer training part), so it cannot use the
outer test part.  The inner folds are stratified 5-fold, repeated with other shuffles on small training parts
until they add up to ``MIN_VALIDATION`` validation predictions per candidate (4 passes for 141 images, one from
500 images on).  The reference (the default configuration of ``vinspect evaluate``) is scored on every inner
fold first, so it is always in the final comparison.  Then three stages, cheap and broad first so that a budget
that runs out has already tried what matters most:

1. **heads**: every head of the grid on the default features (one extraction, the cheapest fits), by
   successive halving over the folds (every head on the first fifth of the folds, the best third on three
   fifths, the best third of those on every fold);
2. **features**: every feature variant with the best head of each of the ``TOP_FAMILIES`` best head families
   of stage 1 (logistic regression, linear SVM, RBF SVM, kNN, random forest): the best features depend on the
   head (a nearest-neighbour head and an RBF SVM prefer other poolings), so one head alone misses good pairs;
3. **pairs**: the ``TOP_VARIANTS`` best variants so far with the ``TOP_HEADS`` best heads of stage 1 (the pairs
   not scored yet).

Stages 2 and 3 are scored on every fold when their candidates x folds stay within ``MAX_FULL_FITS`` fits
(NEU's 20 variants x 3 heads), else by the same halving (magnetic-tile's 60 x 3, ELPV's 40 x 3, insert-wear's
repeated folds).  Why: every fixed candidate scored on every inner fold of each outer split
(benchmarks/auto_ranking.py) ranked the tiles' best configuration (1-NN on ``blocks.5+blocks.6`` GeM) first on
average, while the session-6 search (one head in stage 2, every stage halved from one fold) chose it in one
outer split of ten: the inner folds were not the problem, what the search scored in full was.

The choice, among the candidates scored on every fold (the reference always is): on a small training part
(under ``MIN_VALIDATION`` images, where the inner folds are repeated passes over the same few images) the
one-standard-error rule (Breiman et al. 1984; Hastie et al., Elements of Statistical Learning, 7.10): the first
candidate in the search's order (the reference first, then stage 1's heads in the grid's order, then stages 2
and 3) whose mean inner score (``select``: accuracy or balanced accuracy) is within one standard error (of one
5-fold pass) of the best mean, so that a candidate only luckier on a few folds does not displace the default
or a simpler one; from ``MIN_VALIDATION`` images on, the best mean (ties: the earlier candidate).  Both rules
were measured on the benchmark sets (README): on the large sets the one-SE rule cost accuracy, on insert-wear
the best mean chased noise.

The budget is a wall-clock limit checked between batches of fits: when it is reached, the stage in progress
stops; its leader (the best mean on the folds that all its surviving candidates were scored on) is then scored
on its remaining folds, past the budget by at most one candidate's fits, and the choice is made among the
candidates scored on every fold (the reference at least).  Without that last step a budget cut in stage 2 threw
away a stage that had found much better features: on long strips of NEU cells (``vinspect.data.strips``, 30 s
per search) the tiled variants led on 12 of 20 folds (inner balanced accuracy 1.00 against 0.89) and the
default was chosen in 8 outer splits of 10.  Everything
else is determined by the seed, so with a budget that is not reached two runs give the same choice and scores.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score
from sklearn.model_selection import RepeatedStratifiedKFold

from ..errors import BadInputError
from .space import REFERENCE_HEAD, Candidate, FeatureVariant, HeadConfig

SELECT = ("accuracy", "balanced_accuracy")
DEFAULT_SELECT = "balanced_accuracy"
INNER_FOLDS = 5
ETA = 3  # successive halving: a third of the candidates is promoted at each rung
TOP_FAMILIES = 3
TOP_VARIANTS = 3
TOP_HEADS = 3
MAX_FULL_FITS = 500  # a stage 2 or 3 of at most this many fits (candidates x folds) is scored on every fold
MIN_VALIDATION = 500  # validation predictions per candidate that the inner folds should add up to
MAX_REPEATS = 5


def inner_folds(y: np.ndarray, seed: int, k: int = INNER_FOLDS) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k folds of ``y`` (k lowered to the smallest class's size; at least 2), repeated with other
    shuffles until the folds hold at least ``MIN_VALIDATION`` validation predictions per candidate (at most
    ``MAX_REPEATS`` passes): on a small training part one k-fold pass is mostly partition noise."""
    counts = np.bincount(y)
    counts = counts[counts > 0]
    k = int(min(k, counts.min()))
    if k < 2:
        raise BadInputError("a class has a single image in a training part: the nested selection needs at least "
                            "2 images of every class inside each outer training part (more images, or fewer "
                            "classes with --classes)")
    return list(RepeatedStratifiedKFold(n_splits=k, n_repeats=inner_repeats(len(y)), random_state=seed).split(
        np.zeros(len(y)), y))


def inner_repeats(n: int) -> int:
    """Passes of the inner k-fold for ``n`` training images (1 from ``MIN_VALIDATION`` images on)."""
    return int(min(MAX_REPEATS, max(1, math.ceil(MIN_VALIDATION / max(n, 1)))))


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
    finished_after_budget: str | None = None  # the cut stage's leader, scored on its remaining folds

    def summary(self, select: str) -> dict:
        return {"chosen": self.best.as_dict(), "select": select, "inner_folds": self.folds, "fits": self.fits,
                "seconds": self.seconds, "budget_reached": self.budget_reached,
                "finished_after_budget": self.finished_after_budget, "excluded_heads": self.excluded_heads,
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
    per_pass = k // inner_repeats(len(y))  # the standard error below counts one pass (the repeats reuse the images)
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

    def run(jobs: list[tuple[Candidate, int]], force: bool = False) -> bool:
        """Fit ``jobs`` in batches; False when the budget ran out first (``force``: the reference, always
        scored on every fold)."""
        nonlocal fits
        todo = [(c, f) for c, f in jobs if f not in scores.get(c, {})]
        step = max(1, 2 * n_jobs)
        for i in range(0, len(todo), step):
            if not force and clock.expired():
                return False
            batch = todo[i:i + step]
            for c, f, s in Parallel(n_jobs=n_jobs, prefer="threads")(delayed(fit_one)(c, f) for c, f in batch):
                scores.setdefault(c, {})[f] = s
            fits += len(batch)
            if on_fit:
                on_fit(len(batch))
        return True

    def mean(c: Candidate) -> float:
        return float(np.mean([s[select] for s in scores[c].values()]))

    leader: list[Candidate] = []  # the leader of the stage the budget cut, finished on every fold afterwards

    def halving(cands: list[Candidate], stage: int) -> None:
        for c in cands:
            stage_of.setdefault(c, stage)
        alive, prev = list(cands), 0
        for n_folds in (rungs(k) if stage == 1 else stage_rungs(len(cands), k)):
            if not alive:
                return
            if not run([(c, f) for c in alive for f in range(n_folds)]):
                # the budget ran out in this rung: its leader on the folds they all have (the last rung
                # completed; else this rung's, among the candidates that finished it)
                need = prev or n_folds
                have = [c for c in alive if len(scores.get(c, {})) >= need]
                if have:
                    leader.append(max(have, key=lambda c: (np.mean([scores[c][f][select] for f in range(need)]),
                                                           -cands.index(c))))
                return
            done = [c for c in alive if len(scores.get(c, {})) >= n_folds]
            keep = max(1, math.ceil(len(done) / ETA))
            alive = sorted(done, key=lambda c: (-mean(c), cands.index(c)))[:keep]
            prev = n_folds

    def ranked(cands) -> list[Candidate]:
        """Most folds first, then the best mean (ties: the search's order)."""
        order = list(scores)
        return sorted(cands, key=lambda c: (-len(scores[c]), -mean(c), order.index(c)))

    reference = Candidate(variants[0], REFERENCE_HEAD)
    stage_of[reference] = 0
    run([(reference, f) for f in range(k)], force=True)
    if clock.expired():
        raise BadInputError(f"--budget: {clock.seconds:.3g} s per search is too small to score one candidate "
                            f"(the default configuration on the {k} inner folds took "
                            f"{time.perf_counter() - clock.start:.2f} s here)")
    halving([Candidate(variants[0], h) for h in heads], 1)
    ranked_heads = [c.head for c in ranked([c for c in scores if c.variant == variants[0]])]
    if not clock.reached:
        best_of_family: dict[str, HeadConfig] = {}
        for h in ranked_heads:  # best first, so the first head of a family is its best
            best_of_family.setdefault(h.name, h)
        family_heads = list(best_of_family.values())[:TOP_FAMILIES]
        halving([Candidate(v, h) for v in variants for h in family_heads], 2)
    if not clock.reached:
        top_v = list(dict.fromkeys(c.variant for c in ranked(list(scores))))[:TOP_VARIANTS]
        top_h = ranked_heads[:TOP_HEADS]
        halving([Candidate(v, h) for v in top_v for h in top_h if Candidate(v, h) not in scores], 3)
    finished = None
    if leader and len(scores[leader[0]]) < k:
        # past the budget by at most k fits of one candidate: a stage cut short would otherwise leave its
        # best candidate, ahead on every fold it was scored on, out of the choice
        finished = leader[0]
        run([(finished, f) for f in range(k)], force=True)
    # the choice among the candidates scored on every fold (the reference is): on a small training part (repeated
    # inner folds) the one-standard-error rule, the first in the search's order (the reference first) whose mean
    # is within one standard error of the best mean; from MIN_VALIDATION images on the best mean
    order = list(scores)
    pool_ = [c for c in order if len(scores[c]) == k]
    top = ranked(pool_)[0]
    vals = [s[select] for s in scores[top].values()]
    se = float(np.std(vals, ddof=1) / np.sqrt(per_pass)) if len(vals) > 1 and per_pass < k else 0.0
    best = next(c for c in pool_ if mean(c) >= mean(top) - se - 1e-12)
    records = [{"label": c.label, **c.as_dict(), "stage": stage_of.get(c, 1),
                "folds": {str(f): s for f, s in sorted(scores[c].items())},
                "mean_accuracy": float(np.mean([s["accuracy"] for s in scores[c].values()])),
                "mean_balanced_accuracy": float(np.mean([s["balanced_accuracy"] for s in scores[c].values()])),
                "n_folds": len(scores[c])} for c in order]
    return SearchResult(best, records, k, fits, time.perf_counter() - t0, clock.reached, excluded,
                        finished.label if finished else None)


def rungs(k: int) -> list[int]:
    """Folds scored at each rung of a halving: a fifth, three fifths and all of the ``k`` folds (1, 3, 5 for one
    5-fold pass; 4, 12, 20 for four passes)."""
    return sorted({max(1, round(k / 5)), max(1, round(3 * k / 5)), k})


def stage_rungs(n_candidates: int, k: int) -> list[int]:
    """Every fold at once for a stage within ``MAX_FULL_FITS`` fits, else the halving's rungs."""
    return [k] if n_candidates * k <= MAX_FULL_FITS else rungs(k)


def planned_fits(n_variants: int, n_heads: int, k: int) -> int:
    """Fits of a search that is not cut by the budget (for the progress bar; stages 2 and 3 counted in full,
    the candidates already scored in an earlier stage included)."""
    def halving(n: int, steps: list[int]) -> int:
        total, alive, prev = 0, n, 0
        for r in steps:
            total += alive * (r - prev)
            prev = r
            alive = max(1, math.ceil(alive / ETA))
        return total

    stage2 = n_variants * min(TOP_FAMILIES, n_heads)
    pairs = min(TOP_VARIANTS, n_variants) * min(TOP_HEADS, n_heads)
    return (k + halving(n_heads, rungs(k)) + halving(stage2, stage_rungs(stage2, k))
            + halving(pairs, stage_rungs(pairs, k)))
