"""Wear measurement: VB on synthetic bands of known width (straight and tilted edges, every edge side), the
breakage flag, real inserts with their annotated masks, the scale bar, the CLI, and grading's protocol."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vinspect.errors import BadInputError
from vinspect.wear.measure import measure

from conftest import SHARED
from conftest import need as _need

WEAR = SHARED / "insert-wear"


def synthetic_insert(width: int, slope: float = 0.0, notch: tuple[int, int, int] | None = None,
                     h: int = 120, w: int = 260) -> tuple[np.ndarray, np.ndarray]:
    """A bright insert above a straight edge y = 95 + slope (x - 130) on a dark background, and a wear band
    of ``width`` px measured perpendicular to that edge along x in 60..200; ``notch``: (x0, x1, depth) cut
    out of the edge."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    edge_y = 95 + slope * (xx - 130)
    grey = np.where((yy + 0.5 <= edge_y) & (yy >= 15) & (xx >= 20) & (xx < 240), 150, 5).astype(np.uint8)
    d = (edge_y - (yy + 0.5)) / np.sqrt(1 + slope ** 2)  # perpendicular distance of the pixel centre
    band = (grey > 0) & (grey == 150) & (d < width) & (xx >= 60) & (xx < 200)
    if notch is not None:
        x0, x1, depth = notch
        cut = (xx >= x0) & (xx < x1) & (yy + 0.5 > edge_y - depth)
        grey[cut] = 5
        band &= ~cut
    return grey, band.astype(np.uint8)


@pytest.mark.parametrize("width", [1, 4, 9, 17])
@pytest.mark.parametrize("slope", [0.0, 0.05, -0.12])
def test_vb_of_a_band_of_known_width_is_exact_to_one_pixel(width, slope):
    grey, band = synthetic_insert(width, slope)
    wm, _ = measure(grey, band)
    assert abs(wm.vb_max - width) <= 1.0 and abs(wm.vb_mean - width) <= 1.0
    assert abs(wm.worn_length - 140 * np.sqrt(1 + slope ** 2)) <= 3  # the band's length along the edge
    assert wm.area == band.sum() and not wm.breakage
    assert abs(wm.edge_angle_deg - np.degrees(np.arctan(slope))) < 0.5
    assert wm.vb_mean_edge < wm.vb_mean  # unworn parts of the edge count 0


def test_straight_band_is_exact():
    grey, band = synthetic_insert(7)
    wm, _ = measure(grey, band, mm_per_px=0.01)
    assert wm.vb_max == pytest.approx(7.0) and wm.vb_mean == pytest.approx(7.0)
    d = wm.as_dict()
    assert d["vb_max_mm"] == pytest.approx(0.07) and d["area_mm2"] == pytest.approx(band.sum() * 1e-4)


@pytest.mark.parametrize("side", ["top", "left", "right"])
def test_other_edge_sides_give_the_same_vb(side):
    grey, band = synthetic_insert(6, 0.03)
    turn = {"top": lambda a: a[::-1], "left": lambda a: np.rot90(a, -1), "right": lambda a: np.rot90(a, 1)}[side]
    wm0, _ = measure(grey, band)
    wm, _ = measure(np.ascontiguousarray(turn(grey)), np.ascontiguousarray(turn(band)), edge=side)
    assert wm.vb_max == pytest.approx(wm0.vb_max, abs=1e-6) and wm.area == wm0.area
    *_, x1, y1 = wm.vb_max_at
    assert turn(band)[round(y1), round(x1)]  # the VB max segment ends on the wear land


def test_breakage_flag_finds_a_notch_and_stray_regions_are_not_flank_wear():
    grey, band = synthetic_insert(5, notch=(120, 140, 12))
    wm, _ = measure(grey, band)
    assert wm.breakage and wm.notch_depth == pytest.approx(12, abs=1)
    grey2, band2 = synthetic_insert(5)
    band2[30:40, 100:110] = 1  # a blob far inside the insert: not flank wear
    wm2, geo = measure(grey2, band2)
    assert not wm2.breakage and wm2.vb_max <= 6 and not geo["kept"][35, 105]


def test_real_inserts_measured_on_their_annotated_masks():
    from vinspect.segment.masks import read_mask

    root = _need(WEAR)
    for g in ("low", "high"):
        for p in sorted((root / "images" / g).glob("*.png"))[:3]:
            img = Image.open(p)
            grey = np.asarray(img.convert("L"))
            m = read_mask(root / "masks-cropped" / g / p.name, img.size)
            if not m.any():
                continue
            wm, geo = measure(grey, m)
            assert 2 <= wm.vb_max <= 60 and wm.vb_mean <= wm.vb_max and wm.worn_length > 20
            assert abs(wm.edge_angle_deg) < 10  # the cutting edge of these crops is the bottom outline
            e = geo["edge"]
            rows = np.flatnonzero(m.any(axis=1))
            assert abs(e.y((e.x0 + e.x1) / 2) - rows.max()) < 8  # the wear land lies on the fitted edge


def test_scale_bar_is_found():
    from vinspect.wear.scale import find_scale_bar

    grey, _ = synthetic_insert(5)
    grey[108:111, 150:230] = 255
    n, box = find_scale_bar(grey)
    assert n == 80 and box == (150, 108, 229, 110)
    assert find_scale_bar(synthetic_insert(5)[0]) is None


@pytest.fixture(scope="module")
def wear_small(tmp_path_factory) -> Path:
    """8 low and 8 high real inserts with their cropped masks."""
    src = _need(WEAR)
    dst = tmp_path_factory.mktemp("wear_small")
    for g in ("low", "high"):
        (dst / "images" / g).mkdir(parents=True)
        (dst / "masks" / g).mkdir(parents=True)
        for p in sorted((src / "images" / g).glob("*.png"))[:8]:
            shutil.copy(p, dst / "images" / g / p.name)
            shutil.copy(src / "masks-cropped" / g / p.name, dst / "masks" / g / p.name)
    return dst


def test_wear_measure_cli_with_masks(wear_small, tmp_path):
    from vinspect.cli import main

    out = tmp_path / "wear.csv"
    assert main(["wear", "measure", str(wear_small / "images"), "--masks", str(wear_small / "masks"), "--csv",
                 str(out), "--mm-per-px", "0.01", "--plots", str(tmp_path / "plots"), "-q"]) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 16 and {r["path"].split("/")[0] for r in rows} == {"low", "high"}
    for r in rows:
        assert float(r["vb_max_mm"]) == pytest.approx(float(r["vb_max"]) * 0.01, abs=1e-4)
    assert len(list((tmp_path / "plots").rglob("*.png"))) == 16
    # high wear has wider lands than low wear on these inserts
    vb = {g: np.median([float(r["vb_max"]) for r in rows if r["path"].startswith(g)]) for g in ("low", "high")}
    assert vb["high"] > vb["low"]


def test_wear_measure_refuses_missing_masks_and_two_scales(wear_small, tmp_path):
    from vinspect.pipeline.wear import measure_folder

    partial = tmp_path / "masks"
    shutil.copytree(wear_small / "masks" / "low", partial / "low")  # the high masks are missing
    with pytest.raises(BadInputError, match=r"no mask for 8 image\(s\): high/"):
        measure_folder([wear_small / "images"], tmp_path / "x.csv", masks=partial)
    with pytest.raises(BadInputError, match="exclude each other"):
        measure_folder([wear_small / "images"], tmp_path / "x.csv", masks=wear_small / "masks", mm_per_px=0.01,
                       scale_bar_mm=1.0)


def test_wear_grade_protocol_on_given_predicted_masks(wear_small, tmp_path):
    """The protocol's mechanics: the same keys as vinspect evaluate, every variant on the same splits, and the
    headline is, in every split, exactly the candidate its inner CV chose."""
    from vinspect.cli import main
    from vinspect.wear.grade import CNN, NESTED

    out = tmp_path / "grade"
    assert main(["wear", "grade", str(wear_small / "images"), "--masks", str(wear_small / "masks"),
                 "--predicted", str(wear_small / "masks"), "--splits", "2", "--inner-folds", "2", "--out", str(out),
                 "-q"]) == 0
    r = json.loads((out / "results.json").read_text())
    for k in ("accuracy_mean", "accuracy_std", "balanced_accuracy_mean", "per_split", "confusion_matrix",
              "per_class", "majority_baseline", "class_counts", "splits", "test_size", "seed"):
        assert k in r
    assert r["variant"] == NESTED and len(r["per_split"]) == 2
    v = r["variants"]
    for name in ("wear measures, logistic regression", "wear measures, random forest (300 trees)",
                 "VB max thresholds (ordinal)", CNN):
        assert name in v and "TRUE masks (reference): " + name in v and len(v[name]["per_split"]) == 2
    assert r["cnn"]["dim"] > 100 and r["cnn"]["components"] == 16
    assert len(r["chosen"]) == 2 and sum(r["chosen_counts"].values()) == 2 and r["inner_folds"] == 2
    for i, (name, inner) in enumerate(zip(r["chosen"], r["inner_accuracy"])):
        assert inner[name] == max(inner.values())  # the best on the training part's inner folds
        assert r["per_split"][i] == v[name]["per_split"][i]  # and scored as that candidate on the test part
    assert sum(map(sum, r["confusion_matrix"])) == 2 * 5  # 30 % of 16 images, twice
    assert len(v["VB max thresholds (ordinal)"]["thresholds_px"]) == 2


def test_vb_thresholds_classifier_recovers_known_cuts():
    from sklearn.base import clone

    from vinspect.wear.grade import VBThresholds

    rng = np.random.default_rng(0)
    vb = rng.uniform(0, 20, 300)
    grade = np.searchsorted([6.0, 13.0], vb)  # 0 below 6 px, 1 up to 13 px, 2 above
    labels = np.array([2, 0, 1])[grade]  # class labels in another order than the grades
    X = np.column_stack([rng.normal(size=300), vb])
    m = clone(VBThresholds(column=1, order=(2, 0, 1))).fit(X, labels)
    assert abs(m.thresholds_[0] - 6.0) < 0.3 and abs(m.thresholds_[1] - 13.0) < 0.3
    assert (m.predict(X) == labels).mean() == 1.0 and list(m.classes_) == [0, 1, 2]


def test_inner_cv_chooses_the_candidate_that_fits_and_ties_go_first():
    """A grade that is not monotone in any measure (a band of one measure) only the forest can learn: the inner
    CV on the training data picks it; equal scores keep the earlier candidate (the logistic regression)."""
    from vinspect.wear.grade import FEATURES, LR, RF, candidates, choose, inner_scores

    rng = np.random.default_rng(1)
    n = 200
    W = rng.normal(size=(n, len(FEATURES)))
    y = (np.abs(W[:, 5]) < 0.7).astype(int)
    scores = inner_scores(candidates(len(FEATURES), 0, [0, 1]), W, y, 3, 0)
    assert choose(scores) == RF and scores[RF] > 0.8 and scores[LR] < 0.7
    assert choose({LR: 0.7, RF: 0.7}) == LR


def test_wear_grade_trains_a_segmenter_inside_each_split(wear_small, tmp_path):
    """Without --predicted: a segmenter per split, trained on that split's training masks only (tiny here)."""
    from vinspect.cli import main

    out = tmp_path / "grade"
    assert main(["wear", "grade", str(wear_small / "images"), "--masks", str(wear_small / "masks"), "--splits", "2",
                 "--epochs", "1", "--input-size", "160x64", "--no-cnn", "--inner-folds", "2", "--out", str(out),
                 "-q"]) == 0
    r = json.loads((out / "results.json").read_text())
    assert r["masks"] == "segmenter trained inside each split" and len(r["per_split"]) == 2
    assert not list(out.glob(".split*.ckpt"))  # each split's checkpoint is removed once it is done
