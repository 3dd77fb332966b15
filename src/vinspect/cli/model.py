"""``vinspect predict``, ``export`` and ``explain``: commands that take a trained model of any task (the bundle
says which) through the one predictor protocol (:mod:`vinspect.models.predictor`)."""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

from ..errors import BadInputError
from .common import add_engine, command, need, quiet, report_skipped
from .ray_run import add_ray, predict_on_ray


def add_parser(sub, parser_class=None) -> None:
    p = command(sub, "predict", "label image files and folders with a trained model of any task", cmd_predict)
    add_predict_options(p)

    p = command(sub, "export", "write a model bundle as one ONNX file for any onnxruntime user", cmd_export)
    p.add_argument("model", nargs="?", metavar="MODEL_DIR")
    p.add_argument("--format", default="onnx", choices=["onnx"])
    p.add_argument("--out", metavar="FILE", help="default: MODEL_DIR/model.onnx")

    p = command(sub, "explain", "heatmaps of where a model looked (Grad-CAM, anomaly maps, masks) as PNG "
                                "overlays, plus explain.json", cmd_explain)
    p.add_argument("model", nargs="?", metavar="MODEL_DIR")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files and folders (searched recursively)")
    p.add_argument("--out", metavar="DIR", help="output folder (default: runs/explain-<model>)")
    p.add_argument("--label", help="explain this class instead of the predicted one")
    p.add_argument("--weights", metavar="PATH", help="backbone weights, if not where the model recorded them")
    p.add_argument("--max-side", type=int, default=512, help="largest side of the overlays (default: %(default)s)")


def add_predict_options(p) -> None:
    p.add_argument("model", nargs="?", metavar="MODEL_DIR")
    p.add_argument("paths", nargs="*", metavar="PATH", help="image files and folders (searched recursively)")
    p.add_argument("--json", action="store_true", help="print a JSON list of {path, label, probabilities|score}")
    p.add_argument("--csv", metavar="FILE", help="also write the predictions as CSV")
    p.add_argument("--maps", metavar="DIR", help="write each prediction's map (anomaly map, mask) as a PNG overlay")
    p.add_argument("--weights", metavar="PATH", help="backbone weights, if not where the model recorded them")
    p.add_argument("--batch-size", type=int, default=32)
    add_engine(p)
    add_ray(p, out=True)


def _runtime(args) -> dict:
    kw = {"weights": args.weights, "batch_size": getattr(args, "batch_size", 32)}
    if getattr(args, "engine", None):
        kw["engine"] = args.engine
    if getattr(args, "precision", None):
        kw["precision"] = args.precision
    return kw


def safe_name(path: str | Path, used: set[str]) -> str:
    """A file name for one input's output: its stem, made unique with a counter."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(path).stem)[:80] or "image"
    name, k = stem, 1
    while name in used:
        k += 1
        name = f"{stem}-{k}"
    used.add(name)
    return name


def _write_csv(path, rows: list[dict]) -> None:
    classes = list(rows[0].get("probabilities", {})) if rows else []
    extra = sorted({k for r in rows for k, v in r.items()
                    if k not in ("path", "label", "probabilities") and isinstance(v, (int, float, str))})
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"] + [f"p_{c}" for c in classes] + extra)
        for r in rows:
            w.writerow([r["path"], r["label"]] + [f"{r['probabilities'][c]:.6f}" for c in classes] +
                       [r.get(k, "") for k in extra])


def cmd_predict(args) -> int:
    from ..models.predictor import load_predictor

    need(args, "model", "paths")
    if getattr(args, "ray", None):
        return predict_on_ray(args)
    predictor = load_predictor(args.model, **_runtime(args))
    on_result = None
    if args.maps:
        out = Path(args.maps)
        out.mkdir(parents=True, exist_ok=True)
        used: set[str] = set()

        def on_result(path, pred):
            if pred.map is None:
                return
            from ..data.decode import open_image
            from ..explain import overlay_png

            img = open_image(path)
            m = predictor.preprocessing.to_original(pred.map, *img.size)
            (out / f"{safe_name(path, used)}.png").write_bytes(overlay_png(img, predictor.map_to_unit(m, pred)))

    rows, skipped = predictor.predict(args.paths, progress=not quiet(args), on_result=on_result)
    report_skipped(skipped)
    if args.csv:
        _write_csv(args.csv, rows)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        width = max([len(r["path"]) for r in rows] + [4])
        col = "p(label)" if rows and "probabilities" in rows[0] else "score"
        print(f"{'path':<{width}}  {'label':<16}{col:>9}")
        for r in rows:
            v = r["probabilities"][r["label"]] if "probabilities" in r else r.get("score", float("nan"))
            print(f"{r['path']:<{width}}  {r['label']:<16}{v:>9.4f}")
    return 0 if rows else 2


def cmd_export(args) -> int:
    from ..models.predictor import load_predictor

    need(args, "model")
    predictor = load_predictor(args.model)
    path = predictor.export_onnx(args.out)
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB): input 'images' uint8 (N, H, W, 3); outputs "
          + ", ".join(f"'{o}'" for o in _onnx_outputs(path))
          + "; classes and preprocessing in the model's metadata")
    return 0


def _onnx_outputs(path) -> list[str]:
    import onnx

    return [o.name for o in onnx.load(str(path), load_external_data=False).graph.output]


def cmd_explain(args) -> int:
    from tqdm.auto import tqdm

    from ..data.dataset import Skipped, collect_images
    from ..errors import ImageDecodeError
    from ..explain import overlay_png
    from ..models.predictor import load_predictor

    need(args, "model", "paths")
    out = Path(args.out) if args.out else Path("runs") / f"explain-{Path(args.model).resolve().name}"
    predictor = load_predictor(args.model, **_runtime(args))
    if args.label is not None and args.label not in predictor.classes:
        raise BadInputError(f"--label {args.label}: not a class of the model ({', '.join(predictor.classes)})")
    paths, skipped = collect_images(args.paths)
    if not paths:
        raise BadInputError("no image files to explain (" + ", ".join(map(str, args.paths)) + ")")
    out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    rows = []
    for p in tqdm(paths, desc="explain", unit="img", disable=quiet(args)):
        try:
            data = Path(p).read_bytes()
            e = predictor.explain(data, args.label)
        except ImageDecodeError as err:
            skipped.append(Skipped(str(p), err.reason))
            continue
        except OSError as err:
            skipped.append(Skipped(str(p), f"unreadable ({err.strerror or err})"))
            continue
        name = f"{safe_name(p, used)}.png"
        (out / name).write_bytes(overlay_png(data, e.map, max_side=args.max_side))
        rows.append({"path": str(p), "label": e.label, "peak_xy": list(e.peak_xy), "method": e.method,
                     "score": e.score, "overlay": name})
    (out / "explain.json").write_text(json.dumps(rows, indent=2) + "\n")
    report_skipped(skipped)
    methods = sorted({r["method"] for r in rows})
    print(f"{len(rows)} heatmaps ({', '.join(methods) or 'none'}) -> {out}; explain.json lists path, label, "
          f"peak_xy; {len(skipped)} skipped", file=sys.stdout)
    return 0 if rows else 2
