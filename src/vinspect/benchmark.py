"""Inference speed, measured honestly: the naive loop of the course notebooks against the torch, onnx and
openvino engines (fp32, bf16, int8), on the same images, in one run (median of repetitions after a warm-up).

The naive loop handles one image at a time: open with PIL, resize, normalise, one forward pass of batch 1.
The engines stream: decoding in worker threads one batch ahead of the network, batched inference.
"""

from __future__ import annotations

import os
import platform
import resource
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .backbones.registry import DEFAULT_BACKBONE
from .data.dataset import collect_images
from .errors import BadInputError
from .features.extract import Extractor, stream_features


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _naive(extractor: Extractor, paths, progress) -> dict:
    """One image at a time, as in the course notebooks: PIL open -> resize -> tensor -> model(batch of 1)."""
    import torch
    from PIL import Image

    from .backbones.pooling import pool

    pre = extractor.preprocessing
    net = extractor.torch_net()
    mean = np.array(pre.mean, np.float32) * 255
    std = np.array(pre.std, np.float32) * 255
    resample = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}.get(
        pre.interpolation, Image.Resampling.BICUBIC)
    t_dec = t_model = 0.0
    for p in tqdm(paths, desc="naive loop", unit="img", disable=not progress, leave=False):
        t0 = time.perf_counter()
        img = Image.open(p).convert("RGB").resize((pre.input_size, pre.input_size), resample)
        x = torch.from_numpy(((np.asarray(img, np.float32) - mean) / std).transpose(2, 0, 1).copy())[None]
        t1 = time.perf_counter()
        with torch.no_grad():
            pool(net.body(x), net.pooling)
        t2 = time.perf_counter()
        t_dec += t1 - t0
        t_model += t2 - t1
    n = len(paths)
    return {"images_per_second": n / (t_dec + t_model), "decode_ms_per_image": 1000 * t_dec / n,
            "model_ms_per_image": 1000 * t_model / n}


def _engine_run(extractor: Extractor, paths, progress, desc, keep: list | None = None) -> float:
    """Images/s of one streamed pass; ``keep`` (a list) receives the features in path order."""
    t = time.perf_counter()
    n = 0
    for ok, feats, _ in stream_features(extractor, paths, progress, desc=desc):
        n += len(ok)
        if keep is not None:
            keep.append(feats)
    return n / (time.perf_counter() - t)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two feature matrices."""
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-30)


def parity(reference: np.ndarray, other: np.ndarray, labels=None) -> dict:
    """How far ``other`` features are from ``reference``: max abs difference relative to the feature scale,
    relative L2 error, row-wise cosine similarity (min, mean), and (with labels) whether a logistic-regression
    head fitted on the reference gives the same labels on both."""
    cos = cosine(reference, other)
    out = {"max_abs_diff": float(np.abs(reference - other).max()),
           "max_abs_diff_relative": float(np.abs(reference - other).max() / np.abs(reference).max()),
           "relative_l2": float(np.linalg.norm(reference - other) / np.linalg.norm(reference)),
           "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
    if labels is not None and len(set(labels)) > 1:
        from .heads.factory import make_head

        head = make_head("logreg").fit(reference, labels)
        out["labels_identical_fraction"] = float((head.predict(reference) == head.predict(other)).mean())
    return out


def _breakdown(extractor: Extractor, paths) -> dict:
    """Decode time (one thread) and model time (pre-decoded batches) per image, on up to 128 images."""
    sub = paths[:128]
    t = time.perf_counter()
    imgs = np.stack([extractor.decode(p) for p in sub])
    dec = (time.perf_counter() - t) / len(sub)
    bs = extractor.batch_size
    t = time.perf_counter()
    for i in range(0, len(imgs), bs):
        extractor.features(imgs[i:i + bs])
    model = (time.perf_counter() - t) / len(sub)
    return {"decode_ms_per_image": 1000 * dec, "model_ms_per_image": 1000 * model}


def _latency(extractor: Extractor, paths, head=None, n: int = 60) -> dict:
    """Single-image prediction through the Python API: decode + features (+ head) for one file at a time."""
    times = []
    for p in (paths * (n // max(1, len(paths)) + 1))[:n + 5]:
        t = time.perf_counter()
        f = extractor.features(extractor.decode(p)[None])
        if head is not None:
            head.predict_proba(f)
        times.append(1000 * (time.perf_counter() - t))
    times = np.array(times[5:])  # the first calls warm up caches
    return {"latency_ms_p50": float(np.percentile(times, 50)), "latency_ms_p90": float(np.percentile(times, 90)),
            "latency_ms_p99": float(np.percentile(times, 99))}


# benchmark rows: name -> (engine, precision)
ROWS = {"torch": ("torch", None), "onnx": ("onnx", None), "openvino": ("openvino", "fp32"),
        "openvino-bf16": ("openvino", "bf16"), "openvino-int8": ("openvino", "int8")}
DEFAULT_ROWS = ("torch", "onnx", "openvino", "openvino-bf16", "openvino-int8")


def _available_rows(engines) -> tuple[list[str], dict]:
    """The rows that can run here, and a note for each left out (no OpenVINO, no native bf16)."""
    from .features.openvino_engine import native_bf16, openvino_status

    ok, why = openvino_status()
    rows, notes = [], {}
    for name in engines:
        if name not in ROWS:
            raise BadInputError(f"benchmark row {name!r}: use {', '.join(ROWS)}")
        eng, prec = ROWS[name]
        if eng == "openvino" and not ok:
            notes[name] = why
        elif prec == "bf16" and not native_bf16():
            notes[name] = "this CPU has no native bf16 (avx512_bf16 or amx_bf16)"
        else:
            rows.append(name)
    return rows, notes


def run_benchmark(data, backbone: str = DEFAULT_BACKBONE, layer: str | None = None, n: int | None = None,
                  repeats: int = 3, naive_n: int = 200, batch_size: int = 32, engines=DEFAULT_ROWS,
                  quantize: bool = False, onnx_dir=None, progress: bool = True) -> dict:
    paths, _ = collect_images([data])
    if not paths:
        raise BadInputError(f"{data}: no image files")
    if n:
        paths = (paths * (n // len(paths) + 1))[:n]
    # spread over the classes rather than the first folder only
    naive_paths = paths[:: max(1, len(paths) // naive_n)][:naive_n]
    from .features.extract import calibration_images, choose_engine
    from .features.openvino_engine import cpu_flags
    from .features.threads import inference_threads

    rows, left_out = _available_rows(engines)
    auto = choose_engine()
    report: dict = {"data": str(Path(data).resolve()), "n_images": len(paths), "backbone": backbone,
                    "repeats": repeats, "batch_size": batch_size, "cpu_model": cpu_model(),
                    "cpu_flags": cpu_flags(), "cores": os.cpu_count(), "threads": inference_threads(),
                    "machine": platform.machine(),
                    "auto": {"engine": auto[0], "precision": auto[1], "reason": auto[2]},
                    "rows_left_out": left_out, "engines": {}}
    exs = {}
    for name in rows:
        eng, prec = ROWS[name]
        exs[name] = Extractor(backbone, layer, batch_size=batch_size, engine=eng, precision=prec,
                              onnx_dir=onnx_dir)
    if quantize and "onnx" in rows:
        exs["onnx-int8"] = Extractor(backbone, layer, batch_size=batch_size, engine="onnx", quantize="int8",
                                     onnx_dir=onnx_dir)
    for ex in exs.values():
        if ex.needs_calibration:
            ex.calibration = (lambda e: lambda: calibration_images(e, paths))(ex)
    first = next(iter(exs.values()))
    report["layer"] = first.layer
    report["image_size"] = first.preprocessing.input_size
    for name, ex in exs.items():  # build / export before any timing, then warm up
        _ = ex.engine
        ex.features(np.stack([ex.decode(p) for p in paths[:batch_size]]))
    rates = [_naive(first, naive_paths, progress) for _ in range(repeats)]
    med = sorted(rates, key=lambda r: r["images_per_second"])[len(rates) // 2]
    report["naive_images_per_second"] = med["images_per_second"]
    report["naive"] = {**med, "n_images": len(naive_paths), "runs": [r["images_per_second"] for r in rates]}
    features: dict[str, np.ndarray] = {}
    runs: dict[str, list[float]] = {name: [] for name in exs}
    for i in range(repeats):  # rounds over every engine: a change of load from other jobs hits all of them
        for name, ex in exs.items():
            kept: list | None = [] if i == 0 else None
            runs[name].append(_engine_run(ex, paths, progress, f"{name} engine", kept))
            if kept is not None:
                features[name] = np.concatenate(kept)
    for name, ex in exs.items():
        rate = float(np.median(runs[name]))
        report["engines"][name] = {"engine": ex.engine_name, "precision": ex.precision,
                                   "images_per_second": rate, "runs": runs[name],
                                   "speedup_vs_naive": rate / report["naive_images_per_second"],
                                   **_breakdown(ex, paths), **_latency(ex, paths)}
    if "torch" in features and len({len(f) for f in features.values()}) == 1:
        labels = [Path(p).parent.name for p in paths]  # the class folders, when DATA has them
        report["parity_vs_torch"] = {k: parity(features["torch"], f, labels) for k, f in features.items()
                                     if k != "torch"}
    report["peak_rss_mb"] = peak_rss_mb()
    return report


def run_scaling(data, backbone: str = DEFAULT_BACKBONE, count: int = 20000, window: int = 2000,
                engine: str = "onnx", batch_size: int = 32, onnx_dir=None, progress: bool = True) -> dict:
    """Stream ``count`` images (the folder read repeatedly) and record the rate and memory per window."""
    paths, _ = collect_images([data])
    if not paths:
        raise BadInputError(f"{data}: no image files")
    paths = (paths * (count // len(paths) + 1))[:count]
    ex = Extractor(backbone, batch_size=batch_size, engine=engine, onnx_dir=onnx_dir)
    _ = ex.engine
    windows = []
    t0 = t = time.perf_counter()
    done = last = 0
    for ok, feats, _ in stream_features(ex, paths, progress, desc=f"{engine} x{count}"):
        done += len(ok)
        if done - last >= window or done == len(paths):
            now = time.perf_counter()
            windows.append({"images": done, "images_per_second": (done - last) / (now - t),
                            "rss_peak_mb": peak_rss_mb()})
            t, last = now, done
    rates = [w["images_per_second"] for w in windows]
    return {"count": done, "engine": engine, "seconds": time.perf_counter() - t0, "windows": windows,
            "first_window_rate": rates[0], "last_window_rate": rates[-1], "peak_rss_mb": peak_rss_mb(),
            "cpu_model": cpu_model(), "cores": os.cpu_count()}


def benchmark_table(r: dict) -> str:
    lines = [f"{r['n_images']} images from {r['data']}, {r['backbone']}/{r['layer']} at {r['image_size']} px, "
             f"{r['cpu_model']} ({r['cores']} cores; {' '.join(r.get('cpu_flags', []))}); median of "
             f"{r['repeats']} runs",
             f"{'':<18}{'images/s':>10}{'x naive':>9}{'decode ms':>11}{'model ms':>10}{'p50 ms':>9}{'p90 ms':>9}"]
    nv = r["naive"]
    lines.append(f"{'naive loop':<18}{nv['images_per_second']:>10.1f}{1.0:>9.1f}{nv['decode_ms_per_image']:>11.2f}"
                 f"{nv['model_ms_per_image']:>10.2f}{'':>9}{'':>9}")
    for name, e in r["engines"].items():
        lines.append(f"{name + ' engine':<18}{e['images_per_second']:>10.1f}{e['speedup_vs_naive']:>9.1f}"
                     f"{e['decode_ms_per_image']:>11.2f}{e['model_ms_per_image']:>10.2f}"
                     f"{e['latency_ms_p50']:>9.1f}{e['latency_ms_p90']:>9.1f}")
    for name, pr in r.get("parity_vs_torch", {}).items():
        same = pr.get("labels_identical_fraction")
        lines.append(f"{name} vs torch on all {r['n_images']} images: max |diff| {pr['max_abs_diff_relative']:.1e} of the "
                     f"feature scale, relative L2 {pr['relative_l2']:.1e}, cosine min {pr['cosine_min']:.5f} mean "
                     f"{pr['cosine_mean']:.5f}" + ("" if same is None else f", identical labels {100 * same:.2f} %"))
    for name, why in r.get("rows_left_out", {}).items():
        lines.append(f"{name}: not measured ({why})")
    if r.get("auto"):
        lines.append(f"--engine auto here: {r['auto']['engine']} {r['auto']['precision']} ({r['auto']['reason']})")
    lines.append(f"peak RSS {r['peak_rss_mb']:.0f} MB; decode ms: one thread; model ms: batches of "
                 f"{r['batch_size']}; p50/p90: one image through the Python API (decode + features)")
    return "\n".join(lines)
