"""``vinspect classify extract|evaluate|train|compare``: the lab pipeline (CNN features + a scikit-learn head,
or a trained CNN) on folders of images, one sub-folder per class.  The top-level ``vinspect extract``,
``evaluate``, ``train`` and ``compare`` are the same commands (aliases kept from vinspect 0.1)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..backbones.registry import DEFAULT_BACKBONE
from ..errors import BadInputError
from .common import add_engine, command, default_out, group, need, report_skipped
from .ray_run import add_ray, extract_on_ray

COMMANDS = ("extract", "evaluate", "train", "compare")


def add_parser(sub, parser_class=None) -> None:
    """``vinspect classify ...`` and the top-level aliases."""
    csub = group(sub, "classify", "classification: extract features, evaluate, train, compare backbones",
                 "Classification of whole images (one sub-folder per class): the lab pipeline of CNN features + a "
                 "scikit-learn head, or a trained CNN (--method transfer|finetune|scratch).")
    add_commands(csub, "classify ")
    from .model import add_predict_options, cmd_predict

    add_predict_options(command(csub, "predict", "label image files and folders with a trained model (the same as "
                                                 "vinspect predict)", cmd_predict, full_name="classify predict"))


def add_commands(sub, prefix: str = "") -> None:
    """The classification commands on ``sub`` (``prefix``: how they are named in messages)."""
    p = command(sub, "extract", "extract features of an image folder into DIR/features.h5", cmd_extract,
                full_name=prefix + "extract")
    _add_extraction(p)
    p.add_argument("--out", metavar="DIR", help="output folder (required)")
    add_ray(p)

    p = command(sub, "evaluate", "the lab protocol: mean accuracy of a method over repeated stratified splits",
                cmd_evaluate, full_name=prefix + "evaluate")
    _add_extraction(p)
    _add_head(p)
    _add_training(p)
    _add_auto(p)
    g = p.add_argument_group("protocol")
    g.add_argument("--splits", type=int, default=10, help="number of random splits (default: %(default)s)")
    g.add_argument("--test-size", type=float, default=0.3, help="test fraction of each split (default: %(default)s)")
    g.add_argument("--kfold", type=int, help="stratified k-fold cross-validation instead of random splits")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/evaluate-<data>)")

    p = command(sub, "train", "train a model (a head on CNN features, or a CNN) on every image and save a bundle",
                cmd_train, full_name=prefix + "train")
    _add_extraction(p)
    _add_head(p)
    _add_training(p, train=True)
    _add_auto(p, train=True)
    p.add_argument("--eval-splits", type=int,
                   help="also measure accuracy on this many 70/30 splits, stored in model.json (0: skip; "
                        "default: 5 for method head, 0 for the CNN methods, which train a network per split)")
    p.add_argument("--test-size", type=float, default=0.3)
    p.add_argument("--out", metavar="MODEL_DIR", help="bundle folder (required)")

    p = command(sub, "compare", "evaluate several backbones: accuracy against speed, feature size and cache size",
                cmd_compare, full_name=prefix + "compare")
    p.add_argument("data", nargs="?", metavar="DATA")
    p.add_argument("--classes", action="append", metavar="NEW=FOLDER[,FOLDER]")
    p.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,mobilenet_v2",
                   help="comma-separated (default: %(default)s)")
    p.add_argument("--pool", default="avg", choices=["avg", "max", "avgmax"])
    p.add_argument("--resize", default="squash", choices=["squash", "letterbox"])
    p.add_argument("--batch-size", type=int, default=32)
    add_engine(p)
    p.add_argument("--cache", metavar="DIR")
    p.add_argument("--no-cache", action="store_true")
    _add_head(p)
    p.add_argument("--splits", type=int, default=10)
    p.add_argument("--test-size", type=float, default=0.3)
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/compare-<data>)")


def _add_extraction(p: argparse.ArgumentParser, data: bool = True) -> None:
    if data:
        p.add_argument("data", nargs="?", metavar="DATA", help="folder with one sub-folder per class")
        p.add_argument("--classes", action="append", metavar="NEW=FOLDER[,FOLDER]",
                       help="merge/rename/select class folders, repeatable: --classes intact=low,medium "
                            "--classes damaged=high")
    g = p.add_argument_group("feature extraction")
    g.add_argument("--backbone", default=DEFAULT_BACKBONE,
                   help="registry name or timm architecture (default: %(default)s; list: vinspect backbones)")
    g.add_argument("--layer", help="layer to extract from (default: the backbone's; list: vinspect layers NAME)")
    g.add_argument("--pool", default="avg", choices=["avg", "max", "avgmax", "gem"],
                   help="pooling of spatial layers; gem: generalised mean, p=3 (default: %(default)s)")
    g.add_argument("--image-size", type=int, help="input size in pixels (default: the backbone's)")
    g.add_argument("--resize", default="squash", choices=["squash", "letterbox"],
                   help="squash to a square, or keep the aspect ratio and pad (default: %(default)s)")
    g.add_argument("--weights", metavar="PATH", help="local .pth/.safetensors weights (for any timm architecture)")
    g.add_argument("--random-init", action="store_true", help="allow an untrained network (no weights)")
    add_engine(g)
    g.add_argument("--quantize", choices=["int8"], help="int8 quantisation of the ONNX backbone (--engine onnx)")
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    g.add_argument("--workers", type=int, help="decoding threads (default: the number of cores, at most 4)")
    g.add_argument("--cache", metavar="DIR", help="feature cache folder (default: $VINSPECT_CACHE or ~/.cache/vinspect)")
    g.add_argument("--no-cache", action="store_true", help="recompute every feature (the cache is refreshed)")


def _add_head(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("classifier")
    g.add_argument("--head", default="logreg", choices=["logreg", "svm-linear", "svm-rbf", "knn", "rf"],
                   help="scikit-learn classifier behind a standard scaler (default: %(default)s)")
    g.add_argument("--class-weight", choices=["balanced", "none"], help="re-weight classes for imbalanced data")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the splits and of CNN training (default: %(default)s)")


DEFAULT_SELECT = "balanced_accuracy"  # = vinspect.selection.search.DEFAULT_SELECT (a test checks), without
# importing scikit-learn to build the parser


def _add_auto(p: argparse.ArgumentParser, train: bool = False) -> None:
    g = p.add_argument_group("automatic model selection (see the README: Automatic model selection)")
    g.add_argument("--auto", nargs="?", const="features", choices=["features", "finetune"], default=None,
                   metavar="finetune",
                   help="choose layer(s), pooling, resolution (tiles for large images), head, its "
                        "hyper-parameters and class weights "
                        + ("by a staged search on stratified folds of every image, then save the chosen "
                           "configuration as a normal bundle" if train else
                           "inside each outer split, on its training part only (nested), and report the outer "
                           "scores") + "; --auto finetune: fine-tuning the backbone is a candidate too, tried when "
                                       "the budget allows (it needs far more than the default on a CPU)")
    g.add_argument("--budget", default="10m", metavar="TIME",
                   help="wall-clock time for the search (head fits; extraction comes on top, once per resolution, "
                        "cached), e.g. 90s, 10m, 1h" + ("" if train else ", shared by the outer splits")
                        + " (default: %(default)s)")
    g.add_argument("--select", default=DEFAULT_SELECT, choices=["accuracy", "balanced_accuracy"],
                   help="inner score to maximise; balanced accuracy equals accuracy on balanced classes and "
                        "keeps a rare defect class from being traded away (default: %(default)s)")


_AUTO_FIXED = {"layer": None, "pool": "avg", "image_size": None, "resize": "squash", "head": "logreg",
               "class_weight": None, "quantize": None, "method": "head", "random_init": False, "ensemble": None}


def _check_auto(args) -> None:
    for k, default in _AUTO_FIXED.items():
        if getattr(args, k, default) != default:
            raise BadInputError(f"--auto chooses the configuration itself: drop --{k.replace('_', '-')} "
                                f"(or drop --auto)")
    if args.precision not in (None, "fp32"):
        raise BadInputError(f"--auto runs fp32 features: drop --precision {args.precision}")


def _add_training(p: argparse.ArgumentParser, train: bool = False) -> None:
    p.add_argument("--method", default="head", choices=["head", "transfer", "finetune", "scratch"],
                   help="head: frozen CNN features + scikit-learn classifier; transfer: frozen pretrained backbone "
                        "+ new dense head trained with augmentation; finetune: then the top blocks unfrozen at a "
                        "lower learning rate; scratch: the lab's small CNN (default: %(default)s)")
    g = p.add_argument_group("CNN training (methods transfer, finetune, scratch; unset options take the "
                             "method's defaults, see docs/training.md)")
    g.add_argument("--input-size", metavar="WxH", help="network input, e.g. 224 or 320x128 (default: the "
                   "backbone's; scratch 128)")
    g.add_argument("--grey", action="store_true", default=None, help="grey input (default for scratch)")
    g.add_argument("--rgb", dest="grey", action="store_false", help="colour input")
    g.add_argument("--epochs", type=int, help="epochs (finetune: of the second stage)")
    g.add_argument("--head-epochs", type=int, help="finetune: epochs of the first stage (head only)")
    g.add_argument("--unfreeze", type=int, help="finetune: top blocks of the backbone to train (default 2)")
    g.add_argument("--no-probe", dest="probe", action="store_false", default=None,
                   help="transfer/finetune: start from a random head instead of a linear probe (logistic "
                        "regression on the frozen features)")
    g.add_argument("--lr", type=float, help="learning rate (finetune: of the first stage)")
    g.add_argument("--finetune-lr", type=float, help="finetune: learning rate of the second stage (default lr/10)")
    g.add_argument("--optimizer", choices=["adam", "adamw", "sgd"])
    g.add_argument("--momentum", type=float, help="SGD momentum (default 0.9)")
    g.add_argument("--weight-decay", type=float, help="default 1e-4")
    g.add_argument("--scheduler", choices=["cosine", "step", "none"],
                   help="cosine with linear warm-up (default), step decay, or constant")
    g.add_argument("--warmup-epochs", type=int, help="default 1")
    g.add_argument("--step-size", type=int, help="step scheduler: epochs between decays (default 5)")
    g.add_argument("--gamma", type=float, help="step scheduler: decay factor (default 0.5)")
    g.add_argument("--dropout", type=float, help="before the last dense layer")
    g.add_argument("--label-smoothing", type=float, help="default 0")
    g.add_argument("--patience", type=int, help="early stopping: epochs without a better validation loss (0: off)")
    g.add_argument("--val-fraction", type=float, help="validation part carved from the training part (default 0.15)")
    g.add_argument("--augment", metavar="SPEC", help="none, default, oriented, or items like "
                   "hflip,vflip,rot90,rotate=10,shift=0.05,scale=0.1,brightness=0.2,contrast=0.2,gamma=0.2,"
                   "blur=0.2,noise=0.02,crop=0.8 (training only; never at evaluation)")
    g.add_argument("--ensemble", type=int, metavar="K",
                   help="train K models on the folds of a stratified K-fold split (each validated on its "
                        "held-out fold) and average their probabilities" + ("" if train else " (per split)"))
    g.add_argument("--device", help="cpu, cuda, cuda:1 ... (default: cuda when present)")


_TRAIN_OPTIONS = ("input_size", "grey", "epochs", "head_epochs", "unfreeze", "probe", "lr", "finetune_lr",
                  "optimizer", "momentum", "weight_decay", "scheduler", "warmup_epochs", "step_size", "gamma", "dropout",
                  "label_smoothing", "patience", "val_fraction", "augment", "device")


def _train_config(args):
    from ..training.config import TrainConfig

    opts = {k: getattr(args, k) for k in _TRAIN_OPTIONS}
    opts.update(backbone=args.backbone, layer=args.layer, weights=args.weights, resize=args.resize,
                batch_size=args.batch_size, seed=args.seed,
                class_weight=None if args.class_weight in (None, "none") else args.class_weight)
    if args.ensemble is not None and args.ensemble < 2:
        raise BadInputError(f"--ensemble {args.ensemble}: needs at least 2 models")
    return TrainConfig.for_method(args.method, **opts)


def extractor_from(args):
    from ..features.extract import Extractor

    ex = Extractor(args.backbone, args.layer, args.pool, args.image_size, args.resize, args.weights,
                   args.random_init, args.batch_size, args.workers, engine=args.engine, quantize=args.quantize,
                   precision=args.precision, onnx_dir=Path(args.cache) / "onnx" if args.cache else None)
    return ex


def say_engine(args, ex) -> None:
    """What `--engine auto` chose and why, once, after a successful run (also in results.json / model.json)."""
    if args.engine == "auto" and not args.quiet:
        print(f"engine: {ex.engine_name} {ex.precision or ''} ({ex.engine_reason})".replace("  ", " "),
              file=sys.stderr)


def cmd_extract(args) -> int:
    from ..pipeline import extract_to

    need(args, "data", "out")
    if getattr(args, "ray", None):
        return extract_on_ray(args)
    ex = extractor_from(args)
    fs = extract_to(args.data, args.out, ex, args.classes, args.cache, not args.no_cache, progress=not args.quiet)
    report_skipped(fs.skipped)
    say_engine(args, ex)
    st = fs.stats
    rate = "n/a" if st["images_per_second"] is None else f"{st['images_per_second']:.1f}"
    print(f"{st['n_images']} images -> {Path(args.out) / 'features.h5'} ({st['feature_dim']} features each); "
          f"computed {st['n_computed']} at {rate} images/s, {st['cache_hits']} from the cache; "
          f"skipped {len(fs.skipped)}")
    return 0


def cmd_evaluate(args) -> int:
    from ..pipeline import evaluate

    need(args, "data")
    out = Path(args.out) if args.out else default_out("evaluate", args.data)
    if args.auto:
        return _evaluate_auto(args, out)
    if args.method != "head":
        return _evaluate_cnn(args, out)
    ex = extractor_from(args)
    res = evaluate(args.data, ex, args.head, args.class_weight, args.splits, args.test_size, args.seed, args.kfold,
                   args.classes, args.cache, not args.no_cache, out, progress=not args.quiet)
    report_skipped(res["skipped"])
    say_engine(args, ex)
    rate = res["extract_images_per_second"]
    print(f"accuracy {res['accuracy_mean']:.4f} +- {res['accuracy_std']:.4f} "
          f"(balanced {res['balanced_accuracy_mean']:.4f}; majority baseline {res['majority_baseline']:.4f}) "
          f"over {res['splits']} splits; {res['n_images']} images, {len(res['skipped'])} skipped; "
          f"{res['n_computed']} computed" + (f" at {rate:.1f} images/s" if rate and res['n_computed'] else "")
          + f", {res['cache_hits']} from the cache; {res['total_seconds']:.1f} s")
    print(f"results: {out / 'results.txt'}  {out / 'results.json'}  {out / 'confusion_matrix.png'}")
    return 0


def _evaluate_auto(args, out: Path) -> int:
    from ..pipeline.auto import evaluate_auto

    _check_auto(args)
    res = evaluate_auto(args.data, args.backbone, args.classes, args.splits, args.test_size, args.kfold, args.seed,
                        args.budget, args.select, args.cache, args.engine, args.batch_size, args.workers,
                        args.weights, out, progress=not args.quiet, mode=args.auto)
    report_skipped(res["skipped"])
    print(f"auto: accuracy {res['accuracy_mean']:.4f} +- {res['accuracy_std']:.4f}, balanced "
          f"{res['balanced_accuracy_mean']:.4f} +- {res['balanced_accuracy_std']:.4f} (majority baseline "
          f"{res['majority_baseline']:.4f}) over {res['splits']} outer splits, selected on inner {res['select']}; "
          f"{res['n_images']} images, {len(res['skipped'])} skipped; search {res['search_seconds']:.0f} s"
          + (f" (budget reached in {len(res['budget_reached_splits'])} splits)" if res["budget_reached_splits"]
             else "") + f", {res['total_seconds']:.0f} s in all")
    for label, n in res["chosen_counts"].items():
        print(f"  chosen in {n} split{'s' if n > 1 else ''}: {label}")
    fts = [d["finetune"] for d in res["outer"] if d.get("finetune")]
    if fts:
        tried = [f for f in fts if f["tried"]]
        print(f"  fine-tuning: tried in {len(tried)} of {len(fts)} splits, chosen in "
              f"{sum(bool(f.get('chosen')) for f in tried)}" + ("" if len(tried) == len(fts) else
                                                               f" ({next(f for f in fts if not f['tried'])['reason']})"))
    print(f"results: {out / 'results.txt'}  {out / 'results.json'}")
    return 0


def _train_auto(args) -> int:
    from ..pipeline.auto import train_auto

    _check_auto(args)
    b = train_auto(args.data, args.out, args.backbone, args.classes, args.seed, args.budget, args.select,
                   args.cache, args.engine, args.batch_size, args.workers, args.weights, progress=not args.quiet,
                   mode=args.auto)
    report_skipped(b.training["skipped"])
    m, sel = b.metrics, b.metrics["selection"]
    print(f"model -> {args.out}: chose {sel['chosen']['label']} (inner {sel['select']} "
          f"{m['inner_cv_' + sel['select']]:.4f} over {sel['inner_folds']} folds, {sel['fits']} fits in "
          f"{sel['seconds']:.0f} s" + (", budget reached" if sel["budget_reached"] else "")
          + f"); classes {', '.join(b.classes)}, {b.training['n_images']} images")
    ft = sel.get("finetune")
    if ft:
        key = sel["select"]
        print(f"  fine-tuning: {ft['reason']}" + (
            f"; inner {key} {ft['mean_' + key]:.4f} against {ft['features_mean_' + key]:.4f} for "
            f"{ft['features_label']}: {'chosen' if ft['chosen'] else 'not chosen'}" if ft["tried"] else ""))
    return 0


def _evaluate_cnn(args, out: Path) -> int:
    from ..pipeline.cnn import evaluate_cnn

    cfg = _train_config(args)
    res = evaluate_cnn(args.data, cfg, args.splits, args.test_size, args.seed, args.kfold, args.classes, out,
                       progress=not args.quiet, ensemble=args.ensemble)
    report_skipped(res["skipped"])
    print(f"{args.method}: accuracy {res['accuracy_mean']:.4f} +- {res['accuracy_std']:.4f} "
          f"(balanced {res['balanced_accuracy_mean']:.4f}; majority baseline {res['majority_baseline']:.4f}) "
          f"over {res['splits']} splits; {res['n_images']} images, {len(res['skipped'])} skipped; "
          f"{res['train_seconds_mean']:.1f} s training per split, {res['total_seconds']:.1f} s in all")
    print(f"results: {out / 'results.txt'}  {out / 'results.json'}  {out / 'confusion_matrix.png'}  "
          f"{out / 'splits'}/NN/training_curves.png")
    return 0


def _train_cnn(args) -> int:
    from ..pipeline.cnn import evaluate_cnn, train_cnn

    cfg = _train_config(args)
    ensemble = args.ensemble or None
    extra = None
    if args.eval_splits:
        ev = evaluate_cnn(args.data, cfg, args.eval_splits, args.test_size, args.seed, None, args.classes,
                          Path(args.out) / "evaluation", progress=not args.quiet, ensemble=ensemble)
        extra = {k: ev[k] for k in ("accuracy_mean", "accuracy_std", "balanced_accuracy_mean", "per_class", "splits",
                                    "test_size", "majority_baseline", "train_seconds_mean")}
    b = train_cnn(args.data, args.out, cfg, args.classes, ensemble, progress=not args.quiet, extra_metrics=extra)
    report_skipped(b.training["skipped"])
    m = b.metrics
    acc = (f"; accuracy {m['accuracy_mean']:.4f} +- {m['accuracy_std']:.4f} over {m['splits']} splits"
           if "accuracy_mean" in m else "")
    oof = f"; out-of-fold accuracy {m['out_of_fold_accuracy']:.4f}" if "out_of_fold_accuracy" in m else ""
    secs = sum(t["train_seconds"] for t in b.training["runs"])
    n = len(b.config["members"])
    print(f"model -> {args.out} ({args.method}, {(b.backbone or {}).get('name', 'labnet')}, "
          f"{n} network{'s' if n > 1 else ''}, classes "
          f"{', '.join(b.classes)}, {b.training['n_images']} images, {secs:.0f} s training"
          f"{acc}{oof}); curves: {Path(args.out) / 'training_curves.png'}")
    return 0


def cmd_train(args) -> int:
    from ..pipeline import train

    need(args, "data", "out")
    if args.auto:
        return _train_auto(args)
    if args.method != "head":
        return _train_cnn(args)
    ex = extractor_from(args)
    b = train(args.data, args.out, ex, args.head, args.class_weight, args.classes, args.cache, not args.no_cache,
              5 if args.eval_splits is None else args.eval_splits, args.test_size, args.seed, progress=not args.quiet)
    report_skipped(b.training["skipped"])
    say_engine(args, ex)
    m = b.metrics
    acc = (f"; accuracy {m['accuracy_mean']:.4f} +- {m['accuracy_std']:.4f} over {m['splits']} splits"
           if "accuracy_mean" in m else "")
    print(f"model -> {args.out} ({b.backbone['name']}/{b.backbone['layer']} + {b.config['head']['name']}, classes "
          f"{', '.join(b.classes)}, {b.training['n_images']} images{acc})")
    return 0


def cmd_compare(args) -> int:
    from ..pipeline import compare, comparison_table

    need(args, "data")
    out = Path(args.out) if args.out else default_out("compare", args.data)
    backbones = [b.strip() for b in args.backbones.split(",") if b.strip()]
    if not backbones:
        raise BadInputError("--backbones: give at least one backbone")
    summary = compare(args.data, backbones, out, progress=not args.quiet, pool=args.pool, resize=args.resize,
                      batch_size=args.batch_size, engine=args.engine,
                      onnx_dir=Path(args.cache) / "onnx" if args.cache else None, head=args.head, class_weight=args.class_weight,
                      splits=args.splits, test_size=args.test_size, seed=args.seed, classes=args.classes,
                      cache_dir=args.cache, use_cache=not args.no_cache)
    print(comparison_table(summary["rows"]))
    print(f"\nresults: {out / 'comparison.txt'}  {out / 'comparison.json'}  {out / 'comparison.png'}")
    return 0
