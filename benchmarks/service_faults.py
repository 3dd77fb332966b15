"""Fault-and-load test of the inspection service on loopback (issue 18, acceptance 2).

    python benchmarks/service_faults.py [--model DIR] [--good 1000] [--hostile 200] [--clients 16]

Starts ``vinspect serve`` (``python -m vinspect serve``, SQLite log in a temporary folder; without ``--model``
it first trains a small model on real NEU images), then sends from ``--clients`` concurrent clients
``--good`` inspections of real NEU images, each with its own ``X-Request-Id``, shuffled with ``--hostile``
hostile requests: 16-bit PNG bombs (6300 x 6300, 90 KB), decompression-bomb headers, thumbnails of large
stored images, overflowing and malformed parameters, replays of known request ids with another image,
degenerate images, truncated JPEGs.  Half-way through it kills the service with SIGKILL and starts it
again on the same log; clients retry a good request (same request id) until it is acknowledged.

Checks: every acknowledged good request is in the log exactly once, no response is a 5xx, the service
answers every request within its deadline (``--request-timeout``), and the peak resident memory of the
server process stays under 2 GB (sampled every 50 ms with psutil).  Every loop is bounded (request count,
client timeouts, ``--deadline`` for the run).  Writes ``<out>/service_faults.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from datetime import datetime, timezone
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
NEU = SHARED / "neu-cls"
RSS_LIMIT_MB = 2048


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _chunk(t: bytes, d: bytes) -> bytes:
    return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))


def png16_bomb(w: int = 6300, h: int = 6300) -> bytes:
    z = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * w)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
            + _chunk(b"IDAT", idat) + _chunk(b"IEND", b""))


def png_header_bomb(w: int = 40000, h: int = 40000) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))


def big_png(side: int = 3000) -> bytes:
    """A large image within the limits (noise in 64-pixel blocks): its thumbnails cost a full decode."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    small = rng.integers(0, 255, (side // 64 + 1, side // 64 + 1), dtype=np.uint8)
    a = np.kron(small, np.ones((64, 64), np.uint8))[:side, :side]
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


class Server:
    """``vinspect serve`` as a child process; ``kill()`` is SIGKILL, ``start()`` again reuses the log."""

    def __init__(self, model: Path, db: Path, port: int, request_timeout_s: float, threads: int | None):
        self.cmd = [sys.executable, "-m", "vinspect", "serve", str(model), "--port", str(port), "--db",
                    f"sqlite:///{db}", "-q", "--request-timeout", str(request_timeout_s), "--max-batch", "8"]
        if threads:
            self.cmd += ["--threads", str(threads)]
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None
        self.peak_rss = 0
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        import psutil

        while not self._stop.is_set():
            p = self.proc
            if p is not None and p.poll() is None:
                try:
                    self.peak_rss = max(self.peak_rss, psutil.Process(p.pid).memory_info().rss)
                except psutil.Error:
                    pass
            time.sleep(0.05)

    def start(self, timeout: float = 300) -> float:
        import httpx

        t0 = time.monotonic()
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env={**os.environ, "HF_HUB_OFFLINE": "1"})
        while time.monotonic() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the service exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=2).status_code == 200:
                    return time.monotonic() - t0
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError("the service did not come up")

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self._stop.set()


def hostile_jobs(n: int, jpegs: list[bytes]) -> list[tuple]:
    """(kind, method, path, kwargs, expected statuses)"""
    bomb16, header_bomb = png16_bomb(), png_header_bomb()
    one = io.BytesIO()
    from PIL import Image

    Image.new("L", (1, 1), 7).save(one, "PNG")
    kinds = [
        ("png16 bomb", "POST", "/v1/inspect", {"content": bomb16, "headers": {"Content-Type": "image/png"}},
         {413}),
        ("header bomb", "POST", "/v1/inspect", {"content": header_bomb, "headers": {"Content-Type": "image/png"}},
         {413}),
        ("thumbnail of a large image", "GET", "THUMB", {}, {200, 404}),
        ("offset overflow", "GET", "/v1/inspections?offset=9223372036854775808", {}, {422}),
        ("id overflow", "GET", "/v1/inspections/9223372036854775808", {}, {422}),
        ("since overflow", "GET", "/v1/stats?since=999999999w", {}, {422}),
        ("since before year 1", "GET", "/v1/inspections?since=0001-01-01T00:00:00%2B01:00", {}, {422}),
        ("replay with another image", "POST", "/v1/inspect", {"content": jpegs[1], "headers": {
            "Content-Type": "image/jpeg", "X-Request-Id": "REPLAY"}}, {409}),
        ("1x1 image", "POST", "/v1/inspect", {"content": one.getvalue(), "headers": {"Content-Type": "image/png"}},
         {400}),
        ("truncated JPEG", "POST", "/v1/inspect", {"content": jpegs[0][:len(jpegs[0]) // 2],
                                                   "headers": {"Content-Type": "image/jpeg"}}, {400}),
    ]
    return [("hostile", *kinds[i % len(kinds)]) for i in range(n)]


def run(model: Path, work: Path, images: Path | None = None, n_good: int = 1000, n_hostile: int = 200,
        clients: int = 16, request_timeout_s: float = 30.0, threads: int | None = None,
        deadline_s: float = 1800) -> dict:
    import httpx

    images = Path(images or NEU)
    paths = sorted(images.rglob("*.jpg"))[:300]
    jpegs = [p.read_bytes() for p in paths]
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    db = work / "faults.sqlite3"
    srv = Server(Path(model), db, free_port(), request_timeout_s, threads)
    t_start = time.monotonic()
    startup_s = [srv.start()]
    url = srv.url
    c0 = httpx.Client(base_url=url, timeout=60)
    seed = c0.post("/v1/inspect", content=jpegs[0], headers={"Content-Type": "image/jpeg", "X-Request-Id": "REPLAY"})
    assert seed.status_code == 200, seed.text
    big = c0.post("/v1/inspect", content=big_png(), headers={"Content-Type": "image/png"})
    assert big.status_code == 200, big.text
    thumb_path = f"/v1/inspections/{big.json()['id']}/image?max_size=2048"
    c0.close()

    tag = f"faults-{time.time_ns()}"
    jobs = [("good", f"{tag}-{i}", jpegs[i % len(jpegs)]) for i in range(n_good)] + \
        hostile_jobs(n_hostile, jpegs)
    random.Random(0).shuffle(jobs)
    lock = threading.Lock()
    acked: dict[str, int] = {}
    statuses: list[tuple[str, int]] = []
    unexpected: list[str] = []
    slowest = [0.0]
    n_retries = [0]
    killed = threading.Event()
    half = n_good // 2
    end = time.monotonic() + deadline_s

    def answer(c, method, path, **kw):
        t0 = time.monotonic()
        r = c.request(method, path, **kw)
        dt = time.monotonic() - t0
        with lock:
            slowest[0] = max(slowest[0], dt)
            statuses.append((path, r.status_code))
        return r

    def client(chunk):
        with httpx.Client(base_url=url, timeout=request_timeout_s + 30) as c:
            for job in chunk:
                if job[0] == "good":
                    _, rid, data = job
                    while time.monotonic() < end:
                        try:
                            r = answer(c, "POST", "/v1/inspect", content=data, params={"station": tag},
                                       headers={"Content-Type": "image/jpeg", "X-Request-Id": rid})
                        except httpx.TransportError:  # the service is down (killed): retry the same id
                            with lock:
                                n_retries[0] += 1
                            time.sleep(0.3)
                            continue
                        if r.status_code == 200:
                            with lock:
                                acked[rid] = r.json()["id"]
                            break
                        if r.status_code == 503:  # busy or deadline: retry later, as told
                            time.sleep(float(r.headers.get("retry-after", "1")))
                            continue
                        with lock:
                            unexpected.append(f"good {rid}: {r.status_code} {r.text[:200]}")
                        break
                else:
                    _, kind, method, path, kw, want = job
                    path = thumb_path if path == "THUMB" else path
                    for _ in range(100):
                        try:
                            r = answer(c, method, path, **kw)
                            break
                        except httpx.TransportError:
                            time.sleep(0.3)
                    else:
                        continue
                    if r.status_code not in want:
                        with lock:
                            unexpected.append(f"{kind}: {r.status_code} {r.text[:200]}")

    def killer():
        while not killed.is_set() and time.monotonic() < end:
            if len(acked) >= half:
                srv.kill()
                killed.set()
                startup_s.append(srv.start())
                return
            time.sleep(0.05)

    k = threading.Thread(target=killer, daemon=True)
    k.start()
    t0 = time.monotonic()
    threads_ = [threading.Thread(target=client, args=(jobs[i::clients],)) for i in range(clients)]
    for t in threads_:
        t.start()
    for t in threads_:
        t.join(max(1.0, end - time.monotonic()))
    k.join(5)
    seconds = time.monotonic() - t0
    srv.stop()

    from vinspect.serving.db import open_database

    logdb = open_database(f"sqlite:///{db}")
    counts: dict[str, int] = {}
    ids: dict[str, int] = {}
    for r in logdb.iter_all(status="ok", station=tag):
        counts[r["request_id"]] = counts.get(r["request_id"], 0) + 1
        ids[r["request_id"]] = r["id"]
    logdb.close()
    once = all(counts.get(rid) == 1 and ids[rid] == i for rid, i in acked.items())
    n5 = sum(1 for _, s in statuses if s >= 500)  # 503 (busy, deadline) included
    return {
        "n_good": n_good, "n_hostile": n_hostile, "clients": clients, "kills": int(killed.is_set()),
        "acknowledged_good": len(acked), "logged_exactly_once": once,
        "logged_not_acknowledged": sorted(set(counts) - set(acked))[:10],
        "n_responses": len(statuses), "n_5xx": n5, "unexpected": unexpected[:20],
        "transport_retries": n_retries[0], "slowest_answer_s": round(slowest[0], 3),
        "request_timeout_s": request_timeout_s, "peak_rss_mb": round(srv.peak_rss / 2**20, 1),
        "startup_s": [round(s, 1) for s in startup_s], "seconds": round(seconds, 1),
        "total_seconds": round(time.monotonic() - t_start, 1),
    }


def markdown(r: dict) -> str:
    ok = (r["logged_exactly_once"] and r["n_5xx"] == 0 and r["peak_rss_mb"] < RSS_LIMIT_MB
          and r["slowest_answer_s"] < r["request_timeout_s"] and not r["unexpected"]
          and r["acknowledged_good"] == r["n_good"])
    rows = [("clients", r["clients"]), ("good / hostile requests", f"{r['n_good']} / {r['n_hostile']}"),
            ("kill -9 and restart", r["kills"]), ("acknowledged good requests", r["acknowledged_good"]),
            ("each logged exactly once", r["logged_exactly_once"]), ("5xx responses", r["n_5xx"]),
            ("unexpected answers", len(r["unexpected"])), ("retries while down", r["transport_retries"]),
            ("slowest answer (s)", r["slowest_answer_s"]), ("request deadline (s)", r["request_timeout_s"]),
            ("peak server RSS (MB)", r["peak_rss_mb"]), ("start-up (s)", r["startup_s"]),
            ("run (s)", r["seconds"])]
    return ("# Service fault-and-load run\n\n" + f"Run {r.get('date', '')} on {r.get('cpu', '')}: "
            + ("PASS" if ok else "FAIL") + "\n\n| | |\n|---|---|\n"
            + "".join(f"| {k} | {v} |\n" for k, v in rows))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a model bundle (default: train one on --data)")
    ap.add_argument("--data", default=str(NEU), help="NEU-CLS folder (default: %(default)s)")
    ap.add_argument("--train-per-class", type=int, default=20)
    ap.add_argument("--good", type=int, default=1000)
    ap.add_argument("--hostile", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--request-timeout", type=float, default=30.0)
    ap.add_argument("--threads", type=int, help="torch threads of the service (default: torch's)")
    ap.add_argument("--deadline", type=float, default=1800, help="seconds for the whole run")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results"))
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="vinspect-faults-") as tmp:
        model = a.model
        if not model:
            sys.path.insert(0, str(Path(__file__).parent))
            from service_load import train_model

            model = Path(tmp) / "model"
            train_model(Path(a.data), a.train_per_class, model)
        r = run(Path(model), Path(tmp) / "run", images=Path(a.data), n_good=a.good, n_hostile=a.hostile,
                clients=a.clients, request_timeout_s=a.request_timeout, threads=a.threads, deadline_s=a.deadline)
    from vinspect.benchmark import cpu_model

    r.update(date=datetime.now(timezone.utc).isoformat(timespec="seconds"), cpu=cpu_model(),
             cores=os.cpu_count())
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "service_faults.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "service_faults.md").write_text(markdown(r))
    print(markdown(r))
    return 0 if "PASS" in markdown(r) else 1


if __name__ == "__main__":
    sys.exit(main())
