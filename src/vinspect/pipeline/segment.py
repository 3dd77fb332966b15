"""What the command line calls: train a segment bundle, predict a folder (masks, overlays, regions.json)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from ..segment.data import SegData, load_grid
from ..segment.train import SegmentConfig, fit_size, preprocessing_for, train_segmenter


def train_bundle(data: SegData, cfg: SegmentConfig, out: str | Path, progress: bool = True):
    """Train on every image of ``data`` (``cfg.val_fraction`` held out for the best epoch) and save the bundle."""
    from ..models.segment import save_segment_bundle
    from ..segment.plots import curves_png

    out = Path(out)
    size = cfg.input_size or fit_size(data.sizes)
    pre = preprocessing_for(cfg, size)
    images, masks = load_grid(data, pre, progress=progress)
    ckpt = out.parent / f".{out.name}.checkpoint.pt"  # beside the bundle: an interrupted run resumes from it
    net, res = train_segmenter(images, masks, len(data.class_names), cfg, strata=data.strata, checkpoint=ckpt,
                               progress=progress)
    hist = res["history"]
    metrics = {"train_iou_last": hist[-1].get("train_iou") if hist else None}
    vals = [h["val_iou"] for h in hist if "val_iou" in h]
    if vals and res["best_epochs"]:
        be = res["best_epochs"][-1]["epoch"]
        metrics.update(val_iou_best=float(hist[be - 1]["val_iou"]), best_epoch=int(be),
                       val_loss_best=float(res["best_epochs"][-1]["val_loss"]))
    enc = res["encoder"]
    backbone = {"name": enc["name"], "arch": enc["arch"], "weights_sha256": enc["weights_sha256"],
                "weights_path": enc["weights_path"], "random_init": enc["random_init"]}
    config = {"arch": cfg.arch, "n_classes": len(data.class_names), "threshold": cfg.threshold,
              "decoder_channels": list(cfg.decoder_channels) if cfg.decoder_channels else None,
              "mask_format": data.fmt.as_dict(), "hyperparameters": cfg.as_dict()}
    training = {**data.summary(), "n_train": res["n_train"], "n_val": res["n_val"],
                "train_seconds": res["train_seconds"], "device": res["device"], "resumed_from": res["resumed_from"],
                "best_epochs": res["best_epochs"]}

    def write_history(p):
        Path(p).write_text(json.dumps(hist, indent=1))

    def write_curves(p):
        curves_png(hist, p, "segmenter training")

    bundle = save_segment_bundle(out, net, data.class_names, pre, backbone, config, metrics, training,
                                 extra_writers={"training/history.json": write_history,
                                                "training/curves.png": write_curves})
    ckpt.unlink(missing_ok=True)
    return bundle


def predict_folder(model: str | Path, inputs, out: str | Path, progress: bool = True, batch_size: int = 8,
                   overlays: bool = True) -> tuple[list[dict], list]:
    """Masks (``masks/<name>.png``: 0/255 for binary models, class indices otherwise) and overlays
    (``overlays/<name>.png``) at each image's own size, and ``regions.json`` (regions in original pixels)."""
    from tqdm.auto import tqdm

    from ..data.dataset import collect_images
    from ..data.decode import open_image
    from ..errors import ImageDecodeError
    from ..models import segment as _seg  # noqa: F401 - registers the unet kind
    from ..models.predictor import load_predictor
    from ..models.segment import regions
    from ..segment.plots import overlay_png
    from ..segment.train import to_labels

    pred = load_predictor(model, batch_size=batch_size)
    if pred.task != "segment":
        raise BadInputError(f"{model}: a {pred.task} model; vinspect segment predict needs a segment model")
    inputs = [inputs] if isinstance(inputs, (str, Path)) else list(inputs)
    paths, skipped = collect_images(inputs)
    if not paths:
        raise BadInputError("no image files to predict (" + ", ".join(map(str, inputs)) + ")")
    out = Path(out)
    pre = pred.preprocessing
    names = _unique_names(paths)
    rows = []
    from PIL import Image

    for p, name in tqdm(list(zip(paths, names)), desc="segment", unit="img", disable=not progress):
        try:
            img = open_image(p)
            pixels = pre.decode(p)
        except ImageDecodeError as e:
            skipped.append(_skip(p, e.reason))
            continue
        proba = pred.proba(pixels[None])[0]
        w, h = img.size
        po = np.stack([pre.to_original(proba[c], w, h) for c in range(proba.shape[0])])
        lab = to_labels(po, pred.threshold)
        mask_png = out / "masks" / f"{name}.png"
        mask_png.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((lab * 255).astype(np.uint8) if len(pred.classes) == 2 else lab).save(mask_png)
        if overlays:
            overlay_png(np.asarray(img.convert("RGB")), lab, out / "overlays" / f"{name}.png")
        regs = regions(lab, po, pred.classes)
        rows.append({"path": str(p), "mask": str(mask_png.relative_to(out)),
                     "label": pred.classes[max(range(len(pred.classes)), key=lambda k: 0 if k == 0 else
                                               sum(r["area"] for r in regs if r["class"] == pred.classes[k]))]
                     if regs else pred.classes[0],
                     "score": float((1 - po[0]).max()), "defect_fraction": float((lab > 0).mean()),
                     "regions": regs})
    out.mkdir(parents=True, exist_ok=True)
    (out / "regions.json").write_text(json.dumps({"model": str(model), "classes": pred.classes,
                                                  "coordinates": "original image pixels", "images": rows,
                                                  "skipped": [s.as_dict() for s in skipped]}, indent=1))
    return rows, skipped


def _skip(path, reason):
    from ..data.dataset import Skipped

    return Skipped(str(path), reason)


def _unique_names(paths: list[Path]) -> list[str]:
    """File stems, made unique with their parent folders where two images share a stem."""
    stems = [p.stem for p in paths]
    out = []
    for p, s in zip(paths, stems):
        out.append(s if stems.count(s) == 1 else f"{p.parent.name}__{s}")
    if len(set(out)) != len(out):  # still clashing: number them
        out = [f"{i:05d}_{s}" for i, s in enumerate(out)]
    return out
