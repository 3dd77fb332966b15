"""The onnx engine and the single-file export against the torch engine, on real NEU images."""

import json

import numpy as np
import onnxruntime as ort
import pytest
from PIL import Image

from conftest import NEU, need
from vinspect.cli import main
from vinspect.data import collect_images
from vinspect.features import Extractor


@pytest.fixture(scope="module")
def neu_sample():
    paths, _ = collect_images([need(NEU)])
    return paths[::30]  # 60 images over the six classes


def test_onnx_features_match_torch(neu_sample, tmp_path):
    et = Extractor(image_size=128)
    eo = Extractor(image_size=128, engine="onnx", onnx_dir=tmp_path)
    batch = np.stack([et.decode(p) for p in neu_sample])
    ft, fo = et.features(batch), eo.features(batch)
    assert ft.shape == fo.shape == (60, 320)
    assert np.abs(ft - fo).max() <= 1e-4 * np.abs(ft).max()
    assert eo.onnx_path.is_file() and eo.onnx_path.parent == tmp_path
    # a second extractor loads the exported file without rebuilding the network
    again = Extractor(image_size=128, engine="onnx", onnx_dir=tmp_path)
    again._build = None  # would fail if called
    np.testing.assert_array_equal(again.features(batch[:4]), fo[:4])


def test_engines_share_the_cache_and_give_the_same_labels(capsys, neu_small, tmp_path):
    common = ["--image-size", "96", "-q", "--cache", str(tmp_path / "c"), "--splits", "3"]
    assert main(["evaluate", str(neu_small), "--out", str(tmp_path / "t"), *common]) == 0
    assert main(["evaluate", str(neu_small), "--out", str(tmp_path / "o"), "--engine", "onnx", *common,
                 "--no-cache"]) == 0
    t = json.loads((tmp_path / "t" / "results.json").read_text())
    o = json.loads((tmp_path / "o" / "results.json").read_text())
    assert t["cache_path"] == o["cache_path"]  # same features, same cache
    assert o["n_computed"] == t["n_computed"] >= 29 and o["cache_hits"] == 0  # (NEU holds one duplicate)
    assert o["confusion_matrix"] == t["confusion_matrix"]

    model = tmp_path / "m"
    assert main(["train", str(neu_small), "--out", str(model), "--image-size", "96", "-q", "--eval-splits", "0",
                 "--cache", str(tmp_path / "c")]) == 0
    capsys.readouterr()
    preds = {}
    for engine in ("torch", "onnx"):
        assert main(["predict", str(model), str(neu_small), "--json", "-q", "--engine", engine]) == 0
        preds[engine] = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in preds["torch"]] == [r["label"] for r in preds["onnx"]]
    for a, b in zip(preds["torch"], preds["onnx"]):
        for c in a["probabilities"]:
            assert a["probabilities"][c] == pytest.approx(b["probabilities"][c], abs=1e-4)


@pytest.mark.parametrize("head", ["logreg", "svm-linear", "knn"])
def test_exported_model_runs_without_vinspect(capsys, neu_small, tmp_path, head):
    model = tmp_path / "m"
    assert main(["train", str(neu_small), "--out", str(model), "--image-size", "96", "-q", "--eval-splits", "0",
                 "--head", head]) == 0
    capsys.readouterr()
    assert main(["export", str(model), "--format", "onnx"]) == 0
    assert "model.onnx" in capsys.readouterr().out
    held_out = [str(p) for c in ("crazing", "patches", "scratches") for p in sorted((NEU / c).glob("*.jpg"))[10:16]]
    assert main(["predict", str(model), *held_out, "--json", "-q"]) == 0
    expected = json.loads(capsys.readouterr().out)

    # plain onnxruntime + PIL, as in the README
    sess = ort.InferenceSession(str(model / "model.onnx"))
    meta = sess.get_modelmeta().custom_metadata_map
    classes, pre = json.loads(meta["classes"]), json.loads(meta["preprocessing"])
    size = pre["input_size"]
    def load(path):  # draft: JPEG decoded at a reduced DCT scale no smaller than the input, as vinspect does
        im = Image.open(path)
        im.draft("RGB", (size, size))
        return np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC))

    imgs = np.stack([load(r["path"]) for r in expected])
    label, proba = sess.run(["label", "probabilities"], {"images": imgs})
    assert [classes[i] for i in label] == [r["label"] for r in expected]
    want = np.array([[r["probabilities"][c] for c in classes] for r in expected])
    assert np.abs(proba - want).max() <= 1e-4


def test_int8_quantisation_is_its_own_cache_and_bundle(capsys, neu_small, tmp_path):
    model = tmp_path / "m8"
    assert main(["train", str(neu_small), "--out", str(model), "--image-size", "96", "-q", "--eval-splits", "0",
                 "--engine", "onnx", "--quantize", "int8", "--cache", str(tmp_path / "c")]) == 0
    meta = json.loads((model / "model.json").read_text())
    assert meta["config"]["quantize"] == "int8" and (model / "backbone_int8.onnx").is_file()
    assert meta["files"]["backbone_int8.onnx"]  # its sha256, checked on load
    capsys.readouterr()
    assert main(["predict", str(model), str(neu_small / "scratches"), "--json", "-q"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 10 and sum(r["label"] == "scratches" for r in rows) >= 8
    assert main(["evaluate", str(neu_small), "--quantize", "int8", "-q"]) == 2  # int8 needs --engine onnx


def test_benchmark_command_writes_every_key(capsys, neu_small, tmp_path):
    out = tmp_path / "bench"
    assert main(["benchmark", str(neu_small), "--n", "24", "--repeats", "1", "--naive-n", "4", "-q",
                 "--cache", str(tmp_path / "c"), "--out", str(out)]) == 0
    r = json.loads((out / "benchmark.json").read_text())
    assert r["n_images"] == 24 and r["naive_images_per_second"] > 0 and r["peak_rss_mb"] > 0
    assert r["cores"] >= 1 and r["cpu_model"]
    for engine in ("torch", "onnx"):
        e = r["engines"][engine]
        assert e["images_per_second"] > 0 and e["latency_ms_p50"] > 0
    assert r["parity_vs_torch"]["onnx"]["max_abs_diff_relative"] < 1e-4
    assert "naive loop" in (out / "benchmark.txt").read_text()


def test_parity_measures_differences():
    from vinspect.benchmark import parity

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(40, 8)).astype(np.float32)
    labels = ["a" if x > 0 else "b" for x in ref[:, 0]]
    same = parity(ref, ref.copy(), labels)
    assert same["max_abs_diff"] == 0 and same["labels_identical_fraction"] == 1.0
    flipped = ref.copy()
    flipped[:, 0] *= -1
    worse = parity(ref, flipped, labels)
    assert worse["max_abs_diff_relative"] > 0.1 and worse["labels_identical_fraction"] < 0.9
