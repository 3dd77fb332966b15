"""``vinspect thermo``: simulate, analyze, evaluate, train, calibrate.  Wired into ``vinspect.cli`` by
``add_parser(subparsers, parser_class)``.  Every command returns an exit code and prints its results; bad
input raises :class:`vinspect.errors.BadInputError` (the main CLI prints one line and exits 2)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import BadInputError
from .common import command, group
from .common import quiet as _quiet


def _positive(kind):
    def conv(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be positive, got {text}")
        return v

    return conv


def _nonneg(text):
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return v


def _parse_holes(text: str):
    """'DIAxDEPTH,...' in mm -> [(diameter, depth)]."""
    out = []
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        try:
            dia, dep = (float(x) for x in part.lower().split("x"))
        except ValueError:
            raise BadInputError(f"--holes: {part!r} is not DIAMETERxDEPTH in mm (e.g. 10x4.5)") from None
        if dia <= 0 or dep <= 0:
            raise BadInputError(f"--holes: {part!r}: diameter and depth must be positive")
        out.append((dia, dep))
    if not out:
        raise BadInputError("--holes: give at least one DIAMETERxDEPTH")
    return out


def add_parser(subparsers, parser_class=argparse.ArgumentParser):
    """Add ``thermo`` and its sub-commands to ``subparsers`` (an argparse sub-parser action)."""
    desc = ("Active (pulsed) infrared thermography: simulate plates with flat-bottom holes, process sequences "
            "(cold-image subtraction, TSR, PCT, PPT), detect defects and estimate their depth.")
    sub = group(subparsers, "thermo", "active thermography: simulate, analyze, evaluate, train, calibrate", desc)

    def cmd(name, help_):  # func is set by each command below
        return command(sub, name, help_, None, config=False, full_name=f"thermo {name}")

    # ---------------------------------------------------------------------------- simulate
    p = cmd("simulate", "simulate a pulsed-thermography sequence of a plate with flat-bottom holes, with its ground "
                        "truth (HDF5: sequence, defect_mask, depth_map, parameters)")
    p.add_argument("--preset", choices=["course-plate", "random", "sound", "custom"], default="course-plate",
                   help="course-plate: the course's GFRP calibration plate (4x4 holes, 7.85-20.2 mm wide, "
                        "4.35-15.7 mm deep, 20 mm thick, surface marks); random: random holes (training and "
                        "calibration data); sound: no holes; custom: the holes of --holes (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="draws the realisation: tolerances, heating, noise "
                                                       "(default: %(default)s)")
    p.add_argument("--out", metavar="FILE.h5", help="output HDF5 file (required)")
    p.add_argument("--holes", metavar="DxD,...", help="custom holes, diameter x depth in mm, e.g. 10x3,15x5,20x8 "
                                                       "(laid out on a grid; implies --preset custom)")
    p.add_argument("--material", help="gfrp or cfrp (diffusivity presets; default: gfrp)")
    p.add_argument("--thickness", type=_positive(float), metavar="MM", help="plate thickness (default 20)")
    p.add_argument("--fps", type=_positive(float), help="frame rate, Hz (default 2)")
    p.add_argument("--duration", type=_positive(float), metavar="S", help="seconds recorded after the flash "
                                                                          "(default 300)")
    p.add_argument("--blur", type=_nonneg, metavar="PX", help="optical blur, Gaussian sigma in pixels (default 0.7)")
    p.add_argument("--noise", type=_nonneg, metavar="K", help="temporal camera noise (NETD), K (default 0.03)")
    p.add_argument("--pixel-mm", type=_positive(float), help="pixel size on the plate, mm (default 1)")
    p.add_argument("--energy", type=_positive(float), metavar="J_M2", help="absorbed flash energy, J/m^2 "
                                                                           "(default 8000)")
    p.add_argument("--no-jitter", action="store_true", help="course plate: nominal geometry and material")
    p.set_defaults(func=cmd_simulate)

    # ---------------------------------------------------------------------------- analyze
    p = cmd("analyze", "turn a thermogram sequence into processed images, a defect map, contrast curves and a "
                       "defect list with depths (DIR/defects.json)")
    p.add_argument("sequence", nargs="?", metavar="SEQ", help=".npy (frames, height, width), .npz, .mat, .h5, or "
                                                             "a folder of 8/16-bit frames (ordered by name)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/thermo-<name>)")
    _add_method(p, default="tsr")
    _add_reading(p)
    _add_depth(p)
    p.add_argument("--offset", type=float, help="ambient level to subtract when the sequence has no frames "
                                                "before the flash (default: 0)")
    p.set_defaults(func=cmd_analyze)

    # ---------------------------------------------------------------------------- evaluate
    p = cmd("evaluate", "score a simulated sequence (HDF5 with ground truth) against its truth: DIR/metrics.json")
    p.add_argument("file", nargs="?", metavar="FILE.h5")
    p.add_argument("--out", metavar="DIR", help="output folder (required)")
    _add_method(p, default=None, allow_all=True)
    p.add_argument("--calibration", metavar="FILE.json", help="depth calibration (default: the built-in one)")
    p.set_defaults(func=cmd_evaluate)

    # ---------------------------------------------------------------------------- train
    p = cmd("train", "train a per-pixel classifier (1-D CNN or LSTM) on simulated sequences with ground truth")
    p.add_argument("files", nargs="*", metavar="FILE.h5", help="training sequences (vinspect thermo simulate "
                                                               "--preset random)")
    p.add_argument("--arch", choices=["cnn1d", "lstm"], default="cnn1d", help="(default: %(default)s)")
    p.add_argument("--val", nargs="+", metavar="FILE.h5", help="validation sequences (default: the last 20 %% of "
                                                               "FILES, at least one)")
    p.add_argument("--out", metavar="DIR", help="model folder (required)")
    p.add_argument("--epochs", type=_positive(int), default=40)
    p.add_argument("--patience", type=_positive(int), default=5, help="early stopping (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_train)

    # ---------------------------------------------------------------------------- calibrate
    p = cmd("calibrate", "fit the depth calibration on simulated sequences with known depths")
    p.add_argument("files", nargs="*", metavar="FILE.h5")
    p.add_argument("--out", metavar="FILE.json", help="calibration file (required)")
    p.set_defaults(func=cmd_calibrate)


def _add_method(p, default, allow_all=False):
    from ..thermo.analyze import METHODS

    choices = list(METHODS) + (["all"] if allow_all else [])
    p.add_argument("--method", choices=choices, default=default,
                   help="tsr, pct, ppt (unsupervised), cnn1d, lstm (learned)" + (", all" if allow_all else "")
                        + (" (default: %(default)s)" if default else " (default: the best of the benchmark)"))
    p.add_argument("--model", metavar="DIR", help="model of cnn1d/lstm (default: the bundled one)")


def _add_reading(p):
    g = p.add_argument_group("reading")
    g.add_argument("--fps", type=_positive(float), help="frame rate in Hz (overrides a stored one)")
    g.add_argument("--key", help="variable or dataset holding the sequence (.mat, .npz, .h5)")
    g.add_argument("--frames-axis", type=int, choices=[0, 1, 2], help="axis of time (default: 0; .mat: 2)")


def _add_depth(p):
    g = p.add_argument_group("depth")
    g.add_argument("--material", help="gfrp or cfrp: through-thickness diffusivity for the depths")
    g.add_argument("--diffusivity", type=_positive(float), metavar="MM2_S", help="through-thickness diffusivity, "
                                                                                 "mm^2/s (instead of --material)")
    g.add_argument("--pixel-mm", type=_positive(float), help="pixel size on the part, mm")
    g.add_argument("--calibration", metavar="FILE.json", help="depth calibration (default: the built-in one)")


def _need(args, *names):
    for n in names:
        if getattr(args, n, None) in (None, [], ""):
            flag = n.upper() if n in ("sequence", "file", "files") else "--" + n.replace("_", "-")
            raise BadInputError(f"thermo {args.thermo_command}: missing {flag}")


# -------------------------------------------------------------------------------- commands

def cmd_simulate(args) -> int:
    from ..thermo.io import save_simulation
    from ..thermo.simulate import Hole, SurfaceMark, course_plate, random_plate, simulate

    progress = not _quiet(args)
    _need(args, "out")
    preset = "custom" if args.holes else args.preset
    over = {"material": args.material, "thickness_mm": args.thickness, "fps": args.fps,
            "duration_s": args.duration, "blur_px": args.blur, "noise_k": args.noise, "pixel_mm": args.pixel_mm,
            "energy_j_m2": args.energy}
    if preset == "course-plate":
        spec = course_plate(args.seed, jitter=not args.no_jitter, **over)
    elif preset == "random":
        spec = random_plate(args.seed, material_name=args.material or "gfrp",
                            thickness_mm=args.thickness or 20.0, **{k: v for k, v in over.items()
                                                                    if k not in ("material", "thickness_mm")})
    elif preset == "sound":
        spec = random_plate(args.seed, material_name=args.material or "gfrp", thickness_mm=args.thickness or 20.0,
                            n_holes=(0, 0), **{k: v for k, v in over.items() if k not in ("material", "thickness_mm")})
    else:
        if not args.holes:
            raise BadInputError("thermo simulate --preset custom: give the holes with --holes DxD,...")
        holes = _parse_holes(args.holes)
        spec = course_plate(args.seed, jitter=False, **over)
        pitch = max(d for d, _ in holes) + 20.0
        cols = min(4, len(holes))
        rows = (len(holes) + cols - 1) // cols
        spec.holes = [Hole(pitch / 2 + pitch * (i % cols) + 10, pitch / 2 + pitch * (i // cols) + 10, d, z)
                      for i, (d, z) in enumerate(holes)]
        spec.width_mm = cols * pitch + 20
        spec.height_mm = rows * pitch + 50
        spec.surface_marks = [SurfaceMark(spec.width_mm / 2, spec.height_mm - 17, 6.0, 4.0, 1.3)]
    sim = simulate(spec, args.seed, progress=progress)
    path = save_simulation(sim, args.out)
    n, h, w = sim.sequence.shape
    half = spec.thickness_mm / 2
    inscope = sum(1 for hh in spec.holes if hh.depth_mm <= half)
    print(f"{path}: {n} frames of {w}x{h} px ({spec.n_cold} before the flash, {spec.fps:g} Hz, "
          f"{spec.duration_s:g} s), {spec.material.name} plate {spec.thickness_mm:g} mm thick, {len(spec.holes)} "
          f"holes ({inscope} no deeper than {half:g} mm), {len(spec.surface_marks)} surface marks; noise "
          f"{spec.noise_k:g} K, blur {spec.blur_px:g} px; seed {args.seed}")
    return 0


def _model_for(method, model):
    from ..thermo.analyze import LEARNED, bundled_model

    if method in LEARNED and model is None:
        return bundled_model(method)
    return model


def cmd_analyze(args) -> int:
    from ..thermo.analyze import analyze

    _quiet(args)
    _need(args, "sequence")
    out = Path(args.out) if args.out else Path("runs") / f"thermo-{Path(args.sequence).stem}"
    res = analyze(args.sequence, out, method=args.method, fps=args.fps, model=_model_for(args.method, args.model),
                  calibration=args.calibration, material=args.material, diffusivity=args.diffusivity,
                  pixel_mm=args.pixel_mm, offset=args.offset, key=args.key, frames_axis=args.frames_axis)
    unit = "s" if res["time_unit"] == "s" else "frames"
    print(f"{res['source']}: {res['frames']} frames of {res['width']}x{res['height']} px; method {res['method']}; "
          f"{len(res['defects'])} defects, {len(res['surface_marks'])} surface marks ({res['seconds']:.1f} s)")
    if res["defects"]:
        print(f"{'id':>3} {'x':>4} {'y':>4} {'w':>4} {'h':>4} {'area px':>8} {'contrast':>9} "
              f"{'peak t (' + unit + ')':>14} {'depth mm':>9}")
        for d in res["defects"]:
            b = d["bbox"]
            dep = "-" if d["estimated_depth_mm"] is None else f"{d['estimated_depth_mm']:.2f}"
            print(f"{d['id']:>3} {b['x']:>4} {b['y']:>4} {b['width']:>4} {b['height']:>4} {d['area_px']:>8} "
                  f"{d['mean_contrast']:>9.4f} {d['peak_contrast_time']:>14.3g} {dep:>9}")
    for n in res["notes"]:
        print(f"note: {n}")
    print(f"results: {out / 'defects.json'}  {out / 'defect_map.png'}  {out / 'contrast_curves.png'} "
          f"(+ {len(res['files']) - 3} processed images)")
    return 0


def cmd_evaluate(args) -> int:
    from ..thermo.analyze import BEST_METHOD, METHODS, evaluate, process
    from ..thermo.io import load_sequence

    _quiet(args)
    _need(args, "file", "out")
    out = Path(args.out)
    methods = list(METHODS) if args.method == "all" else [args.method or BEST_METHOD]
    if len(methods) > 1 and args.model:
        raise BadInputError("--method all uses the bundled models; give --model with a single --method")
    proc = process(load_sequence(args.file))
    rows = []
    for m in methods:
        dest = out if len(methods) == 1 else out / m
        try:
            res = evaluate(args.file, dest, method=m, model=_model_for(m, args.model), calibration=args.calibration,
                           proc=proc)
        except BadInputError as e:
            if args.method is not None or m == "tsr":
                raise
            # the default (best) method's bundled model does not fit this sequence: the best unsupervised one
            print(f"note: the default method {m} does not apply here ({e}); using tsr")
            res = evaluate(args.file, dest, method="tsr", calibration=args.calibration, proc=proc)
        rows.append(res)
    if len(methods) > 1:
        (out / "metrics.json").write_text(json.dumps({"file": str(args.file), "methods": rows}, indent=2))
    print(f"{args.file}: {rows[0]['scope']}")
    print(f"{'method':<7} {'pixel F1':>9} {'found':>7} {'depth err':>10} {'false regions':>14}")
    for r in rows:
        err = "-" if r["depth_mean_relative_error"] is None else f"{100 * r['depth_mean_relative_error']:.1f} %"
        print(f"{r['method']:<7} {r['pixel_f1']:>9.4f} {r['defects_found']:>3}/{r['defects_total']:<3} {err:>10} "
              f"{r['false_positive_regions']:>14}")
    print(f"results: {out / 'metrics.json'}")
    return 0


def cmd_train(args) -> int:
    from ..thermo.learn import train

    progress = not _quiet(args)
    _need(args, "files", "out")
    files = [Path(f) for f in args.files]
    for f in files + [Path(v) for v in (args.val or [])]:
        if not f.is_file():
            raise BadInputError(f"{f}: no such file")
    if args.val:
        tr, va = files, [Path(v) for v in args.val]
    else:
        if len(files) < 2:
            raise BadInputError("thermo train: give at least two files (one is held out for validation) or --val")
        k = max(1, round(0.2 * len(files)))
        tr, va = files[:-k], files[-k:]
    m = train(args.arch, tr, va, out=args.out, epochs=args.epochs, patience=args.patience, seed=args.seed,
              progress=progress)
    meta = m.meta
    print(f"{args.arch} -> {args.out}: {meta['epochs_run']} epochs (best validation loss {meta['best_val_loss']:.4f}), "
          f"threshold {meta['threshold']:g} (validation pixel F1 {meta['val_pixel_f1_at_threshold']:.4f}); "
          f"{meta['n_train_pixels']} training pixels from {len(tr)} files, {len(va)} validation files; "
          f"{meta['train_seconds']:.0f} s")
    return 0


def cmd_calibrate(args) -> int:
    from ..thermo.analyze import calibrate

    progress = not _quiet(args)
    _need(args, "files", "out")
    for f in args.files:
        if not Path(f).is_file():
            raise BadInputError(f"{f}: no such file")
    cal = calibrate(args.files, args.out, progress=progress)
    print(f"depth calibration -> {args.out}: ln d = {cal.b0:.4f} + {cal.b1:.4f} ln mu + {cal.b2:.4f} ln(D/mu) "
          f"(rms {cal.rms_log_error:.3f} in ln d) from {cal.n_defects} defects")
    return 0
