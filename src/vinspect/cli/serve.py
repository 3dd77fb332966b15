"""``vinspect serve`` and ``vinspect inspections export``: argparse sub-commands for vinspect's CLI.

Wired in with ``add_parser(sub, parser_class)``; each sets ``func`` returning an exit code and raises
:class:`~vinspect.errors.BadInputError` for bad input (the CLI turns it into one line and exit 2).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys

from ..errors import BadInputError, VinspectError
from .common import command, group
from ..serving.limits import (DEFAULT_DB_FILE, DEFAULT_DECODE_MEMORY, DEFAULT_HEADER_TIMEOUT_S,
                              DEFAULT_LIMIT_CONCURRENCY, DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS,
                              DEFAULT_REQUEST_TIMEOUT_S)

EPILOG = ("Exit codes: 0 success (serve: stopped with Ctrl-C or SIGTERM), 2 bad input or usage (serve: also a "
          "model or database that cannot be used, a taken port), 1 internal error (serve: also a failure "
          "while starting).")
LOOPBACK = ("127.0.0.1", "::1", "localhost")
API_KEY_ENV = "VINSPECT_API_KEY"
DB_ENV = "VINSPECT_DB"


def add_parser(subparsers, parser_class=argparse.ArgumentParser) -> None:
    p = command(subparsers, "serve", "serve a model over HTTP: inspection API, operator page, inspection log",
                cmd_serve, epilog=EPILOG, quiet_help="log warnings only (no access log)",
                description="Serve a model bundle of any task (classify, anomaly, segment ...) over HTTP: POST "
                            "/v1/inspect, the inspection log (GET /v1/inspections), heatmaps, /metrics, /healthz, the "
                            "API docs at /docs and the operator page at /.")
    p.add_argument("model", nargs="?", metavar="MODEL_DIR", help="a model bundle folder (vinspect train --out, or any task's train)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: %(default)s, this machine only; 0.0.0.0 exposes the service "
                        "to the network: set --api-key then)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: %(default)s)")
    p.add_argument("--db", metavar="URL",
                   help=f"SQLAlchemy URL of the inspection log (default: ${DB_ENV} or "
                        f"sqlite:///{DEFAULT_DB_FILE} in the current folder; PostgreSQL: "
                        f"postgresql+psycopg://user:password@host:5432/dbname)")
    from ..features.extract import DEFAULT_ENGINE, ENGINES  # the engine choices are defined once, there

    p.add_argument("--engine", default=DEFAULT_ENGINE, choices=list(ENGINES),
                   help="feature extraction engine (default: %(default)s)")
    p.add_argument("--weights", metavar="PATH", help="backbone weights, if not where the model recorded them")
    p.add_argument("--api-key", metavar="KEY",
                   help=f"require this key (X-API-Key header or Authorization: Bearer) on every endpoint but "
                        f"/healthz and the page shell (default: ${API_KEY_ENV}; none: open; an empty key is "
                        f"refused)")
    p.add_argument("--metrics-public", action="store_true",
                   help="serve /metrics without the API key (for a Prometheus scraper without the key)")
    g = p.add_argument_group("limits and workers")
    g.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES,
                   help="largest image accepted, in bytes (default: %(default)s)")
    g.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="largest image accepted, width x height (default: %(default)s, an 8k line camera's "
                        "2048-line frame; at most 100000000)")
    g.add_argument("--decode-memory", type=int, default=DEFAULT_DECODE_MEMORY, metavar="BYTES",
                   help="memory all image decodes in flight may take together, each decode's cost computed "
                        "from width x height x bytes a pixel; one decode over it is refused with 413 "
                        "(default: %(default)s)")
    g.add_argument("--request-timeout", type=float, default=DEFAULT_REQUEST_TIMEOUT_S, metavar="S",
                   help="deadline of decode + model for one request; then 503 with Retry-After "
                        "(default: %(default)s)")
    g.add_argument("--header-timeout", type=float, default=DEFAULT_HEADER_TIMEOUT_S, metavar="S",
                   help="a connection that has not sent its request headers within this is closed "
                        "(default: %(default)s)")
    g.add_argument("--limit-concurrency", type=int, default=DEFAULT_LIMIT_CONCURRENCY, metavar="N",
                   help="open connections and requests in flight; beyond, 503 (default: %(default)s)")
    g.add_argument("--workers", type=int, default=1, help="model worker threads (default: %(default)s)")
    g.add_argument("--max-batch", type=int, default=8,
                   help="most queued images one model run takes together (default: %(default)s)")
    g.add_argument("--max-queue", type=int, default=64,
                   help="images that may wait for the model; beyond, requests get 503 (default: %(default)s)")
    g.add_argument("--decode-workers", type=int, default=2, help="image decoding threads (default: %(default)s)")
    g.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, the number of cores)")
    g.add_argument("--ok-class", action="append", metavar="CLASS",
                   help="a class that means 'not damaged', repeatable (default: classes named intact, ok, good, "
                        "normal, ...; a model with none counts every verdict as damaged)")

    sub = group(subparsers, "inspections", "the inspection log: export",
                description="Work with the inspection log of vinspect serve.", epilog=EPILOG)
    e = command(sub, "export", "write inspections as CSV for the quality records", cmd_export, config=False,
                full_name="inspections export", epilog=EPILOG, quiet_help="no summary line",
                description="Write the inspection log (oldest first) as CSV: one row per inspection with the "
                            "verdict, one p_<class> column per class, part, station, model and image identity.")
    e.add_argument("--db", metavar="URL", help=f"SQLAlchemy URL (default: ${DB_ENV} or sqlite:///{DEFAULT_DB_FILE})")
    e.add_argument("--since", help="from this time: ISO 8601 (UTC if no offset) or relative (30m, 12h, 7d)")
    e.add_argument("--until", help="up to this time (exclusive), same forms")
    e.add_argument("--status", default="ok", choices=["ok", "rejected", "all"],
                   help="accepted inspections, rejected requests, or both (default: %(default)s)")
    e.add_argument("--label", action="append", help="only this verdict, repeatable")
    e.add_argument("--station", help="only this station")
    e.add_argument("--csv", metavar="FILE", help="output file ('-': standard output) (required)")


def _db_url(args) -> str | None:
    return args.db or os.environ.get(DB_ENV) or None


def cmd_serve(args) -> int:
    import uvicorn

    from ..serving.app import Service, create_app
    from ..serving.server import uvicorn_config

    if not args.model:
        raise BadInputError("serve: missing MODEL_DIR")
    if not 0 <= args.port <= 65535:
        raise BadInputError(f"--port {args.port}: must be 0..65535")
    api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if api_key is not None and not api_key.strip():
        raise BadInputError("--api-key (or $VINSPECT_API_KEY) is empty: give a real key, or none for an open "
                            "service")
    for name, v in (("--header-timeout", args.header_timeout), ("--request-timeout", args.request_timeout)):
        if not v > 0:
            raise BadInputError(f"{name} {v}: must be positive")
    if args.limit_concurrency < 1:
        raise BadInputError(f"--limit-concurrency {args.limit_concurrency}: must be at least 1")
    if args.threads is not None:
        if args.threads < 1:
            raise BadInputError(f"--threads {args.threads}: must be at least 1")
        import torch

        torch.set_num_threads(args.threads)
    sock = _bind(args.host, args.port)  # before loading the model: a taken port fails at once
    try:
        service = Service(args.model, db=_db_url(args), engine=args.engine, weights=args.weights,
                          api_key=api_key, max_bytes=args.max_bytes,
                          max_pixels=args.max_pixels, workers=args.workers, max_batch=args.max_batch,
                          max_queue=args.max_queue, decode_workers=args.decode_workers, ok_classes=args.ok_class,
                          decode_memory=args.decode_memory, request_timeout_s=args.request_timeout,
                          metrics_public=args.metrics_public)
        try:
            service.start()  # warm-up and workers now: a failure is one line and a documented exit code
        except BaseException:
            service.stop()
            raise
    except BaseException:
        sock.close()
        raise
    app = create_app(service)
    inf = service.inference
    port = sock.getsockname()[1]
    url = f"http://{_host_for_url(args.host)}:{port}"
    if not args.quiet:
        print(f"vinspect serve: model {inf.name} ({inf.sha256[:12]}, {inf.bundle.task}/{inf.bundle.kind}, classes "
              f"{', '.join(inf.classes)}), engine {inf.engine_name}, log {service.db.describe()}"
              + (", API key required" if service.api_key else ""), file=sys.stderr)
        print(f"vinspect serve: operator page {url}/  API docs {url}/docs", file=sys.stderr)
    warning = exposure_warning(args.host, service.api_key)
    if warning:
        print(f"vinspect serve: warning: {warning}", file=sys.stderr)
    config = uvicorn_config(app, header_timeout_s=args.header_timeout, limit_concurrency=args.limit_concurrency,
                            log_level="warning" if args.quiet else "info", access_log=not args.quiet)
    server = uvicorn.Server(config)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn re-raises Ctrl-C after its graceful shutdown: a clean stop
        pass
    except SystemExit as e:  # uvicorn's own start-up failure (exit 3): mapped to the documented codes
        service.stop()
        raise VinspectError(f"the HTTP server failed to start (uvicorn exit {e.code}; see the log above)") \
            from None
    finally:
        sock.close()
    return 0


def exposure_warning(host: str, api_key: str | None) -> str | None:
    """The warning for a service bound beyond loopback without a key (None when there is nothing to say)."""
    import ipaddress

    if api_key is not None:
        return None
    try:
        if host in LOOPBACK or ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:  # a host name other than localhost
        pass
    return (f"bound to {host} (beyond this machine) without an API key: anyone who reaches it can inspect "
            f"images and read the inspection log and its images; set --api-key or ${API_KEY_ENV}")


def _bind(host: str, port: int):
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise BadInputError(f"--host {host}: not an address of this machine ({e.strerror})") from None
    family, kind, proto, _, addr = infos[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(addr)
    except OSError as e:
        sock.close()
        raise BadInputError(f"cannot serve on {host}:{port}: {e.strerror}") from None
    sock.set_inheritable(True)
    return sock


def _host_for_url(host: str) -> str:
    return "127.0.0.1" if host in ("0.0.0.0", "") else (f"[{host}]" if ":" in host else host)


FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(value):
    """A text cell that a spreadsheet would run as a formula (it starts with = + - @, a tab or a carriage
    return) gets a leading apostrophe (OWASP's CSV-injection advice); numbers stay numbers."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def cmd_export(args) -> int:
    from sqlalchemy.exc import SQLAlchemyError

    from ..serving.db import Database, iso, parse_time

    if not args.csv:
        raise BadInputError("inspections export: missing --csv FILE ('-' for standard output)")
    try:
        since, until = parse_time(args.since, "--since"), parse_time(args.until, "--until")
    except ValueError as e:
        raise BadInputError(str(e)) from None
    db = Database(_db_url(args))
    try:
        if db.dialect == "sqlite" and not os.path.exists(db.url.database):
            raise BadInputError(f"--db {db.describe()}: no such database file")
        try:
            version = db.schema_version()
        except SQLAlchemyError as e:
            raise BadInputError(f"--db {db.describe()}: not a vinspect inspection log or unreachable "
                                f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None
        if version < 1:
            raise BadInputError(f"--db {db.describe()}: not a vinspect inspection log (no schema)")
        filters = dict(status=args.status, labels=args.label, station=args.station, since=since, until=until)
        classes: list[str] = []
        for r in db.iter_all(**filters):  # first pass: the classes seen (models may differ over time)
            for c in (r["probabilities"] or {}):
                if c not in classes:
                    classes.append(c)
        cols = ["id", "created_at", "status", "http_status", "label", "score"] + [f"p_{c}" for c in classes] + \
               ["part_id", "station", "request_id", "model_name", "model_version", "model_sha256", "latency_ms",
                "image_sha256", "image_bytes", "image_format", "width", "height", "content_type", "filename",
                "client", "error_code", "error"]
        out = sys.stdout if args.csv == "-" else open(args.csv, "w", newline="", encoding="utf-8")
        n = 0
        try:
            w = csv.writer(out)
            w.writerow(cols)
            for r in db.iter_all(**filters):
                p = r["probabilities"] or {}
                row = {**r, "created_at": iso(r["created_at"]), **{f"p_{c}": p.get(c) for c in classes}}
                w.writerow(["" if row.get(c) is None else csv_safe(row.get(c)) for c in cols])
                n += 1
        finally:
            if out is not sys.stdout:
                out.close()
    finally:
        db.close()
    if not args.quiet and args.csv != "-":
        print(f"{n} inspections -> {args.csv}", file=sys.stderr)
    return 0
