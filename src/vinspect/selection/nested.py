"""Nested model selection: the inner search (:mod:`.search`) inside each outer split, on its training part only.

For each outer split (the lab protocol's stratified 70/30 splits, or k-fold): the features of the outer
training rows are handed to the search (the outer test rows are not passed at all), the chosen candidate is
refitted on the whole outer training part and scored once on the outer test part.  The mean and spread of
those outer scores are the honest estimate of what ``--auto`` gives on new data.
"""

from __future__ import annotations

import time

import numpy as np

from ..data.splits import check_class_sizes, repeated_splits
from ..errors import BadInputError
from ..evaluation.metrics import split_metrics, summarize
from .finetune import search_and_finetune
from .search import DEFAULT_SELECT, INNER_FOLDS, SELECT, inner_repeats, planned_fits
from .space import Candidate, FeatureVariant, HeadConfig

MIN_SEARCH_SECONDS = 1.0


def parse_budget(text) -> float:
    """'10m', '90s', '1h', '1h30m' or a number of seconds -> seconds (bad text: one line, exit 2)."""
    import re

    s = str(text).strip().lower()
    try:
        return float(s)
    except ValueError:
        pass
    parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", s)
    if not s or not parts or not any(parts.groups()):
        raise BadInputError(f"--budget {text!r}: give a duration such as 10m, 90s or 1h")
    h, m, sec = (float(g) if g else 0.0 for g in parts.groups())
    return h * 3600 + m * 60 + sec


def outer_folds(y, splits: int = 10, test_size: float = 0.3, seed: int = 0, kfold: int | None = None):
    return list(repeated_splits(y, splits, test_size, seed, kfold))


def fit_candidate(c: Candidate, X: np.ndarray, y: np.ndarray, seed: int = 0):
    return c.head.make(X.shape[1], seed).fit(X, y)


def nested_evaluate(features: dict[FeatureVariant, np.ndarray], y: np.ndarray, classes: list[str],
                    variants: list[FeatureVariant], heads: list[HeadConfig], splits: int = 10,
                    test_size: float = 0.3, seed: int = 0, kfold: int | None = None, folds=None,
                    budget_s: float = 600.0, select: str = DEFAULT_SELECT, n_jobs: int = 2, progress: bool = True,
                    on_inner=None, finetune=None) -> dict:
    """The nested protocol.  ``folds``: explicit (train, test) index pairs instead of ``splits``/``kfold``.
    ``on_inner(split, train_rows)`` is told which rows each inner search receives (for audits and tests).
    The budget is shared equally by the outer splits.  ``finetune`` (``--auto finetune``, see
    :mod:`.finetune`): a fine-tuner whose rows are the rows of ``features``, tried after each search when the
    budget allows."""
    if select not in SELECT:
        raise BadInputError(f"--select {select!r}: use one of {', '.join(SELECT)}")
    y = np.asarray(y)
    if folds is None:
        check_class_sizes(y, classes, None if kfold else test_size, kfold, 1)
        folds = outer_folds(y, splits, test_size, seed, kfold)
    per_split_budget = budget_s / len(folds)
    if per_split_budget < MIN_SEARCH_SECONDS:
        raise BadInputError(f"--budget {budget_s:g} s: too small for {len(folds)} outer splits; each search "
                            f"needs at least {MIN_SEARCH_SECONDS:g} s")
    from tqdm.auto import tqdm

    k_guess = INNER_FOLDS * inner_repeats(len(folds[0][0]))
    bar = tqdm(total=len(folds) * planned_fits(len(variants), len(heads), k_guess), desc="auto search",
               unit="fit", disable=not progress)
    per, details, t0 = [], [], time.perf_counter()
    try:
        for i, (tr, te) in enumerate(folds):
            tr, te = np.asarray(tr), np.asarray(te)
            if on_inner is not None:
                on_inner(i, tr.copy())
            Xtr = {v: features[v][tr] for v in variants}  # the outer test rows never reach the search
            res, summary = search_and_finetune(
                Xtr, y, tr, variants, heads, select, seed + 1000 * (i + 1), per_split_budget, n_jobs, finetune,
                on_fit=bar.update, on_status=lambda s: bar.set_postfix_str(f"split {i + 1}: {s}"))
            t = time.perf_counter()
            if summary.get("finetune", {}).get("chosen"):
                bar.set_postfix_str(f"split {i + 1}: fine-tuning on the training part")
                pred = finetune.fit_predict(tr, te)
                summary["chosen"] = {"label": finetune.label, "method": "finetune", "config": finetune.config}
            else:
                model = fit_candidate(res.best, features[res.best.variant][tr], y[tr], seed)
                pred = model.predict(features[res.best.variant][te])
            fit_s = time.perf_counter() - t
            m = split_metrics(y[te], pred, len(classes))
            per.append(m)
            details.append({"split": i, "accuracy": m["accuracy"], "balanced_accuracy": m["balanced_accuracy"],
                            "refit_seconds": fit_s, **summary})
            bar.set_postfix_str(f"split {i + 1}: {summary['chosen']['label']}")
    finally:
        bar.close()
    out = summarize(per, classes)
    counts = np.bincount(y, minlength=len(classes))
    n = len(per)
    bal = [p["balanced_accuracy"] for p in per]
    chosen: dict[str, int] = {}
    for d in details:
        chosen[d["chosen"]["label"]] = chosen.get(d["chosen"]["label"], 0) + 1
    out.update(
        protocol="nested: " + ("kfold" if kfold else "repeated_stratified_shuffle_split"),
        splits=n, test_size=None if kfold else test_size, kfold=kfold, seed=seed, select=select,
        accuracy_sem=out["accuracy_std"] / np.sqrt(n) if n > 1 else 0.0,
        balanced_accuracy_per_split=[float(b) for b in bal],
        budget_seconds=budget_s, budget_per_split_seconds=per_split_budget,
        budget_reached_splits=[d["split"] for d in details if d["budget_reached"]],
        search_seconds=float(sum(d["seconds"] for d in details)), evaluate_seconds=time.perf_counter() - t0,
        majority_baseline=float(counts.max() / counts.sum()),
        class_counts={c: int(v) for c, v in zip(classes, counts)},
        chosen_counts=dict(sorted(chosen.items(), key=lambda kv: -kv[1])),
        outer=details,
    )
    return out


def outer_scores(features: dict[FeatureVariant, np.ndarray], y: np.ndarray, classes: list[str],
                 candidates: list[Candidate], folds, seed: int = 0, n_jobs: int = 2,
                 progress: bool = True) -> list[dict]:
    """Each fixed candidate fitted on every outer training part and scored on its test part (for comparison
    with the nested selection: the best of these is an optimistic oracle, chosen on the test parts)."""
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    def one(c, tr, te):
        m = split_metrics(y[te], fit_candidate(c, features[c.variant][tr], y[tr], seed).predict(
            features[c.variant][te]), len(classes))
        return m["accuracy"], m["balanced_accuracy"]

    out = []
    for c in tqdm(candidates, desc="fixed candidates", unit="cand", disable=not progress):
        t = time.perf_counter()
        r = Parallel(n_jobs=n_jobs, prefer="threads")(delayed(one)(c, np.asarray(tr), np.asarray(te))
                                                      for tr, te in folds)
        secs = time.perf_counter() - t
        acc = np.array([a for a, _ in r])
        bal = np.array([b for _, b in r])
        out.append({**c.as_dict(), "accuracy_mean": float(acc.mean()),
                    "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
                    "balanced_accuracy_mean": float(bal.mean()),
                    "balanced_accuracy_std": float(bal.std(ddof=1)) if len(bal) > 1 else 0.0,
                    "per_split": acc.tolist(), "balanced_per_split": bal.tolist(), "seconds": secs})
    return out
