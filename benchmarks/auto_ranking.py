"""Does the inner cross-validation rank the candidates well?  Every fixed candidate of a task, scored on every
inner fold of each outer split (no halving, no budget), against its outer test score.

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/auto_ranking.py --tasks magnetic-tile,elpv
        [--fixed-from benchmarks/results/auto.json] [--summary-only]

For each outer split (seed 0, the splits of benchmarks/auto.py) the inner folds are those the search uses
(``inner_folds(y[train], seed + 1000 * (split + 1))``); each candidate's mean inner accuracy and balanced
accuracy is recorded next to its outer test scores (taken from ``--fixed-from``, where benchmarks/auto.py
wrote them).  The summary: the outer mean of the candidate with the best mean inner score in each split (an
exhaustive search over those candidates with the best-mean rule), the oracle (best outer mean), and the
oracle's rank by the inner mean averaged over the splits.  Writes benchmarks/results/auto-ranking/<task>.json
and auto-ranking.md.  It separates the two causes of a gap between --auto and the best fixed configuration:
the inner ranking itself, or the search not scoring the right candidates in full.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from auto import RESULTS, TASKS, elpv_root  # noqa: E402

OUT = RESULTS / "auto-ranking"


def score_task(name: str, fixed: list[dict]) -> dict:
    from joblib import Parallel, delayed
    from sklearn.metrics import accuracy_score, balanced_accuracy_score

    from vinspect.pipeline import load_dataset
    from vinspect.pipeline.auto import prepare
    from vinspect.selection import nested
    from vinspect.selection.space import Candidate, FeatureVariant, HeadConfig

    S = importlib.import_module("vinspect.selection.search")  # the package exports the function of that name
    root, classes = TASKS[name]
    root = elpv_root() if name == "elpv" else root
    ds = load_dataset(root, classes, 0.3, None, 1)
    loaded = prepare(ds, progress=sys.stderr.isatty())
    X, y = loaded["features"], loaded["labels"]
    folds = nested.outer_folds(y, 10, 0.3, 0)
    cands = [Candidate(FeatureVariant(**r["features"]), HeadConfig(**r["head"])) for r in fixed]
    out = {c.label: {"outer_acc": r["per_split"], "outer_bal": r["balanced_per_split"], "inner": []}
           for c, r in zip(cands, fixed)}

    def one(c, tr, te, Xv, yv):
        p = nested.fit_candidate(c, Xv[tr], yv[tr], 0).predict(Xv[te])
        return accuracy_score(yv[te], p), balanced_accuracy_score(yv[te], p)

    t0 = time.perf_counter()
    for i, (tr, _) in enumerate(folds):
        tr = np.asarray(tr)
        fl = S.inner_folds(y[tr], 1000 * (i + 1))
        jobs = [(c, f) for c in cands for f in range(len(fl))]
        r = Parallel(n_jobs=2, prefer="threads")(delayed(one)(c, fl[f][0], fl[f][1], X[c.variant][tr], y[tr])
                                                 for c, f in jobs)
        for c in cands:
            vals = [s for (cc, _), s in zip(jobs, r) if cc == c]
            out[c.label]["inner"].append([float(np.mean([v[0] for v in vals])), float(np.mean([v[1] for v in vals]))])
        print(f"{name}: split {i} {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    return out


def summary(d: dict) -> dict:
    labs = list(d)
    n = len(d[labs[0]]["inner"])
    res = {}
    for m, key in ((0, "accuracy"), (1, "balanced_accuracy")):
        outer = "outer_acc" if m == 0 else "outer_bal"
        pick = [max(labs, key=lambda lab: d[lab]["inner"][i][m]) for i in range(n)]
        oracle = max(labs, key=lambda lab: np.mean(d[lab][outer]))
        inner_mean = {lab: np.mean([x[m] for x in d[lab]["inner"]]) for lab in labs}
        by_inner = sorted(labs, key=lambda lab: -inner_mean[lab])
        res[key] = {"exhaustive_best_mean": float(np.mean([d[p][outer][i] for i, p in enumerate(pick)])),
                    "oracle": oracle, "oracle_outer": float(np.mean(d[oracle][outer])),
                    "oracle_sem": float(np.std(d[oracle][outer], ddof=1) / np.sqrt(n)),
                    "oracle_rank_by_inner_mean": by_inner.index(oracle) + 1,
                    "oracle_first_in_splits": sum(p == oracle for p in pick), "candidates": len(labs)}
    return res


def markdown(rows: dict, source: str) -> str:
    lines = ["# Inner ranking: every fixed candidate scored on every inner fold", "", f"Fixed candidates: {source}.", "",
             "Each task's fixed candidates (from benchmarks/auto.py) scored on the search's inner folds of each "
             "of the 10 outer splits (seed 0); *exhaustive*: the outer mean of the best mean inner score per "
             "split (no halving, no budget); *oracle*: the best outer mean (chosen on the test parts).", "",
             "| task | metric | candidates | exhaustive (best inner mean) | oracle ± SE | oracle's rank by inner "
             "mean | splits where the oracle ranks first | oracle |",
             "|---|---|---:|---:|---|---:|---:|---|"]
    for name, s in rows.items():
        for key in ("accuracy", "balanced_accuracy"):
            r = s[key]
            lines.append(f"| {name} | {key.replace('_', ' ')} | {r['candidates']} | {r['exhaustive_best_mean']:.4f} | "
                         f"{r['oracle_outer']:.4f} ± {r['oracle_sem']:.4f} | {r['oracle_rank_by_inner_mean']} | "
                         f"{r['oracle_first_in_splits']} of 10 | {r['oracle']} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="magnetic-tile,elpv,neu-cls,wear-intact")
    ap.add_argument("--fixed-from", type=Path, default=RESULTS / "auto.json")
    ap.add_argument("--summary-only", action="store_true", help="summarise the JSON already written")
    ap.add_argument("--source", default="the fixed candidates of benchmarks/results/auto.json",
                    help="where the fixed candidates came from (written into auto-ranking.md)")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    rows = {}
    for name in args.tasks.split(","):
        path = OUT / f"{name}.json"
        if not args.summary_only:
            fixed = json.loads(args.fixed_from.read_text())["tasks"][name]["fixed"]
            path.write_text(json.dumps(score_task(name, fixed)) + "\n")
        rows[name] = summary(json.loads(path.read_text()))
    text = markdown(rows, args.source)
    (RESULTS / "auto-ranking.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
