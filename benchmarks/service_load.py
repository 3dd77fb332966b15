"""Load test of the inspection service on loopback: correctness under concurrency, throughput and latency.

    python benchmarks/service_load.py [--engine auto|torch|onnx|openvino] [--model DIR] [--out benchmarks/results]

1. Starts ``vinspect serve`` (``python -m vinspect serve``) on 127.0.0.1 with an SQLite log in a
   temporary folder.  Without ``--model`` it first trains a model (default backbone at its full input size,
   logistic regression) on ``--train-per-class`` real NEU images per class.
2. Acceptance run: ``--requests`` (1000) inspections of real NEU images from ``--clients`` (16) concurrent
   clients, shuffled with ``--bad`` (100) bad requests of ten kinds (empty, truncated JPEG, text, wrong
   content types, over the byte and pixel limits, a decompression-bomb header, broken multipart).  Checks:
   every good one answered 200 and in the log exactly once (by its part id), every bad one 4xx and logged
   as rejected, zero 5xx.
3. Latency runs: ``--latency-requests`` inspections from 1 and from ``--latency-clients`` (4) concurrent
   clients; client-side p50/p90/p99 and throughput.

Every loop is bounded (request count, per-request timeout, ``--deadline`` for the whole run); traffic goes
to 127.0.0.1 only.  The clients run on the same machine as the service and share its cores.  Writes
``<out>/<stem>.json`` and ``<out>/<stem>.md`` (stem: ``service_load``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

from vinspect.benchmark import cpu_model

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
NEU = SHARED / "neu-cls"
MAX_BYTES = 2_000_000
MAX_PIXELS = 4_000_000
TARGET = {"clients": 4, "p50_ms": 30.0, "p99_ms": 100.0}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pct(values, q):
    if not values:
        return None
    v = sorted(values)
    k = (len(v) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)


def _png(w, h) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (w, h), 100).save(buf, "PNG")
    return buf.getvalue()


def _png_header(w, h) -> bytes:
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)) + \
        chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def bad_kinds(jpeg: bytes) -> list[tuple[str, dict]]:
    """Ten kinds of bad request (httpx keyword arguments)."""
    return [
        ("empty", {"content": b"", "headers": {"Content-Type": "image/jpeg"}}),
        ("truncated_jpeg", {"content": jpeg[: len(jpeg) // 2], "headers": {"Content-Type": "image/jpeg"}}),
        ("text_as_jpeg", {"content": b"not an image at all", "headers": {"Content-Type": "image/jpeg"}}),
        ("text_plain", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}),
        ("json", {"content": b'{"image": null}', "headers": {"Content-Type": "application/json"}}),
        ("over_bytes", {"content": b"\xff\xd8\xff" + b"\0" * MAX_BYTES, "headers": {"Content-Type": "image/jpeg"}}),
        ("over_pixels", {"content": _png(2500, 2000), "headers": {"Content-Type": "image/png"}}),
        ("bomb_header", {"content": _png_header(50000, 50000), "headers": {"Content-Type": "image/png"}}),
        ("multipart_no_file", {"data": {"part_id": "no-file"}, "files": {"other": ("", b"", "")}}),
        ("multipart_text", {"files": {"file": ("notes.txt", b"operator notes", "text/plain")}}),
    ]


def train_model(data: Path, per_class: int, out: Path) -> dict:
    from vinspect.pipeline import train

    sub = out.parent / "train-data"
    for cls in sorted(p for p in data.iterdir() if p.is_dir()):
        (sub / cls.name).mkdir(parents=True, exist_ok=True)
        for p in sorted(cls.glob("*.jpg"))[:per_class]:
            shutil.copy(p, sub / cls.name / p.name)
    t0 = time.perf_counter()
    bundle = train(sub, out, eval_splits=3, progress=False, cache_dir=out.parent / "cache")
    return {"seconds": time.perf_counter() - t0, "n_images": bundle.training["n_images"],
            "accuracy_mean": bundle.metrics.get("accuracy_mean")}


def run_jobs(url: str, jobs: list, clients: int, deadline: float) -> tuple[list, float]:
    """Run ``jobs`` ((kind, key, kwargs)) from ``clients`` threads; ``[(kind, key, status, seconds, body)]``."""
    import httpx

    lock = threading.Lock()
    it = iter(jobs)
    results = []

    def client():
        with httpx.Client(base_url=url, timeout=60) as c:
            while time.monotonic() < deadline:
                with lock:
                    job = next(it, None)
                if job is None:
                    return
                kind, key, kw = job
                t0 = time.perf_counter()
                try:
                    r = c.post("/v1/inspect", **kw)
                    status, body = r.status_code, (r.json() if r.headers.get("content-type", "").startswith(
                        "application/json") else None)
                except httpx.HTTPError as e:
                    status, body = 0, {"transport_error": type(e).__name__}
                dt = time.perf_counter() - t0
                with lock:
                    results.append((kind, key, status, dt, body))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(1.0, deadline - time.monotonic() + 70))
    return results, time.perf_counter() - t0


def summarise(results, seconds) -> dict:
    lat = [dt * 1000 for kind, _, s, dt, _ in results if kind == "good" and s == 200]
    server = [b["latency_ms"] for kind, _, s, _, b in results if kind == "good" and s == 200 and b]
    codes: dict[str, int] = {}
    for _, _, s, _, _ in results:
        codes[str(s)] = codes.get(str(s), 0) + 1
    return {"n": len(results), "seconds": seconds, "throughput_rps": len(results) / seconds if seconds else None,
            "status_counts": codes,
            "latency_ms": {"p50": pct(lat, 50), "p90": pct(lat, 90), "p99": pct(lat, 99),
                           "max": max(lat) if lat else None, "mean": statistics.fmean(lat) if lat else None},
            "server_latency_ms": {"p50": pct(server, 50), "p99": pct(server, 99)}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    from vinspect.features.extract import DEFAULT_ENGINE, ENGINES

    ap.add_argument("--engine", default=DEFAULT_ENGINE, choices=list(ENGINES))
    ap.add_argument("--model", help="a model bundle (default: train one on --data)")
    ap.add_argument("--data", default=str(NEU), help="NEU-CLS folder (default: %(default)s)")
    ap.add_argument("--train-per-class", type=int, default=20)
    ap.add_argument("--requests", type=int, default=1000)
    ap.add_argument("--bad", type=int, default=100)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--latency-clients", type=int, default=4)
    ap.add_argument("--latency-requests", type=int, default=400)
    ap.add_argument("--threads", type=int, help="torch threads of the service (default: torch's)")
    ap.add_argument("--workers", type=int, default=1, help="model worker threads of the service (default: 1)")
    ap.add_argument("--max-batch", type=int, default=8, help="the service's --max-batch (default: 8)")
    ap.add_argument("--deadline", type=float, default=1500, help="seconds for the whole run (default: %(default)s)")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--stem", default="service_load")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import httpx

    from vinspect.serving.db import Database

    data = Path(args.data)
    if not data.is_dir():
        print(f"service_load: {data} not found (the NEU images are needed)", file=sys.stderr)
        return 2
    t_start = time.monotonic()
    deadline = t_start + args.deadline
    tmp = Path(tempfile.mkdtemp(prefix="vinspect-load-"))
    report: dict = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
                    "cores": os.cpu_count(), "load_average_before": os.getloadavg(), "engine": args.engine,
                    "python": platform.python_version(), "target": TARGET}
    proc = None
    try:
        model = Path(args.model) if args.model else tmp / "model"
        if not args.model:
            print(f"training a model on {args.train_per_class} NEU images per class ...", file=sys.stderr)
            report["training"] = train_model(data, args.train_per_class, model)
        meta = json.loads((model / "model.json").read_text())
        b = meta["backbone"] if isinstance(meta.get("backbone"), dict) else {"name": meta["backbone"],
                                                                             "layer": meta["layer"]}
        head = meta.get("config", {}).get("head") or meta.get("head") or {}
        pre = meta["preprocessing"]
        report["model"] = {"backbone": b["name"], "layer": b["layer"], "head": head.get("name"),
                           "input_size": pre.get("width") or pre.get("input_size"), "classes": meta["classes"]}
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "vinspect", "serve", str(model), "--host", "127.0.0.1", "--port",
               str(port), "--db", f"sqlite:///{tmp / 'log.sqlite3'}", "--engine", args.engine, "-q",
               "--max-bytes", str(MAX_BYTES), "--max-pixels", str(MAX_PIXELS)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        cmd += ["--workers", str(args.workers), "--max-batch", str(args.max_batch)]
        report["command"] = " ".join(cmd[1:]).replace(str(tmp), "$TMP")
        proc = subprocess.Popen(cmd, stderr=open(tmp / "serve.log", "w"))
        t0 = time.monotonic()
        while True:
            if proc.poll() is not None:
                print((tmp / "serve.log").read_text()[-2000:], file=sys.stderr)
                return 1
            try:
                if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > t0 + 300:
                print("service_load: the service did not come up in 300 s", file=sys.stderr)
                return 1
            time.sleep(0.25)
        report["startup_seconds"] = time.monotonic() - t0

        files = sorted(p for p in data.rglob("*.jpg"))
        random.Random(0).shuffle(files)
        files = files[:300]
        payload = [(p.name, p.read_bytes()) for p in files]
        jpeg = payload[0][1]
        kinds = bad_kinds(jpeg)

        def good(i, tag, clients_note=""):
            name, b = payload[i % len(payload)]
            return ("good", f"{tag}-{i}", {"content": b, "headers": {"Content-Type": "image/jpeg"},
                                           "params": {"part_id": f"{tag}-{i}", "station": tag}})

        # warm-up (not measured): the first runs of each batch shape are slow
        run_jobs(url, [good(i, "warm") for i in range(32)], 8, deadline)

        # 1. acceptance: 1000 good + 100 bad from 16 clients
        jobs = [good(i, "load") for i in range(args.requests)]
        jobs += [("bad", f"bad-{k}-{i}", {**kinds[i % len(kinds)][1], "params": {"station": "load-bad"}})
                 for k, i in enumerate(range(args.bad))]
        random.Random(1).shuffle(jobs)
        print(f"acceptance: {args.requests} good + {args.bad} bad requests from {args.clients} clients ...",
              file=sys.stderr)
        results, secs = run_jobs(url, jobs, args.clients, deadline)
        acc = summarise(results, secs)
        good_ok = sum(1 for k, _, s, _, _ in results if k == "good" and s == 200)
        bad_4xx = sum(1 for k, _, s, _, _ in results if k == "bad" and 400 <= s < 500)
        n5xx = sum(1 for _, _, s, _, _ in results if s >= 500)
        transport = sum(1 for _, _, s, _, _ in results if s == 0)
        db = Database(f"sqlite:///{tmp / 'log.sqlite3'}")
        counts = db.count_by("part_id", status="ok", station="load")
        rejected = db.count_by("status", status="rejected", station="load-bad").get("rejected", 0)
        with db.engine.connect() as conn:
            integrity = conn.exec_driver_sql("PRAGMA integrity_check").scalar()
        db.close()
        want = {f"load-{i}" for i in range(args.requests)}
        exactly_once = set(counts) == want and all(v == 1 for v in counts.values())
        acc.update(requests_good=args.requests, requests_bad=args.bad, clients=args.clients, good_200=good_ok,
                   bad_4xx=bad_4xx, responses_5xx=n5xx, transport_errors=transport,
                   logged_good=sum(counts.values()), logged_distinct=len(counts), logged_rejected=rejected,
                   every_good_logged_exactly_once=exactly_once, sqlite_integrity=integrity,
                   bad_kinds=[k for k, _ in kinds],
                   passed=bool(good_ok == args.requests and bad_4xx == args.bad and n5xx == 0 and exactly_once
                               and rejected == args.bad and integrity == "ok"))
        report["acceptance"] = acc

        # 2. latency at 1 and at N concurrent clients
        report["latency"] = {}
        for clients in sorted({1, args.latency_clients}):
            n = args.latency_requests if clients > 1 else max(50, args.latency_requests // 4)
            print(f"latency: {n} requests from {clients} client(s) ...", file=sys.stderr)
            res, secs = run_jobs(url, [good(i, f"lat{clients}") for i in range(n)], clients, deadline)
            report["latency"][str(clients)] = {"clients": clients, **summarise(res, secs)}
        lat = report["latency"][str(args.latency_clients)]["latency_ms"]
        report["target_met"] = bool(lat["p50"] is not None and lat["p50"] <= TARGET["p50_ms"]
                                    and lat["p99"] <= TARGET["p99_ms"])
        report["metrics_sample"] = [line for line in httpx.get(url + "/metrics").text.splitlines()
                                    if line.startswith(("vinspect_inspect_latency_seconds_count",
                                                        "vinspect_model_batch_seconds_sum",
                                                        "vinspect_model_batch_seconds_count"))]
    finally:
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
        report["load_average_after"] = os.getloadavg()
        report["total_seconds"] = time.monotonic() - t_start
        shutil.rmtree(tmp, ignore_errors=True)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{args.stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (out / f"{args.stem}.md").write_text(markdown(report) + "\n")
    print(markdown(report))
    return 0 if report["acceptance"]["passed"] else 1


def markdown(r: dict) -> str:
    a = r["acceptance"]
    m = r["model"]
    f = lambda v: "n/a" if v is None else f"{v:.1f}"  # noqa: E731
    lines = [
        f"# Inspection service under load ({r['date']})",
        "",
        f"Machine: {r['cpu']}, {r['cores']} cores (load average before {r['load_average_before'][0]:.2f}, "
        f"after {r['load_average_after'][0]:.2f}; the clients share the cores with the service).  "
        f"Engine `{r['engine']}`, model `{m['backbone']}/{m['layer']}` + {m['head']} at {m['input_size']} px, "
        f"SQLite log; service started in {r['startup_seconds']:.1f} s.",
        "",
        f"## Acceptance: {a['requests_good']} inspections + {a['requests_bad']} bad requests, {a['clients']} clients",
        "",
        f"- good answered 200: **{a['good_200']} / {a['requests_good']}**; bad answered 4xx: "
        f"**{a['bad_4xx']} / {a['requests_bad']}**; 5xx: **{a['responses_5xx']}**; transport errors: "
        f"{a['transport_errors']}",
        f"- in the log exactly once: **{a['every_good_logged_exactly_once']}** ({a['logged_good']} rows, "
        f"{a['logged_distinct']} distinct part ids); rejected rows: {a['logged_rejected']}; SQLite integrity: "
        f"{a['sqlite_integrity']}",
        f"- throughput {a['throughput_rps']:.1f} requests/s; good-request latency p50 {f(a['latency_ms']['p50'])} ms, "
        f"p99 {f(a['latency_ms']['p99'])} ms",
        f"- bad kinds: {', '.join(a['bad_kinds'])}",
        f"- **{'PASSED' if a['passed'] else 'FAILED'}**",
        "",
        "## Latency (client side, HTTP included)",
        "",
        "| clients | requests | throughput (req/s) | p50 ms | p90 ms | p99 ms | max ms | server p50 ms |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k, v in r["latency"].items():
        lm = v["latency_ms"]
        lines.append(f"| {k} | {v['n']} | {v['throughput_rps']:.1f} | {f(lm['p50'])} | {f(lm['p90'])} | "
                     f"{f(lm['p99'])} | {f(lm['max'])} | {f(v['server_latency_ms']['p50'])} |")
    t = r["target"]
    lines += ["", f"Target at {t['clients']} clients (2 cores, default backbone, onnx engine): p50 <= {t['p50_ms']:g} "
                  f"ms, p99 <= {t['p99_ms']:g} ms: **{'met' if r['target_met'] else 'not met'}** with engine "
                  f"`{r['engine']}`.",
              "", f"Reproduce: `python benchmarks/service_load.py --engine {r['engine']}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
