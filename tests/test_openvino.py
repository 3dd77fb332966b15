"""The openvino engine against the torch engine on real NEU images; --engine auto's choice and its fallbacks;
features of different precisions never sharing a cache file."""

import importlib
import json
import logging
import sys

import numpy as np
import pytest

from conftest import NEU, need
from vinspect.benchmark import cosine
from vinspect.cli import main
from vinspect.data import collect_images
from vinspect.errors import BadInputError
from vinspect.features import Extractor, extract
from vinspect.features import openvino_engine
from vinspect.data import scan_folder

pytest.importorskip("openvino", reason="OpenVINO is not installed")

extract_mod = importlib.import_module("vinspect.features.extract")  # the module (the package exports a function)
SIZE = 96  # small inputs keep the tests fast; the engines do not care


@pytest.fixture(scope="module")
def neu_batch():
    paths, _ = collect_images([need(NEU)])
    ex = Extractor(image_size=SIZE, engine="torch")
    return np.stack([ex.decode(p) for p in paths[7::45]])  # 40 images over the six classes


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """One folder of exported/converted models for the module (each export takes seconds)."""
    return tmp_path_factory.mktemp("models") / "onnx"


@pytest.fixture(scope="module")
def torch_features(neu_batch):
    return Extractor(image_size=SIZE, engine="torch").features(neu_batch)


def test_openvino_fp32_matches_torch_and_reloads_without_torch(neu_batch, torch_features, models):
    ov = Extractor(image_size=SIZE, engine="openvino", onnx_dir=models)
    f = ov.features(neu_batch)
    assert f.shape == torch_features.shape == (40, 320)
    assert np.abs(f - torch_features).max() <= 1e-4 * np.abs(torch_features).max()
    assert ov.openvino_path.is_file() and ov.openvino_path.parent == models.parent / "openvino"
    assert any((models.parent / "openvino" / "compiled").iterdir())  # OpenVINO's compiled-model cache
    # a second extractor reads the IR: neither the network nor the ONNX file is needed any more
    aside = ov.onnx_path.rename(ov.onnx_path.with_suffix(".aside"))
    try:
        again = Extractor(image_size=SIZE, engine="openvino", onnx_dir=models)
        again._build = None  # would fail if called
        np.testing.assert_allclose(again.features(neu_batch[:5]), f[:5], rtol=0, atol=1e-6)
        assert again.features(neu_batch[:1]).shape == (1, 320)  # a batch smaller than one infer request
    finally:
        aside.rename(ov.onnx_path)


def test_bf16_stays_close_to_fp32(neu_batch, torch_features, models):
    if not openvino_engine.native_bf16():
        pytest.skip("this CPU has no native bf16 (avx512_bf16 or amx_bf16)")
    bf = Extractor(image_size=SIZE, engine="openvino", precision="bf16", onnx_dir=models)
    f = bf.features(neu_batch)
    cos = cosine(torch_features, f)
    # measured: mean 0.996-0.997, min 0.98-0.99 (bf16 keeps 8 bits of mantissa through 17 blocks); not the
    # 0.999 the issue asks of every image, which is why auto does not pick bf16 (AUTO_BF16)
    assert cos.mean() >= 0.99 and cos.min() >= 0.97
    assert not np.allclose(f, torch_features, rtol=0, atol=1e-4 * np.abs(torch_features).max())  # really bf16


def test_int8_is_calibrated_on_the_data_and_cached_apart(neu_small, tmp_path, models):
    common = dict(image_size=SIZE, onnx_dir=models)
    ds = scan_folder(neu_small)
    cache = tmp_path / "cache"
    fp = extract(ds, Extractor(engine="openvino", **common), cache_dir=cache, progress=False)
    q = extract(ds, Extractor(engine="openvino", precision="int8", **common), cache_dir=cache, progress=False)
    assert q.stats["cache_path"] != fp.stats["cache_path"] and q.stats["n_computed"] == fp.stats["n_computed"]
    assert q.meta["precision"] == "int8" and "precision" not in fp.meta
    cos = cosine(fp.features, q.features)
    assert 0.9 <= cos.mean() < 0.99999  # quantised, not broken


def test_precisions_never_share_a_cache_file(neu_small, tmp_path, models):
    common = dict(image_size=SIZE, onnx_dir=models)
    keys = {name: Extractor(engine=e, precision=p, **common).meta for name, e, p in [
        ("torch", "torch", None), ("onnx", "onnx", None), ("openvino", "openvino", "fp32"),
        ("auto", "auto", None), ("ov-bf16", "openvino", "bf16"), ("ov-int8", "openvino", "int8"),
        ("onnx-int8", "onnx", "int8")] if p != "bf16" or openvino_engine.native_bf16()}
    fp32 = [keys[k] for k in ("torch", "onnx", "openvino", "auto")]
    assert all(m == fp32[0] for m in fp32)  # the fp32 engines agree to 1e-5: one cache
    reduced = [json.dumps(m, sort_keys=True) for k, m in keys.items() if k not in ("torch", "onnx", "openvino", "auto")]
    assert len(set(reduced)) == len(reduced) and json.dumps(fp32[0], sort_keys=True) not in reduced
    # through the pipeline: an openvino fp32 run reuses torch's features, a bf16 run computes its own
    ds = scan_folder(neu_small)
    cache = tmp_path / "cache"
    t = extract(ds, Extractor(engine="torch", **common), cache_dir=cache, progress=False)
    o = extract(ds, Extractor(engine="openvino", **common), cache_dir=cache, progress=False)
    assert o.stats["cache_path"] == t.stats["cache_path"] and o.stats["n_computed"] == 0
    if openvino_engine.native_bf16():
        b = extract(ds, Extractor(engine="openvino", precision="bf16", **common), cache_dir=cache, progress=False)
        assert b.stats["cache_path"] != t.stats["cache_path"] and b.stats["n_computed"] == t.stats["n_computed"]


def test_auto_falls_back_without_openvino(monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    monkeypatch.setattr(extract_mod, "_announced", set())
    with caplog.at_level(logging.INFO, logger="vinspect.engine"):
        ex = Extractor(image_size=SIZE)  # the default engine
        Extractor(image_size=SIZE, engine="auto")
    if extract_mod.DEFAULT_ENGINE == "auto":
        assert ex.engine_name == "onnx"
    auto = Extractor(image_size=SIZE, engine="auto")
    assert (auto.engine_name, auto.precision) == ("onnx", "fp32")
    assert "OpenVINO is not installed" in auto.engine_reason
    said = [r for r in caplog.records if r.name == "vinspect.engine"]
    assert len(said) == 1 and said[0].levelno == logging.WARNING and "\n" not in said[0].getMessage()
    with pytest.raises(BadInputError, match="OpenVINO is not installed"):
        Extractor(image_size=SIZE, engine="openvino")
    # without onnxruntime either: torch
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    assert Extractor(image_size=SIZE, engine="auto").engine_name == "torch"


def test_auto_rule_on_cpus_with_and_without_bf16(monkeypatch):
    monkeypatch.setattr(openvino_engine, "cpu_flags", lambda: ["avx2", "avx512f"])
    ex = Extractor(image_size=SIZE, engine="auto")
    assert (ex.engine_name, ex.precision) == ("openvino", "fp32") and "no native bf16" in ex.engine_reason
    asked = Extractor(image_size=SIZE, engine="auto", precision="bf16")  # falls back, saying why
    assert asked.precision == "fp32" and "no bf16 instructions" in asked.engine_reason
    with pytest.raises(BadInputError, match="no bf16 instructions"):
        Extractor(image_size=SIZE, engine="openvino", precision="bf16")
    monkeypatch.setattr(openvino_engine, "cpu_flags", lambda: ["avx2", "avx512f", "avx512_bf16"])
    assert Extractor(image_size=SIZE, engine="auto").precision == "fp32"  # AUTO_BF16 off: see extract.py
    monkeypatch.setattr(extract_mod, "AUTO_BF16", True)
    assert Extractor(image_size=SIZE, engine="auto").precision == "bf16"
    assert Extractor(image_size=SIZE, engine="auto", precision="int8").engine_name == "openvino"
    with pytest.raises(BadInputError, match="torch engine runs fp32"):
        Extractor(image_size=SIZE, engine="torch", precision="int8")


def test_evaluate_records_engine_precision_and_cpu_flags(neu_small, tmp_path):
    assert main(["evaluate", str(neu_small), "--out", str(tmp_path / "r"), "--image-size", str(SIZE), "-q",
                 "--cache", str(tmp_path / "c"), "--splits", "2", "--engine", "openvino", "--precision", "fp32"]) == 0
    r = json.loads((tmp_path / "r" / "results.json").read_text())
    assert (r["engine"], r["precision"]) == ("openvino", "fp32")
    assert r["engine_reason"] and r["cpu_flags"] == openvino_engine.cpu_flags()
    assert r["accuracy_mean"] > 0.5  # 3 real classes, 30 images
