"""Do the heatmaps point at the defects?  The pointing game on NEU: a model trained with `vinspect train` on the
training part of one stratified 70/30 split of neu-cls, `vinspect explain` on the test part, and a hit when the
heatmap's peak falls inside a ground-truth box of ../shared/datasets/neu-det-annotations.

Baselines on the same images: a uniformly random point (its expected score is the fraction of the image the
boxes cover) and the image centre.

    python benchmarks/explain.py [--seed 0] [--head logreg]  ->  benchmarks/results/explain.json and .md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"


def boxes(xml: Path) -> tuple[list[tuple[int, int, int, int]], tuple[int, int]]:
    r = ET.parse(xml).getroot()
    size = (int(r.find("size/width").text), int(r.find("size/height").text))
    out = []
    for o in r.iter("object"):
        b = o.find("bndbox")
        out.append(tuple(int(float(b.find(k).text)) for k in ("xmin", "ymin", "xmax", "ymax")))
    return out, size


def inside(x: int, y: int, bs) -> bool:
    return any(x0 <= x <= x1 and y0 <= y <= y1 for x0, y0, x1, y1 in bs)


def covered_fraction(bs, size) -> float:
    w, h = size
    m = np.zeros((h, w), bool)
    for x0, y0, x1, y1 in bs:
        m[max(0, y0):y1 + 1, max(0, x0):x1 + 1] = True
    return float(m.mean())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(SHARED / "neu-cls"))
    ap.add_argument("--boxes", default=str(SHARED / "neu-det-annotations"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--head", default="logreg")
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-explain"))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "explain"))
    args = ap.parse_args(argv)
    data, box_dir = Path(args.data), Path(args.boxes)
    if not data.is_dir() or not box_dir.is_dir():
        print(f"skipped: {data} or {box_dir} not found (../shared/datasets is absent)", file=sys.stderr)
        return 0
    from sklearn.model_selection import StratifiedShuffleSplit

    from vinspect.cli import main as cli
    from vinspect.data.dataset import scan_folder

    ds = scan_folder(data)
    tr, te = next(StratifiedShuffleSplit(1, test_size=0.3, random_state=args.seed).split(ds.paths, ds.labels))
    work = Path(args.work)
    train_dir = work / f"train-seed{args.seed}"
    for i in tr:  # the training part as a folder of links: `vinspect train` sees nothing else
        p = Path(ds.paths[i])
        link = train_dir / ds.classes[ds.labels[i]] / p.name
        if not link.exists():
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(p.resolve())
    model = work / f"model-seed{args.seed}-{args.head}"
    t0 = time.perf_counter()
    assert cli(["train", str(train_dir), "--out", str(model), "--head", args.head, "--eval-splits", "0", "-q"]) == 0
    train_s = time.perf_counter() - t0
    test_paths = [str(ds.paths[i]) for i in te]
    exp = work / f"explain-seed{args.seed}-{args.head}"
    t0 = time.perf_counter()
    assert cli(["explain", str(model), *test_paths, "--out", str(exp), "-q", "--max-side", "200"]) == 0
    explain_s = time.perf_counter() - t0
    rows = json.loads((exp / "explain.json").read_text())
    per_class: dict[str, dict] = {}
    hits = centre_hits = 0
    random_expect = []
    missing = []
    for r in rows:
        stem = Path(r["path"]).stem
        xml = box_dir / f"{stem}.xml"
        if not xml.is_file():
            missing.append(stem)
            continue
        bs, size = boxes(xml)
        hit = inside(*r["peak_xy"], bs)
        c_hit = inside(size[0] // 2, size[1] // 2, bs)
        frac = covered_fraction(bs, size)
        cls = Path(r["path"]).parent.name
        d = per_class.setdefault(cls, {"n": 0, "hits": 0, "centre_hits": 0, "random_expected": 0.0})
        d["n"] += 1
        d["hits"] += hit
        d["centre_hits"] += c_hit
        d["random_expected"] += frac
        hits += hit
        centre_hits += c_hit
        random_expect.append(frac)
    n = len(random_expect)
    for d in per_class.values():
        d["pointing_accuracy"] = d["hits"] / d["n"]
        d["centre_accuracy"] = d["centre_hits"] / d["n"]
        d["random_expected"] /= d["n"]
    res = {
        "data": str(data), "boxes": str(box_dir), "split": {"seed": args.seed, "test_size": 0.3, "n_train": len(tr),
                                                            "n_test": len(te)},
        "model": {"head": args.head, "backbone": "efficientnet_lite0 (default)", "layer": "blocks.6 (default)"},
        "method": sorted({r["method"] for r in rows}),
        "n_scored": n, "missing_annotations": missing,
        "pointing_accuracy": hits / n, "random_point_expected": float(np.mean(random_expect)),
        "centre_point_accuracy": centre_hits / n, "per_class": per_class,
        "train_seconds": train_s, "explain_seconds": explain_s, "explain_images_per_second": len(rows) / explain_s,
        "command": f"python benchmarks/explain.py --seed {args.seed} --head {args.head}",
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"pointing-seed{args.seed}-{args.head}"
    (out / f"{stem}.json").write_text(json.dumps(res, indent=2) + "\n")
    lines = [f"# Pointing game on NEU (`{res['command']}`)", "",
             f"Model: `vinspect train` ({args.head}, default backbone and layer) on {len(tr)} images (70 %, seed "
             f"{args.seed}); `vinspect explain` ({', '.join(res['method'])}) on the {len(te)} test images; a hit when "
             "the heatmap's peak lies inside a ground-truth box (NEU-DET).", "",
             "| class | n | heatmap peak | random point (expected) | image centre |", "|---|---:|---:|---:|---:|"]
    for cls, d in sorted(per_class.items()):
        lines.append(f"| {cls} | {d['n']} | {d['pointing_accuracy']:.3f} | {d['random_expected']:.3f} | "
                     f"{d['centre_accuracy']:.3f} |")
    lines.append(f"| **all** | {n} | **{res['pointing_accuracy']:.3f}** | {res['random_point_expected']:.3f} | "
                 f"{res['centre_point_accuracy']:.3f} |")
    lines += ["", f"Training {train_s:.0f} s, explanations {explain_s:.0f} s "
                  f"({res['explain_images_per_second']:.1f} images/s) on this machine."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
