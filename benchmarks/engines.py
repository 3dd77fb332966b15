"""The feature engines and precisions on the real data: speed (start-up included) and what precision costs.

    python benchmarks/engines.py [--splits 10] [--repeats 3] [--skip benchmark,cold,accuracy] [--out benchmarks/results/engines]

Every figure comes from a ``vinspect`` command run as a separate process, exactly as a user would type it:

1. ``vinspect benchmark ../shared/datasets/neu-cls``: the naive loop, torch, onnx and openvino fp32 / bf16 /
   int8 on the same 1800 images in one run (median of ``--repeats``), parity of each with torch (cosine on
   every image), peak RSS, the CPU model and flags.  Its own benchmark.json / benchmark.txt are kept.
2. Cold start: ``vinspect extract ../shared/datasets/neu-cls --engine auto --no-cache`` timed from process start
   to exit, the converted model already in the cache (a first run puts it there); median of ``--repeats``.
3. Accuracy: ``vinspect evaluate ... --splits 10`` on NEU (6 classes) and on insert-wear intact/damaged
   (``--classes intact=low,medium --classes damaged=high``) with ``--engine auto`` (the default) and with
   ``--engine openvino --precision bf16`` / ``int8``; each in a fresh feature cache, so every feature is computed
   by that engine.

Other jobs may load the CPU while this runs: the load average is recorded before and after each step; compare
rates within one run.  Writes ``<out>/engines.json`` and ``<out>/engines.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
NEU = SHARED / "neu-cls"
WEAR = SHARED / "insert-wear" / "images"
TASKS = {"neu-cls": (NEU, []), "insert-wear intact/damaged": (WEAR, ["--classes", "intact=low,medium",
                                                                     "--classes", "damaged=high"])}
SETTINGS = [("auto (default)", ["--engine", "auto"]), ("openvino bf16", ["--engine", "openvino", "--precision", "bf16"]),
            ("openvino int8", ["--engine", "openvino", "--precision", "int8"])]
VINSPECT = [sys.executable, "-m", "vinspect"]


def run(cmd: list[str], timeout: float) -> tuple[float, subprocess.CompletedProcess]:
    t = time.perf_counter()
    p = subprocess.run(VINSPECT + cmd, capture_output=True, text=True, timeout=timeout)
    if p.returncode != 0:
        raise SystemExit(f"engines: `vinspect {' '.join(cmd)}` failed ({p.returncode}): {p.stderr.strip()[-800:]}")
    return time.perf_counter() - t, p


def show(cmd: list[str]) -> str:
    return "vinspect " + " ".join(str(c) for c in cmd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--splits", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--skip", default="", help="comma-separated steps to skip: benchmark, cold, accuracy")
    ap.add_argument("--out", default=str(Path(__file__).parent / "results" / "engines"))
    args = ap.parse_args()
    if not NEU.is_dir():
        print(f"engines: {NEU} not found (the NEU images are needed)", file=sys.stderr)
        return 2
    from vinspect.benchmark import cpu_model
    from vinspect.features.openvino_engine import cpu_flags

    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    old = json.loads((out / "engines.json").read_text()) if (out / "engines.json").is_file() else {}
    report = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_model(),
              "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "splits": args.splits, "repeats": args.repeats,
              **{k: old[k] for k in ("benchmark", "cold_start", "accuracy") if k in old}}
    tmp = Path(tempfile.mkdtemp(prefix="vinspect-engines-"))

    def save():
        (out / "engines.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "engines.md").write_text(markdown(report) + "\n")

    if "benchmark" not in skip:
        cmd = ["benchmark", str(NEU), "--repeats", str(args.repeats), "--out", str(out / "benchmark"), "-q",
               "--cache", str(tmp / "bench-cache")]
        load = os.getloadavg()[0]
        secs, _ = run(cmd, 3600)
        b = json.loads((out / "benchmark" / "benchmark.json").read_text())
        report["benchmark"] = {"command": show(cmd).replace(str(tmp), "$TMP"), "seconds": secs,
                               "load_before": load, "load_after": os.getloadavg()[0],
                               "naive_images_per_second": b["naive_images_per_second"],
                               "rows": {k: {"images_per_second": e["images_per_second"], "runs": e["runs"],
                                            "speedup_vs_naive": e["speedup_vs_naive"],
                                            "model_ms_per_image": e["model_ms_per_image"],
                                            "latency_ms_p50": e["latency_ms_p50"]}
                                        for k, e in b["engines"].items()},
                               "parity_vs_torch": b.get("parity_vs_torch", {}), "peak_rss_mb": b["peak_rss_mb"],
                               "auto": b.get("auto")}
        save()

    if "cold" not in skip:
        cache = tmp / "cold-cache"
        cmd = ["extract", str(NEU), "--engine", "auto", "--no-cache", "-q", "--cache", str(cache),
               "--out", str(tmp / "features")]
        first, _ = run(cmd, 1800)  # converts and caches the model
        load = os.getloadavg()[0]
        times = [run(cmd, 1800)[0] for _ in range(args.repeats)]
        n = sum(1 for c in NEU.iterdir() if c.is_dir() for _ in c.glob("*.jpg"))
        report["cold_start"] = {"command": show(cmd).replace(str(tmp), "$TMP"), "n_images": n,
                                "first_run_seconds": first, "seconds": times,
                                "images_per_second": n / statistics.median(times),
                                "load_before": load, "load_after": os.getloadavg()[0]}
        save()

    if "accuracy" not in skip:
        acc = report.setdefault("accuracy", {})
        for task, (data, extra) in TASKS.items():
            for label, flags in SETTINGS:
                res = tmp / f"res-{len(acc)}-{label.split()[1] if ' ' in label else label}"
                cmd = ["evaluate", str(data), *extra, *flags, "--splits", str(args.splits), "-q",
                       "--cache", str(tmp / f"cache-{task[:3]}-{flags[-1]}"), "--out", str(res)]
                secs, _ = run(cmd, 3600)
                r = json.loads((res / "results.json").read_text())
                acc[f"{task} | {label}"] = {
                    "task": task, "setting": label, "command": show(cmd).replace(str(tmp), "$TMP"),
                    "accuracy_mean": r["accuracy_mean"], "accuracy_std": r["accuracy_std"],
                    "engine": r.get("engine"), "precision": r.get("precision"), "engine_reason": r.get("engine_reason"),
                    "extract_images_per_second": r["extract_images_per_second"], "seconds": secs,
                    "n_images": r["n_images"], "splits": r["splits"]}
                save()
    save()
    print(markdown(report))
    return 0


def markdown(r: dict) -> str:
    lines = [f"# Feature engines and precisions ({r['date']})", "",
             f"Machine: {r['cpu']}, {r['cores']} cores, flags {' '.join(r['cpu_flags'])}.  Other engineers' jobs "
             f"shared these cores: speed figures are noisy; compare them within one run (load averages given).", ""]
    b = r.get("benchmark")
    if b:
        lines += [f"## `{b['command']}`", "",
                  f"Load average {b['load_before']:.1f} before, {b['load_after']:.1f} after; peak RSS "
                  f"{b['peak_rss_mb']:.0f} MB; naive loop {b['naive_images_per_second']:.1f} images/s.", "",
                  "| engine | images/s (median) | runs | x naive | model ms/image | p50 ms (1 image) | cosine to torch min / mean |",
                  "|---|---:|---|---:|---:|---:|---|"]
        for k, e in b["rows"].items():
            p = b["parity_vs_torch"].get(k)
            cos = "1 (reference)" if k == "torch" else (f"{p['cosine_min']:.5f} / {p['cosine_mean']:.5f}" if p else "")
            lines.append(f"| {k} | {e['images_per_second']:.1f} | {', '.join(f'{x:.0f}' for x in e['runs'])} | "
                         f"{e['speedup_vs_naive']:.1f} | {e['model_ms_per_image']:.2f} | {e['latency_ms_p50']:.1f} | {cos} |")
        if b.get("auto"):
            lines += ["", f"`--engine auto` on this machine: {b['auto']['engine']} {b['auto']['precision']} "
                          f"({b['auto']['reason']})."]
        lines.append("")
    c = r.get("cold_start")
    if c:
        lines += [f"## Cold start: `{c['command']}`", "",
                  f"Whole command, process start to exit, model already converted: "
                  f"{', '.join(f'{s:.1f}' for s in c['seconds'])} s for {c['n_images']} images: "
                  f"**{c['images_per_second']:.0f} images/s** (median; first run, converting the model: "
                  f"{c['first_run_seconds']:.1f} s; load average {c['load_before']:.1f} / {c['load_after']:.1f}).", ""]
    a = r.get("accuracy")
    if a:
        lines += [f"## Accuracy ({r['splits']} stratified 70/30 splits, logistic regression; every feature computed "
                  f"by the engine named)", "",
                  "| task | setting | engine, precision | accuracy (mean ± std) | extraction images/s |", "|---|---|---|---|---:|"]
        for e in a.values():
            lines.append(f"| {e['task']} | {e['setting']} | {e['engine']} {e['precision']} | "
                         f"{e['accuracy_mean']:.4f} ± {e['accuracy_std']:.4f} | {e['extract_images_per_second']:.1f} |")
        lines += ["", "Commands:", ""] + [f"- `{e['command']}`" for e in a.values()]
    lines += ["", "Reproduce: `python benchmarks/engines.py`"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
