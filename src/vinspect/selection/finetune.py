"""``--auto finetune``: fine-tuning the backbone as one more candidate of the selection, tried when the budget
allows it.

Fine-tuning costs a network's training per fit, where a head costs a fraction of a second on cached features,
so it cannot take part in the staged search.  It comes after it, on the same inner folds of the same training
part (never the outer test part):

1. **plan**: the fine-tuner estimates one fit on an inner fold's training part and one on the whole training
   part (the refit) from a timed training step on this machine; fine-tuning is tried only when both fit in
   ``FINETUNE_SHARE`` (half) of the search's budget, and is then scored on as many inner folds (at most one
   pass) as that half allows; the feature search gets the other half.  Otherwise it is not tried, the feature
   search keeps the whole budget, and the report says why (the estimate and the time there was);
2. **compare**: fine-tuned on each of those inner folds' training part, scored on its validation part, against
   the feature search's choice on the same folds.  As in the search's own choice: from ``MIN_VALIDATION``
   training images on, fine-tuning is chosen when its mean is higher; on a small training part (where the
   search uses the one-standard-error rule) only when its mean is higher by more than one standard error of
   the per-fold differences, so it needs at least two folds there (the plan asks for them).  Why: on
   insert-wear intact/damaged (141 training images) a first run compared on one fold chose fine-tuning in 3
   splits of 10 on differences of 0.02-0.14 balanced accuracy and gained nothing (0.8164 accuracy against
   0.8148 without fine-tuning, 0.8213 for the default).

The fine-tuner is handed in by the caller (:class:`vinspect.pipeline.auto.Finetuner`: ``vinspect train --method
finetune`` with that method's defaults): ``estimate(n_train) -> seconds``, ``fit_predict(train_rows,
test_rows) -> predicted labels``, ``label`` and ``config``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score

FINETUNE_SHARE = 0.5


@dataclass
class FinetunePlan:
    tried: bool
    reason: str
    inner_fit_seconds: float  # estimates
    refit_seconds: float
    folds: int  # inner folds it is scored on
    search_budget_seconds: float  # what the feature search gets

    def as_dict(self) -> dict:
        return asdict(self)


def plan_finetune(ft, budget_s: float, n_inner_train: int, n_train: int, per_pass: int,
                  small: bool = False) -> FinetunePlan:
    """Whether fine-tuning fits in the budget of one search, on how many inner folds, and what is left
    (``small``: a small training part, where the comparison needs at least two folds)."""
    share = FINETUNE_SHARE * budget_s
    inner, refit = float(ft.estimate(n_inner_train)), float(ft.estimate(n_train))
    need = 2 if small else 1
    if need * inner + refit > share:
        what = "two inner fits (a small training part needs two folds to compare)" if small else "one inner fit"
        return FinetunePlan(False, f"not tried: {what} and the refit need about {need * inner + refit:.0f} s here "
                                   f"(estimated), more than half of the {budget_s:.0f} s budget (--budget)",
                            inner, refit, 0, budget_s)
    m = int(max(1, min(per_pass, (share - refit) // max(inner, 1e-9))))
    return FinetunePlan(True, f"tried on {m} inner fold{'s' if m > 1 else ''}", inner, refit, m, budget_s - share)


def compare_finetune(ft, rows: np.ndarray, y: np.ndarray, folds, n_folds: int, chosen_record: dict, select: str,
                     on_fold=None, small: bool = False) -> dict:
    """Fine-tune on the first ``n_folds`` inner folds (``folds`` index into ``rows``, which index ``y`` and the
    fine-tuner's images) and compare with the feature search's choice (its record) on the same folds
    (``small``: by more than one standard error of the per-fold differences)."""
    import time

    t0 = time.perf_counter()
    scores = []
    for f in range(n_folds):
        if on_fold:
            on_fold(f)
        tr, va = folds[f]
        pred = ft.fit_predict(rows[tr], rows[va])
        truth = y[rows[va]]
        scores.append({"accuracy": float(accuracy_score(truth, pred)),
                       "balanced_accuracy": float(balanced_accuracy_score(truth, pred))})
    diff = np.array([s[select] - chosen_record["folds"][str(f)][select] for f, s in enumerate(scores)])
    mine = float(np.mean([s[select] for s in scores]))
    theirs = float(np.mean([chosen_record["folds"][str(f)][select] for f in range(n_folds)]))
    se = float(np.std(diff, ddof=1) / np.sqrt(len(diff))) if small and len(diff) > 1 else 0.0
    chosen = bool(diff.mean() > se) and not (small and len(diff) < 2)
    return {"label": ft.label, "config": ft.config, "folds": {str(f): s for f, s in enumerate(scores)},
            "mean_" + select: mine, "features_mean_" + select: theirs, "features_label": chosen_record["label"],
            "rule": "higher by more than one SE of the per-fold differences" if small else "higher mean",
            "difference_se": se, "chosen": chosen, "seconds": time.perf_counter() - t0}


def search_and_finetune(X: dict, y: np.ndarray, rows: np.ndarray, variants, heads, select: str, seed: int,
                        budget_s: float, n_jobs: int = 2, finetune=None, on_fit=None, on_status=None):
    """One selection on rows ``rows`` of the data (``X``: their features per variant; ``y``: the labels of every
    row): the staged search, then, with a fine-tuner, the plan and the comparison on the search's own inner
    folds.  Returns ``(SearchResult, summary)``; with a fine-tuner ``summary["finetune"]`` records the plan and
    the comparison, ``["chosen"]`` true when fine-tuning won.  ``on_status(text)``: progress of the fine-tuning."""
    from .search import Clock, inner_folds, inner_repeats, search

    y_rows = y[rows]
    plan = None
    if finetune is not None:
        folds = inner_folds(y_rows, seed)  # the search's own inner folds (same seed)
        repeats = inner_repeats(len(rows))
        small = repeats > 1  # the search's one-SE regime
        plan = plan_finetune(finetune, budget_s, len(folds[0][0]), len(rows), len(folds) // repeats, small)
    res = search(X, y_rows, variants, heads, select, seed, Clock(plan.search_budget_seconds if plan else budget_s),
                 n_jobs, on_fit=on_fit)
    summary = res.summary(select)
    if plan is not None:
        summary["finetune"] = plan.as_dict()
        if plan.tried:
            rec = next(r for r in res.records if r["label"] == res.best.label)
            summary["finetune"].update(compare_finetune(
                finetune, rows, y, folds, plan.folds, rec, select, small=small,
                on_fold=on_status and (lambda f: on_status(f"fine-tuning, inner fold {f + 1}/{plan.folds}"))))
    return res, summary
