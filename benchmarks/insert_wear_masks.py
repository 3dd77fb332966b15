"""How far can the insert-wear grades be told apart from the *annotated* wear regions?  A ceiling for any
image-only method (issue 3: the grades low / medium / high).

    python benchmarks/insert_wear_masks.py [--out benchmarks/results/training]

The dataset ships a binary wear-region mask per image (``insert-wear/masks/<grade>/<name>.png``, a 357x173
canvas: the image sits at its top-left corner, padded with zeros on the right and at the bottom).  Each mask
is described by the shape of the wear region (area, area relative to the insert, bounding box, perimeter,
convex area, solidity, extent, ellipse axes, eccentricity, orientation, equivalent diameter, compactness,
elongation, components) and by grey-level statistics of the image inside it (relative to the insert), then
classified with the lab's protocol: the same 10 stratified 70/30 splits as ``vinspect evaluate`` (seed 0).
A method that starts from the image has to find the wear region first, so it cannot expect to do better
than a classifier handed the ground-truth regions.

Writes ``insert_wear_masks.json`` and a readable ``insert_wear_masks.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "datasets" / "insert-wear"

SHAPE = ["area", "area_rel", "bbox_h", "bbox_w", "components", "largest_frac", "perimeter", "convex_area",
         "solidity", "extent", "major_axis", "minor_axis", "eccentricity", "orientation", "eq_diameter",
         "compactness", "elongation"]
GREY = ["grey_mean", "grey_std", "grey_rel", "insert_grey_mean", "grey_p10_rel", "grey_p50_rel", "grey_p90_rel"]


def insert_mask(grey: np.ndarray) -> np.ndarray:
    """The insert: the largest bright component (the background of these crops is black)."""
    fg = ndi.binary_fill_holes(ndi.binary_opening(grey > 15, iterations=2))
    lab, n = ndi.label(fg)
    return lab == (np.argmax(np.bincount(lab.ravel())[1:]) + 1) if n > 1 else fg


def describe(image_path: Path, mask_path: Path) -> dict | None:
    """The features of one image and its mask (None for an empty mask)."""
    grey = np.asarray(Image.open(image_path).convert("L"), dtype=np.float64)
    h, w = grey.shape
    m = np.asarray(Image.open(mask_path).convert("L"))[:h, :w] > 127
    if not m.any():
        return None
    ins = insert_mask(grey)
    ys, xs = np.nonzero(m)
    area = float(m.sum())
    bbox_h, bbox_w = float(np.ptp(ys) + 1), float(np.ptp(xs) + 1)
    lab, n = ndi.label(m)
    cov = np.cov(np.stack([xs, ys]).astype(np.float64)) if area > 1 else np.eye(2)
    ev = np.sort(np.linalg.eigvalsh(cov))[::-1]
    major, minor = 4 * np.sqrt(max(ev[0], 1e-12)), 4 * np.sqrt(max(ev[1], 0.0))
    boundary = m & ~ndi.binary_erosion(m)
    perimeter = float(boundary.sum())
    try:
        convex = float(ConvexHull(np.stack([xs, ys], 1)).volume)
    except (QhullError, ValueError):
        convex = area
    inside = grey[m]
    around = grey[ins & ~m] if (ins & ~m).any() else grey[ins]
    ref = float(around.mean()) or 1.0
    f = {
        "area": area, "area_rel": area / max(float(ins.sum()), 1.0), "bbox_h": bbox_h, "bbox_w": bbox_w,
        "components": float(n), "largest_frac": float(np.bincount(lab.ravel())[1:].max()) / area,
        "perimeter": perimeter, "convex_area": convex, "solidity": area / max(convex, 1.0),
        "extent": area / (bbox_h * bbox_w), "major_axis": major, "minor_axis": minor,
        "eccentricity": float(np.sqrt(1 - ev[1] / ev[0])) if ev[0] > 0 else 0.0,
        "orientation": float(0.5 * np.arctan2(2 * cov[0, 1], cov[0, 0] - cov[1, 1])),
        "eq_diameter": float(np.sqrt(4 * area / np.pi)), "compactness": perimeter ** 2 / (4 * np.pi * area),
        "elongation": minor / max(major, 1e-6),
        "grey_mean": float(inside.mean()), "grey_std": float(inside.std()), "grey_rel": float(inside.mean()) / ref,
        "insert_grey_mean": ref,
    }
    for q in (10, 50, 90):
        f[f"grey_p{q}_rel"] = float(np.percentile(inside, q)) / ref
    return f


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "training"))
    ap.add_argument("--splits", type=int, default=10)
    args = ap.parse_args(argv)
    if not (DATA / "images").is_dir() or not (DATA / "masks").is_dir():
        print(f"insert_wear_masks: {DATA} (images/ and masks/) not found", file=sys.stderr)
        return 2

    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from vinspect.data.dataset import scan_folder
    from vinspect.data.splits import repeated_splits

    ds = scan_folder(DATA / "images")
    rows, used, missing = [], [], []
    for i, (p, rel) in enumerate(zip(ds.paths, ds.relpaths)):
        mp = DATA / "masks" / rel
        row = describe(Path(p), mp) if mp.is_file() else None
        if row is None:
            missing.append(rel)  # no mask, or an empty one
            continue
        rows.append(row)
        used.append(i)
    y = np.asarray(ds.labels)[used]
    names = SHAPE + GREY
    X = np.array([[r[k] for k in names] for r in rows])
    folds = list(repeated_splits(y, args.splits, 0.3, 0))

    def score(make, cols):
        accs = []
        for tr, te in folds:
            model = make().fit(X[tr][:, cols], y[tr])
            accs.append(float(np.mean(model.predict(X[te][:, cols]) == y[te])))
        return accs

    shape_cols = list(range(len(SHAPE)))
    all_cols = list(range(len(names)))
    logreg = lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))  # noqa: E731
    variants = [("majority class of the training part", None, None)]
    for cols_name, cols in (("wear-region shape", shape_cols), ("wear-region shape + grey levels inside", all_cols)):
        variants.append((f"{cols_name}, logistic regression", logreg, cols))
        for s in range(3):
            variants.append((f"{cols_name}, random forest (300 trees, seed {s})",
                             lambda s=s: RandomForestClassifier(300, random_state=s, n_jobs=1), cols))
    results = []
    for name, make, cols in variants:
        if make is None:
            accs = [float(np.mean(y[te] == np.bincount(y[tr]).argmax())) for tr, te in folds]
        else:
            accs = score(make, cols)
        results.append({"variant": name, "accuracy_mean": round(float(np.mean(accs)), 4),
                        "accuracy_std": round(float(np.std(accs)), 4), "per_split": [round(a, 4) for a in accs]})
        print(f"{name}: {np.mean(accs):.4f} +- {np.std(accs):.4f}", flush=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report = {"what": "insert-wear grades from the ground-truth wear masks (a ceiling for image-only methods)",
              "date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "n_images": len(used),
              "classes": ds.classes, "class_counts": {c: int((y == k).sum()) for k, c in enumerate(ds.classes)},
              "masks_missing": missing, "splits": args.splits, "test_size": 0.3, "seed": 0,
              "features": names, "results": results}
    (out / "insert_wear_masks.json").write_text(json.dumps(report, indent=2))
    lines = ["# Insert-wear grades from the annotated wear regions (ceiling for image-only methods)", "",
             f"{len(used)} images ({', '.join(f'{c} {n}' for c, n in report['class_counts'].items())}), the "
             f"ground-truth wear masks of the dataset; the same {args.splits} stratified 70/30 splits as "
             "`vinspect evaluate` (seed 0).", "",
             "| features, classifier | accuracy (mean ± std) |", "|---|---:|"]
    lines += [f"| {r['variant']} | {r['accuracy_mean']:.4f} ± {r['accuracy_std']:.4f} |" for r in results]
    lines += ["", "Reproduce: `python benchmarks/insert_wear_masks.py` (about a minute)."]
    (out / "insert_wear_masks.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
