"""Batch prediction on Ray against the local engine: 1 node x 2 cores and 2 nodes x 1 core (the same cores).

    python benchmarks/distributed.py [--images 1800] [--engine auto] [--image-size 224] [--out benchmarks/results]

1. Trains a small model (the default backbone at ``--image-size``, logistic regression on 10 real NEU images per
   class) unless ``--model`` is given.
2. Local: ``Predictor.predict`` over ``--images`` real NEU images (the engine on every core of this machine).
3. Ray: the same files with ``vinspect.distributed.run`` on a real cluster started here on loopback
   (:class:`vinspect.distributed.cluster.LocalCluster`): one node with 2 CPUs, then two nodes with 1 CPU each;
   one worker (one model) per CPU.  Each run writes Parquet to a temporary folder and is checked against the local
   predictions (labels, largest probability difference, every input exactly once).

Reported: end-to-end seconds (Ray: connecting, starting the workers, loading the model in each, the run, writing),
the steady rate (images/s between 10 % and 90 % of the rows, so start-up is left out) and images/s per core, and
the overhead against the local engine as ratios measured in the same run.  This machine has 2 cores shared with
other jobs: the point is correctness and overhead, not speed-up.  Writes ``<out>/distributed.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from vinspect.benchmark import cpu_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
NEU = SHARED / "neu-cls"


def pick_images(n: int) -> list[str]:
    classes = sorted(p for p in NEU.iterdir() if p.is_dir())
    per = -(-n // len(classes))
    files = [str(p) for c in classes for p in sorted(c.glob("*.jpg"))[:per]]
    return files[:n]


def train_model(out: Path, image_size: int, engine: str) -> Path:
    from vinspect.features.extract import Extractor
    from vinspect.pipeline import train

    data = out / "train"
    for c in sorted(p for p in NEU.iterdir() if p.is_dir()):
        (data / c.name).mkdir(parents=True)
        for p in sorted(c.glob("*.jpg"))[-10:]:  # the last 10 of each class: not among the measured images
            shutil.copy(p, data / c.name / p.name)
    train(data, out / "model", extractor=Extractor(image_size=image_size, engine=engine), head="logreg",
          eval_splits=0, progress=False)
    return out / "model"


class Timeline:
    """(rows done, seconds) after each batch: the steady rate between 10 % and 90 % of the rows."""

    def __init__(self, total: int):
        self.total, self.t0, self.points = total, time.perf_counter(), []

    def __call__(self, done, per_node=None):
        self.points.append((done, time.perf_counter() - self.t0))

    def steady(self) -> float | None:
        lo = [p for p in self.points if p[0] >= 0.1 * self.total]
        hi = [p for p in self.points if p[0] >= 0.9 * self.total]
        if not lo or not hi or hi[0][1] <= lo[0][1]:
            return None
        return (hi[0][0] - lo[0][0]) / (hi[0][1] - lo[0][1])

    def first(self) -> float | None:
        return self.points[0][1] if self.points else None


def local_run(model: Path, paths: list[str], engine: str, batch_size: int) -> dict:
    from vinspect.models.predictor import load_predictor

    t0 = time.perf_counter()
    pred = load_predictor(model, engine=engine, batch_size=batch_size)
    pred.warm_up()
    load_s = time.perf_counter() - t0
    tl = Timeline(len(paths))
    rows = []
    n = 0
    t1 = time.perf_counter()
    # the same streaming predict as `vinspect predict`, in chunks so that the steady rate can be read
    step = max(batch_size, len(paths) // 20)
    for i in range(0, len(paths), step):
        r, _ = pred.predict(paths[i:i + step], progress=False)
        rows += r
        n += len(r)
        tl(n)
    run_s = time.perf_counter() - t1
    return {"config": "local", "nodes": 1, "cpus_per_node": os.cpu_count(), "workers": 1,
            "end_to_end_s": load_s + run_s, "startup_s": load_s, "run_s": run_s,
            "steady_images_per_s": tl.steady(), "images": len(rows)}, {os.path.abspath(r["path"]): r for r in rows}


def ray_run(model: Path, paths: list[str], engine: str, batch_size: int, nodes: int, cpus: int, ref: dict,
            tmp: Path) -> dict:
    from vinspect.distributed import PredictJob, read_results, run
    from vinspect.distributed.cluster import LocalCluster

    env = {"VINSPECT_CACHE": os.environ["VINSPECT_CACHE"], "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
    t_start = time.perf_counter()
    with LocalCluster(nodes=nodes, cpus=cpus, object_store_bytes=200_000_000, env=env) as cluster:
        cluster_s = time.perf_counter() - t_start
        out = tmp / f"ray-{nodes}x{cpus}"
        tl = Timeline(len(paths))
        t0 = time.perf_counter()
        s = run(PredictJob.from_model(model, engine=engine, batch_size=batch_size), paths, out, cluster.address,
                batch_size=batch_size, progress=False, on_batch=tl)
        end_to_end = time.perf_counter() - t0
    table = read_results(out).to_pylist()
    cls = list(next(iter(ref.values()))["probabilities"])
    got = [r["path"] for r in table]
    diff = max(abs(p - ref[r["path"]]["probabilities"][c]) for r in table for c, p in zip(cls, r["probabilities"]))
    return {"config": f"ray {nodes} node{'s' if nodes > 1 else ''} x {cpus} CPU{'s' if cpus > 1 else ''}",
            "nodes": nodes, "cpus_per_node": cpus, "workers": s.workers, "cluster_start_s": cluster_s,
            "end_to_end_s": end_to_end, "startup_s": tl.first(), "run_s": s.seconds,
            "steady_images_per_s": tl.steady(), "images": len(table),
            "exactly_once": len(got) == len(set(got)) == len(paths) and set(got) == set(ref),
            "label_mismatches": sum(r["label"] != ref[r["path"]]["label"] for r in table),
            "max_probability_diff": diff, "duplicates_dropped": s.duplicates_dropped,
            "per_node": {v["address"]: v["images"] for v in s.per_node.values()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=1800)
    ap.add_argument("--engine", default="auto")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--model", help="a bundle to use instead of training one")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = ap.parse_args()
    if not NEU.is_dir():
        print(f"{NEU}: not found", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="vinspect-bench-ray-"))
    os.environ.setdefault("VINSPECT_CACHE", str(tmp / "cache"))
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        model = Path(args.model) if args.model else train_model(tmp, args.image_size, args.engine)
        paths = pick_images(args.images)
        load_before = os.getloadavg()[0]
        local, ref = local_run(model, paths, args.engine, args.batch_size)
        rows = [local]
        for nodes, cpus in ((1, 2), (2, 1)):
            rows.append(ray_run(model, paths, args.engine, args.batch_size, nodes, cpus, ref, tmp))
            print(json.dumps(rows[-1]), flush=True)
        load_after = os.getloadavg()[0]
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    base = local["steady_images_per_s"]
    for r in rows:
        r["steady_vs_local"] = (r["steady_images_per_s"] / base) if base and r["steady_images_per_s"] else None
        r["end_to_end_vs_local"] = r["end_to_end_s"] / local["end_to_end_s"]
        total_cpus = r["nodes"] * r["cpus_per_node"]
        r["steady_images_per_s_per_core"] = (r["steady_images_per_s"] / total_cpus) if r["steady_images_per_s"] else None
    import ray

    res = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
           "cores": os.cpu_count(), "load_average_before": load_before, "load_average_after": load_after,
           "ray": ray.__version__, "engine": args.engine, "image_size": args.image_size,
           "batch_size": args.batch_size, "images": len(paths), "rows": rows}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "distributed.json").write_text(json.dumps(res, indent=2) + "\n")
    (out / "distributed.md").write_text(markdown(res))
    print(markdown(res))
    return 0


def _f(v, fmt="{:.1f}"):
    return "n/a" if v is None else fmt.format(v)


def markdown(res: dict) -> str:
    lines = [f"# Batch prediction on Ray against the local engine ({res['date']})", "",
             f"Machine: {res['cpu']}, {res['cores']} cores shared with other jobs (load average before "
             f"{res['load_average_before']:.2f}, after {res['load_average_after']:.2f}: figures are noisy). "
             f"Ray {res['ray']}, engine `{res['engine']}`, default backbone + logreg at {res['image_size']} px, "
             f"batches of {res['batch_size']}, {res['images']} real NEU images. The Ray clusters are real (`ray "
             "start` per node) on loopback addresses of this machine, with the same 2 cores in all.", "",
             "| run | workers | end to end s | start-up s | steady images/s | per core | steady vs local | "
             "end to end vs local | exactly once | label mismatches | max prob. diff | images per node |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---|"]
    for r in res["rows"]:
        lines.append(
            f"| {r['config']} | {r['workers']} | {_f(r['end_to_end_s'])} | {_f(r['startup_s'])} | "
            f"{_f(r['steady_images_per_s'])} | {_f(r['steady_images_per_s_per_core'])} | "
            f"{_f(r['steady_vs_local'], '{:.2f}')} | {_f(r['end_to_end_vs_local'], '{:.2f}')} | "
            f"{r.get('exactly_once', '-')} | {r.get('label_mismatches', '-')} | "
            f"{_f(r.get('max_probability_diff'), '{:.1e}')} | "
            f"{', '.join(f'{k}: {v}' for k, v in r.get('per_node', {}).items()) or '-'} |")
    lines += ["", "Start-up: the local engine's model load and warm-up, in a process that has already imported "
              "torch and OpenVINO and built the model's engine files (training did); Ray: from the call to the first "
              "result (connecting, starting one fresh worker process per CPU, importing, loading the model in each).  Steady: images/s between 10 % "
              "and 90 % of the rows.  Ray's cluster start (`ray start`) is not in 'end to end'.", "",
              "Reproduce: `python benchmarks/distributed.py`", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
