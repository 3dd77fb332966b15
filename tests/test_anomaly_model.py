"""An anomaly model through the common model path: vinspect anomaly train -> bundle -> load_predictor ->
predict (label, score, threshold, maps at the image's size) -> export of the feature part -> the service."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import SHARED, need

MT = SHARED / "magnetic-tile"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A PatchCore model trained on 30 real defect-free tiles (96 px input, 10 % coreset)."""
    src = need(MT)
    root = tmp_path_factory.mktemp("tiles_train")
    (root / "free").mkdir()
    for p in sorted((src / "images" / "free").glob("*.jpg"))[:30]:
        shutil.copy(p, root / "free" / p.name)
    out = root.parent / "model"
    from vinspect.cli import main

    rc = main(["anomaly", "train", str(root), "--normal", "free", "--image-size", "96x112", "--coreset", "0.1",
               "--out", str(out), "-q"])
    assert rc == 0
    return out


def test_bundle_and_prediction(trained, tmp_path):
    from PIL import Image

    from vinspect.models.bundle import load_bundle
    from vinspect.models.predictor import load_predictor

    b = load_bundle(trained)
    assert (b.task, b.kind, b.classes) == ("anomaly", "patchcore", ["normal", "anomalous"])
    assert b.config["threshold"] is not None and "out-of-fold" in b.training["threshold_rule"]
    assert (b.preprocessing.width, b.preprocessing.height, b.preprocessing.resize) == (96, 112, "squash")
    pred = load_predictor(trained)
    crack = sorted((MT / "images" / "crack").glob("*.jpg"))[0]
    free = sorted((MT / "images" / "free").glob("*.jpg"))[-1]  # not among the 30 training tiles
    rows, skipped = pred.predict([crack, free], progress=False)
    assert not skipped and [Path(r["path"]).name for r in rows] == [crack.name, free.name]
    for r in rows:
        assert set(r) >= {"path", "label", "score", "threshold"} and r["label"] in ("normal", "anomalous")
        assert r["label"] == ("anomalous" if r["score"] > r["threshold"] else "normal")
    # the map: over the model input, and at the original image's size after explain
    p = pred.predict_pixels(pred.decode(crack)[None])[0]
    assert p.map.shape == (112, 96) and p.extra["threshold"] == pytest.approx(b.config["threshold"])
    e = pred.explain(crack)
    assert e.map.shape == Image.open(crack).size[::-1]


def test_predict_cli_json_and_maps(trained, tmp_path, capsys):
    from vinspect.cli import main

    imgs = sorted((MT / "images" / "blowhole").glob("*.jpg"))[:2]
    rc = main(["predict", str(trained), *map(str, imgs), "--json", "--maps", str(tmp_path / "maps"), "-q"])
    assert rc == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 2 and all({"path", "label", "score", "threshold"} <= set(r) for r in rows)
    assert len(list((tmp_path / "maps").rglob("*.png"))) == 2


def test_export_writes_the_feature_part(trained, tmp_path):
    import onnxruntime as ort
    import torch

    from vinspect.models.predictor import load_predictor

    pred = load_predictor(trained)
    path = pred.export_onnx(tmp_path / "features.onnx")
    x = pred.decode(sorted((MT / "images" / "free").glob("*.jpg"))[-1])[None]
    got = ort.InferenceSession(str(path)).run(None, {"images": x})[0]
    with torch.inference_mode():
        want = pred.model.net(torch.from_numpy(x)).numpy()
    assert got.shape == want.shape and np.abs(got - want).max() < 1e-3 * np.abs(want).max()


def test_served_anomaly_model_answers_with_a_map(trained, tmp_path):
    pytest.importorskip("fastapi", reason="the serving dependencies are not installed")
    httpx = pytest.importorskip("httpx")
    from serving_support import LiveServer, shared_inference

    from vinspect.serving.app import Service, create_app

    inf = shared_inference(trained)  # started and warmed up, as the service runs it
    svc = Service(trained, db=f"sqlite:///{tmp_path / 'a.sqlite3'}", inference=inf, request_timeout_s=300)  # a loaded CPU
    img = sorted((MT / "images" / "break").glob("*.jpg"))[0]
    with LiveServer(create_app(svc)) as srv, httpx.Client(base_url=srv.url, timeout=60) as c:
        r = c.post("/v1/inspect", files={"file": (img.name, img.read_bytes(), "image/jpeg")})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] in ("normal", "anomalous") and isinstance(body["score"], float)
        h = c.get(body["heatmap_url"])
        assert h.status_code == 200 and h.headers["content-type"] == "image/png" and h.content[:4] == b"\x89PNG"
