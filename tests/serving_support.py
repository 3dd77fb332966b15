"""Shared pieces of the serving tests (imported by tests/test_serving*.py): a small real model, one warmed-up
model pool for the whole session, the real service on a loopback port, and a throwaway PostgreSQL server."""

from __future__ import annotations

import atexit
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

_MEMO: dict = {}

# limits small enough to test with small files; NEU images are 200x200 JPEGs of 7-20 kB
MAX_BYTES = 300_000
MAX_PIXELS = 1_000_000


def small_model(neu_small: Path, head: str = "logreg") -> Path:
    """A model trained in the test session on 30 real NEU images at 64 pixels (features cached)."""
    key = ("model", str(neu_small), head)
    if key not in _MEMO:
        from vinspect.features.extract import Extractor
        from vinspect.pipeline import train

        out = Path(tempfile.mkdtemp(prefix=f"vinspect-model-{head}-"))
        atexit.register(shutil.rmtree, out, True)
        train(neu_small, out, extractor=Extractor(image_size=64), head=head, eval_splits=2, progress=False)
        _MEMO[key] = out
    return _MEMO[key]


def shared_inference(model_dir: Path):
    """One started, warmed-up model pool per model for the whole session (services borrow it)."""
    key = ("inference", str(model_dir))
    if key not in _MEMO:
        from vinspect.serving.inference import InferenceService

        inf = InferenceService(model_dir, max_bytes=MAX_BYTES, max_pixels=MAX_PIXELS, max_batch=8)
        inf.warm_up(rounds=1)
        inf.start()
        atexit.register(inf.stop)
        _MEMO[key] = inf
    return _MEMO[key]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LiveServer:
    """The real service under uvicorn in a thread, on a socket bound to 127.0.0.1 before it starts."""

    def __init__(self, app, timeout: float = 60.0):
        import uvicorn

        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False,
                                                   timeout_graceful_shutdown=10))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.timeout = timeout

    def __enter__(self) -> "LiveServer":
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(30)
        self.sock.close()


class PostgresUnavailable(Exception):
    pass


def _pg_bindir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: [int(x) for x in Path(p).parts[-3].split(".") if x.isdigit()])
    if found:
        return Path(found[-1]).parent
    w = shutil.which("initdb")
    return Path(w).parent if w else None


@contextmanager
def postgres_cluster():
    """A throwaway PostgreSQL server on a free loopback port; yields ``postgresql+psycopg://`` URL of its
    ``postgres`` database.  Raises :class:`PostgresUnavailable` with the reason when it cannot run."""
    bindir = _pg_bindir()
    if bindir is None:
        raise PostgresUnavailable("PostgreSQL is not installed (no initdb under /usr/lib/postgresql/*/bin); "
                                  "install it with scripts/ci-system-deps.sh")
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise PostgresUnavailable("the psycopg package is not installed") from None
    prefix: list[str] = []
    owner = None
    if os.geteuid() == 0:  # postgres refuses to run as root: run it as the postgres user
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable("running as root and there is no 'postgres' user to run the server as") \
                from None
        if shutil.which("runuser"):
            prefix = ["runuser", "-u", "postgres", "--"]
        else:
            raise PostgresUnavailable("running as root and runuser is missing")
    base = Path(tempfile.mkdtemp(prefix="vinspect-pg-"))
    os.chmod(base, 0o755)
    data, sock, logf = base / "data", base / "sock", base / "server.log"
    data.mkdir()
    sock.mkdir()
    logf.touch()
    if owner is not None:
        for p in (data, sock, logf):
            os.chown(p, owner.pw_uid, owner.pw_gid)
    port = free_port()

    def run(*cmd, timeout=60):
        r = subprocess.run(prefix + [str(c) for c in cmd], capture_output=True, text=True, timeout=timeout,
                           cwd=base)
        if r.returncode != 0:
            raise PostgresUnavailable(f"{Path(str(cmd[0])).name} failed: {(r.stderr or r.stdout).strip()[-400:]}")

    started = False
    try:
        run(bindir / "initdb", "-D", data, "-U", "postgres", "-A", "trust", "--no-sync", "-E", "UTF8",
            "--locale=C")
        run(bindir / "pg_ctl", "-D", data, "-l", logf, "-w", "-t", "60", "-o",
            f"-p {port} -k {sock} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off "
            f"-c full_page_writes=off -c max_connections=60", "start", timeout=90)
        started = True
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        if started:
            try:
                run(bindir / "pg_ctl", "-D", data, "-m", "fast", "-w", "-t", "30", "stop")
            except (PostgresUnavailable, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(base, ignore_errors=True)


def create_pg_database(url: str, name: str) -> str:
    """A fresh database on the cluster of ``url``; returns its URL."""
    import psycopg

    plain = url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(plain, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.rsplit("/", 1)[0] + "/" + name


def start_serve_command(model_dir, port: int, db_file, *extra, timeout: float = 180.0):
    """``python -m vinspect serve MODEL`` on 127.0.0.1:``port`` in a subprocess, returned once /healthz says ok
    (generous ``timeout``: a loaded CI machine starts python slowly).  Stop it with SIGINT."""
    import subprocess
    import sys

    import httpx

    proc = subprocess.Popen([sys.executable, "-m", "vinspect", "serve", str(model_dir), "--port", str(port),
                             "--db", f"sqlite:///{db_file}", "-q", *map(str, extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"})
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise AssertionError(proc.communicate()[1])
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("the service did not come up")
        time.sleep(0.3)
