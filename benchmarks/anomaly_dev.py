"""Development measurements for the anomaly defaults (never the benchmark's splits, seeds 0-4).

    nice -n 10 .venv/bin/python benchmarks/anomaly_dev.py --dataset magnetic-tile --seeds 100,101,102 \
        --inputs letterbox:256x224,squash:224x224 [--threshold all,holdout,crossfit]

For every input variant the patch features of all images are extracted once; for every development split
(70/30 of the normal images, ``numpy.random.default_rng(seed)``, the same rule as ``vinspect anomaly evaluate``)
PatchCore is fitted on the training normals and the test images are scored with both image scores
(PatchCore's re-weighted nearest-neighbour distance of the worst patch, and the maximum of the blurred map), so
the two scores share one fit.  ``--threshold`` adds fits with the threshold rules (holdout: 15 % held out of a
first fit, then added; crossfit: k-fold out-of-fold scores, final fit on all).  Rows are appended to
``benchmarks/results/anomaly-dev.json`` (resumable: a (dataset, input, rule, seed) row already there is skipped)
and the table ``anomaly-dev.md`` is rewritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "datasets"
OUT = ROOT / "benchmarks" / "results" / "anomaly-dev.json"


def dataset(name: str, tmp: Path):
    if name == "magnetic-tile":
        return SHARED / "magnetic-tile" / "images", "free", SHARED / "magnetic-tile" / "masks"
    if name == "insert-wear":
        sub = tmp / "insert-wear"
        for c in ("low", "high"):
            (sub / c).mkdir(parents=True, exist_ok=True)
            for p in sorted((SHARED / "insert-wear" / "images" / c).glob("*.png")):
                if not (sub / c / p.name).exists():
                    os.symlink(p, sub / c / p.name)
        return sub, "low", None
    if name == "elpv":
        import subprocess

        d = tmp / "elpv"
        subprocess.run([sys.executable, "-m", "vinspect.data.elpv", str(d)], check=True, capture_output=True)
        return d, "functional", None
    raise SystemExit(f"unknown dataset {name}")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--seeds", default="100,101,102")
    ap.add_argument("--inputs", default="letterbox:256x224,squash:224x224",
                    help="resize:HxW,... (height x width)")
    ap.add_argument("--threshold", default="all", help="all (fit on every training normal), holdout, crossfit")
    ap.add_argument("--layers", default=None)
    ap.add_argument("--sigma", type=float, default=None)
    ap.add_argument("--backbone", default=None)
    ap.add_argument("--border", default=None, help="zeros (default) or valid: the 3x3 average at the border")
    ap.add_argument("--params", default="", help="method parameters, e.g. coreset_ratio=0.1,max_bank=100000")
    ap.add_argument("--sigmas", default=None, help="several map blurs scored on one fit (tags TAG-sigmaS)")
    ap.add_argument("--tag", default="")
    args = ap.parse_args()
    os.environ.setdefault("TQDM_DISABLE", "1")
    import numpy as np
    import torch

    from vinspect.anomaly.data import find_masks, load_anomaly_data
    from vinspect.anomaly.features import InputSpec, decode_all
    from vinspect.anomaly.model import AnomalyModel, quantile_threshold
    from vinspect.anomaly.protocol import _pixel_metrics, _split_normal, crossfit_threshold, fit_with_threshold

    tmp = Path("/tmp/vinspect-anomaly-dev")
    tmp.mkdir(exist_ok=True)
    root, normal, masks = dataset(args.dataset, tmp)
    data = load_anomaly_data(root, normal, need_anomalous=True)
    mask_files = find_masks(masks, data) if masks else None
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    done = {(r["dataset"], r["input"], r["rule"], r["seed"], r.get("tag", "")) for r in rows}
    for inp in args.inputs.split(","):
        resize, hw = inp.split(":")
        h, w = (int(v) for v in hw.split("x"))
        spec = InputSpec(w, h, resize, "bicubic", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        kw = {}
        if args.layers:
            kw["layers"] = args.layers.split(",")
        if args.sigma is not None:
            kw["sigma"] = args.sigma
        if args.backbone:
            kw["backbone"] = args.backbone
        if args.border:
            kw["border"] = args.border
        params = {k: float(v) if "." in v else int(v) for k, v in
                  (kv.split("=") for kv in args.params.split(",") if kv)}
        model = AnomalyModel("patchcore", spec=spec, params=params, **kw)
        sigmas = [float(v) for v in args.sigmas.split(",")] if args.sigmas else [model.sigma]

        def tag_of(sigma):
            return f"{args.tag}-sigma{sigma:g}" if args.sigmas else args.tag

        todo = [(rule, int(s)) for rule in args.threshold.split(",") for s in args.seeds.split(",")
                if any((args.dataset, inp, rule, int(s), tag_of(sg)) not in done for sg in sigmas)]
        if not todo:
            continue
        t0 = time.perf_counter()
        dec = decode_all(data.paths, spec, data.root, progress=False)
        t1 = time.perf_counter()
        feats = model.features(dec.pixels, progress=False)
        t2 = time.perf_counter()
        print(f"{inp}: decode {t1 - t0:.0f} s, features {t2 - t1:.0f} s ({(t2 - t1) / len(dec.paths) * 1000:.0f} "
              f"ms/image), grid {tuple(feats.shape[1:])}", flush=True)
        keep = {p: i for i, p in enumerate(data.paths)}
        idx_ok = np.array([keep[p] for p in dec.paths], dtype=int)
        an = data.anomalous[idx_ok]
        normal_idx, anomal_idx = np.nonzero(an == 0)[0], np.nonzero(an == 1)[0]
        for rule, seed in todo:
            rng = np.random.default_rng(seed)
            tr, te = _split_normal(normal_idx, 0.7, rng)
            test = np.concatenate([te, anomal_idx])
            y = an[test]
            ft = feats[torch.from_numpy(tr)]
            t3 = time.perf_counter()
            if rule == "all":
                model.fit_features(ft)
                thr = None
            elif rule == "holdout":
                fit_with_threshold(model, ft, 0.15, 0.99, seed)
                thr = model.threshold
            elif rule == "crossfit":
                thr = crossfit_threshold(model, ft, 0.99, seed)
                model.fit_features(ft)
            t4 = time.perf_counter()
            patch, s_rw = score_patches(model, feats, test)  # the nearest-neighbour search, once per fit
            t5 = time.perf_counter()
            for sigma in sigmas:
                model.sigma = sigma
                row = score_row(model, patch, s_rw, y, thr, tag_of(sigma))
                row.update({"dataset": args.dataset, "input": inp, "rule": rule, "seed": seed,
                            "params": params, "n_train": int(len(tr)), "fit_seconds": t4 - t3,
                            "score_seconds_per_image": (t5 - t4) / len(test),
                            "extract_seconds_per_image": (t2 - t1) / len(dec.paths)})
                if mask_files is not None:
                    row.update(_pixel_metrics(row.pop("_maps"), test, dec, mask_files, idx_ok, spec.resize))
                row.pop("_maps", None)
                rows = json.loads(OUT.read_text()) if OUT.exists() else []  # re-read: another run may have added rows
                rows.append(row)
                OUT.write_text(json.dumps(rows, indent=1) + "\n")
                print(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}), flush=True)
        del feats
    rows = json.loads(OUT.read_text()) if OUT.exists() else []
    (OUT.with_suffix(".md")).write_text(table(rows))
    return 0


def score_patches(model, feats, test, batch: int = 64):
    """Patch score maps (N, h, w) and PatchCore's re-weighted image scores of the test images (one search)."""
    import torch

    out = [model.core.score(feats[torch.from_numpy(test[i:i + batch])]) for i in range(0, len(test), batch)]
    return torch.cat([p for p, _ in out]), torch.cat([s for _, s in out]).double().numpy()


def score_row(model, patch, s_rw, y, thr, tag: str) -> dict:
    """Image scores (re-weighted, map maximum, top-k means) and the maps at ``model.sigma`` (key ``_maps``)."""
    import numpy as np

    from vinspect.anomaly.maps import to_input_maps, top_mean
    from vinspect.anomaly.metrics import image_metrics

    maps = to_input_maps(patch, model.spec.height, model.spec.width, model.sigma).numpy().astype(np.float32)
    s_max = maps.reshape(len(maps), -1).max(1).astype(np.float64)
    s_top = {f: top_mean(patch, f).numpy() for f in (0.01, 0.02, 0.05)}
    row = {"tag": tag, "layers": model.layers, "sigma": model.sigma, "backbone": model.backbone,
           "coreset_ratio": model.core.coreset_ratio, "border": model.border,
           "n_test": int(len(y)), "bank": int(len(model.core.bank)),
           "auroc_reweighted": image_metrics(y, s_rw, None)["image_auroc"],
           "auroc_map_max": image_metrics(y, s_max, None)["image_auroc"], "_maps": maps,
           **{f"auroc_top{f:g}": image_metrics(y, v, None)["image_auroc"] for f, v in s_top.items()}}
    if thr is not None:
        # the rate of false alarms on the held-out normal test images at the label-free threshold
        row["threshold"] = thr
        row["fpr_reweighted_at_threshold"] = float((s_rw[y == 0] > thr).mean())
        row["recall_reweighted_at_threshold"] = float((s_rw[y == 1] > thr).mean())
    return row


def table(rows) -> str:
    import numpy as np

    lines = ["# Anomaly defaults: development measurements (never the benchmark splits, seeds 0-4)", "",
             "Written by `benchmarks/anomaly_dev.py`; 70/30 splits of the normal images with the seeds shown; "
             "PatchCore, EfficientNet-Lite0 blocks.2 + blocks.4 (unless noted), 3x3 local average, greedy coreset "
             "(ratio and the mean bank size in the row; rows from before the 10 % default have 1 %); border: the 3x3 "
             "average at the map border counts the zero padding (zeros, PatchCore's and anomalib's way, the default "
             "from the zeropad rows on) or not (valid, the earlier rows). Each row: mean over the seeds (per-seed values in anomaly-dev.json). rule: all = fit on "
             "every training normal; holdout = 15 % held out for the threshold, then added; crossfit = 5-fold "
             "out-of-fold threshold, final fit on all.", "",
             "| data | input (resize:HxW) | rule | tag | seeds | backbone, coreset, bank, sigma, border | image AUROC re-weighted | image AUROC map max | "
             "image AUROC top 1 / 2 / 5 % mean | pixel AUROC | PRO | false alarms at threshold (test normals) | fit s | ms/image extract + score |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["dataset"], r["input"], r["rule"], r.get("tag", "")), []).append(r)
    for (d, inp, rule, tag), rs in groups.items():
        def m(k):
            v = [r[k] for r in rs if r.get(k) is not None]
            return f"{np.mean(v):.4f}" if v else "-"

        r0 = rs[0]
        setting = (f"{r0.get('backbone', 'efficientnet_lite0').replace('efficientnet_', '')}, "
                   f"{r0.get('coreset_ratio', r0.get('params', {}).get('coreset_ratio', 0.01)):g}, "
                   f"{np.mean([r['bank'] for r in rs]):.0f}, "
                   f"{r0['sigma']:g}, {r0.get('border', 'valid')}")
        lines.append(f"| {d} | {inp} | {rule} | {tag} | {','.join(str(r['seed']) for r in rs)} | {setting} "
                     f"| {m('auroc_reweighted')} "
                     f"| {m('auroc_map_max')} | {m('auroc_top0.01')} / {m('auroc_top0.02')} / {m('auroc_top0.05')} | {m('pixel_auroc')} | {m('pro')} | {m('fpr_reweighted_at_threshold')} | "
                     f"{m('fit_seconds')} | "
                     f"{1000 * np.mean([r['extract_seconds_per_image'] + r['score_seconds_per_image'] for r in rs]):.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
