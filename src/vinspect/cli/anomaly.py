"""``vinspect anomaly``: train and evaluate anomaly detection from normal (defect-free) images only.
Wired into ``vinspect.cli`` by ``add_parser(subparsers, parser_class)``; bad input raises BadInputError (exit 2).
Prediction, serving, export and explanations of the trained model go through the common commands
(``vinspect predict MODEL IMAGES``, ``serve``, ``export``, ``explain``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import BadInputError
from .common import command, group
from .common import quiet as _quiet


def _size(text: str) -> tuple[int, int]:
    """'W' or 'WxH' -> (height, width)."""
    try:
        if "x" in text.lower():
            w, h = (int(v) for v in text.lower().split("x"))
        else:
            w = h = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected W or WxH in pixels, e.g. 256 or 512x224") from None
    if not (32 <= w <= 4096 and 32 <= h <= 4096):
        raise argparse.ArgumentTypeError(f"{text!r}: each side must be between 32 and 4096 pixels")
    return h, w


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < v < 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return v


def _common(p) -> None:
    from ..anomaly.defaults import DEFAULTS, IMAGE_SCORES

    p.add_argument("data", metavar="DATA", help="folder with one sub-folder per class (the normal class and, for "
                                                "evaluate, the defect classes)")
    p.add_argument("--normal", required=True, metavar="CLASS[,CLASS]", help="the folder(s) of defect-free images")
    p.add_argument("--method", default="patchcore", choices=["patchcore", "padim"],
                   help="patchcore: memory bank of patch features (greedy coreset), nearest-neighbour distance; "
                        "padim: a Gaussian per patch position (aligned parts) (default: %(default)s)")
    g = p.add_argument_group("features and maps")
    g.add_argument("--backbone", default=DEFAULTS["backbone"], help="registry name or timm architecture "
                   "(default: %(default)s)")
    g.add_argument("--weights", metavar="PATH", help="local .pth/.safetensors weights (any timm architecture)")
    g.add_argument("--layers", metavar="L1,L2", help="feature layers (default: patchcore "
                   f"{','.join(DEFAULTS['layers']['patchcore'])}; padim {','.join(DEFAULTS['layers']['padim'])})")
    g.add_argument("--image-size", type=_size, metavar="W[xH]", help=f"network input (default: "
                   f"{DEFAULTS['long_side']}x{DEFAULTS['long_side']}; with --resize letterbox alone: long side "
                   f"{DEFAULTS['long_side']}, the other from the normal images' median aspect; large images: raise it "
                   "so that small defects survive, e.g. 1024x416 for 1250x500 strips)")
    g.add_argument("--resize", choices=["letterbox", "squash"], help=f"squash stretches the whole image to the input; "
                   f"letterbox keeps the aspect ratio and pads (default: {DEFAULTS['resize']})")
    g.add_argument("--sigma", type=float, help=f"Gaussian blur of the maps, input pixels (default: {DEFAULTS['sigma']})")
    g.add_argument("--image-score", choices=list(IMAGE_SCORES), help="method: PatchCore's re-weighted worst patch, "
                   "PaDiM's largest patch; topk: the mean of the highest patch scores (--top-fraction of them); "
                   f"map_max: the maximum of the blurred map (default: {DEFAULTS['image_score']})")
    g.add_argument("--top-fraction", type=_fraction, metavar="F", help="topk: the fraction of the patches averaged "
                   f"(default: {DEFAULTS['top_fraction']})")
    g.add_argument("--coreset", type=_fraction, metavar="RATIO", help="patchcore: fraction of patches kept in the "
                   f"memory bank (default: {DEFAULTS['coreset_ratio']}; at most --max-bank)")
    g.add_argument("--max-bank", type=int, metavar="N", help=f"patchcore: memory-bank size cap (default: "
                   f"{DEFAULTS['max_bank']}, float16)")
    g.add_argument("--threshold-quantile", type=_fraction, metavar="Q", help="threshold = this quantile of the "
                   f"out-of-fold scores of the normal images (default: {DEFAULTS['threshold_quantile']})")
    g.add_argument("--threshold-folds", type=int, metavar="K", help="cross-fitting folds of the label-free "
                   f"threshold: each normal image is scored by a model fitted without its fold; the model itself is "
                   f"fitted on all (default: {DEFAULTS['threshold_folds']})")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")


def _folds(args) -> int | None:
    if args.threshold_folds is not None and args.threshold_folds < 2:
        raise BadInputError(f"--threshold-folds {args.threshold_folds}: must be at least 2")
    return args.threshold_folds


def _model_kwargs(args) -> dict:
    from ..anomaly.features import InputSpec
    from ..anomaly.defaults import DEFAULTS
    from ..backbones.registry import get_spec

    kw: dict = {"backbone": args.backbone, "weights": args.weights}
    if args.layers:
        kw["layers"] = [v.strip() for v in args.layers.split(",") if v.strip()]
    if args.image_size:
        pre = get_spec(args.backbone).preprocessing
        h, w = args.image_size
        kw["spec"] = InputSpec(w, h, args.resize or DEFAULTS["resize"], pre.interpolation, tuple(pre.mean),
                               tuple(pre.std))
    elif args.resize:
        kw["resize"] = args.resize  # letterbox: the default long side with the normal images' median aspect
    if args.sigma is not None:
        kw["sigma"] = args.sigma
    if args.image_score:
        kw["image_score"] = args.image_score
    if args.top_fraction is not None:
        kw["top_fraction"] = args.top_fraction
    params = {}
    if args.coreset is not None:
        params["coreset_ratio"] = args.coreset
    if args.max_bank is not None:
        if args.max_bank < 1:
            raise BadInputError(f"--max-bank {args.max_bank}: must be at least 1")
        params["max_bank"] = args.max_bank
    if params:
        kw["params"] = params
    return kw


def add_parser(subparsers, parser_class=argparse.ArgumentParser):
    desc = ("Anomaly detection trained on defect-free parts only (PatchCore or PaDiM): a score per image, a "
            "threshold set without defect examples, and a map of where the anomaly lies.")
    sub = group(subparsers, "anomaly", "anomaly detection from good parts only: train, evaluate", desc)

    p = command(sub, "train", "fit on the normal images of DATA; write a model folder", cmd_train,
                full_name="anomaly train", description="Fit on the normal class(es) of DATA (other folders are ignored). The threshold "
                       "is the --threshold-quantile quantile of out-of-fold scores of the normal images (cross-fitting: "
                       "each scored by a model fitted without its fold; the model itself uses them all; no defect "
                       "examples needed), or the best-F1 threshold on labelled images "
                       "(--calibrate DIR, the same class folders). Then: vinspect predict MODEL IMAGES --json.")
    _common(p)
    p.add_argument("--out", required=True, metavar="MODEL", help="model folder to write")
    p.add_argument("--calibrate", metavar="DIR", help="labelled images (normal and defect class folders) to set "
                   "the threshold of the best F1")

    p = command(sub, "evaluate", "repeated splits of the normal images; image and pixel metrics, plots", cmd_evaluate,
                full_name="anomaly evaluate", description="Each split fits on --train-fraction of the normal images (threshold as in "
                       "train, from the training part only) and tests on the other normal images plus every "
                       "anomalous one. Writes results.json, results.txt, roc.png, scores.png, worst.png.")
    _common(p)
    p.add_argument("--splits", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--train-fraction", type=_fraction, default=0.7, help="(default: %(default)s)")
    p.add_argument("--masks", metavar="DIR", help="ground-truth masks, MASKS/<class>/<image stem>.png, single "
                   "channel (defect >= 128 of 255; 0/1 masks: non-zero), any size (nearest-neighbour resize); "
                   "adds pixel AUROC and PRO")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")


def cmd_train(args) -> int:
    from ..anomaly.protocol import train

    progress = not _quiet(args)
    model, summary = train(args.data, args.normal, method=args.method, seed=args.seed, progress=progress,
                           model_kwargs=_model_kwargs(args), threshold_quantile=args.threshold_quantile,
                           calibrate=args.calibrate, threshold_folds=_folds(args))
    from ..models.anomaly import save_anomaly_bundle

    out = save_anomaly_bundle(args.out, model, summary)
    print(f"trained {args.method} on {summary['n_images']} normal images of {', '.join(summary['normal_classes'])} "
          f"in {summary['fit_seconds']:.1f} s; threshold {model.threshold:.4g} ({summary['threshold_rule']})")
    if summary["ignored_classes"]:
        print(f"not used for fitting: {', '.join(summary['ignored_classes'])}")
    for s in summary["skipped"]:
        print(f"skipped {s['path']}: {s['reason']}")
    print(f"model: {out}  (next: vinspect predict {out} IMAGES --json)")
    return 0


def results_text(res: dict) -> str:
    def f(key):
        m, s = res.get(f"{key}_mean"), res.get(f"{key}_std")
        return "n/a" if m is None else f"{m:.4f} +- {s:.4f}"

    c = res["config"]
    pre = res["preprocessing"]
    lines = [f"vinspect anomaly evaluate: {res['data']}",
             f"method {res['method']}: backbone {res['backbone']} layers {','.join(c['layers'])} "
             f"(local {c['local']}x{c['local']}), input {pre['width']}x{pre['height']} ({pre['resize']}), "
             f"map blur sigma {c['sigma']}, params {json.dumps(c['params'])}",
             f"normal {', '.join(res['normal_classes'])}: {res['n_normal']} images; anomalous "
             f"({', '.join(res['anomalous_classes'])}): {res['n_anomalous']}; skipped {len(res['skipped'])}",
             f"protocol: {res['splits']} splits of the normal images {round(res['train_fraction'] * 100)}/"
             f"{round((1 - res['train_fraction']) * 100)}, seed {res['seed']}; threshold: {res['threshold_rule']}",
             "",
             f"image AUROC        {f('image_auroc')}",
             f"image AP           {f('image_ap')}",
             f"F1 at threshold    {f('f1_at_threshold')}  (recall {f('recall_at_threshold')}, false-positive "
             f"rate {f('false_positive_rate_at_threshold')})"]
    if res.get("masks"):
        lines += [f"pixel AUROC        {f('pixel_auroc')}", f"PRO (FPR <= 0.3)   {f('pro')}"]
    lines += ["", f"fit {res['fit_seconds']:.1f} s per split (features of the training images included; the "
                  f"label-free threshold {res.get('threshold_seconds', 0):.1f} s more); "
                  f"{res['images_per_second']:.1f} images/s at prediction (decoding excluded)",
              "per split image AUROC: " + " ".join(f"{r['image_auroc']:.4f}" for r in res["per_split"])]
    if res["skipped"]:
        lines += ["", "skipped files:"] + [f"  {s['path']}: {s['reason']}" for s in res["skipped"]]
    return "\n".join(lines) + "\n"


def cmd_evaluate(args) -> int:
    from ..anomaly import plots
    from ..anomaly.protocol import evaluate

    progress = not _quiet(args)
    res = evaluate(args.data, args.normal, splits=args.splits, train_fraction=args.train_fraction, masks=args.masks,
                   method=args.method, seed=args.seed, progress=progress, model_kwargs=_model_kwargs(args),
                   threshold_quantile=args.threshold_quantile, threshold_folds=_folds(args))
    res["data"] = str(Path(args.data).resolve())
    worst = res.pop("_worst")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "results.txt").write_text(results_text(res))
    y, s = worst["labels"], worst["scores"]
    plots.roc_png(y, s, out / "roc.png")
    plots.histogram_png(y, s, res["per_split"][0]["threshold"], out / "scores.png")
    plots.maps_grid_png(worst["items"], out / "worst.png",
                        title="lowest-scored anomalous and highest-scored normal test images (first split)")
    print(results_text(res), end="")
    print(f"written: {out / 'results.json'}, results.txt, roc.png, scores.png, worst.png")
    return 0
