import os

import numpy as np
import pytest

from conftest import WEAR, draw_class_images, need
from vinspect.data import check_class_sizes, parse_class_map, repeated_splits, scan_folder
from vinspect.errors import BadInputError


def test_classes_merge_the_wear_grades_into_the_lab_task():
    ds = scan_folder(need(WEAR), ["intact=low,medium", "damaged=high"])
    assert ds.classes == ["damaged", "intact"]
    assert ds.class_counts() == {"damaged": 42, "intact": 36 + 124}
    assert all(ds.classes[y] == ("damaged" if p.parent.name == "high" else "intact")
               for p, y in zip(ds.paths, ds.labels))


def test_class_map_parsing():
    assert parse_class_map(["ok=a,b", "bad=c"]) == {"a": "ok", "b": "ok", "c": "bad"}
    assert parse_class_map({"ok": ["a", "b"], "bad": "c"}) == {"a": "ok", "b": "ok", "c": "bad"}
    assert parse_class_map(["a", "b"]) == {"a": "a", "b": "b"}
    with pytest.raises(BadInputError, match="mapped to both"):
        parse_class_map(["x=a", "y=a"])
    with pytest.raises(BadInputError, match="expected NEW=FOLDER"):
        parse_class_map(["x="])


def test_refusals_name_the_problem(tmp_path, generated):
    with pytest.raises(BadInputError, match="no such directory"):
        scan_folder(tmp_path / "missing")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(BadInputError, match="not a directory"):
        scan_folder(tmp_path / "file.png")
    (generated / "empty_class").mkdir()
    with pytest.raises(BadInputError, match="without images: empty_class"):
        scan_folder(generated)
    with pytest.raises(BadInputError, match="found 1 class"):
        scan_folder(generated, ["spots"])
    with pytest.raises(BadInputError, match="does not have"):
        scan_folder(generated, ["a=nope", "spots"])
    assert scan_folder(generated, ["spots", "stripes"]).class_counts() == {"spots": 12, "stripes": 12}


def test_non_images_and_loose_files_are_listed(generated):
    (generated / "readme.md").write_text("x")
    (generated / "spots" / "notes.txt").write_text("x")
    ds = scan_folder(generated)
    reasons = {s.path: s.reason for s in ds.skipped}
    assert "not an image file" in reasons["spots/notes.txt"]
    assert "top level" in reasons["readme.md"]
    assert len(ds) == 24


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads every folder, permissions cannot be tested")
def test_unreadable_subfolder_is_listed(generated):
    sub = generated / "spots" / "locked"
    draw_class_images(sub, "spots", 2)
    sub.chmod(0)
    try:
        ds = scan_folder(generated)
        assert any("unreadable folder" in s.reason for s in ds.skipped)
    finally:
        sub.chmod(0o755)


def test_splits_are_stratified_and_reproducible():
    y = np.array([0] * 30 + [1] * 10)
    a = list(repeated_splits(y, 5, 0.3, seed=7))
    b = list(repeated_splits(y, 5, 0.3, seed=7))
    c = list(repeated_splits(y, 5, 0.3, seed=8))
    assert all((ta == tb).all() and (ea == eb).all() for (ta, ea), (tb, eb) in zip(a, b))
    assert any((ta != tc).any() for (ta, _), (tc, _) in zip(a, c))
    for tr, te in a:
        assert len(te) == 12 and (y[te] == 1).sum() == 3 and not set(tr) & set(te)
    folds = list(repeated_splits(y, kfold=5, seed=0))
    assert sorted(np.concatenate([te for _, te in folds]).tolist()) == list(range(40))


def test_too_small_classes_are_refused_before_any_work():
    y = [0] * 10 + [1] * 3
    with pytest.raises(BadInputError, match=r"b \(3\).*at least 4"):
        check_class_sizes(y, ["a", "b"], test_size=0.3)
    with pytest.raises(BadInputError, match=r"5-fold"):
        check_class_sizes(y, ["a", "b"], kfold=5)
    check_class_sizes(y, ["a", "b"], kfold=3)
    with pytest.raises(BadInputError, match="between 0 and 1"):
        check_class_sizes(y, ["a", "b"], test_size=1.5)
