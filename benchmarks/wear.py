"""Wear measurement and grading benchmarks on insert-wear (issue 13), from the out-of-fold predicted masks of
``benchmarks/segment.py insert-wear``.

    python benchmarks/wear.py            # after (or during: the finished folds) the segmentation benchmark

1. VB max measured on each image's predicted mask vs on its true mask (same image, same fitted edge): the
   absolute error in px (median, mean, 90th percentile, share within 3 px).
2. Grading with the repeated-split protocol of ``vinspect evaluate`` (10 stratified 70/30 splits, seed 0): the
   three grades and high vs low, from the wear measures of the PREDICTED masks.  Masks are out-of-fold: every
   image's mask was predicted by the fold network that never saw that image or its mask (allowed by issue 13,
   "or out-of-fold predictions, documented"); the segmenters of the 5 folds were trained on the other folds'
   masks, so a grading split's test images may have helped train the segmenter of another test image, never
   their own.  The same classifiers on the TRUE masks' measures are shown as a reference (a perfect segmenter),
   and the whole-image figures of the README for comparison.  Every variant is reported.  The headline is the
   nested choice of ``vinspect wear grade``: in each split the classifier (logistic regression or random forest
   on the wear measures, the ordinal VB max thresholds, or logistic regression on the wear measures joined with
   16 principal components of the pooled whole-image CNN features) is chosen by an inner 5-fold CV on that
   split's training part only, refitted there and scored once on its test part.  (Until 2026-12-02 the headline
   was the fixed logistic regression; it stays in the table.)

Writes ``benchmarks/results/segment/wear.json`` and ``wear.md``, and the README pictures under ``docs/wear/``.
"""

from __future__ import annotations

import json
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "insert-wear"
WORK = ROOT / "benchmarks" / "results" / "segment" / "insert-wear"
OUT = ROOT / "benchmarks" / "results" / "segment"
DOCS = ROOT / "docs" / "wear"


def _data(classes=None):
    from vinspect.segment.data import scan

    return scan(DATA / "images", DATA / "masks-cropped", classes=classes)


def _with_oof(data, work: Path = WORK):
    """The images of ``data`` that have an out-of-fold map (all of them once every fold is done)."""
    from dataclasses import replace

    keep = [i for i, r in enumerate(data.relpaths) if (work / "oof" / Path(r).with_suffix(".png")).is_file()]
    return replace(data, paths=[data.paths[i] for i in keep], relpaths=[data.relpaths[i] for i in keep],
                   strata=data.strata[keep], mask_paths=[data.mask_paths[i] for i in keep],
                   sizes=[data.sizes[i] for i in keep])


def vb_errors(work: Path = WORK, threshold: float = 0.5) -> dict:
    """|VB max(predicted) - VB max(true)| over the images that have an out-of-fold map."""
    from vinspect.data.decode import open_image
    from vinspect.segment.evaluate import read_prob_png
    from vinspect.segment.masks import read_mask
    from vinspect.wear.measure import measure

    data = _data()
    rows = []
    for p, rel, mp, size in zip(data.paths, data.relpaths, data.mask_paths, data.sizes):
        oof = work / "oof" / Path(rel).with_suffix(".png")
        if not oof.is_file():
            continue
        grey = np.asarray(open_image(p).convert("L"))
        true = read_mask(mp, size, data.fmt) > 0
        pred = read_prob_png(oof) >= threshold
        wt, _ = measure(grey, true)
        wp, _ = measure(grey, pred)
        rows.append({"path": rel, "vb_max_true": wt.vb_max, "vb_max_pred": wp.vb_max,
                     "vb_mean_true": wt.vb_mean, "vb_mean_pred": wp.vb_mean})
    if not rows:
        return {}
    err = np.abs([r["vb_max_pred"] - r["vb_max_true"] for r in rows])
    errm = np.abs([r["vb_mean_pred"] - r["vb_mean_true"] for r in rows])
    return {"n": len(rows), "vb_max_abs_err_median": float(np.median(err)), "vb_max_abs_err_mean": float(err.mean()),
            "vb_max_abs_err_p90": float(np.percentile(err, 90)), "vb_max_within_3px": float((err <= 3).mean()),
            "vb_mean_abs_err_median": float(np.median(errm)),
            "vb_max_true_median": float(np.median([r["vb_max_true"] for r in rows])), "per_image": rows}


def pictures(work: Path = WORK, n_per_grade: int = 2) -> list[str]:
    """docs/wear/measured.png: measured wear on real inserts (predicted masks; true outline in green)."""
    from vinspect.data.decode import open_image
    from vinspect.reporting.plots import _plt
    from vinspect.segment.evaluate import read_prob_png
    from vinspect.segment.masks import read_mask
    from vinspect.segment.plots import _thick_boundary
    from vinspect.wear.measure import measure
    from vinspect.wear.plots import draw_measure

    data = _data()
    picked = []
    for g in ("low", "medium", "high"):
        idx = [i for i, r in enumerate(data.relpaths) if r.startswith(g + "/")
               and (work / "oof" / Path(r).with_suffix(".png")).is_file()]
        picked += idx[:: max(1, len(idx) // n_per_grade)][:n_per_grade]
    if not picked:
        return []
    plt = _plt()
    cols = 2
    rows = (len(picked) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 5.0, rows * 2.9), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), picked):
        img = open_image(data.paths[i])
        rgb = np.asarray(img.convert("RGB")).copy()
        grey = np.asarray(img.convert("L"))
        pred = read_prob_png(work / "oof" / Path(data.relpaths[i]).with_suffix(".png")) >= 0.5
        true = read_mask(data.mask_paths[i], data.sizes[i], data.fmt) > 0
        wt, _ = measure(grey, true)
        wm, geo = measure(grey, pred, mm_per_px=None)
        rgb[_thick_boundary(true)] = (40, 220, 60)
        draw_measure(rgb, wm, geo, ax, f"{data.relpaths[i]} (true VB max {wt.vb_max:.1f} px, green outline)")
    fig.tight_layout()
    DOCS.mkdir(parents=True, exist_ok=True)
    fig.savefig(DOCS / "measured.png", format="png")
    plt.close(fig)
    return [data.relpaths[i] for i in picked]


def vb_by_grade_png(errors: dict) -> None:
    from vinspect.reporting.plots import _plt

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    grades = ["low", "medium", "high"]
    pos = 0
    for k, (key, colour) in enumerate((("vb_max_true", "tab:green"), ("vb_max_pred", "tab:red"))):
        vals = [[r[key] for r in errors["per_image"] if r["path"].startswith(g + "/")] for g in grades]
        b = ax.boxplot(vals, positions=np.arange(3) * 3 + k, widths=0.8, patch_artist=True)
        for patch in b["boxes"]:
            patch.set_facecolor(colour)
            patch.set_alpha(0.5)
        pos += 1
    ax.set_xticks(np.arange(3) * 3 + 0.5, grades)
    ax.set_ylabel("VB max (px)")
    ax.set_title("VB max per grade: true masks (green) vs predicted (red)", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    DOCS.mkdir(parents=True, exist_ok=True)
    fig.savefig(DOCS / "vb_by_grade.png", format="png")
    plt.close(fig)


def main(argv=None) -> int:
    if not (DATA / "images").is_dir():
        print(f"wear benchmark: {DATA} not found", file=sys.stderr)
        return 2
    from vinspect.wear.grade import PRIMARY, grade

    errors = vb_errors()
    if not errors:
        print("wear benchmark: no out-of-fold masks yet (run benchmarks/segment.py insert-wear)", file=sys.stderr)
        return 2
    complete = errors["n"] == len(_data().paths)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "vb_error": errors,
              "complete": complete, "grading": {}, "load_average": list(os.getloadavg())}
    from vinspect.backbones.registry import DEFAULT_BACKBONE
    from vinspect.pipeline.wear import cnn_features

    every = _data()
    t0 = time.perf_counter()
    feats = dict(zip(every.relpaths, cnn_features(every.paths, DEFAULT_BACKBONE, progress=True)))
    report["cnn"] = {"backbone": DEFAULT_BACKBONE, "seconds": time.perf_counter() - t0}
    # grading needs every image's out-of-fold mask; until then an INTERIM figure on the images that have one
    for task, classes in (("three grades", None), ("high vs low", ["high=high", "low=low"])):
        data = _data(classes) if complete else _with_oof(_data(classes))
        t0 = time.perf_counter()
        res = grade(data, OUT / "wear-grade" / task.replace(" ", "-"), predicted=WORK, splits=10,
                    test_size=0.3, seed=0, cnn=DEFAULT_BACKBONE,
                    cnn_feats=np.stack([feats[r] for r in data.relpaths]), progress=False)
        report["grading"][task] = {k: {kk: v[kk] for kk in ("accuracy_mean", "accuracy_std",
                                                             "balanced_accuracy_mean", "per_split",
                                                             "confusion_matrix", "thresholds_px", "chosen",
                                                             "chosen_counts", "inner_accuracy")
                                        if kk in v} for k, v in res["variants"].items()}
        report["grading"][task]["majority_baseline"] = res.get("majority_baseline")
        report["grading"][task]["n_images"] = len(data.paths)
        report["grading"][task]["seconds"] = time.perf_counter() - t0
        report["grading"][task]["candidates"] = res["candidates"]
    vb_by_grade_png(errors)
    report["pictures"] = pictures()
    (OUT / "wear.json").write_text(json.dumps(report, indent=1, default=float))
    e = errors
    lines = ["# Wear measurement and grading on insert-wear (predicted masks)", "",
             f"Date {report['date']}. Out-of-fold masks of `benchmarks/segment.py insert-wear` for {e['n']} of "
             f"{len(_data().paths)} images" + ("" if complete else " (INCOMPLETE: the segmentation folds are not "
                                                              "all done; the grading below is interim)") + ".", "",
             f"2-core CPU shared with other jobs: load average {report['load_average'][1]:.1f} (5 min) at the start; "
             f"CNN features {report['cnn']['seconds']:.0f} s, grading "
             + ", ".join(f"{t} {v['seconds']:.0f} s" for t, v in report["grading"].items()) + ".", "",
             "The headline (bold) is the nested choice: in each split the classifier is chosen among the others "
             "below by an inner stratified 5-fold CV on that split's training part only, refitted there and scored "
             "once on its test part.  CNN features: the pooled features of the whole image (efficientnet_lite0, "
             "default layer and input), 16 principal components fitted on the training part.", "",
             "## VB max: predicted vs true mask (same image, same fitted edge)", "",
             "| images | median abs. error px | mean px | 90th pct. px | within 3 px | VB max median (true) px |",
             "|---:|---:|---:|---:|---:|---:|",
             f"| {e['n']} | {e['vb_max_abs_err_median']:.2f} | {e['vb_max_abs_err_mean']:.2f} | "
             f"{e['vb_max_abs_err_p90']:.2f} | {e['vb_max_within_3px']:.3f} | {e['vb_max_true_median']:.1f} |", ""]
    for task, table in report["grading"].items():
        ref = "TRUE masks (reference): "
        names = [PRIMARY] + [c for c in table["candidates"]]
        lines += [f"## Grading: {task} ({table['n_images']} images"
                  + ("" if complete else ", INTERIM: only the images of the finished folds") + "; 10 stratified "
                  f"70/30 splits, seed 0; majority {table['majority_baseline']:.3f})", "",
                  "| classifier | accuracy, predicted masks (mean ± std) | balanced accuracy | TRUE masks "
                  "(reference) |", "|---|---:|---:|---:|"]
        for k in names:
            v, t = table[k], table.get(ref + k)
            head = f"**{k}**" if k == PRIMARY else k
            lines.append(f"| {head} | {v['accuracy_mean']:.4f} ± {v['accuracy_std']:.4f} | "
                         f"{v['balanced_accuracy_mean']:.4f} | "
                         + (f"{t['accuracy_mean']:.4f} ± {t['accuracy_std']:.4f}" if t else "-") + " |")
        cc = table[PRIMARY]["chosen_counts"]
        cct = table.get(ref + PRIMARY, {}).get("chosen_counts", {})
        lines += ["", "Chosen by the inner CV (predicted masks): " + ", ".join(f"{k} x{n}" for k, n in cc.items())
                  + ("; TRUE masks: " + ", ".join(f"{k} x{n}" for k, n in cct.items()) if cct else "") + ".", ""]
    lines += ["Reproduce: `python benchmarks/wear.py` (minutes; needs the out-of-fold masks of "
              "`benchmarks/segment.py insert-wear`)."]
    (OUT / "wear.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
