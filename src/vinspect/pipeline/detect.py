"""What the command line calls: train a detect bundle, predict a folder (boxes in JSON, drawn images)."""

from __future__ import annotations

import json
from pathlib import Path

from ..detect.annotations import DetData
from ..detect.train import DetectConfig, fit_size, load_grid, preprocessing_for, train_detector
from ..errors import BadInputError


def train_bundle(data: DetData, cfg: DetectConfig, out: str | Path, progress: bool = True):
    """Train on every annotated image of ``data`` (``cfg.val_fraction`` held out for the best epoch) and save
    the bundle (``training/history.json``, ``training/curves.png`` beside the weights)."""
    from ..detect.plots import curves_png
    from ..models.detect import save_detect_bundle

    out = Path(out)
    size = cfg.input_size or fit_size(data)
    pre = preprocessing_for(cfg, size)
    images, targets = load_grid(data, pre, progress=progress)
    ckpt = out.parent / f".{out.name}.checkpoint.pt"  # beside the bundle: an interrupted run resumes from it
    net, res = train_detector(images, targets, len(data.classes), cfg, strata=data.strata, checkpoint=ckpt,
                              progress=progress)
    hist = res["history"]
    metrics = {}
    if res["best_epochs"] and any("val_map50" in h for h in hist):
        be = res["best_epochs"][-1]["epoch"]
        metrics.update(val_map50_best_epoch=float(hist[be - 1]["val_map50"]), best_epoch=int(be),
                       val_loss_best=float(res["best_epochs"][-1]["val_loss"]))
    bb = res["backbone"]
    backbone = {k: bb[k] for k in ("name", "arch", "weights_sha256", "weights_path", "random_init")}
    config = {"arch": "fcos", "n_classes": len(data.classes), "fpn_channels": cfg.fpn_channels,
              "head_convs": cfg.head_convs, "score_threshold": cfg.score_threshold,
              "display_threshold": cfg.display_threshold, "nms_threshold": cfg.nms_threshold,
              "max_detections": cfg.max_detections, "annotation_format": data.fmt, "hyperparameters": cfg.as_dict()}
    training = {**data.summary(), "n_train": res["n_train"], "n_val": res["n_val"],
                "train_seconds": res["train_seconds"], "device": res["device"], "resumed_from": res["resumed_from"],
                "best_epochs": res["best_epochs"], "problems": [p.as_dict() for p in data.problems[:200]]}

    def write_history(p):
        Path(p).write_text(json.dumps(hist, indent=1))

    def write_curves(p):
        curves_png(hist, p, "detector training")

    bundle = save_detect_bundle(out, net, data.classes, pre, backbone, config, metrics, training,
                                extra_writers={"training/history.json": write_history,
                                               "training/curves.png": write_curves})
    ckpt.unlink(missing_ok=True)
    return bundle


def load_detector(model: str | Path, batch_size: int = 16):
    from ..models import detect as _det  # noqa: F401 - registers the fcos kind
    from ..models.predictor import load_predictor

    pred = load_predictor(model, batch_size=batch_size)
    if pred.task != "detect":
        raise BadInputError(f"{model}: a {pred.task} model; vinspect detect needs a detect model")
    return pred


def predict_folder(model: str | Path, inputs, out: str | Path | None = None, progress: bool = True,
                   batch_size: int = 16, threshold: float | None = None) -> tuple[list[dict], list]:
    """Boxes (original image pixels) of every image in ``inputs``; with ``out``: ``boxes.json`` and each image
    with its boxes drawn (``out/<name>.png``)."""
    from tqdm.auto import tqdm

    from ..data.dataset import Skipped, collect_images
    from ..data.decode import open_image
    from ..detect.plots import draw_boxes
    from ..detect.train import to_original
    from ..errors import ImageDecodeError

    pred = load_detector(model, batch_size)
    thr = pred.display_threshold if threshold is None else float(threshold)
    if not 0.0 < thr < 1.0:
        raise BadInputError(f"--threshold {thr}: must be between 0 and 1")
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths, skipped = collect_images(inputs)
    if not paths:
        raise BadInputError("no image files to predict (" + ", ".join(map(str, inputs)) + ")")
    pre = pred.preprocessing
    names = _unique_names(paths)
    rows = []
    outp = Path(out) if out else None
    from PIL import Image

    for p, name in tqdm(list(zip(paths, names)), desc="detect", unit="img", disable=not progress):
        try:
            img = open_image(p)
            pixels = pre.decode(p)
        except ImageDecodeError as e:
            skipped.append(Skipped(str(p), e.reason))
            continue
        w, h = img.size
        d = to_original(pred.detect_pixels(pixels[None], thr)[0], w, h, pre.size_hw)
        boxes = [{"class": pred.defect_classes[int(k)], "score": round(float(s), 4),
                  "box": [round(float(v), 1) for v in b]} for b, s, k in zip(d["boxes"], d["scores"], d["labels"])]
        boxes.sort(key=lambda r: -r["score"])
        row = {"path": str(p), "width": w, "height": h,
               "label": boxes[0]["class"] if boxes else "background",
               "score": boxes[0]["score"] if boxes else 0.0, "boxes": boxes}
        if outp is not None:
            outp.mkdir(parents=True, exist_ok=True)
            arr = draw_boxes(img, [b["box"] for b in boxes], [b["class"] for b in boxes],
                             [b["score"] for b in boxes], classes=pred.defect_classes)
            Image.fromarray(arr).save(outp / f"{name}.png")
            row["drawn"] = f"{name}.png"
        rows.append(row)
    if outp is not None:
        (outp / "boxes.json").write_text(json.dumps({"model": str(model), "classes": pred.defect_classes,
                                                     "threshold": thr, "coordinates": "original image pixels, "
                                                     "[x0, y0, x1, y1]", "images": rows,
                                                     "skipped": [s.as_dict() for s in skipped]}, indent=1))
    return rows, skipped


def _unique_names(paths: list[Path]) -> list[str]:
    stems = [p.stem for p in paths]
    out = [s if stems.count(s) == 1 else f"{p.parent.name}__{s}" for p, s in zip(paths, stems)]
    if len(set(out)) != len(out):
        out = [f"{i:05d}_{s}" for i, s in enumerate(out)]
    return out
