"""The heat-conduction simulator against closed-form solutions, its ground truth and its HDF5 output."""

import json
import math

import h5py
import numpy as np
import pytest

from test_thermo_helpers import run_cli, small_plate
from vinspect.errors import BadInputError
from vinspect.thermo.io import load_ground_truth, load_sequence, save_simulation
from vinspect.thermo.simulate import (COURSE_DEPTHS_MM, COURSE_DIAMETERS_MM, MATERIALS, Hole, PlateSpec,
                                      course_plate, ground_truth, simulate, surface_response)


def _slab(t, q, mat, d):
    """Surface rise of an adiabatic slab of thickness d after a Dirac pulse q (image series)."""
    semi = q / (mat.effusivity * np.sqrt(np.pi * t))
    return semi * (1 + 2 * sum(np.exp(-(k * d) ** 2 / (mat.alpha_z * t)) for k in range(1, 100)))


@pytest.mark.parametrize("depth_mm", [None, 4.0])
def test_surface_response_matches_the_1d_solution(depth_mm):
    mat = MATERIALS["gfrp"]
    holes = [] if depth_mm is None else [Hole(5, 5, 100, depth_mm)]  # a hole wider than the plate: 1-D slab
    spec = PlateSpec(material=mat, thickness_mm=20, width_mm=10, height_mm=10, holes=holes, h_loss=0)
    t = np.array([0.5, 2, 10, 40, 100, 300.0])
    got = surface_response(spec, t, np.full((10, 10), 8000.0))[:, 5, 5]
    want = _slab(t, 8000.0, mat, (depth_mm or 20.0) * 1e-3)
    np.testing.assert_allclose(got, want, rtol=0.02)
    if depth_mm:  # the back wall of the thin slab doubles the late temperature
        assert got[-1] / (8000.0 / (mat.effusivity * math.sqrt(math.pi * 300))) > 1.9


def test_lateral_diffusion_weakens_narrow_and_deep_holes():
    spec = PlateSpec(thickness_mm=20, width_mm=90, height_mm=30, holes=[Hole(15, 15, 14, 4), Hole(45, 15, 6, 4),
                                                                       Hole(75, 15, 14, 8)], h_loss=0)
    t = np.array([20.0, 60.0, 150.0])
    T = surface_response(spec, t, np.full((30, 90), 8000.0))
    sound = T[:, 2, 45]
    c = {x: (T[:, 15, x] - sound) / sound for x in (15, 45, 75)}
    assert c[15].max() > 2 * c[45].max() > 0       # narrower: weaker
    assert c[15].max() > 2 * c[75].max() > 0       # deeper: weaker...
    assert np.argmax(c[75]) >= np.argmax(c[15])    # ...and later


def test_course_plate_geometry():
    spec = course_plate(0, jitter=False)
    assert len(spec.holes) == 16 and len(spec.surface_marks) == 3
    assert sorted({h.diameter_mm for h in spec.holes}) == list(COURSE_DIAMETERS_MM)
    assert sorted({h.depth_mm for h in spec.holes}) == list(COURSE_DEPTHS_MM)
    assert spec.thickness_mm == 20 and spec.material.name == "gfrp"
    ids, depth, surf = ground_truth(spec)
    assert ids.max() == 16 and surf.any() and not (surf & (ids > 0)).any()
    assert sorted(np.unique(depth[ids > 0]).astype(float).round(2)) == [round(d, 2) for d in COURSE_DEPTHS_MM]
    assert sum(h.depth_mm <= 10 for h in spec.holes) == 8
    # the seed draws the tolerances: two seeds differ a little, one seed is reproducible
    a, b, a2 = course_plate(1), course_plate(2), course_plate(1)
    assert a.holes == a2.holes and a.holes != b.holes
    assert max(abs(x.depth_mm - y.depth_mm) for x, y in zip(a.holes, b.holes)) <= 0.2


def test_simulate_writes_sequence_and_ground_truth(tmp_path):
    spec = small_plate(duration=40.0)
    sim = simulate(spec, seed=3)
    n = spec.n_cold + 80
    assert sim.sequence.shape == (n, 50, 110) and sim.sequence.dtype == np.float32
    assert np.allclose(sim.time_s[spec.n_cold:], np.arange(1, 81) / 2.0) and (sim.time_s[:spec.n_cold] < 0).all()
    cold = sim.sequence[: spec.n_cold]
    assert abs(float(cold.mean()) - spec.ambient_c) < 0.1
    # temporal noise of the cold frames ~ the NETD
    assert 0.7 * spec.noise_k < float(np.diff(cold, axis=0).std() / np.sqrt(2)) < 1.3 * spec.noise_k
    path = save_simulation(sim, tmp_path / "p.h5")
    with h5py.File(path) as f:
        assert f["sequence"].shape == (n, 50, 110)
        assert f["defect_mask"].dtype == np.uint8 and f["depth_map"].shape == (50, 110)
        assert f.attrs["fps"] == 2.0 and f.attrs["thickness_mm"] == 12.0
        params = json.loads(f.attrs["parameters_json"])
        assert len(params["holes"]) == 2 and params["material"]["name"] == "gfrp"
    seq = load_sequence(path)
    gt = load_ground_truth(path)
    assert seq.fps == 2.0 and seq.time_s is not None and seq.frames.shape == (n, 50, 110)
    assert gt.defect_mask.sum() == sim.defect_mask.sum() > 0
    assert sorted(np.unique(gt.depth_map[gt.defect_mask]).astype(float).round(3)) == [3.0, 4.0]
    assert gt.depth_map[~gt.defect_mask].max() == 0


def test_simulate_rejects_impossible_plates():
    with pytest.raises(BadInputError, match="inside the plate"):
        simulate(small_plate(holes=((10, 15, 20, 20),)))
    with pytest.raises(BadInputError, match="fps must be a positive"):
        simulate(PlateSpec(fps=0))


def test_cli_simulate_course_preset(tmp_path, capsys):
    out = tmp_path / "c.h5"
    code, stdout, err = run_cli(["thermo", "simulate", "--preset", "course-plate", "--seed", 5, "--out", out,
                                 "--pixel-mm", 4, "--duration", 60, "-q"], capsys)
    assert code == 0, err
    assert "16 holes (8 no deeper than 10 mm)" in stdout
    with h5py.File(out) as f:
        assert {"sequence", "defect_mask", "depth_map"} <= set(f)
        assert f["sequence"].shape == (20 + 120, 45, 45)
        assert abs(float(f["depth_map"][()].max()) - 15.7) < 0.2 and f.attrs["seed"] == 5
    code, _, err = run_cli(["thermo", "simulate", "--holes", "10x30", "--out", tmp_path / "x.h5", "-q"], capsys)
    assert code == 2 and "inside the plate" in err and "Traceback" not in err
