"""Run outputs: ``results.json`` for programs, ``results.txt`` for people."""

from __future__ import annotations

import json
from pathlib import Path


def _fmt_rate(r):
    return "n/a" if r is None else f"{r:.1f}"


def _setup_line(res: dict) -> str:
    method = res.get("method", "head")
    if method == "head":
        return (f"method head: backbone {res['backbone']}  layer {res['layer']}  pool {res['pool']}  input "
                f"{res['image_size']}px ({res['resize']})  head {res['head']}  feature dim {res['feature_dim']}")
    h, w = res["image_size"]
    c = res.get("config", {})
    net = "lab network" if method == "scratch" else f"backbone {res['backbone']} cut at {res['layer']}"
    return (f"method {method}: {net}  input {w}x{h} ({res['resize']}{', grey' if c.get('grey') else ''})  "
            f"optimizer {c.get('optimizer')} lr {c.get('lr')}  augment "
            f"{'on' if any(v not in (0, 0.0, False, 1.0) for v in c.get('augment', {}).values()) else 'off'}"
            + (f"  ensemble of {res['ensemble']}" if res.get("ensemble") else ""))


def score_lines(res: dict, where: str = "") -> list[str]:
    """Accuracy, balanced accuracy, the majority baseline, the per-split accuracies and the per-class table of an
    evaluation's results (``where``: said after the accuracy, e.g. which test parts)."""
    lines = [
        f"accuracy           {res['accuracy_mean']:.4f} +- {res['accuracy_std']:.4f}{where}",
        f"balanced accuracy  {res['balanced_accuracy_mean']:.4f} +- {res['balanced_accuracy_std']:.4f}",
        f"majority baseline  {res['majority_baseline']:.4f} (always answering the largest class)",
        "per split: " + " ".join(f"{a:.4f}" for a in res["per_split"]),
        "",
        f"{'class':<20}{'precision':>10}{'recall':>10}{'f1':>10}{'support':>10}",
    ]
    for c, m in res["per_class"].items():
        lines.append(f"{c:<20}{m['precision']:>10.4f}{m['recall']:>10.4f}{m['f1']:>10.4f}{m['support']:>10d}")
    return lines


def results_text(res: dict) -> str:
    lines = [
        f"vinspect evaluate: {res['data']}",
        _setup_line(res),
        f"images {res['n_images']} in {len(res['classes'])} classes; skipped {len(res['skipped'])}",
        f"protocol: {res['splits']} x " + (f"{res['kfold']}-fold" if res.get('kfold') else
                                           f"stratified {round((1 - res['test_size']) * 100)}/"
                                           f"{round(res['test_size'] * 100)} split") + f", seed {res['seed']}",
        "",
        *score_lines(res),
    ]
    lines += ["", "confusion matrix (rows: true, columns: predicted; summed over splits)"]
    w = max(8, max(len(c) for c in res["classes"]) + 1)
    lines.append(" " * w + "".join(f"{c[:w - 1]:>{w}}" for c in res["classes"]))
    for c, row in zip(res["classes"], res["confusion_matrix"]):
        lines.append(f"{c[:w - 1]:<{w}}" + "".join(f"{v:>{w}d}" for v in row))
    if res.get("method", "head") == "head":
        lines += ["", f"extraction: {res['n_computed']} images computed at "
                      f"{_fmt_rate(res['extract_images_per_second'])} images/s ({res['extract_rate_source']}), "
                      f"{res['cache_hits']} from the cache",
                  f"head fit: {res['fit_seconds_mean']:.2f} s per split; total {res['total_seconds']:.1f} s"]
    else:
        lines += ["", f"training: {res['train_seconds_mean']:.1f} s per split ({res['epochs_mean']:.1f} epochs on "
                      f"average, device {res['device']}); total {res['total_seconds']:.1f} s"]
    if res["skipped"]:
        lines += ["", "skipped files:"] + [f"  {s['path']}: {s['reason']}" for s in res["skipped"]]
    return "\n".join(lines) + "\n"


def write_results(out_dir: str | Path, res: dict) -> tuple[Path, Path]:
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    j = d / "results.json"
    t = d / "results.txt"
    j.write_text(json.dumps(res, indent=2) + "\n")
    t.write_text(results_text(res))
    return j, t
