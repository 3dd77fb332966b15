"""Processing, detection, depth, learned models and the analyze/evaluate commands on small simulated plates
(and on the real F1 sequence when ../shared is present)."""

import json
import math

import numpy as np
import pytest

from conftest import SHARED
from test_thermo_helpers import power_law_sequence, run_cli, small_plate
from vinspect.thermo.io import GroundTruth, Sequence, load_ground_truth, save_simulation
from vinspect.thermo.simulate import simulate

F1 = SHARED / "thermography" / "F1_seq.npy"


@pytest.fixture(scope="module")
def plates(tmp_path_factory):
    """Three small simulated plates (12 mm thick): the test plate and two for training/validation."""
    d = tmp_path_factory.mktemp("plates")
    test = small_plate()                                          # holes 12 mm wide at 3 and 4 mm, one mark
    train = small_plate(holes=((10, 2.5, 25, 25), (14, 4.5, 65, 25)))
    val = small_plate(holes=((13, 4.0, 25, 25), (11, 3.0, 65, 25)))
    return {name: save_simulation(simulate(spec, seed), d / f"{name}.h5")
            for name, spec, seed in (("test", test, 11), ("train", train, 12), ("val", val, 13))}


def test_tsr_of_a_power_law_has_slope_minus_half():
    from vinspect.thermo.processing import prepare, tsr_fit

    prep = prepare(Sequence(power_law_sequence(), fps=2.0))
    assert prep.n_cold == 5 and prep.time[0] == 0.5 and prep.time_unit == "s"
    tsr = tsr_fit(prep)
    t = np.array([1.0, 5.0, 20.0])
    np.testing.assert_allclose(tsr.evaluate(t, 1), -0.5, atol=1e-4)
    np.testing.assert_allclose(tsr.evaluate(t, 2), 0.0, atol=1e-3)
    np.testing.assert_allclose(np.exp(tsr.evaluate(t)), np.broadcast_to(4 / np.sqrt(t)[:, None, None], (3, 12, 14)),
                               rtol=1e-3)


def test_prepare_without_cold_frames_or_frame_rate_says_so():
    from vinspect.thermo.processing import prepare

    prep = prepare(Sequence(power_law_sequence(n_cold=0) - 20.0))
    assert prep.n_cold == 0 and prep.time_unit == "frame"
    assert any("no cold frames" in n for n in prep.notes) and any("frame rate unknown" in n for n in prep.notes)


def test_pct_and_ppt_highlight_the_defects(plates):
    from vinspect.thermo.analyze import process
    from vinspect.thermo.detect import score_pct, score_ppt, score_tsr
    from vinspect.thermo.io import load_sequence

    proc = process(load_sequence(plates["test"]))
    gt = load_ground_truth(plates["test"])
    assert proc.pct.eofs.shape == (6, 50, 110) and proc.pct.explained[0] > 0.9
    assert proc.ppt.phase.shape[1:] == (50, 110) and proc.ppt.freqs[0] == pytest.approx(1 / 120, rel=1e-6)
    from scipy import ndimage as ndi

    far = ~ndi.binary_dilation((gt.defect_ids > 0) | gt.surface_mask, iterations=8)   # sound, away from features
    for s in (score_tsr(proc.ti), score_pct(proc.pct), score_ppt(proc.ppt)):
        for k in (1, 2):
            assert s[gt.defect_ids == k].max() > s[far].max() + 1.0


def test_analyze_finds_both_holes_flags_the_mark_and_writes_everything(plates, tmp_path):
    from vinspect.thermo.analyze import analyze

    res = analyze(plates["test"], tmp_path / "a", method="tsr")
    for name in ("defect_map.png", "contrast_curves.png", "defects.json", "tsr_d1.png", "tsr_d2.png",
                 "pct_eofs.png", "ppt_phase.png", "cold_subtracted.png", "normalised_contrast.png"):
        assert (tmp_path / "a" / name).stat().st_size > 1000, name
    on_disk = json.loads((tmp_path / "a" / "defects.json").read_text())
    assert on_disk["defects"] == res["defects"]
    assert len(res["defects"]) == 2 and len(res["surface_marks"]) == 1
    for d in res["defects"]:
        assert {"id", "bbox", "area_px", "mean_contrast", "estimated_depth_mm"} <= set(d)
        assert d["mean_contrast"] > 0
    by_x = sorted(res["defects"], key=lambda d: d["centroid_xy"][0])
    assert abs(by_x[0]["centroid_xy"][0] - 24.5) < 2 and abs(by_x[1]["centroid_xy"][0] - 64.5) < 2
    # deeper appears later and gets a larger depth, both near the truth (3 and 4 mm; calibrated on 20 mm plates)
    assert by_x[0]["contrast_slope_peak_time"] < by_x[1]["contrast_slope_peak_time"]
    assert by_x[0]["estimated_depth_mm"] < by_x[1]["estimated_depth_mm"]
    assert 2.2 < by_x[0]["estimated_depth_mm"] < 3.8 and 3.0 < by_x[1]["estimated_depth_mm"] < 5.0


def test_metrics_scope_and_counting():
    from vinspect.thermo.metrics import score

    ids = np.zeros((30, 60), int)
    ids[5:15, 5:15] = 1     # in scope (depth 3)
    ids[5:15, 35:45] = 2    # deeper than half the thickness (8 of 10)
    depth = np.where(ids == 1, 3.0, np.where(ids == 2, 8.0, 0.0))
    gt = GroundTruth(ids, depth, thickness_mm=10.0, holes=[{"diameter_mm": 10}, {"diameter_mm": 10}])
    perfect = score(ids, {1: 3.3, 2: 8.0}, gt)
    assert perfect["pixel_f1"] == 1.0 and perfect["defects_found"] == perfect["defects_total"] == 1
    assert perfect["depth_mean_relative_error"] == pytest.approx(0.1)
    assert perfect["false_positive_regions"] == 0           # the deep defect is neither rewarded nor punished
    pred = np.zeros_like(ids)
    pred[5:15, 5:10] = 1                                    # half of the defect
    pred[20:25, 50:55] = 2                                  # a false region
    half = score(pred, {}, gt)
    assert half["defects_found"] == 1 and half["pixel_recall"] == 0.5 and half["false_positive_regions"] == 1
    assert half["depth_mean_relative_error"] is None
    flagged = score(pred, {}, gt, surface={2: True})        # flagged as a surface mark: not a defect
    assert flagged["false_positive_regions"] == 0 and flagged["pixel_precision"] == 1.0
    missed = score(np.zeros_like(ids), {}, gt)
    assert missed["pixel_f1"] == 0.0 and missed["defects_found"] == 0


def test_depth_calibration_recovers_a_known_law():
    from vinspect.thermo.depth import fit_calibration

    rng = np.random.default_rng(0)
    recs = []
    for _ in range(40):
        d, D = rng.uniform(3, 10), rng.uniform(8, 20)
        mu = math.exp((math.log(d) - 0.4 - 0.1 * math.log(D)) / 0.9 + 0.0)  # ln d = 0.4 + 0.8 ln mu + 0.1 ln D
        mu = math.exp((math.log(d) - 0.4 - 0.1 * math.log(D)) / 0.8)
        recs.append({"t_slope": (mu * 1e-3) ** 2 / 2e-7, "alpha": 2e-7, "d_eq_mm": D, "depth_mm": d})
    recs.append({"t_slope": 1000.0, "alpha": 2e-7, "d_eq_mm": 10, "depth_mm": 1.0})  # an outlier is trimmed
    cal = fit_calibration(recs)
    # ln d = b0 + b1 ln mu + b2 ln(D / mu)  with  b1 - b2 = 0.8,  b2 = 0.1
    assert cal.b2 == pytest.approx(0.1, abs=1e-6) and cal.b1 == pytest.approx(0.9, abs=1e-6)
    assert cal.n_defects == 40
    assert cal.predict(recs[0]["t_slope"], 2e-7, recs[0]["d_eq_mm"]) == pytest.approx(recs[0]["depth_mm"])


@pytest.mark.parametrize("arch", ["cnn1d", "lstm"])
def test_learned_model_trains_saves_loads_and_detects(plates, tmp_path, arch, capsys):
    import torch

    from vinspect.thermo.analyze import evaluate
    from vinspect.thermo.learn import PixelModel

    torch.set_num_threads(1)
    code, out, err = run_cli(["thermo", "train", plates["train"], "--val", plates["val"], "--arch", arch,
                              "--epochs", 12, "--patience", 3, "--out", tmp_path / "m", "-q"], capsys)
    assert code == 0, err
    m = PixelModel.load(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "model.json").read_text())
    assert m.arch == arch and 1 <= meta["epochs_run"] <= 12 and 0.05 <= meta["threshold"] <= 0.95
    hist = [h["val_loss"] for h in meta["history"]]
    assert meta["best_val_loss"] == pytest.approx(min(hist))                     # best epoch kept
    assert meta["epochs_run"] == 12 or len(hist) - 1 - int(np.argmin(hist)) == 3  # or stopped early
    res = evaluate(plates["test"], tmp_path / "ev", method=arch, model=tmp_path / "m")
    assert res["defects_found"] == 2 and res["pixel_f1"] > 0.5
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["method"] == arch


def test_cli_analyze_and_evaluate(plates, tmp_path, capsys):
    code, out, err = run_cli(["thermo", "evaluate", plates["test"], "--method", "tsr", "--out", tmp_path / "e",
                              "-q"], capsys)
    assert code == 0, err
    m = json.loads((tmp_path / "e" / "metrics.json").read_text())
    for key in ("pixel_f1", "defects_found", "defects_total", "depth_mean_relative_error", "per_defect"):
        assert key in m
    assert m["defects_total"] == 2 and m["defects_found"] == 2 and m["pixel_f1"] > 0.6
    assert m["depth_mean_relative_error"] < 0.3 and m["surface_marks_flagged"] == 1
    assert {"id", "depth_mm", "found", "pixel_f1", "estimated_depth_mm"} <= set(m["per_defect"][0])
    code, out, err = run_cli(["thermo", "analyze", plates["test"], "--method", "ppt", "--out", tmp_path / "a",
                              "-q"], capsys)
    assert code == 0, err and "defects" in out
    assert (tmp_path / "a" / "defects.json").is_file()
    code, _, err = run_cli(["thermo", "analyze", plates["test"], "--method", "lstm", "--model", tmp_path,
                            "--out", tmp_path / "b", "-q"], capsys)
    assert code == 2 and "not a thermo model" in err


def test_real_f1_sequence_defect_map(tmp_path):
    if not F1.is_file():
        pytest.skip(f"real data not found at {F1} (../shared/datasets is absent on this machine)")
    from vinspect.thermo.analyze import analyze

    res = analyze(F1, tmp_path / "f1", method="tsr")
    assert res["frames"] == 60 and res["time_unit"] == "frame"
    boxes = [d["bbox"] for d in res["defects"]]
    assert 4 <= len(boxes) <= 10
    # the large square of the top left (about x 20-35, y 16-31) is one region of about its size
    big = [b for b in boxes
           if b["x"] <= 24 and b["x"] + b["width"] >= 32 and b["y"] <= 20 and b["y"] + b["height"] >= 28]
    assert len(big) == 1 and big[0]["width"] < 25 and big[0]["height"] < 25
    # separated from the background: the defects cover a small part of the image
    assert sum(d["area_px"] for d in res["defects"]) < 0.1 * 105 * 120
    assert (tmp_path / "f1" / "defect_map.png").stat().st_size > 5000


def test_cli_evaluate_default_method(plates, tmp_path, capsys):
    from vinspect.thermo.analyze import BEST_METHOD, bundled_model

    # a 120 s sequence is outside the bundled model's time range: the default falls back to TSR, and says so
    code, out, err = run_cli(["thermo", "evaluate", plates["test"], "--out", tmp_path / "e", "-q"], capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "e" / "metrics.json").read_text())["method"] == "tsr"
    if bundled_model(BEST_METHOD) is not None:
        assert f"the default method {BEST_METHOD} does not apply here" in out
        # a course plate (coarse pixels for speed) is analysed with the bundled best model
        h5 = tmp_path / "c.h5"
        assert run_cli(["thermo", "simulate", "--seed", 7, "--pixel-mm", 3, "--out", h5, "-q"], capsys)[0] == 0
        code, out, err = run_cli(["thermo", "evaluate", h5, "--out", tmp_path / "c", "-q"], capsys)
        assert code == 0, err
        m = json.loads((tmp_path / "c" / "metrics.json").read_text())
        assert m["method"] == BEST_METHOD and m["defects_total"] == 8
