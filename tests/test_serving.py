"""The inspection service end to end: the real service on a loopback port, real NEU images and a model
trained in the test, on SQLite and on a real PostgreSQL server (skipped with the reason where PostgreSQL
cannot run).  Every endpoint, bad input, concurrency, the CLI."""

from __future__ import annotations

import csv
import io
import select
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serving dependencies (fastapi, uvicorn, sqlalchemy) are not installed")
httpx = pytest.importorskip("httpx")

from serving_support import (MAX_BYTES, LiveServer, PostgresUnavailable, create_pg_database,  # noqa: E402
                             free_port, postgres_cluster, shared_inference, small_model, start_serve_command)
from vinspect.serving.app import Service, create_app  # noqa: E402
from vinspect.serving.db import Database, open_database, parse_time  # noqa: E402


# -- fixtures ------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def model_dir(neu_small):
    return small_model(neu_small)


@pytest.fixture(scope="session")
def inference(model_dir):
    return shared_inference(model_dir)


@pytest.fixture(scope="session")
def pg_cluster():
    try:
        with postgres_cluster() as url:
            yield url
    except PostgresUnavailable as e:
        pytest.skip(f"PostgreSQL unavailable: {e}")


_counter = {"n": 0}


def _db_url(kind, tmp_path_factory, request) -> str:
    if kind == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('db') / 'log.sqlite3'}"
    cluster = request.getfixturevalue("pg_cluster")
    _counter["n"] += 1
    return create_pg_database(cluster, f"vinspect_test_{_counter['n']}")


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def live(request, inference, model_dir, tmp_path_factory):
    """The real service (on SQLite, then on PostgreSQL) with a short body timeout for the slow-client test."""
    url = _db_url(request.param, tmp_path_factory, request)
    svc = Service(model_dir, db=url, inference=inference, body_timeout_s=4)
    with LiveServer(create_app(svc)) as srv:
        srv.service = svc
        srv.kind = request.param
        srv.client = httpx.Client(base_url=srv.url, timeout=30)
        yield srv
        srv.client.close()


@pytest.fixture(scope="session")
def images(neu_small):
    return {c: sorted((neu_small / c).glob("*.jpg")) for c in ("crazing", "patches", "scratches")}


def expected(inference, path: Path):
    return inference.predict(inference.prepare(path.read_bytes()).pixels)


# -- inspection and the log ----------------------------------------------------------------------------

def test_inspect_multipart_and_raw_agree_with_vinspect_predict(live, images, model_dir):
    from vinspect.pipeline import predict

    path = images["scratches"][0]
    rows, _ = predict(model_dir, [path], progress=False)
    want = rows[0]
    r = live.client.post("/v1/inspect", files={"file": (path.name, path.read_bytes(), "image/jpeg")},
                         data={"part_id": "P-001", "station": "mill-3"})
    assert r.status_code == 200, r.text
    body = r.json()
    for key in ("id", "label", "probabilities", "score", "model", "latency_ms", "heatmap_url", "created_at"):
        assert key in body, key
    assert body["label"] == want["label"]
    for c, p in want["probabilities"].items():
        assert abs(body["probabilities"][c] - p) < 1e-5  # the same decoding, network and head as predict
    assert body["score"] == pytest.approx(max(want["probabilities"].values()), abs=1e-5)
    assert body["model"]["sha256"] == live.service.inference.sha256 and body["model"]["name"]
    assert body["part_id"] == "P-001" and body["station"] == "mill-3" and body["image"]["filename"] == path.name
    assert body["latency_ms"] > 0 and body["created_at"].endswith("+00:00")
    assert body["heatmap_url"] == f"/v1/inspections/{body['id']}/heatmap.png"

    raw = live.client.post("/v1/inspect?part_id=P-002&station=mill-3", content=path.read_bytes(),
                           headers={"Content-Type": "image/jpeg"})
    assert raw.status_code == 200, raw.text
    assert raw.json()["label"] == body["label"] and raw.json()["id"] > body["id"]
    assert raw.json()["probabilities"] == pytest.approx(body["probabilities"], abs=1e-6)

    # in the log before the response came back, with the image as received
    got = live.client.get(f"/v1/inspections/{body['id']}").json()
    assert got["label"] == body["label"] and got["part_id"] == "P-001" and got["status"] == "ok"
    assert got["probabilities"] == pytest.approx(body["probabilities"])
    img = live.client.get(f"/v1/inspections/{body['id']}/image")
    assert img.status_code == 200 and img.content == path.read_bytes()
    assert img.headers["content-type"] == "image/jpeg"
    thumb = live.client.get(f"/v1/inspections/{body['id']}/image", params={"max_size": 48})
    from PIL import Image

    t = Image.open(io.BytesIO(thumb.content))
    assert t.format == "JPEG" and max(t.size) == 48
    # cached by content, not by URL (ids restart with a new database)
    again = live.client.get(f"/v1/inspections/{body['id']}/image", headers={"If-None-Match": img.headers["etag"]})
    assert again.status_code == 304 and body["image"]["sha256"] in img.headers["etag"]


def test_list_filters_and_order(live, images, inference):
    station = f"filter-{live.kind}"
    ids = {}
    for cls in ("crazing", "patches", "scratches"):
        p = images[cls][1]
        r = live.client.post("/v1/inspect", files={"file": (p.name, p.read_bytes(), "image/jpeg")},
                             data={"station": station, "part_id": f"{cls}-part"})
        assert r.status_code == 200
        assert r.json()["label"] == expected(inference, p).label
        ids[cls] = r.json()["id"]
    lst = live.client.get("/v1/inspections", params={"station": station}).json()
    assert [i["id"] for i in lst["items"]] == sorted(ids.values(), reverse=True)  # newest first
    assert lst["total"] == 3
    one = live.client.get("/v1/inspections", params={"station": station, "limit": 1, "offset": 1}).json()
    assert [i["id"] for i in one["items"]] == [sorted(ids.values(), reverse=True)[1]] and one["total"] == 3
    label = live.client.get(f"/v1/inspections/{ids['patches']}").json()["label"]
    by_label = live.client.get("/v1/inspections", params={"station": station, "label": label}).json()
    assert by_label["items"] and all(i["label"] == label for i in by_label["items"])
    assert live.client.get("/v1/inspections", params={"station": station, "since": "2999-01-01"}).json()["total"] == 0
    assert live.client.get("/v1/inspections", params={"station": station, "since": "10m"}).json()["total"] == 3
    # NEU's classes are all defects: every verdict is "damaged" unless --ok-class says otherwise
    assert live.client.get("/v1/inspections", params={"station": station, "damaged": "true"}).json()["total"] == 3
    assert live.client.get("/v1/inspections", params={"station": station, "damaged": "false"}).json()["total"] == 0
    stats = live.client.get("/v1/stats", params={"since": "10m", "station": station}).json()
    assert stats["ok"] == 3 and sum(stats["by_label"].values()) == 3 and set(stats["by_label"]) >= set(ids)
    bad = live.client.get("/v1/inspections", params={"since": "yesterday-ish"})
    assert bad.status_code == 422 and "since" in bad.json()["detail"]
    assert live.client.get("/v1/inspections", params={"limit": 0}).status_code == 422
    nf = live.client.get("/v1/inspections/999999")
    assert nf.status_code == 404 and nf.json()["error"] == "not_found"


def test_heatmap_is_a_png_overlay_of_the_image_and_cached(live, images):
    from PIL import Image

    p = images["scratches"][2]
    rid = live.client.post("/v1/inspect", content=p.read_bytes(), headers={"Content-Type": "image/jpeg"}).json()["id"]
    r = live.client.get(f"/v1/inspections/{rid}/heatmap.png")
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "image/png" and r.headers["x-heatmap-method"] == "layer-cam"
    im = Image.open(io.BytesIO(r.content))
    assert im.size == Image.open(p).size and im.mode == "RGB"
    arr = np.asarray(im).astype(int)
    assert arr.std() > 5  # not blank
    again = live.client.get(f"/v1/inspections/{rid}/heatmap.png")
    assert again.content == r.content  # stored with the record
    assert live.client.get(f"/v1/inspections/{rid}/heatmap.png",
                           headers={"If-None-Match": r.headers["etag"]}).status_code == 304
    assert live.client.get("/v1/inspections/999999/heatmap.png").status_code == 404


def test_service_endpoints(live, images):
    h = live.client.get("/healthz")
    assert h.status_code == 200 and h.json()["status"] == "ok" and h.json()["db"] == "ok"
    m = live.client.get("/v1/model").json()
    assert m["classes"] == ["crazing", "patches", "scratches"] and m["backbone"] == "efficientnet_lite0"
    assert m["layer"] == "blocks.6" and m["head"]["name"] == "logreg" and "accuracy_mean" in m["metrics"]
    assert m["heatmap"]["method"] == "layer-cam" and m["api_key_required"] is False
    p = images["crazing"][3]
    r = live.client.post("/v1/inspect", content=p.read_bytes(), headers={"Content-Type": "image/jpeg"})
    label = r.json()["label"]
    live.client.post("/v1/inspect", content=b"not an image", headers={"Content-Type": "image/png"})
    text = live.client.get("/metrics").text
    assert f'vinspect_inspections_total{{label="{label}",status="200"}}' in text
    assert 'vinspect_inspections_total{label="",status="400"}' in text
    assert 'vinspect_rejections_total{reason="not_an_image"}' in text
    assert "vinspect_inspect_latency_seconds_bucket{le=" in text and "vinspect_inspect_latency_seconds_count" in text
    assert 'vinspect_http_requests_total{code="200",method="POST",route="/v1/inspect"}' in text
    spec = live.client.get("/openapi.json").json()
    for path in ("/v1/inspect", "/v1/inspections", "/v1/inspections/{inspection_id}",
                 "/v1/inspections/{inspection_id}/image", "/v1/inspections/{inspection_id}/heatmap.png",
                 "/healthz", "/metrics", "/v1/model"):
        assert path in spec["paths"], path
    assert "multipart/form-data" in spec["paths"]["/v1/inspect"]["post"]["requestBody"]["content"]
    page = live.client.get("/")
    assert page.status_code == 200 and "vinspect" in page.text and "/static/app.js" in page.text
    assert live.client.get("/static/app.js").status_code == 200


# -- bad input -----------------------------------------------------------------------------------------

def _png(w, h) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("L", (w, h), 128).save(buf, "PNG")
    return buf.getvalue()


def _png_header(w, h) -> bytes:
    """A PNG whose header declares w x h pixels (a decompression bomb's header)."""
    import struct
    import zlib

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d))  # noqa: E731
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def bad_requests(jpeg: bytes) -> list[tuple[str, dict, int, str]]:
    """(name, httpx request kwargs, expected status, expected error code)"""
    return [
        ("zero bytes", {"content": b"", "headers": {"Content-Type": "image/jpeg"}}, 400, "empty_body"),
        ("truncated JPEG", {"content": jpeg[: len(jpeg) // 2], "headers": {"Content-Type": "image/jpeg"}},
         400, "corrupt_image"),
        ("text as image", {"content": b"hello, not an image", "headers": {"Content-Type": "image/jpeg"}},
         400, "not_an_image"),
        ("text content type", {"content": b"hello", "headers": {"Content-Type": "text/plain"}}, 415,
         "unsupported_media_type"),
        ("json content type", {"content": b"{}", "headers": {"Content-Type": "application/json"}}, 415,
         "unsupported_media_type"),
        ("over the byte limit", {"content": b"\xff\xd8\xff" + b"\0" * MAX_BYTES,
                                 "headers": {"Content-Type": "image/jpeg"}}, 413, "too_large"),
        ("over the pixel limit", {"content": _png(1200, 1000), "headers": {"Content-Type": "image/png"}}, 413,
         "too_many_pixels"),
        ("decompression bomb", {"content": _png_header(40000, 40000), "headers": {"Content-Type": "image/png"}},
         413, "too_many_pixels"),
        ("multipart without a file", {"data": {"part_id": "x"}, "files": {"other": ("", b"", "")}}, 400,
         "missing_file"),
        ("multipart text file", {"files": {"file": ("notes.txt", b"operator notes", "text/plain")}}, 415,
         "unsupported_media_type"),
        ("multipart zero bytes", {"files": {"file": ("empty.jpg", b"", "image/jpeg")}}, 400, "empty_body"),
        ("NUL in a field", {"files": {"file": ("a.jpg", jpeg, "image/jpeg")}, "data": {"part_id": "a\x00b"}}, 400,
         "bad_field"),
    ]


def test_bad_input_is_a_4xx_naming_the_problem_and_logged_as_rejected(live, images):
    jpeg = images["patches"][0].read_bytes()
    station = f"bad-{live.kind}"
    for name, kw, status, code in bad_requests(jpeg):
        r = live.client.post("/v1/inspect", params={"station": station}, **kw)
        assert r.status_code == status, (name, r.status_code, r.text)
        body = r.json()
        assert body["error"] == code, (name, body)
        assert body["detail"] and isinstance(body["id"], int), name
        rec = live.client.get(f"/v1/inspections/{body['id']}").json()
        assert rec["status"] == "rejected" and rec["http_status"] == status and rec["error"]["code"] == code
        assert rec["image_url"] is None
        assert live.client.get(f"/v1/inspections/{body['id']}/image").status_code == 404
    rejected = live.client.get("/v1/inspections", params={"status": "rejected", "station": station}).json()
    assert rejected["total"] == len(bad_requests(jpeg))
    assert live.client.get("/v1/inspections", params={"station": station}).json()["total"] == 0  # none accepted
    ok = live.client.post("/v1/inspect", content=jpeg, headers={"Content-Type": "image/jpeg"})
    assert ok.status_code == 200  # and it keeps serving


def test_slow_client_does_not_block_others_and_times_out(live, images):
    jpeg = images["crazing"][4].read_bytes()
    s = socket.create_connection(("127.0.0.1", live.port), timeout=10)
    try:
        s.sendall(b"POST /v1/inspect HTTP/1.1\r\nHost: x\r\nContent-Type: image/jpeg\r\n"
                  + f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg[:100])
        r = live.client.post("/v1/inspect", content=jpeg, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200
        assert select.select([s], [], [], 0)[0] == []  # served while the slow client still waits for its answer
        s.settimeout(15)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = s.recv(4096)
            if not chunk:
                break
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply[:200]  # the body timeout (4 s here) ended it
    finally:
        s.close()


def test_request_id_makes_retries_idempotent(live, images):
    p = images["patches"][5]
    rid = f"retry-{live.kind}-{time.time_ns()}"
    a = live.client.post("/v1/inspect", content=p.read_bytes(), headers={"Content-Type": "image/jpeg",
                                                                          "X-Request-Id": rid})
    b = live.client.post("/v1/inspect", content=p.read_bytes(), headers={"Content-Type": "image/jpeg",
                                                                          "X-Request-Id": rid})
    assert a.status_code == b.status_code == 200
    assert a.json()["id"] == b.json()["id"] and b.headers.get("x-idempotent-replay") == "true"
    assert sum(1 for r in live.service.db.iter_all(status="all") if r["request_id"] == rid) == 1


def test_concurrent_clients_each_request_logged_exactly_once(live, images):
    """16 clients, 160 good + 16 bad requests: every good one 200 and in the log exactly once, no 5xx."""
    files = [p for ps in images.values() for p in ps]
    payload = {p: p.read_bytes() for p in files}
    tag = f"conc-{live.kind}-{time.time_ns()}"
    jobs = [("good", i, files[i % len(files)]) for i in range(160)] + [("bad", i, None) for i in range(16)]
    rng = np.random.default_rng(0)
    order = rng.permutation(len(jobs))
    jobs = [jobs[i] for i in order]

    def work(chunk):
        out = []
        with httpx.Client(base_url=live.url, timeout=60) as c:
            for kind, i, p in chunk:
                if kind == "good":
                    r = c.post("/v1/inspect", content=payload[p], params={"part_id": f"{tag}-{i}", "station": tag},
                               headers={"Content-Type": "image/jpeg"})
                else:
                    r = c.post("/v1/inspect", content=b"\xff\xd8\xff garbage", params={"station": tag},
                               headers={"Content-Type": "image/jpeg"})
                out.append((kind, i, r.status_code))
        return out

    with ThreadPoolExecutor(16) as pool:
        results = [x for part in pool.map(work, [jobs[k::16] for k in range(16)]) for x in part]
    assert len(results) == len(jobs)
    assert all(s < 500 for _, _, s in results)
    assert all(s == 200 for k, _, s in results if k == "good")
    assert all(400 <= s < 500 for k, _, s in results if k == "bad")
    logged = [r for r in live.service.db.iter_all(status="all", station=tag)]
    parts = [r["part_id"] for r in logged if r["status"] == "ok"]
    assert sorted(parts) == sorted(f"{tag}-{i}" for i in range(160))  # each exactly once
    assert sum(r["status"] == "rejected" for r in logged) == 16
    if live.kind == "sqlite":
        with live.service.db.engine.connect() as conn:
            assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"


def test_api_key_protects_the_endpoints(inference, model_dir, tmp_path, images):
    svc = Service(model_dir, db=f"sqlite:///{tmp_path / 'k.sqlite3'}", inference=inference, api_key="s3cret")
    jpeg = images["crazing"][0].read_bytes()
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        r = c.post("/v1/inspect", content=jpeg, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 401 and r.json()["error"] == "unauthorized"
        r = c.post("/v1/inspect", content=jpeg, headers={"Content-Type": "image/jpeg", "X-API-Key": "wrong"})
        assert r.status_code == 401
        ok = c.post("/v1/inspect", content=jpeg, headers={"Content-Type": "image/jpeg", "X-API-Key": "s3cret"})
        assert ok.status_code == 200
        bearer = c.post("/v1/inspect", content=jpeg, headers={"Content-Type": "image/jpeg",
                                                              "Authorization": "Bearer s3cret"})
        assert bearer.status_code == 200
        assert c.get("/v1/inspections").status_code == 401  # reading needs the key too
        lst = c.get("/v1/inspections", params={"status": "all"}, headers={"X-API-Key": "s3cret"}).json()
        assert lst["total"] == 2  # unauthenticated attempts write nothing to the log
        assert c.get("/v1/model", headers={"X-API-Key": "s3cret"}).json()["api_key_required"] is True


def test_unwritable_log_withholds_the_verdict(inference, model_dir, tmp_path, images, monkeypatch):
    """No verdict leaves the service without its log entry: 503, and /healthz says why."""
    from sqlalchemy.exc import OperationalError

    svc = Service(model_dir, db=f"sqlite:///{tmp_path / 'down.sqlite3'}", inference=inference)

    def down(*_a, **_k):
        raise OperationalError("INSERT", {}, Exception("disk I/O error"))

    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=30) as c:
        monkeypatch.setattr(svc.db, "insert", down)
        monkeypatch.setattr(svc.db, "ping", down)
        r = c.post("/v1/inspect", content=images["crazing"][1].read_bytes(), headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 503 and r.json()["error"] == "log_unavailable" and "label" not in r.json()
        h = c.get("/healthz")
        assert h.status_code == 503 and h.json()["status"] == "error" and "disk I/O error" in h.json()["db"]
        monkeypatch.undo()
        assert c.post("/v1/inspect", content=images["crazing"][1].read_bytes(),
                      headers={"Content-Type": "image/jpeg"}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_engine_passes_through_to_the_extractor(model_dir, inference, images):
    """``--engine onnx`` serves the same verdicts as torch (skipped while vinspect has no onnx engine)."""
    from vinspect.features.extract import ENGINES
    from vinspect.serving.inference import InferenceService

    if "onnx" not in ENGINES:
        pytest.skip("this vinspect has no onnx engine")
    pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
    onnx = InferenceService(model_dir, engine="onnx", max_batch=2)
    assert onnx.predictor.extractor.engine_name == "onnx"
    onnx.start()
    try:
        for cls in ("crazing", "patches", "scratches"):
            pix = inference.prepare(images[cls][8].read_bytes()).pixels
            a, b = inference.predict(pix), onnx.predict(pix)
            assert a.label == b.label
            assert max(abs(a.probabilities[c] - b.probabilities[c]) for c in a.probabilities) < 1e-4
    finally:
        onnx.stop()


# -- the heatmap methods -------------------------------------------------------------------------------

def test_grad_cam_head_is_exact(inference, images):
    from vinspect.serving.heatmap import HeatmapMaker

    hm = HeatmapMaker(inference)
    p = images["scratches"][6].read_bytes()
    pix = inference.prepare(p).pixels
    v = inference.predict(pix)
    k = inference.classes.index(v.label)
    mask, info = hm.cam(pix, k)
    assert info["method"] == "layer-cam" and mask.shape == pix.shape[:2]
    assert abs(info["probability"] - v.score) < 1e-4  # the torch head reproduces the sklearn head
    assert 0 <= mask.min() and mask.max() <= 1 and mask.max() > 0.5


def test_ablation_cam_for_a_knn_head(neu_small, images):
    from vinspect.serving.heatmap import HeatmapMaker
    from vinspect.serving.inference import InferenceService

    inf = InferenceService(small_model(neu_small, head="knn"))
    hm = HeatmapMaker(inf)
    assert hm.method == "ablation-cam" and "KNeighborsClassifier" in hm.reason
    data = images["patches"][0].read_bytes()
    png, info = hm.render(data, "patches")
    assert info["method"] == "ablation-cam" and png[:8] == b"\x89PNG\r\n\x1a\n"
    pix = inf.prepare(data).pixels
    mask, _ = hm.cam(pix, 1)
    assert mask.shape == pix.shape[:2] and 0 <= mask.min() and mask.max() <= 1


# -- the database ---------------------------------------------------------------------------------------

def test_migrations_are_explicit_and_applied_once(tmp_path):
    url = f"sqlite:///{tmp_path / 'm.sqlite3'}"
    db = Database(url)
    assert db.migrate() == [1] and db.schema_version() == 1
    assert db.migrate() == []
    db.close()
    db = open_database(url)  # again: nothing to do
    with db.engine.begin() as conn:
        conn.exec_driver_sql("INSERT INTO vinspect_schema VALUES (99, 'from the future', '2030-01-01')")
    db.close()
    from vinspect.errors import BadInputError

    with pytest.raises(BadInputError, match="newer"):
        open_database(url)


def test_two_writers_on_one_sqlite_file_lose_nothing(tmp_path):
    """Two Database objects (as two service processes would) writing concurrently to one file."""
    url = f"sqlite:///{tmp_path / 'shared.sqlite3'}"
    a, b = open_database(url), open_database(url)

    def write(db, tag):
        for i in range(60):
            db.insert({"created_at": parse_time("2025-01-01"), "status": "ok", "http_status": 200,
                       "label": "x", "part_id": f"{tag}-{i}"}, image=b"\0" * 100, media_type="image/png")

    threads = [threading.Thread(target=write, args=(db, f"{tag}{k}")) for db, tag in ((a, "a"), (b, "b"))
               for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    parts = [r["part_id"] for r in a.iter_all()]
    assert len(parts) == len(set(parts)) == 8 * 60
    with a.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA integrity_check").scalar() == "ok"
    a.close()
    b.close()


def test_ok_classes_by_name_or_option(inference):
    from vinspect.errors import BadInputError
    from vinspect.serving.inference import OK_CLASS_NAMES

    assert {"intact", "ok", "good", "normal"} <= OK_CLASS_NAMES
    assert inference.ok_classes() == []  # NEU: every class is a defect
    assert inference.ok_classes(["crazing"]) == ["crazing"]
    with pytest.raises(BadInputError, match="--ok-class intact: not a class"):
        inference.ok_classes(["intact"])
    saved = inference.classes
    try:
        inference.classes = ["damaged", "Intact"]
        assert inference.ok_classes() == ["Intact"]
    finally:
        inference.classes = saved


def test_parse_time():
    from datetime import datetime

    assert parse_time("2025-03-01") == datetime(2025, 3, 1)
    assert parse_time("2025-03-01T10:00:00+02:00") == datetime(2025, 3, 1, 8)
    assert parse_time("2025-03-01T08:00:00Z") == datetime(2025, 3, 1, 8)
    now = datetime(2025, 3, 2, 12)
    assert parse_time("12h", now=now) == datetime(2025, 3, 2) and parse_time("1d", now=now) == datetime(2025, 3, 1, 12)
    assert parse_time(None) is None
    with pytest.raises(ValueError, match="ISO 8601"):
        parse_time("last tuesday")


def test_bad_database_urls_are_bad_input(tmp_path):
    from vinspect.errors import BadInputError

    with pytest.raises(BadInputError, match="in-memory"):
        Database("sqlite://")
    with pytest.raises(BadInputError, match="driver"):
        Database("nosuchdb://x/y")
    with pytest.raises(BadInputError, match="cannot open"):
        open_database(f"sqlite:///{tmp_path / 'missing-dir' / 'x.sqlite3'}")
    with pytest.raises(BadInputError, match="cannot open"):  # nothing listens there
        open_database("postgresql+psycopg://nobody@127.0.0.1:1/none?connect_timeout=2")


# -- the command line ----------------------------------------------------------------------------------

def _run_cli(*argv):
    from vinspect.cli import main

    return main([str(a) for a in argv])


def test_export_csv_for_the_quality_records(live, images, tmp_path, capsys):
    tag = f"export-{live.kind}"
    for p in images["scratches"][:3]:
        assert live.client.post("/v1/inspect", content=p.read_bytes(), params={"station": tag, "part_id": p.stem},
                                headers={"Content-Type": "image/jpeg"}).status_code == 200
    live.client.post("/v1/inspect", content=b"", params={"station": tag}, headers={"Content-Type": "image/jpeg"})
    out = tmp_path / f"{tag}.csv"
    url = live.service.db.url.render_as_string(hide_password=False)
    assert _run_cli("inspections", "export", "--db", url, "--since", "1h", "--station", tag, "--csv", out) == 0
    assert "3 inspections" in capsys.readouterr().err
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and [r["part_id"] for r in rows] == [p.stem for p in images["scratches"][:3]]
    assert {"id", "created_at", "label", "score", "p_crazing", "p_patches", "p_scratches", "model_sha256",
            "image_sha256", "latency_ms"} <= set(rows[0])
    for r in rows:
        assert abs(sum(float(r[f"p_{c}"]) for c in ("crazing", "patches", "scratches")) - 1) < 1e-5
    assert _run_cli("inspections", "export", "--db", url, "--status", "rejected", "--station", tag,
                    "--csv", out) == 0
    rej = list(csv.DictReader(out.open()))
    assert len(rej) == 1 and rej[0]["error_code"] == "empty_body"
    assert _run_cli("inspections", "export", "--db", url, "--since", "soon", "--csv", out) == 2
    assert "--since 'soon'" in capsys.readouterr().err


def test_cli_refusals_are_one_line_exit_2(tmp_path, capsys, model_dir):
    assert _run_cli("inspections", "export", "--db", f"sqlite:///{tmp_path / 'none.sqlite3'}", "--csv",
                    tmp_path / "x.csv") == 2
    err = capsys.readouterr().err
    assert "no such database file" in err and len(err.strip().splitlines()) == 1
    assert _run_cli("inspections", "export", "--db", f"sqlite:///{tmp_path / 'none.sqlite3'}") == 2
    assert "missing --csv" in capsys.readouterr().err
    assert _run_cli("inspections") == 2  # a group without its sub-command: its usage, as every group
    assert "SUBCOMMAND" in capsys.readouterr().err
    bad = tmp_path / "serve.yaml"
    bad.write_text("portt: 8123\n")  # --config: an unknown option is named, with the valid ones
    assert _run_cli("serve", "--config", bad, tmp_path / "no-model") == 2
    err = capsys.readouterr().err
    assert "unknown option 'portt' for 'serve'" in err and len(err.strip().splitlines()) == 1
    bad.write_text("port: 70000\n")  # a config value goes through the same checks as the option
    assert _run_cli("serve", "--config", bad, model_dir) == 2
    assert "--port 70000" in capsys.readouterr().err
    assert _run_cli("serve", tmp_path / "no-model") == 2
    err = capsys.readouterr().err
    assert "not a vinspect model directory" in err and len(err.strip().splitlines()) == 1
    with socket.socket() as taken:  # a port in use: refused before the model is even loaded
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert _run_cli("serve", model_dir, "--port", taken.getsockname()[1], "--db", tmp_path / "x.sqlite3") == 2
    err = capsys.readouterr().err
    assert "cannot serve on 127.0.0.1" in err and len(err.strip().splitlines()) == 1
    assert _run_cli("serve", model_dir, "--max-pixels", "0", "--port", "0", "--db", tmp_path / "y.sqlite3") == 2
    assert "--max-pixels 0" in capsys.readouterr().err


def test_serve_command_runs_and_stops_cleanly(model_dir, tmp_path, images):
    """``python -m vinspect serve``: serves on loopback, exits 0 on SIGINT."""
    import signal

    port = free_port()
    db = tmp_path / "cli.sqlite3"
    proc = start_serve_command(model_dir, port, db, "--max-batch", "1", "--threads", "1")
    try:
        r = httpx.post(f"http://127.0.0.1:{port}/v1/inspect", content=images["crazing"][0].read_bytes(),
                       headers={"Content-Type": "image/jpeg"}, timeout=30)
        assert r.status_code == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0, err
    assert open_database(f"sqlite:///{db}").list()[1] == 1
