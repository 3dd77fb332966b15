"""The inspection service: a FastAPI application around a vinspect model and the inspection log.

``Service`` holds the state (model and worker pools, database, heatmaps, metrics); :func:`create_app`
wraps it in the HTTP API and the operator page.  Every accepted request is in the log before its response
is sent; every refused one is logged as rejected (with the reason) and answered with a 4xx JSON error
``{"error": code, "detail": sentence, "id": log id}``.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Header, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from sqlalchemy.exc import SQLAlchemyError
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from .. import __version__
from ..errors import BadInputError
from .db import STATUS_OK, STATUS_REJECTED, Database, DuplicateRequest, iso, open_database, parse_time, utcnow
from .heatmap import HeatmapMaker, HeatmapUnavailable
from .inference import DEFAULT_MAX_BYTES, DEFAULT_MAX_PIXELS, Busy, InferenceService, Rejection, run_safely
from .limits import DEFAULT_DECODE_MEMORY, DEFAULT_REQUEST_TIMEOUT_S

log = logging.getLogger("vinspect.serving")

STATIC = Path(__file__).resolve().parent / "static"
MULTIPART_OVERHEAD = 64 * 1024
RAW_TYPES = ("image/", "application/octet-stream")
FIELD_MAX = 200
ID_MAX = 2**63 - 1  # the largest id the log's 64-bit integer column holds
OFFSET_MAX = 1_000_000_000
# since/until: ISO 8601 date or time (UTC if no offset) or a relative time before now
TIME_PATTERN = (r"^(\d{1,9}\s*[smhdw]|\d{4}-\d{2}-\d{2}([T ]\d{2}(:\d{2}(:\d{2}(\.\d{1,6})?)?)?"
                r"([Zz]|[+-]\d{2}:?\d{2})?)?)$")
TIME_DOC = ("ISO 8601 date or time (UTC if no offset: 2025-03-01, 2025-03-01T08:00:00Z, ...+02:00) or a time "
            "before now (30m, 12h, 7d, 2w)")
# paths that need no API key: the liveness probe, and the operator page's shell (HTML/JS/CSS, no data)
OPEN_PATHS = ("/healthz", "/", "/favicon.ico")
OPEN_PREFIXES = ("/static/",)


# -- response models (the OpenAPI page documents them) --------------------------------------------------

class ModelRef(BaseModel):
    name: str
    version: str
    sha256: str


class ImageInfo(BaseModel):
    sha256: str | None = None
    bytes: int | None = None
    format: str | None = None
    content_type: str | None = None
    width: int | None = None
    height: int | None = None
    filename: str | None = None


class ErrorInfo(BaseModel):
    code: str | None = None
    detail: str | None = None


class Inspection(BaseModel):
    id: int
    created_at: str = Field(description="UTC, ISO 8601")
    status: Literal["ok", "rejected"]
    http_status: int
    label: str | None = Field(None, description="the verdict: the most probable class")
    score: float | None = Field(None, description="probability of the label (classification), or the anomaly "
                                                  "score (anomaly models)")
    probabilities: dict[str, float] | None = None
    damaged: bool | None = Field(None, description="label is not one of the model's ok classes")
    part_id: str | None = None
    station: str | None = None
    request_id: str | None = None
    model: ModelRef | None = None
    latency_ms: float | None = Field(None, description="image received -> verdict (decode, queue, model)")
    image: ImageInfo | None = None
    error: ErrorInfo | None = None
    image_url: str | None = None
    thumbnail_url: str | None = None
    heatmap_url: str | None = None
    details: dict[str, Any] | None = Field(None, description="what the kind of model adds to its verdict, in the "
                                                             "answer to POST /v1/inspect only (not logged): the "
                                                             "boxes of a detection model (class, score, box on the "
                                                             "input grid, box_relative: fractions of the image's "
                                                             "width and height), a segmenter's regions, an anomaly "
                                                             "threshold")


class InspectionList(BaseModel):
    items: list[Inspection]
    total: int
    limit: int
    offset: int


class ErrorOut(BaseModel):
    error: str = Field(description="a short code, e.g. not_an_image, too_large, unsupported_media_type")
    detail: str = Field(description="a sentence naming the problem")
    id: int | None = Field(None, description="the log id of the rejected request, when it was logged")


class Stats(BaseModel):
    since: str | None
    until: str | None
    total: int
    ok: int
    rejected: int
    damaged: int
    by_label: dict[str, int]


ERR401 = {401: {"model": ErrorOut, "description": "missing or wrong API key (when the service has one)"}}
ERR422 = {422: {"model": ErrorOut, "description": "a parameter out of its range or not of its form"}}
ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorOut, "description": "empty, undecodable, truncated or degenerate image; bad multipart "
                                            "body or field"},
    **ERR401,
    408: {"model": ErrorOut, "description": "the body did not arrive within the body timeout"},
    409: {"model": ErrorOut, "description": "the X-Request-Id is logged with another image"},
    413: {"model": ErrorOut, "description": "image over the byte, pixel or decode-memory limit"},
    415: {"model": ErrorOut, "description": "content type other than an image or multipart/form-data"},
    **ERR422,
    500: {"model": ErrorOut, "description": "the model failed on this image (logged as rejected)"},
    503: {"model": ErrorOut, "description": "the model queue is full, the request passed its deadline, or the "
                                            "log cannot be written; retry after Retry-After seconds"},
}


# -- metrics --------------------------------------------------------------------------------------------

class Metrics:
    """Prometheus metrics in a registry of their own (one per service)."""

    def __init__(self, service: "Service"):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

        self.registry = r = CollectorRegistry()
        self.inspections = Counter("vinspect_inspections", "Inspection requests by verdict label and HTTP status "
                                   "(label empty for refused requests)", ["label", "status"], registry=r)
        self.rejections = Counter("vinspect_rejections", "Refused inspection requests by reason", ["reason"],
                                  registry=r)
        buckets = (.005, .01, .015, .02, .03, .05, .075, .1, .15, .25, .5, 1, 2.5, 5, 10)
        self.latency = Histogram("vinspect_inspect_latency_seconds", "Image received -> verdict (decode, queue, "
                                 "model) of accepted inspections", buckets=buckets, registry=r)
        self.model_time = Histogram("vinspect_model_batch_seconds", "Model time of the batch each accepted "
                                    "inspection ran in", buckets=buckets, registry=r)
        self.http = Counter("vinspect_http_requests", "HTTP requests by method, route and status code",
                            ["method", "route", "code"], registry=r)
        self.http_time = Histogram("vinspect_http_request_duration_seconds", "HTTP request duration by route",
                                   ["route"], buckets=buckets, registry=r)
        q = Gauge("vinspect_model_queue_depth", "Images waiting for the model", registry=r)
        q.set_function(lambda: service.inference.queue_depth)
        info = Info("vinspect_model", "The model being served", registry=r)
        inf = service.inference
        info.info({"name": inf.name, "version": inf.version, "sha256": inf.sha256, "engine": inf.engine_name,
                   "backbone": str((inf.bundle.backbone or {}).get("name", "")), "task": inf.bundle.task,
                   "kind": inf.bundle.kind, "vinspect": __version__})

    def text(self) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(self.registry)


class _MetricsMiddleware:
    """Pure ASGI (streams untouched): counts every HTTP request by route template and adds nosniff."""

    def __init__(self, app, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        code = {"v": 500}

        async def _send(message):
            if message["type"] == "http.response.start":
                code["v"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = list(message["headers"]) + [(b"x-content-type-options", b"nosniff")]
            await send(message)

        try:
            await self.app(scope, receive, _send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.http.labels(scope.get("method", ""), route, str(code["v"])).inc()
            self.metrics.http_time.labels(route).observe(time.perf_counter() - t0)


# -- the service ----------------------------------------------------------------------------------------

class Service:
    """Everything one running service holds.  ``start``/``stop`` are called by the app's lifespan."""

    def __init__(self, model_dir, db: str | Database | None = None, engine: str | None = None, weights=None,
                 api_key: str | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS, workers: int = 1, max_batch: int = 8, max_queue: int = 64,
                 decode_workers: int = 2, ok_classes: list[str] | None = None, body_timeout_s: float = 30.0,
                 heatmap_queue: int = 4, inference: InferenceService | None = None,
                 decode_memory: int = DEFAULT_DECODE_MEMORY, request_timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                 metrics_public: bool = False):
        if api_key is not None and not str(api_key).strip():
            raise BadInputError("--api-key: the key is empty; give a real key (or none for an open service)")
        if not request_timeout_s > 0 or not body_timeout_s > 0:
            raise BadInputError("--request-timeout and the body timeout must be positive")
        self.inference = inference or InferenceService(
            model_dir, engine=engine, weights=weights, workers=workers, max_batch=max_batch, max_queue=max_queue,
            decode_workers=decode_workers, max_bytes=max_bytes, max_pixels=max_pixels, decode_memory=decode_memory)
        self._owns_inference = inference is None  # a shared one (tests) is started and stopped by its owner
        self.ok_classes = self.inference.ok_classes(ok_classes)
        self.db = db if isinstance(db, Database) else open_database(db)
        self.api_key = api_key or None
        self.metrics_public = bool(metrics_public)
        self.body_timeout_s = float(body_timeout_s)
        self.request_timeout_s = float(request_timeout_s)
        self.heatmaps = HeatmapMaker(self.inference)
        self._heatmap_pool = ThreadPoolExecutor(1, thread_name_prefix="vinspect-heatmap")
        self._heatmap_pending = 0
        self.heatmap_queue = int(heatmap_queue)
        self.metrics = Metrics(self)
        self.started_at = None
        self.warm_up_s = None

    def start(self) -> None:
        if self.started_at is None:
            if self._owns_inference:
                self.warm_up_s = self.inference.warm_up()
                self.inference.start()
            self.started_at = utcnow()

    def stop(self) -> None:
        if self._owns_inference:
            self.inference.stop()
        self._heatmap_pool.shutdown(wait=True, cancel_futures=True)
        self.db.close()

    # -- records ------------------------------------------------------------------------------------------

    def damaged(self, label: str | None) -> bool | None:
        return None if label is None else label not in self.ok_classes

    def record_json(self, r: dict) -> dict:
        ok = r["status"] == STATUS_OK
        i = r["id"]
        return {
            "id": i, "created_at": iso(r["created_at"]), "status": r["status"], "http_status": r["http_status"],
            "label": r["label"], "score": r["score"], "probabilities": r["probabilities"],
            "damaged": self.damaged(r["label"]) if ok else None,
            "part_id": r["part_id"], "station": r["station"], "request_id": r["request_id"],
            "model": {"name": r["model_name"], "version": r["model_version"], "sha256": r["model_sha256"]}
            if r["model_sha256"] else None,
            "latency_ms": r["latency_ms"],
            "image": {"sha256": r["image_sha256"], "bytes": r["image_bytes"], "format": r["image_format"],
                      "content_type": r["content_type"], "width": r["width"], "height": r["height"],
                      "filename": r["filename"]},
            "error": None if ok else {"code": r["error_code"], "detail": r["error"]},
            "image_url": f"/v1/inspections/{i}/image" if ok else None,
            "thumbnail_url": f"/v1/inspections/{i}/image?max_size=160" if ok else None,
            "heatmap_url": f"/v1/inspections/{i}/heatmap.png" if ok else None,
        }

    def model_json(self) -> dict:
        inf = self.inference
        b = inf.bundle
        d = inf.predictor.describe()
        bb = b.backbone or {}
        out = {
            **inf.model_info, "task": b.task, "kind": b.kind, "classes": inf.classes, "ok_classes": self.ok_classes,
            "damaged_classes": [c for c in inf.classes if c not in self.ok_classes],
            "backbone": bb.get("name"), "arch": bb.get("arch"), "layer": bb.get("layer"), "pool": bb.get("pool"),
            "preprocessing": b.preprocessing.as_dict(), "weights_sha256": bb.get("weights_sha256"),
            "head": b.config.get("head"), "feature_dim": b.config.get("feature_dim"),
            "method": b.config.get("method"), "metrics": b.metrics,
            "training_data": {k: v for k, v in b.training.items() if k not in ("skipped", "root", "runs")},
            "created_at": b.created_at, "engine": d.get("engine", inf.engine_name),
            "heatmap": {"method": self.heatmaps.method, "why": self.heatmaps.reason},
            "limits": {"max_bytes": inf.max_bytes, "max_pixels": inf.max_pixels, "max_batch": inf.max_batch,
                       "workers": inf.n_workers, "decode_memory": inf.decode_budget.total,
                       "request_timeout_s": self.request_timeout_s},
            "api_key_required": self.api_key is not None,
            "vinspect": __version__,
        }
        return without_local_paths(out)

    def _row(self, **kw) -> dict:
        inf = self.inference
        row = {"created_at": utcnow(), "model_name": inf.name, "model_version": inf.version,
               "model_sha256": inf.sha256}
        row.update(kw)
        return row

    async def log_rejection(self, rej: Rejection, request: Request, fields: dict, data: bytes | None,
                            declared: int | None = None, sha256: str | None = None) -> JSONResponse:
        self.metrics.inspections.labels("", str(rej.status)).inc()
        self.metrics.rejections.labels(rej.code).inc()
        row = self._row(status=STATUS_REJECTED, http_status=rej.status, error_code=rej.code,
                        error=rej.message.replace("\x00", ""),
                        part_id=fields.get("part_id"), station=fields.get("station"),
                        request_id=fields.get("request_id"), content_type=fields.get("content_type"),
                        filename=fields.get("filename"), client=_client(request),
                        image_bytes=len(data) if data is not None else declared,
                        image_sha256=sha256 or (await run_in_threadpool(_sha256, data) if data is not None else None))
        new_id = None
        try:
            new_id = await run_in_threadpool(self.db.insert, row)
        except Exception:  # noqa: BLE001 - the refusal is answered even if the log write fails
            log.exception("could not log a rejected request")
        headers = {"Retry-After": "1"} if rej.status == 503 else None
        return error_response(rej.status, rej.code, rej.message, new_id, headers)


_LOCAL_PATH = re.compile(r"^(~|/|\\\\|[A-Za-z]:[\\/])")


def without_local_paths(obj):
    """``obj`` without the values that are local file paths (the service publishes none)."""
    if isinstance(obj, dict):
        return {k: without_local_paths(v) for k, v in obj.items()
                if not (isinstance(v, str) and _LOCAL_PATH.match(v))}
    if isinstance(obj, (list, tuple)):
        return [without_local_paths(v) for v in obj if not (isinstance(v, str) and _LOCAL_PATH.match(v))]
    return obj


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _client(request: Request) -> str | None:
    return f"{request.client.host}" if request.client else None


def error_response(status: int, code: str, detail: str, id_: int | None = None,
                   headers: dict | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": code, "detail": detail}
    if id_ is not None:
        body["id"] = id_
    return JSONResponse(body, status_code=status, headers=headers)


async def _read_limited(request: Request, limit: int, what: str) -> bytes:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise Rejection(413, "too_large", f"the {what} is over the limit of {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def _one(data: bytes):
    yield data


def _content_type_ok(ct: str) -> bool:
    return ct == "" or ct.startswith(RAW_TYPES)


def _check_field(name: str, value):
    if value is None:
        return None
    value = str(value)
    if "\x00" in value:
        raise Rejection(400, "bad_field", f"{name} contains a NUL character")
    if len(value) > FIELD_MAX:
        raise Rejection(400, "bad_field", f"{name} is {len(value)} characters long, over the limit of {FIELD_MAX}")
    return value or None


def _authorised(api_key: str | None, headers, method: str) -> bool:
    """The key in X-API-Key, Authorization: Bearer, or (reads only: images in the operator page) the
    SameSite=Strict cookie ``vinspect_key``."""
    if api_key is None:
        return True
    given = headers.get("x-api-key")
    auth = headers.get("authorization", "")
    if given is None and auth.lower().startswith("bearer "):
        given = auth[7:].strip()
    if given is None and method in ("GET", "HEAD"):
        from http.cookies import SimpleCookie
        from urllib.parse import unquote

        try:
            c = SimpleCookie(headers.get("cookie", "")).get("vinspect_key")
        except Exception:  # noqa: BLE001 - an unparseable cookie is no key
            c = None
        given = unquote(c.value) if c is not None and c.value else None
    return given is not None and hmac.compare_digest(given.encode("utf-8", "replace"),
                                                     api_key.encode("utf-8", "replace"))


class _KeyMiddleware:
    """With an API key, every path needs it but /healthz, the page shell and (``metrics_public``) /metrics."""

    def __init__(self, app, service: Service):
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send):
        svc = self.service
        if scope["type"] != "http" or svc.api_key is None:
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if path in OPEN_PATHS or path.startswith(OPEN_PREFIXES) or (path == "/metrics" and svc.metrics_public):
            await self.app(scope, receive, send)
            return
        from starlette.datastructures import Headers

        if _authorised(svc.api_key, Headers(scope=scope), scope.get("method", "")):
            await self.app(scope, receive, send)
            return
        if path == "/v1/inspect":
            svc.metrics.inspections.labels("", "401").inc()
        svc.metrics.rejections.labels("unauthorized").inc()
        resp = error_response(401, "unauthorized", "missing or wrong API key (X-API-Key header or "
                              "Authorization: Bearer)", headers={"WWW-Authenticate": "Bearer"})
        await resp(scope, receive, send)


# -- the application ------------------------------------------------------------------------------------

def create_app(service: Service) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_app):
        await run_in_threadpool(service.start)
        try:
            yield
        finally:
            await run_in_threadpool(service.stop)

    app = FastAPI(title="vinspect inspection service", version=__version__, lifespan=lifespan,
                  description="Verdicts of a vinspect model on camera images, the inspection log, heatmaps. "
                              "Errors are JSON: `{error, detail, id}`. The operator page is at `/`.")
    app.state.service = service
    app.add_middleware(_KeyMiddleware, service=service)  # inside the metrics one: refusals are counted
    app.add_middleware(_MetricsMiddleware, metrics=service.metrics)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return error_response(exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request, exc: RequestValidationError):
        parts = []
        for e in exc.errors():
            loc = ".".join(str(x) for x in e.get("loc", []) if x not in ("query", "path", "header", "body"))
            parts.append(f"{loc}: {e.get('msg')}")
        return error_response(422, "bad_parameter", "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _internal_error(_request, exc: Exception):
        log.exception("internal error")
        return error_response(500, "internal", f"internal error: {type(exc).__name__}")

    raw_schema = {"schema": {"type": "string", "format": "binary"}}
    inspect_body = {"requestBody": {"required": True, "description": "the image: a multipart `file` field "
                                    "(with optional `part_id` and `station` fields) or the raw bytes",
                                    "content": {"multipart/form-data": {"schema": {
                                        "type": "object", "required": ["file"],
                                        "properties": {"file": {"type": "string", "format": "binary"},
                                                       "part_id": {"type": "string", "maxLength": FIELD_MAX},
                                                       "station": {"type": "string", "maxLength": FIELD_MAX}}}},
                                        "image/jpeg": raw_schema, "image/png": raw_schema, "image/bmp": raw_schema,
                                        "image/tiff": raw_schema, "image/webp": raw_schema,
                                        "application/octet-stream": raw_schema}}}

    @app.post("/v1/inspect", response_model=Inspection, responses=ERRORS, openapi_extra=inspect_body,
              tags=["inspections"], summary="Inspect one image: verdict, logged before the response")
    async def inspect(request: Request,
                      part_id: str | None = Query(None, description="part identifier (raw-body uploads; a "
                                                  "multipart field overrides it)"),
                      station: str | None = Query(None, description="camera / machine station"),
                      x_request_id: str | None = Header(None, description="client request id: a retry with "
                                                        "the same id returns the logged inspection, never a "
                                                        "second one"),
                      x_api_key: str | None = Header(None, description="API key, when the service has one "
                                                     "(or Authorization: Bearer KEY)")):
        svc = service
        inf = svc.inference
        ct_full = request.headers.get("content-type", "")
        ct = ct_full.split(";")[0].strip().lower()
        fields: dict[str, Any] = {"content_type": ct_full[:200] or None}
        data: bytes | None = None
        body: bytes | None = None
        sha: str | None = None
        declared = None
        try:
            fields["part_id"] = _check_field("part_id", part_id)
            fields["station"] = _check_field("station", station)
            fields["request_id"] = _check_field("X-Request-Id", x_request_id)
            limit = inf.max_bytes + (MULTIPART_OVERHEAD if ct == "multipart/form-data" else 0)
            cl = request.headers.get("content-length")
            if cl is not None and cl.isdigit():
                declared = int(cl)
                if declared > limit:
                    raise Rejection(413, "too_large", f"the body has {declared:,} bytes, over the limit of "
                                                      f"{inf.max_bytes:,}")
            try:
                body = await asyncio.wait_for(_read_limited(request, limit, "body"), svc.body_timeout_s)
            except asyncio.TimeoutError:
                raise Rejection(408, "body_timeout", f"the body did not arrive within {svc.body_timeout_s:g} s") \
                    from None
            if ct != "multipart/form-data" and not _content_type_ok(ct):
                raise Rejection(415, "unsupported_media_type",
                                f"content type {ct!r} is not an image: send image/* or application/octet-stream "
                                f"bytes, or multipart/form-data with a 'file' field")
            if ct == "multipart/form-data":
                data = await _parse_multipart(request, body, fields)
            else:
                data = body
            sha = await run_in_threadpool(_sha256, data)
            if fields.get("request_id"):
                existing = await run_in_threadpool(svc.db.find_request, fields["request_id"])
                if existing is not None:
                    return _replay(existing, sha)
            t0 = time.perf_counter()
            try:
                prepared, verdict = await asyncio.wait_for(_verdict(data), svc.request_timeout_s)
            except asyncio.TimeoutError:
                raise Rejection(503, "deadline", f"no verdict within the request deadline of "
                                                 f"{svc.request_timeout_s:g} s; retry shortly") from None
            latency_ms = (time.perf_counter() - t0) * 1000
        except Rejection as rej:
            return await svc.log_rejection(rej, request, fields, data if data is not None else body, declared,
                                           sha if data is not None else None)
        except ClientDisconnect:
            svc.metrics.rejections.labels("client_disconnected").inc()
            return Response(status_code=400)  # nobody is listening any more
        except Exception as e:  # noqa: BLE001 - the model failed: answered, logged, and the service goes on
            log.exception("the model failed on an image")
            return await svc.log_rejection(Rejection(500, "model_error", f"the model failed on this image "
                                                     f"({type(e).__name__})"), request, fields, data, declared, sha)
        row = svc._row(status=STATUS_OK, http_status=200, label=verdict.label, score=verdict.score,
                       probabilities=verdict.probabilities, part_id=fields.get("part_id"),
                       station=fields.get("station"), request_id=fields.get("request_id"),
                       latency_ms=round(latency_ms, 3), image_sha256=prepared.sha256, image_bytes=prepared.n_bytes,
                       content_type=fields.get("content_type"), image_format=prepared.image_format,
                       width=prepared.width, height=prepared.height, filename=fields.get("filename"),
                       client=_client(request))
        try:
            new_id = await run_in_threadpool(svc.db.insert, row, data, prepared.media_type)
        except DuplicateRequest as d:  # a concurrent retry with the same request id won the race
            if d.existing.get("image_sha256") != prepared.sha256:
                return await svc.log_rejection(_conflict(d.existing), request, fields, data, declared, sha)
            return _replay(d.existing, sha)
        except SQLAlchemyError as e:  # no verdict leaves the service unlogged
            log.error("inspection log unavailable: %s", e)
            svc.metrics.inspections.labels("", "503").inc()
            svc.metrics.rejections.labels("log_unavailable").inc()
            return error_response(503, "log_unavailable", f"the inspection log cannot be written "
                                  f"({type(e).__name__}); the verdict is withheld until it can",
                                  headers={"Retry-After": "5"})
        svc.metrics.inspections.labels(verdict.label, "200").inc()
        svc.metrics.latency.observe(latency_ms / 1000)
        svc.metrics.model_time.observe(verdict.model_ms / 1000)
        row["id"] = new_id
        return JSONResponse({**svc.record_json(row), "details": verdict.extra or None})

    async def _verdict(data: bytes):
        """Decode (bounded pool and memory) and run the model; cancelled when the request's deadline passes
        (a job still waiting for the decoder or the model is then dropped)."""
        inf = service.inference
        prepared = await asyncio.wrap_future(inf.prepare_async(data, service.request_timeout_s))
        try:
            fut = inf.submit(prepared.pixels)
        except Busy as e:
            raise Rejection(503, "busy", f"the model is busy ({e}); retry shortly") from None
        return prepared, await asyncio.wrap_future(fut)

    def _conflict(existing: dict) -> Rejection:
        return Rejection(409, "request_id_conflict", f"X-Request-Id {existing['request_id']!r} is logged as "
                                                     f"inspection {existing['id']} of another image "
                                                     f"(sha256 {str(existing.get('image_sha256'))[:12]}...); "
                                                     f"use a new id for a new image")

    def _replay(existing: dict, sha: str):
        if existing.get("image_sha256") != sha:
            raise _conflict(existing)
        return JSONResponse(service.record_json(existing), headers={"X-Idempotent-Replay": "true"})

    async def _parse_multipart(request: Request, body: bytes, fields: dict) -> bytes:
        from starlette.datastructures import UploadFile
        from starlette.formparsers import MultiPartException, MultiPartParser

        try:
            form = await MultiPartParser(request.headers, _one(body), max_files=4, max_fields=20,
                                         max_part_size=64 * 1024).parse()
        except MultiPartException as e:
            raise Rejection(400, "bad_multipart", f"unreadable multipart body: {e.message}") from None
        try:
            files = [v for _, v in form.multi_items() if isinstance(v, UploadFile)]
            up = form.get("file") if isinstance(form.get("file"), UploadFile) else (files[0] if files else None)
            for name in ("part_id", "station"):
                v = form.get(name)
                if isinstance(v, str) and v != "":
                    fields[name] = _check_field(name, v)
            if up is None:
                raise Rejection(400, "missing_file", "the multipart body has no file: send the image in a "
                                                     "'file' field")
            fields["filename"] = (up.filename or "").replace("\x00", "")[:500] or None
            pct = (up.content_type or "").split(";")[0].strip().lower()
            if pct:
                fields["content_type"] = pct[:200]
            if not _content_type_ok(pct):
                raise Rejection(415, "unsupported_media_type", f"the file part is {pct!r}, not an image")
            data = await up.read()
            if len(data) > service.inference.max_bytes:
                raise Rejection(413, "too_large", f"the image has {len(data):,} bytes, over the limit of "
                                                  f"{service.inference.max_bytes:,}")
            return data
        finally:
            await form.close()

    def _since(value, what):
        try:
            return parse_time(value, what)
        except ValueError as e:
            raise RequestValidationError([{"loc": ("query", what), "msg": str(e), "type": "value_error"}]) from None

    @app.get("/v1/inspections", response_model=InspectionList, tags=["inspections"],
             responses={**ERR401, **ERR422}, summary="The inspection log, newest first")
    def list_inspections(label: str | None = Query(None, description="class name(s), comma-separated"),
                         station: str | None = None, part_id: str | None = None,
                         since: str | None = Query(None, description=TIME_DOC, pattern=TIME_PATTERN),
                         until: str | None = Query(None, description="as since; exclusive", pattern=TIME_PATTERN),
                         status: Literal["ok", "rejected", "all"] = Query("ok", description="accepted (ok), "
                                                                          "rejected requests, or all"),
                         damaged: bool | None = Query(None, description="only damaged (true) or ok (false) "
                                                      "verdicts"),
                         limit: int = Query(50, ge=1, le=500), offset: int = Query(0, ge=0, le=OFFSET_MAX)):
        for name, v in (("label", label), ("station", station), ("part_id", part_id)):
            if v is not None and "\x00" in v:
                raise RequestValidationError([{"loc": ("query", name), "msg": "contains a NUL character"}])
        labels = [x.strip() for x in label.split(",") if x.strip()] if label else None
        ok = service.ok_classes
        not_labels = None
        if damaged is True:
            not_labels = ok or None
        elif damaged is False:
            labels = [x for x in (labels or ok) if x in ok]
            if not labels:  # no class means "not damaged"
                return {"items": [], "total": 0, "limit": limit, "offset": offset}
        rows, total = service.db.list(limit=limit, offset=offset, status=status, labels=labels,
                                      not_labels=not_labels, station=station, part_id=part_id,
                                      since=_since(since, "since"), until=_since(until, "until"))
        return {"items": [service.record_json(r) for r in rows], "total": total, "limit": limit, "offset": offset}

    inspection_id_param = PathParam(..., ge=1, le=ID_MAX, description="the log id")

    @app.get("/v1/inspections/{inspection_id}", response_model=Inspection, tags=["inspections"],
             responses={404: {"model": ErrorOut}, **ERR401, **ERR422}, summary="One logged inspection")
    def get_inspection(inspection_id: int = inspection_id_param):
        r = service.db.get(inspection_id)
        if r is None:
            return error_response(404, "not_found", f"no inspection {inspection_id}")
        return service.record_json(r)

    @app.get("/v1/inspections/{inspection_id}/image", tags=["inspections"],
             responses={200: {"content": {"image/*": {}}}, 404: {"model": ErrorOut}, **ERR401, **ERR422,
                        503: {"model": ErrorOut}},
             summary="The inspected image as received, or a JPEG thumbnail (max_size)")
    async def get_image(request: Request, inspection_id: int = inspection_id_param,
                        max_size: int | None = Query(None, ge=16, le=2048,
                                                     description="longest side of a thumbnail")):
        r = await run_in_threadpool(service.db.get, inspection_id)
        if r is None:
            return error_response(404, "not_found", f"no inspection {inspection_id}")
        if r["status"] != STATUS_OK:
            return error_response(404, "no_image", f"inspection {inspection_id} was rejected: no image kept")
        # ids restart with a new database: validate by content (ETag), never cache by URL alone
        etag = f'"{r["image_sha256"]}-{max_size or 0}"'
        headers = {"Cache-Control": "private, no-cache", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        img = await run_in_threadpool(service.db.image, inspection_id)
        if img is None:
            return error_response(404, "no_image", f"inspection {inspection_id} has no stored image")
        if max_size is None:
            return Response(img["data"], media_type=img["media_type"], headers=headers)
        try:  # in the decode pool, within the decode memory budget (never in the web server's threads)
            jpeg = await asyncio.wait_for(asyncio.wrap_future(service.inference.thumbnail_async(
                img["data"], max_size, r["image_sha256"], service.request_timeout_s)), service.request_timeout_s)
        except asyncio.TimeoutError:
            return error_response(503, "deadline", "the thumbnail was not ready within the request deadline",
                                  headers={"Retry-After": "1"})
        except Rejection as e:
            return error_response(e.status, e.code, e.message,
                                  headers={"Retry-After": "1"} if e.status == 503 else None)
        return Response(jpeg, media_type="image/jpeg", headers=headers)

    @app.get("/v1/inspections/{inspection_id}/heatmap.png", tags=["inspections"],
             responses={200: {"content": {"image/png": {}}}, 404: {"model": ErrorOut}, 409: {"model": ErrorOut},
                        422: {"model": ErrorOut}, 503: {"model": ErrorOut}, **ERR401},
             summary="Where the model looked: the model's explanation (LayerCAM, Grad-CAM, Ablation-CAM or its "
                     "map) as an overlay")
    async def get_heatmap(request: Request, inspection_id: int = inspection_id_param):
        svc = service
        r = await run_in_threadpool(svc.db.get, inspection_id)
        if r is None:
            return error_response(404, "not_found", f"no inspection {inspection_id}")
        if r["status"] != STATUS_OK:
            return error_response(404, "no_image", f"inspection {inspection_id} was rejected: no image, no heatmap")
        if r["model_sha256"] != svc.inference.sha256:
            return error_response(409, "other_model", f"inspection {inspection_id} was made by model "
                                  f"{r['model_name']} ({str(r['model_sha256'])[:12]}); this service runs "
                                  f"{svc.inference.sha256[:12]}, whose heatmap would explain another model")
        etag = f'"{r["image_sha256"]}-{svc.inference.sha256[:16]}-cam"'
        headers = {"Cache-Control": "private, no-cache", "ETag": etag}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        img = await run_in_threadpool(svc.db.image, inspection_id)
        if img is None:
            return error_response(404, "no_image", f"inspection {inspection_id} has no stored image")
        if img["heatmap"] is not None and img["heatmap_model_sha256"] == svc.inference.sha256:
            return Response(img["heatmap"], media_type="image/png",
                            headers={**headers, "X-Heatmap-Method": img["heatmap_method"] or ""})
        if svc._heatmap_pending >= svc.heatmap_queue:
            return error_response(503, "busy", "too many heatmaps being drawn; retry shortly",
                                  headers={"Retry-After": "1"})
        svc._heatmap_pending += 1
        loop = asyncio.get_running_loop()
        job = svc._heatmap_pool.submit(run_safely, svc.heatmaps.render, img["data"], r["label"])

        def _done(_f):  # counted until drawn, also when its request passed its deadline
            def dec():
                svc._heatmap_pending -= 1
            try:
                loop.call_soon_threadsafe(dec)
            except RuntimeError:  # the loop has closed (shutdown)
                pass

        job.add_done_callback(_done)
        try:
            png, info = await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(job)), svc.request_timeout_s)
        except asyncio.TimeoutError:
            return error_response(503, "deadline", f"the heatmap was not drawn within the request deadline of "
                                  f"{svc.request_timeout_s:g} s; retry shortly", headers={"Retry-After": "5"})
        except HeatmapUnavailable as e:
            return error_response(422, "heatmap_unavailable", str(e))
        await run_in_threadpool(svc.db.store_heatmap, inspection_id, png, info["method"], svc.inference.sha256)
        return Response(png, media_type="image/png", headers={**headers, "X-Heatmap-Method": info["method"]})

    @app.get("/v1/stats", response_model=Stats, tags=["inspections"], responses={**ERR401, **ERR422},
             summary="Counts per class over a window")
    def stats(since: str | None = Query(None, description=TIME_DOC + " (the page sends local midnight)",
                                        pattern=TIME_PATTERN),
              until: str | None = Query(None, description="as since; exclusive", pattern=TIME_PATTERN),
              station: str | None = None):
        if station is not None and "\x00" in station:
            raise RequestValidationError([{"loc": ("query", "station"), "msg": "contains a NUL character"}])
        s, u = _since(since, "since"), _since(until, "until")
        c = service.db.counts(since=s, until=u, station=station)
        damaged = sum(n for k, n in c["by_label"].items() if service.damaged(k))
        by_label = {k: c["by_label"].get(k, 0) for k in service.inference.classes}
        by_label.update({k: v for k, v in c["by_label"].items() if k not in by_label})  # an earlier model's
        return {"since": iso(s), "until": iso(u), "total": c["ok"] + c["rejected"], "ok": c["ok"],
                "rejected": c["rejected"], "damaged": damaged, "by_label": by_label}

    @app.get("/v1/model", tags=["service"], responses=ERR401,
             summary="The model being served: classes, backbone, metrics (no local path)")
    def model_info():
        return service.model_json()

    @app.get("/healthz", tags=["service"], responses={503: {"description": "the database is unreachable or "
                                                                       "a model worker cannot run"}},
             summary="Liveness and readiness (model workers running, database reachable)")
    def healthz():
        inf = service.inference
        h = inf.health() if service.started_at is not None else {"workers_alive": None}
        body: dict[str, Any] = {"status": "ok", "model": inf.model_info, **h, "started_at": iso(service.started_at)}
        if h["workers_alive"] is not None and h["workers_alive"] < inf.n_workers:
            body["status"] = "error"
        try:
            service.db.ping()
            body["db"] = "ok"
        except Exception as e:  # noqa: BLE001 - reported, not raised
            body.update(status="error", db=f"{type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return JSONResponse(body, status_code=200 if body["status"] == "ok" else 503)

    @app.get("/metrics", tags=["service"], summary="Prometheus metrics",
             responses={200: {"content": {"text/plain": {}}}, **ERR401})
    def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(service.metrics.text(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def index():
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={
            "Content-Security-Policy": "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; "
                                       "script-src 'self'; connect-src 'self'; frame-ancestors 'none'",
            "Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app
