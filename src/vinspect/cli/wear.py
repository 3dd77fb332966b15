"""``vinspect wear``: measure flank wear (VB) of cutting inserts, and grade wear from the measurement.  Wired
into ``vinspect.cli`` by ``add_parser(subparsers, parser_class)``; bad input raises BadInputError (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..backbones.registry import DEFAULT_BACKBONE
from .common import command, group
from .common import quiet as _quiet


def cmd_measure(args) -> int:
    from ..pipeline.wear import measure_folder

    progress = not _quiet(args)
    inputs = list(args.inputs)
    model = None
    if args.masks is None:
        if len(inputs) < 2:
            from ..errors import BadInputError

            raise BadInputError("give a segment MODEL and IMAGES, or IMAGES with --masks DIR")
        model, inputs = inputs[0], inputs[1:]
    rows = measure_folder(inputs, args.csv, masks=args.masks, model=model, mm_per_px=args.mm_per_px,
                          scale_bar_mm=args.scale_bar, edge=args.edge, mask_align=args.mask_align, plots=args.plots,
                          progress=progress)
    vb = [r["vb_max"] for r in rows]
    broken = sum(bool(r["breakage"]) for r in rows)
    print(f"{len(rows)} inserts measured: VB max median {sorted(vb)[len(vb) // 2]:.1f} px (max {max(vb):.1f}); "
          f"{broken} flagged for breakage; {args.csv}" + (f"; pictures in {args.plots}" if args.plots else ""))
    return 0


def cmd_grade(args) -> int:
    from ..pipeline.wear import cnn_features
    from ..segment.data import scan
    from ..segment.masks import MaskFormat
    from ..segment.train import SegmentConfig
    from ..wear.grade import grade

    progress = not _quiet(args)
    data = scan(args.images, args.masks, MaskFormat(align=args.mask_align), args.classes)
    cfg = None if args.predicted else SegmentConfig(epochs=args.epochs, input_size=args.input_size,
                                                    val_fraction=0.0, seed=args.seed)
    order = [c.strip() for c in args.order.split(",")] if args.order else None
    feats = None if args.no_cnn else cnn_features(data.paths, args.cnn, progress)
    res = grade(data, args.out, predicted=args.predicted, cfg=cfg, splits=args.splits, test_size=args.test_size,
                seed=args.seed, order=order, edge=args.edge, cnn_feats=feats, cnn=None if args.no_cnn else args.cnn,
                inner_folds=args.inner_folds, progress=progress)
    print(f"wear grades from {res['masks']} ({len(data.paths)} images, classes {', '.join(res['classes'])}), "
          f"{args.splits} stratified splits:")
    for name, v in res["variants"].items():
        chosen = ""
        if "chosen_counts" in v:
            chosen = " (chosen: " + ", ".join(f"{k} x{n}" for k, n in v["chosen_counts"].items()) + ")"
        print(f"  {name}: {v['accuracy_mean']:.4f} ± {v['accuracy_std']:.4f}{chosen}")
    print(f"results: {Path(args.out) / 'results.json'}")
    return 0


def add_parser(subparsers, parser_class=argparse.ArgumentParser):
    """Add ``wear`` and its sub-commands to ``subparsers``."""
    desc = ("Flank wear of cutting inserts: VB max / VB mean perpendicular to the cutting edge (found from the "
            "insert's outline), worn length, area, breakage; and wear grades from those measures.")
    sub = group(subparsers, "wear", "measure flank wear (VB) of inserts; grade wear from it", desc)

    def cmd(name, help_):  # func is set by each command below
        p = command(sub, name, help_, None, full_name=f"wear {name}")
        p.add_argument("--edge", default="bottom", choices=["bottom", "top", "left", "right"],
                       help="side of the image where the cutting edge lies (default: %(default)s)")
        p.add_argument("--mask-align", choices=["exact", "topleft"], default="exact",
                       help="masks of another size: refuse (exact) or crop/pad at the top-left corner")
        return p

    p = cmd("measure", "measure every insert: VB max, VB mean, worn length, area, breakage (CSV; px, and mm "
                       "with a scale)")
    p.add_argument("inputs", nargs="+", metavar="[MODEL] IMAGES",
                   help="a segment model then image files/folders; or only images with --masks")
    p.add_argument("--masks", metavar="DIR", help="measure these masks (MASKS/<relative path>.png) instead of a "
                                                  "model's predictions")
    p.add_argument("--csv", required=True, metavar="FILE")
    s = p.add_mutually_exclusive_group()
    s.add_argument("--mm-per-px", type=float, metavar="X", help="the image scale, mm per pixel")
    s.add_argument("--scale-bar", type=float, metavar="MM", help="find a scale bar of this length (mm) in each "
                                                                 "image: a thin bright horizontal bar")
    p.add_argument("--plots", metavar="DIR", help="a picture per insert: edge, wear land, VB max")
    p.set_defaults(func=cmd_measure)

    p = cmd("grade", "wear grades from measures of PREDICTED masks, on the repeated-split protocol of "
                     "vinspect evaluate (same results.json keys); the classifier is chosen by an inner CV on "
                     "each training part (nested)")
    p.add_argument("images", metavar="IMAGES", help="image folder, one sub-folder per grade")
    p.add_argument("--masks", required=True, metavar="DIR", help="true masks: used to train the segmenter of "
                   "each split on its training part only (and for the reference variant on true masks)")
    p.add_argument("--predicted", metavar="DIR", help="out-of-fold masks of vinspect segment evaluate "
                   "(DIR/oof/...) instead of training a segmenter in every split")
    p.add_argument("--classes", action="append", metavar="NEW=FOLDER[,FOLDER]",
                   help="merge/select grade folders, e.g. --classes high=high --classes low=low")
    p.add_argument("--order", metavar="A,B,...", help="grades from least to most worn, for the ordinal VB "
                   "threshold (default: low,medium,high when those are the classes)")
    p.add_argument("--splits", type=int, default=10, help="(default: %(default)s)")
    p.add_argument("--test-size", type=float, default=0.3, help="(default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(default: %(default)s)")
    p.add_argument("--cnn", default=DEFAULT_BACKBONE, metavar="BACKBONE",
                   help="backbone whose pooled whole-image features join the wear measures in one candidate "
                        "classifier (default: %(default)s)")
    p.add_argument("--no-cnn", action="store_true", help="no CNN features: candidates on the wear measures only")
    p.add_argument("--inner-folds", type=int, default=5, help="folds of the inner cross-validation on each training "
                   "part that chooses the classifier (default: %(default)s)")
    p.add_argument("--epochs", type=int, default=30, help="segmenter epochs per split (default: %(default)s)")
    p.add_argument("--input-size", metavar="WxH", help="segmenter input (default: as vinspect segment train)")
    p.add_argument("--out", required=True, metavar="DIR")
    p.set_defaults(func=cmd_grade)
