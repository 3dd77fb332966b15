"""The HDF5 cache: nothing unchanged recomputed, a changed image recomputed, an interrupted run resumed."""

import importlib

import h5py
import numpy as np
import pytest
from PIL import Image

from vinspect.data import scan_folder
from vinspect.features import Extractor, extract, read_features_h5

extract_mod = importlib.import_module("vinspect.features.extract")  # the module, not the function


def _ex(**kw):
    return Extractor("efficientnet_lite0", image_size=64, batch_size=8, **kw)


def test_second_run_recomputes_nothing_and_a_changed_image_is_recomputed(generated, tmp_path):
    cache = tmp_path / "cache"
    ds = scan_folder(generated)
    first = extract(ds, _ex(), cache_dir=cache)
    assert first.stats["n_computed"] == 24 and first.stats["cache_hits"] == 0
    second = extract(ds, _ex(), cache_dir=cache)
    assert second.stats["n_computed"] == 0 and second.stats["cache_hits"] == 24
    np.testing.assert_array_equal(first.features, second.features)
    assert second.stats["images_per_second"] == pytest.approx(first.stats["images_per_second"])
    assert second.stats["images_per_second_source"] == "cache"

    target = generated / "spots" / "spots_000.png"
    arr = np.asarray(Image.open(target)).copy()
    arr[:10, :10] = 255
    Image.fromarray(arr).save(target)
    third = extract(ds, _ex(), cache_dir=cache)
    assert third.stats["n_computed"] == 1 and third.stats["cache_hits"] == 23
    i = third.relpaths.index("spots/spots_000.png")
    assert not np.allclose(third.features[i], first.features[i])
    others = [k for k in range(24) if k != i]
    np.testing.assert_array_equal(third.features[others], first.features[others])

    forced = extract(ds, _ex(), cache_dir=cache, use_cache=False)
    assert forced.stats["n_computed"] == 24
    np.testing.assert_allclose(forced.features, third.features, atol=1e-5)


def test_settings_get_their_own_cache_file(generated, tmp_path):
    ds = scan_folder(generated)
    a = extract(ds, _ex(), cache_dir=tmp_path)
    b = extract(ds, _ex(pool="max"), cache_dir=tmp_path)
    c = extract(ds, _ex(layer="blocks.4"), cache_dir=tmp_path)
    assert len({a.stats["cache_path"], b.stats["cache_path"], c.stats["cache_path"]}) == 3
    assert b.stats["n_computed"] == c.stats["n_computed"] == 24
    assert a.features.shape[1] == 320 and c.features.shape[1] == 112


def test_interrupted_extraction_keeps_its_batches_and_resumes(generated, tmp_path, monkeypatch):
    ds = scan_folder(generated)
    real = extract_mod.stream_features

    def interrupted(*a, **kw):
        for n, item in enumerate(real(*a, **kw)):
            if n == 2:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(extract_mod, "stream_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        extract(ds, _ex(), cache_dir=tmp_path)
    monkeypatch.setattr(extract_mod, "stream_features", real)
    resumed = extract(ds, _ex(), cache_dir=tmp_path)
    assert resumed.stats["cache_hits"] == 16 and resumed.stats["n_computed"] == 8


def test_features_h5_is_self_describing(generated, tmp_path):
    from conftest import add_bad_files

    bad = add_bad_files(generated, "spots")
    ds = scan_folder(generated)
    fs = extract(ds, _ex(), cache_dir=tmp_path / "c", out=tmp_path / "o" / "features.h5", keep=False)
    assert fs.features is None
    with h5py.File(tmp_path / "o" / "features.h5") as f:
        assert f["features"].shape == (24, 320)
        assert f.attrs["backbone"] == "efficientnet_lite0" and f.attrs["layer"] == "blocks.6"
        assert len(f.attrs["weights_sha256"]) == 64 and f.attrs["pool"] == "avg"
    back = read_features_h5(tmp_path / "o" / "features.h5")
    assert back.classes == ["spots", "stripes"] and len(back.hashes[0]) == 64
    assert sorted(s.path for s in back.skipped) == sorted(bad)
    again = extract(ds, _ex(), cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(again.features, back.features)
