"""vinspect.data.elpv against the real ELPV data of the pip package elpv-dataset (skipped without it)."""

import numpy as np
import pytest
from PIL import Image

from vinspect.data import scan_folder


def test_materialize_matches_package_data(tmp_path):
    utils = pytest.importorskip("elpv_dataset.utils", reason="pip install elpv-dataset")
    from vinspect.data.elpv import materialize

    images, probs, types = utils.load_dataset()  # the package's own reader, independent of ours
    out = tmp_path / "elpv"
    stats: dict = {}
    counts = materialize(out, stats=stats)

    # labels.csv lists cell0001.png .. cell2624.png in order, so index i is cell{i+1:04d}.png
    expected = {"functional": {f"cell{i + 1:04d}.png" for i in np.flatnonzero(probs == 0.0)},
                "defective": {f"cell{i + 1:04d}.png" for i in np.flatnonzero(probs == 1.0)}}
    assert sorted(p.name for p in out.iterdir()) == ["defective", "functional"]
    for cls, names in expected.items():
        assert {p.name for p in (out / cls).iterdir()} == names
        assert counts[cls] == len(names) > 0
    assert stats["copied"] == sum(counts.values()) < len(probs)  # the 1/3 and 2/3 cells are left out

    for cls in expected:
        for p in (out / cls).iterdir():
            with Image.open(p) as im:
                assert im.size == (300, 300) and im.mode == "L"
    for i in (int(np.flatnonzero(probs == 0.0)[0]), int(np.flatnonzero(probs == 1.0)[-1])):
        cls = "functional" if probs[i] == 0.0 else "defective"
        assert np.array_equal(np.asarray(Image.open(out / cls / f"cell{i + 1:04d}.png")), images[i])

    ds = scan_folder(out)
    assert ds.class_counts() == counts and not ds.skipped

    # a re-run writes nothing new; --type mono keeps only the mono cells and removes the others
    again: dict = {}
    assert materialize(out, stats=again) == counts and again["copied"] == 0
    mono = materialize(out, cell_type="mono")
    assert mono["functional"] == int(((probs == 0.0) & (types == "mono")).sum())
    assert mono["defective"] == int(((probs == 1.0) & (types == "mono")).sum())
    assert {c: len(list((out / c).iterdir())) for c in expected} == mono
