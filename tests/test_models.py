"""The typed model bundle and the one predictor path: a 0.1 bundle upgraded on load, validation with one-line
errors, the skops allow-list, sha256 checks, and a fine-tuned CNN served, explained and exported exactly like
a head bundle (real NEU images)."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
from pathlib import Path

import numpy as np
import pytest

from conftest import NEU, need
from vinspect.cli import main

FIXTURE = Path(__file__).parent / "fixtures" / "bundle-v1"
EXPECTED = Path(__file__).parent / "fixtures" / "bundle-v1-expected.json"


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def copy_fixture(tmp_path) -> Path:
    d = tmp_path / "v1"
    shutil.copytree(FIXTURE, d)
    return d


# -- vinspect 0.1 bundles ------------------------------------------------------------------------------

def test_a_0_1_bundle_loads_upgraded_and_predicts_as_before(capsys):
    """tests/fixtures/bundle-v1 was written by vinspect 0.1.0 (commit ef9f1e9); so were its predictions."""
    from vinspect.models.bundle import load_bundle

    b = load_bundle(FIXTURE)
    assert b.upgraded_from == 1 and b.task == "classify" and b.kind == "head"
    assert b.classes == ["crazing", "patches", "scratches"]
    assert (b.preprocessing.width, b.preprocessing.height, b.preprocessing.resize) == (64, 64, "squash")
    assert b.backbone["layer"] == "blocks.6" and b.config["head"]["name"] == "logreg"
    expected = json.loads(EXPECTED.read_text())["predictions"]
    files = [need(NEU) / e["file"] for e in expected]
    code, out, err = run(capsys, "predict", FIXTURE, *files, "--json", "-q")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["label"] for r in rows] == [e["label"] for e in expected]
    for r, e in zip(rows, expected):
        assert max(abs(r["probabilities"][c] - e["probabilities"][c]) for c in e["probabilities"]) < 1e-5


@pytest.mark.parametrize("edit, message", [
    (lambda m: {**m, "format_version": 99}, "format version 99 is newer than this vinspect reads"),
    (lambda m: {k: v for k, v in m.items() if k != "classes"}, "missing key 'classes'"),
    (lambda m: {k: v for k, v in m.items() if k != "backbone"}, "missing key 'backbone'"),
    (lambda m: {k: v for k, v in m.items() if k != "preprocessing"}, "missing key 'preprocessing'"),
    (lambda m: {**m, "format_version": "two"}, "format_version 'two' is not an integer"),
    (lambda m: [m], "expected a JSON object, got list"),
    (lambda m: {**m, "classes": ["crazing", "crazing", "scratches"]}, "classes are not unique (crazing)"),
    (lambda m: {**m, "classes": ["crazing", 7, "scratches"]}, "classes must be a non-empty list of non-empty strings"),
    (lambda m: {**m, "classes": ["crazing", "patches"]}, "lists 2 classes but the head predicts 3"),
    (lambda m: {**m, "preprocessing": {**m["preprocessing"], "mean": [0.4, 0.5, 0.5]}},
     "preprocessing mean/std/interpolation [0.4, 0.5, 0.5]/"),
])
def test_a_bad_model_json_is_one_line_and_exit_2(tmp_path, capsys, edit, message):
    d = copy_fixture(tmp_path)
    (d / "model.json").write_text(json.dumps(edit(json.loads((FIXTURE / "model.json").read_text()))))
    img = tmp_path / "x.png"
    from PIL import Image

    Image.new("RGB", (40, 40), (90, 90, 90)).save(img)
    code, out, err = run(capsys, "predict", d, img, "-q")
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_format_2_round_trip_and_sha256_checks(tmp_path):
    from vinspect.models.bundle import load_bundle, save_bundle

    b = load_bundle(FIXTURE)
    out = tmp_path / "v2"
    head = (FIXTURE / "head.skops").read_bytes()
    save_bundle(out, b, {"head.skops": lambda p: p.write_bytes(head)})
    raw = json.loads((out / "model.json").read_text())
    assert raw["format_version"] == 2 and set(raw["files"]) == {"head.skops"}
    again = load_bundle(out)
    assert again.upgraded_from is None and again.to_json() == b.to_json()
    assert not list(out.glob(".*.part"))  # nothing half-written left behind
    (out / "head.skops").write_bytes(head[:-1] + bytes([head[-1] ^ 1]))  # one bit changed
    from vinspect.errors import BadInputError

    with pytest.raises(BadInputError, match="sha256 differs"):
        load_bundle(out)
    (out / "head.skops").unlink()
    with pytest.raises(BadInputError, match="missing file"):
        load_bundle(out)


def test_a_head_that_would_run_code_is_refused_before_loading(tmp_path, capsys):
    """A skops head whose pipeline holds a function (FunctionTransformer -> builtins.exec) never loads."""
    import builtins

    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    from vinspect.models.bundle import load_bundle, save_bundle
    from vinspect.models.head import load_head

    real = load_head(FIXTURE / "head.skops")
    evil = Pipeline([("run", FunctionTransformer(builtins.exec)), *real.steps])
    d = tmp_path / "evil"
    save_bundle(d, load_bundle(FIXTURE), {"head.skops": lambda p: sio.dump(evil, p)})  # sha256 recorded: valid
    code, out, err = run(capsys, "predict", d, FIXTURE / "model.json", "-q")
    assert code == 2 and "refuses to load types outside vinspect's heads" in err, err
    assert "FunctionTransformer" in err or "builtins.exec" in err


# -- a trained CNN: predicted, served, explained and exported like a head bundle --------------------------

@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, neu_small):
    out = tmp_path_factory.mktemp("ft") / "model"
    assert main(["train", str(neu_small), "--method", "finetune", "--out", str(out), "--input-size", "64",
                 "--epochs", "1", "--head-epochs", "1", "--unfreeze", "1", "--batch-size", "8", "--patience", "0",
                 "-q"]) == 0
    return out


def test_a_finetuned_cnn_is_served_with_verdict_and_heatmap(finetuned, neu_small, tmp_path):
    httpx = pytest.importorskip("httpx")
    from serving_support import free_port, start_serve_command

    port = free_port()
    proc = start_serve_command(finetuned, port, tmp_path / "log.sqlite3", "--threads", "1")
    try:
        img = sorted((neu_small / "scratches").glob("*.jpg"))[0]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/inspect", content=img.read_bytes(),
                       headers={"Content-Type": "image/jpeg"}, timeout=60)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["label"] in ("crazing", "patches", "scratches")
        assert sum(body["probabilities"].values()) == pytest.approx(1, abs=1e-5)
        model = httpx.get(f"http://127.0.0.1:{port}/v1/model", timeout=10).json()
        assert model["kind"] == "cnn" and model["method"] == "finetune" and model["heatmap"]["method"] == "layer-cam"
        h = httpx.get(f"http://127.0.0.1:{port}{body['heatmap_url']}", timeout=120)
        assert h.status_code == 200 and h.content[:8] == b"\x89PNG\r\n\x1a\n"
        assert h.headers["x-heatmap-method"] == "layer-cam"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_a_finetuned_cnn_exports_to_onnx_with_the_same_answers(finetuned, neu_small, tmp_path, capsys):
    ort = pytest.importorskip("onnxruntime")
    from vinspect.models.bundle import load_bundle

    onnx_file = tmp_path / "ft.onnx"
    code, out, err = run(capsys, "export", finetuned, "--out", onnx_file)
    assert code == 0 and "'label', 'probabilities'" in out, err
    files = sorted(str(p) for c in ("crazing", "patches", "scratches") for p in (neu_small / c).glob("*.jpg"))[:12]
    code, out, err = run(capsys, "predict", finetuned, *files, "--json", "-q")
    assert code == 0, err
    rows = json.loads(out)
    b = load_bundle(finetuned)
    sess = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    meta = sess.get_modelmeta().custom_metadata_map
    assert json.loads(meta["classes"]) == b.classes and meta["kind"] == "cnn"
    x = np.stack([b.preprocessing.decode(f) for f in files])
    label, proba = sess.run(["label", "probabilities"], {"images": x})
    want = np.array([[r["probabilities"][c] for c in b.classes] for r in rows])
    assert np.abs(proba - want).max() < 1e-4
    assert [b.classes[i] for i in label] == [r["label"] for r in rows]


def test_explain_writes_overlays_and_peaks(finetuned, neu_small, tmp_path, capsys):
    out = tmp_path / "explain"
    code, _, err = run(capsys, "explain", finetuned, neu_small / "patches", "--out", out, "-q")
    assert code == 0, err
    rows = json.loads((out / "explain.json").read_text())
    assert len(rows) == 10
    for r in rows:
        x, y = r["peak_xy"]
        assert 0 <= x < 200 and 0 <= y < 200  # pixels of the original 200x200 image
        assert r["method"] == "layer-cam" and (out / r["overlay"]).read_bytes()[:4] == b"\x89PNG"
    code, _, err = run(capsys, "explain", finetuned, neu_small / "patches", "--label", "nope", "--out", out, "-q")
    assert code == 2 and "--label nope" in err
