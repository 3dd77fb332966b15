"""``--ray ADDRESS|auto|local`` on ``vinspect predict`` and ``vinspect classify extract``: the same work on a Ray
cluster, written as a Parquet dataset (:mod:`vinspect.distributed`).  Not a command group: the option and the
two runs that predict and extract branch to.  Ray is imported only when ``--ray`` is given."""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import BadInputError
from .common import need, quiet, report_skipped

RAY_HELP = ("run on a Ray cluster and write Parquet to --out (one row per input; a re-run skips what is written): "
            "ADDRESS joins a running cluster (head host:port), auto the one in $RAY_ADDRESS or started on this "
            "machine, local a throw-away instance on this machine; needs pip install 'vinspect[ray]'")


def add_ray(p, out: bool = False) -> None:
    g = p.add_argument_group("cluster (Ray)")
    g.add_argument("--ray", metavar="ADDRESS|auto|local", help=RAY_HELP)
    g.add_argument("--ray-cpus", type=int, default=1, metavar="N",
                   help="cores per worker (one model per worker; default: %(default)s)")
    if out:
        g.add_argument("--out", metavar="DIR", help="with --ray: the Parquet output folder (required)")


def _print_summary(s, what: str) -> None:
    rate = "n/a" if s.images_per_second is None else f"{s.images_per_second:.1f}"
    print(f"{s.n_written} {what} rows -> {s.out} (Parquet); {s.n_already} of {s.n_inputs} inputs already there; "
          f"{s.n_errors} unreadable or undecodable; {rate} images/s with {s.workers} workers on "
          f"{len(s.per_node)} node{'s' if len(s.per_node) != 1 else ''} ({s.seconds:.1f} s)")
    for node in s.per_node.values():
        print(f"  node {node['address']}: {node['images']} images")


def predict_on_ray(args) -> int:
    from ..data.dataset import collect_images
    from ..distributed.batch import PredictJob, run
    from .model import _runtime

    need(args, "model", "paths", "out")
    if args.json or args.csv or args.maps:
        raise BadInputError("--ray writes Parquet to --out; --json, --csv and --maps are for runs without --ray")
    paths, skipped = collect_images(args.paths)
    if not paths:
        raise BadInputError("no image files to predict (" + ", ".join(map(str, args.paths)) + ")")
    runtime = _runtime(args)
    if runtime.get("weights"):
        runtime["weights"] = os.path.abspath(runtime["weights"])
    job = PredictJob.from_model(args.model, **runtime)
    s = run(job, paths, args.out, args.ray, batch_size=args.batch_size, cpus_per_worker=args.ray_cpus,
            progress=not quiet(args))
    report_skipped(skipped)
    _print_summary(s, "prediction")
    return 0


def extract_on_ray(args) -> int:
    from ..data.dataset import scan_folder
    from ..distributed.batch import ExtractJob, run

    need(args, "data", "out")
    ds = scan_folder(args.data, args.classes, min_classes=1)
    kw = dict(backbone=args.backbone, layer=args.layer, pool=args.pool, image_size=args.image_size,
              resize=args.resize, weights=os.path.abspath(args.weights) if args.weights else None,
              random_init=args.random_init, batch_size=args.batch_size, engine=args.engine, quantize=args.quantize,
              precision=args.precision, onnx_dir=str(Path(args.cache).resolve() / "onnx") if args.cache else None)
    job = ExtractJob.from_options(ds.classes, **kw)
    inputs = [(p, ds.classes[y]) for p, y in zip(ds.paths, ds.labels)]
    s = run(job, inputs, args.out, args.ray, batch_size=args.batch_size, cpus_per_worker=args.ray_cpus,
            progress=not quiet(args))
    report_skipped(ds.skipped)
    _print_summary(s, "feature")
    return 0
