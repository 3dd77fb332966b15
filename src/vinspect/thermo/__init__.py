"""Active (pulsed) infrared thermography: read sequences, process them (cold-image subtraction, TSR, PCT, PPT),
detect subsurface defects (unsupervised maps, or 1-D CNN / LSTM per-pixel classifiers), estimate their depth,
simulate plates with ground truth, score against it.

    from vinspect.thermo import load_sequence, analyze, simulate, course_plate
    sim = simulate(course_plate(seed=0), seed=0)
    analyze("../shared/datasets/thermography/F1_seq.npy", "runs/f1")
"""

_API = {
    "load_sequence": "io", "Sequence": "io", "save_simulation": "io", "load_ground_truth": "io",
    "simulate": "simulate", "course_plate": "simulate", "random_plate": "simulate", "PlateSpec": "simulate",
    "Hole": "simulate", "MATERIALS": "simulate",
    "analyze": "analyze", "evaluate": "analyze", "process": "analyze", "detect": "analyze", "METHODS": "analyze",
    "prepare": "processing", "tsr_fit": "processing", "pct": "processing", "ppt": "processing",
    "train": "learn", "PixelModel": "learn", "DepthCalibration": "depth",
}


def __getattr__(name):
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'vinspect.thermo' has no attribute {name!r}")


__all__ = sorted(_API)
