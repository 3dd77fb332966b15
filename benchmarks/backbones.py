"""Backbones compared for speed against accuracy (the lab's question), on the real data in ../shared.

    python benchmarks/backbones.py [--engine torch|onnx] [--splits 10] [--out benchmarks/results]

Runs ``vinspect compare`` with a fresh, temporary feature cache (so every extraction rate is measured in
this run, on this machine) on NEU steel defects (6 classes) and on the insert-wear intact/damaged task
(low+medium vs high).  Writes ``backbones-<engine>.json`` and a readable ``backbones-<engine>.md`` table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path

from vinspect.benchmark import cpu_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
TASKS = {
    "neu-cls": (SHARED / "neu-cls", None),
    "insert-wear intact/damaged": (SHARED / "insert-wear" / "images", ["intact=low,medium", "damaged=high"]),
}
BACKBONES = ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "mobilenet_v2"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--engine", default="torch", choices=["torch", "onnx"])
    args = ap.parse_args()
    from vinspect.pipeline import compare

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
              "cores": os.cpu_count(), "splits": args.splits, "head": "logreg", "engine": args.engine, "tasks": {}}
    for task, (root, classes) in TASKS.items():
        if not root.is_dir():
            print(f"skipping {task}: {root} not found", file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as cache, tempfile.TemporaryDirectory() as runs:
            summary = compare(root, BACKBONES, runs, classes=classes, splits=args.splits, cache_dir=cache,
                              engine=args.engine, onnx_dir=Path(cache) / "onnx", progress=sys.stderr.isatty())
        report["tasks"][task] = summary["rows"]
    stem = f"backbones-{args.engine}"
    (out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Backbones: accuracy against speed ({args.engine} engine)", "",
             f"{report['date']}, {report['cpu']} ({report['cores']} cores), logistic regression head, "
             f"{args.splits} stratified 70/30 splits; images/s = decode + resize + network, end to end, batch 32.", ""]
    for task, rows in report["tasks"].items():
        lines += [f"## {task} ({rows[0]['n_images']} images)", "",
                  "| backbone | layer | dim | input | accuracy (mean ± std) | images/s | cache MB |",
                  "|---|---|---:|---:|---|---:|---:|"]
        for r in rows:
            lines.append(f"| {r['backbone']} | {r['layer']} | {r['feature_dim']} | {r['image_size']} | "
                         f"{r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} | {r['images_per_second']:.1f} | "
                         f"{r['cache_mb']:.2f} |")
        lines.append("")
    (out / f"{stem}.md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
