"""Benchmark of `vinspect thermo` on simulated course plates: every method (TSR, PCT, PPT, 1-D CNN, LSTM) on
held-out seeds, with the training, calibration and threshold data drawn from other seeds.

    python benchmarks/thermo.py                  # writes benchmarks/results/thermo.json and thermo.md
    python benchmarks/thermo.py --install-models # also copies the trained models into vinspect/thermo/models
    python benchmarks/thermo.py --docs           # also writes the README images into docs/thermo/

Seeds (never mixed):
  random plates 1000-1007 and 1010-1025: training of the learned models and depth calibration;
  1008, 1009, 1026, 1027: validation
  sound plates 2000-2002: thresholds of the unsupervised maps (checked against the constants in detect.py)
  course plates 0-3: development (looked at while writing the code; not used here)
  course plates 100-107: evaluation (this benchmark only)
Simulated files are cached in runs/thermo-bench/data (delete it to simulate again).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TRAIN = list(range(1000, 1008)) + list(range(1010, 1026))
VAL = [1008, 1009, 1026, 1027]
SOUND = [2000, 2001, 2002]
EVAL = list(range(100, 108))


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def simulate_all(data: Path, quiet: bool):
    from vinspect.thermo.io import save_simulation
    from vinspect.thermo.simulate import course_plate, random_plate, simulate

    jobs = [(f"random{s}", lambda s=s: random_plate(s), s) for s in TRAIN + VAL]
    jobs += [(f"sound{s}", lambda s=s: random_plate(s, n_holes=(0, 0)), s) for s in SOUND]
    jobs += [(f"course{s}", lambda s=s: course_plate(s), s) for s in EVAL]
    t0 = time.perf_counter()
    made = 0
    for name, make, seed in jobs:
        path = data / f"{name}.h5"
        if path.exists():
            continue
        t = time.perf_counter()
        save_simulation(simulate(make(), seed, progress=not quiet), path)
        made += 1
        log(f"simulated {path.name} ({time.perf_counter() - t:.0f} s)")
    return {name: data / f"{name}.h5" for name, _, _ in jobs}, made, time.perf_counter() - t0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cache", default=str(ROOT / "runs" / "thermo-bench"), help="simulations and models")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    ap.add_argument("--install-models", action="store_true", help="copy the trained models into the package")
    ap.add_argument("--docs", action="store_true", help="write the README images into docs/thermo")
    ap.add_argument("-q", "--quiet", action="store_true")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from vinspect.thermo import analyze as A
    from vinspect.thermo import detect as D
    from vinspect.thermo import depth as Dp
    from vinspect.thermo.io import load_sequence
    from vinspect.thermo.learn import train

    t_all = time.perf_counter()
    cache = Path(args.cache)
    data = cache / "data"
    data.mkdir(parents=True, exist_ok=True)
    files, made, sim_s = simulate_all(data, args.quiet)
    log(f"{len(files)} simulated files ready ({made} simulated now, {sim_s:.0f} s)")

    # thresholds of the unsupervised maps, from the sound plates
    t = time.perf_counter()
    thr = A.sound_plate_thresholds([files[f"sound{s}"] for s in SOUND])
    thr_match = all(thr[m]["z_high"] == D.Z_HIGH[m] and thr[m]["mass_min"] == D.MASS_MIN[m] for m in thr)
    log(f"sound-plate thresholds {json.dumps(thr)}; constants in detect.py {'match' if thr_match else 'DIFFER'} "
        f"({time.perf_counter() - t:.0f} s)")

    # depth calibration on the training plates
    t = time.perf_counter()
    calib = A.calibrate([files[f"random{s}"] for s in TRAIN], cache / "depth_calibration.json")
    default = Dp.DepthCalibration.load(None)
    calib_match = bool(Dp.DEFAULT_CALIBRATION) and all(
        abs(getattr(calib, k) - getattr(default, k)) < 1e-3 for k in ("b0", "b1", "b2", "b0_nosize", "b1_nosize"))
    log(f"depth calibration: ln d = {calib.b0:.4f} + {calib.b1:.4f} ln mu + {calib.b2:.4f} ln(D/mu), rms "
        f"{calib.rms_log_error:.3f} ({calib.n_defects} defects); built-in default "
        f"{'matches' if calib_match else 'DIFFERS'} ({time.perf_counter() - t:.0f} s)")

    # learned models
    models, train_info = {}, {}
    for arch in A.LEARNED:
        t = time.perf_counter()
        m = train(arch, [files[f"random{s}"] for s in TRAIN], [files[f"random{s}"] for s in VAL],
                  out=cache / "models" / arch, progress=not args.quiet)
        models[arch] = m
        train_info[arch] = {k: m.meta[k] for k in ("epochs_run", "best_val_loss", "threshold",
                                                     "val_pixel_f1_at_threshold", "n_train_pixels",
                                                     "train_seconds")}
        log(f"trained {arch}: {train_info[arch]} ({time.perf_counter() - t:.0f} s)")

    # evaluation on the held-out course plates
    per_seed = {m: [] for m in A.METHODS}
    for s in EVAL:
        f = files[f"course{s}"]
        t = time.perf_counter()
        proc = A.process(load_sequence(f))
        t_proc = time.perf_counter() - t
        for m in A.METHODS:
            t = time.perf_counter()
            r = A.evaluate(f, None, method=m, model=models.get(m), calibration=cache / "depth_calibration.json",
                           proc=proc)
            r["seconds_method"] = round(time.perf_counter() - t, 2)
            r["seconds_processing"] = round(t_proc, 2)
            r["seed"] = s
            per_seed[m].append(r)
            log(f"course seed {s} {m}: F1 {r['pixel_f1']:.4f}, found {r['defects_found']}/{r['defects_total']}, "
                f"depth error {r['depth_mean_relative_error']}, false regions {r['false_positive_regions']}")

    summary = {}
    for m, rows in per_seed.items():
        errs = [r["depth_mean_relative_error"] for r in rows if r["depth_mean_relative_error"] is not None]
        summary[m] = {
            "pixel_f1_mean": round(float(np.mean([r["pixel_f1"] for r in rows])), 4),
            "pixel_f1_std": round(float(np.std([r["pixel_f1"] for r in rows])), 4),
            "pixel_f1_min": round(float(np.min([r["pixel_f1"] for r in rows])), 4),
            "defects_found": int(sum(r["defects_found"] for r in rows)),
            "defects_total": int(sum(r["defects_total"] for r in rows)),
            "depth_mean_relative_error": round(float(np.mean(errs)), 4) if errs else None,
            "depth_max_relative_error": max((r["depth_max_relative_error"] for r in rows
                                            if r["depth_max_relative_error"] is not None), default=None),
            "false_positive_regions": int(sum(r["false_positive_regions"] for r in rows)),
            "seconds_per_sequence": round(float(np.mean([r["seconds_method"] + r["seconds_processing"]
                                                          for r in rows])), 2),
            "missed": sorted({f"{p['diameter_mm']:.1f} mm wide, {p['depth_mm']:.2f} mm deep (seed {r['seed']})"
                              for r in rows for p in r["per_defect"] if p["in_scope"] and not p["found"]}),
        }
    best = max(summary, key=lambda m: (summary[m]["pixel_f1_mean"], summary[m]["defects_found"]))
    b = summary[best]
    acceptance = {
        "best_method": best,
        "pixel_f1_ge_0.90_every_seed": all(r["pixel_f1"] >= 0.90 for r in per_seed[best]),
        "pixel_f1_mean_ge_0.90": b["pixel_f1_mean"] >= 0.90,
        "every_defect_found": b["defects_found"] == b["defects_total"],
        "depth_error_le_0.15_every_seed": all((r["depth_mean_relative_error"] or 1) <= 0.15 for r in per_seed[best]),
    }
    result = {
        "what": "vinspect thermo on simulated course plates (GFRP, 20 mm, 4x4 flat-bottom holes 7.85-20.2 mm wide, "
                "4.35-15.7 mm deep, 3 surface marks; 2 Hz, 300 s, NETD 0.03 K, blur 0.7 px); scores over the "
                "defects no deeper than 10 mm (8 per plate)",
        "seeds": {"train": TRAIN, "validation": VAL, "sound_plates": SOUND, "evaluation": EVAL,
                  "development (not used here)": [0, 1, 2, 3]},
        "summary": summary, "acceptance": acceptance, "thresholds_from_sound_plates": thr,
        "thresholds_match_constants": thr_match,
        "depth_calibration": {k: getattr(calib, k) for k in ("b0", "b1", "b2", "b0_nosize", "b1_nosize",
                                                             "n_defects", "rms_log_error", "fitted_on")},
        "depth_calibration_matches_default": calib_match, "training": train_info,
        "per_seed": {m: [{k: v for k, v in r.items() if k != "file"} for r in rows] for m, rows in per_seed.items()},
        "seconds_total": round(time.perf_counter() - t_all, 1), "seconds_simulating": round(sim_s, 1),
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads()},
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "thermo.json").write_text(json.dumps(result, indent=2))
    names = {"tsr": "TSR", "pct": "PCT", "ppt": "PPT", "cnn1d": "1-D CNN", "lstm": "LSTM"}
    lines = [f"Simulated course plates, held-out seeds {', '.join(map(str, EVAL))} (training and calibration on "
             f"other seeds); scores over the {b['defects_total'] // len(EVAL)} defects per plate no deeper than half "
             "the thickness.", "",
             "| method | pixel F1 (mean ± sd, min) | defects found | depth error (mean, max) | false regions "
             "| s / sequence |",
             "|---|---:|---:|---:|---:|---:|"]
    for m, v in summary.items():
        dep = "-" if v["depth_mean_relative_error"] is None else (
            f"{100 * v['depth_mean_relative_error']:.1f} %, {100 * v['depth_max_relative_error']:.0f} %")
        star = " **(best)**" if m == best else ""
        lines.append(f"| {names[m]}{star} | {v['pixel_f1_mean']:.3f} ± {v['pixel_f1_std']:.3f}, "
                     f"{v['pixel_f1_min']:.3f} "
                     f"| {v['defects_found']}/{v['defects_total']} | {dep} | {v['false_positive_regions']} | "
                     f"{v['seconds_per_sequence']:.1f} |")
    lines += ["", f"Missed by the best method ({names[best]}): " + ("; ".join(b["missed"]) or "none") + ".",
              f"Acceptance (best method): pixel F1 >= 0.90 on every seed: {acceptance['pixel_f1_ge_0.90_every_seed']}; "
              f"every defect found: {acceptance['every_defect_found']}; depth error <= 15 % on every seed: "
              f"{acceptance['depth_error_le_0.15_every_seed']}.",
              f"Reproduce: `python benchmarks/thermo.py` ({result['seconds_total']:.0f} s here, "
              f"{result['seconds_simulating']:.0f} s of it simulating; 1 torch thread)."]
    (out / "thermo.md").write_text("\n".join(lines) + "\n")
    log(f"wrote {out / 'thermo.json'} and {out / 'thermo.md'}")
    print("\n".join(lines))

    if args.install_models:
        for arch in A.LEARNED:
            dest = A.MODELS_DIR / arch
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(cache / "models" / arch, dest)
            meta = json.loads((dest / "model.json").read_text())
            meta["train_files"] = [Path(p).name for p in meta["train_files"]]
            meta["val_files"] = [Path(p).name for p in meta["val_files"]]
            (dest / "model.json").write_text(json.dumps(meta, indent=2))
        log(f"installed the models into {A.MODELS_DIR}")
    if not calib_match:
        print("DEFAULT_CALIBRATION for vinspect/thermo/depth.py:\n" + json.dumps(
            {k: getattr(calib, k) for k in ("b0", "b1", "b2", "b0_nosize", "b1_nosize", "fitted_on", "n_defects",
                                            "rms_log_error", "rms_log_error_nosize", "valid_mu_mm")}, indent=4))
    if args.docs:
        write_docs(files, models, cache, best)
    return 0


def write_docs(files, models, cache, best):
    """README images (kept few and small): the real F1 sequence, and a held-out course plate."""
    from vinspect.thermo import analyze as A
    from vinspect.thermo import plots
    from vinspect.thermo.io import load_ground_truth, load_sequence

    docs = ROOT / "docs" / "thermo"
    docs.mkdir(parents=True, exist_ok=True)
    for old in docs.glob("*.png"):
        old.unlink()
    f1 = ROOT.parent / "shared" / "datasets" / "thermography" / "F1_seq.npy"
    if f1.is_file():
        tmp = cache / "docs-f1"
        A.analyze(f1, tmp, method="tsr")
        for name in ("defect_map", "contrast_curves"):
            shutil.copy(tmp / f"{name}.png", docs / f"f1_{name}.png")
        shutil.copy(tmp / "defects.json", docs / "f1_defects.json")
        plots.methods_overview(A.process(load_sequence(f1)), docs / "f1_methods.png")
    f = files[f"course{EVAL[0]}"]
    tmp = cache / "docs-course"
    A.analyze(f, tmp, method=best, model=models.get(best))
    for name in ("defect_map", "contrast_curves"):
        shutil.copy(tmp / f"{name}.png", docs / f"course_{name}.png")
    proc = A.process(load_sequence(f))
    plots.methods_overview(proc, docs / "course_methods.png")
    gt = load_ground_truth(f)
    for m in dict.fromkeys((best, "tsr")):
        res = A.evaluate(f, None, method=m, model=models.get(m), calibration=cache / "depth_calibration.json",
                         proc=proc)
        det = A.detect(proc, m, models.get(m))
        plots.evaluation_figure(proc, det, gt, res, docs / f"course_evaluation_{m}.png")
    log(f"wrote the README images into {docs}")


if __name__ == "__main__":
    sys.exit(main())
