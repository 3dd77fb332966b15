"""Helpers of the thermo tests: small simulated plates and the CLI with the thermo command wired in."""

from __future__ import annotations

import numpy as np

from vinspect.thermo.simulate import Hole, PlateSpec, SurfaceMark, MATERIALS


def small_plate(holes=((12.0, 3.0, 25.0, 25.0), (12.0, 4.0, 65.0, 25.0)), mark=(92.0, 40.0), duration=120.0,
                fps=2.0, noise=0.02, width=110.0, height=50.0, thickness=12.0) -> PlateSpec:
    """A small GFRP plate (110 x 50 px): holes given as (diameter, depth, x, y) in mm, a surface mark."""
    marks = [SurfaceMark(mark[0], mark[1], 3.0, 2.5, 0.7)] if mark else []
    return PlateSpec(material=MATERIALS["gfrp"], thickness_mm=thickness, width_mm=width, height_mm=height,
                     holes=[Hole(x, y, d, z) for d, z, x, y in holes], surface_marks=marks, fps=fps,
                     duration_s=duration, n_cold=10, noise_k=noise, fpn_k=0.02, blur_px=0.5,
                     heating_nonuniformity=0.1)


def run_cli(argv, capsys):
    """vinspect's main() on ``argv``: (exit code, stdout, stderr)."""
    from vinspect.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def power_law_sequence(n=60, h=12, w=14, fps=2.0, n_cold=5) -> np.ndarray:
    t = np.arange(1, n + 1) / fps
    rise = 4.0 / np.sqrt(t)
    seq = np.concatenate([np.zeros((n_cold, h, w)), np.broadcast_to(rise[:, None, None], (n, h, w))])
    return seq + 20.0
