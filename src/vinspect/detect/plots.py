"""Pictures of detections: boxes drawn on images, a grid of predictions vs truth, PR curves, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TRUE_RGB = (40, 220, 60)  # green: annotated boxes
PALETTE = [(255, 60, 60), (255, 170, 0), (0, 160, 255), (200, 80, 255), (255, 90, 200), (0, 220, 200),
           (180, 180, 40), (120, 120, 255)]


def draw_boxes(image, boxes, labels: list[str], scores=None, truth=None, truth_labels=None, classes=None,
               width: int | None = None) -> np.ndarray:
    """An RGB uint8 copy of ``image`` with the predicted boxes (one colour per class, ``label score``) and, when
    given, the true boxes in green (``truth``)."""
    from PIL import Image, ImageDraw

    img = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    img = img.convert("RGB")
    d = ImageDraw.Draw(img)
    lw = width or max(1, round(max(img.size) / 200))
    if truth is not None:
        for b, c in zip(np.asarray(truth).reshape(-1, 4), truth_labels or [""] * len(truth)):
            d.rectangle([float(v) for v in b], outline=TRUE_RGB, width=lw)
    classes = classes or sorted(set(labels))
    for k, (b, c) in enumerate(zip(np.asarray(boxes).reshape(-1, 4), labels)):
        colour = PALETTE[classes.index(c) % len(PALETTE)] if c in classes else PALETTE[0]
        x0, y0, x1, y1 = (float(v) for v in b)
        d.rectangle([x0, y0, x1, y1], outline=colour, width=lw)
        text = c if scores is None else f"{c} {float(scores[k]):.2f}"
        tw = d.textlength(text)
        ty = y0 - 11 if y0 >= 11 else y0 + 1
        d.rectangle([x0, ty, x0 + tw + 2, ty + 10], fill=colour)
        d.text((x0 + 1, ty - 1), text, fill=(0, 0, 0))
    return np.asarray(img)


def grid_png(items: list[tuple[np.ndarray, str]], path: str | Path, cols: int = 3, title: str = "") -> Path:
    """A grid of RGB pictures with captions."""
    from ..reporting.plots import image_grid_png

    return image_grid_png(items, path, cols, title, cell=3.6)


def pr_curves_png(curves: dict, path: str | Path, title: str = "") -> Path:
    """One precision-recall curve (IoU 0.5) per class, in one panel each."""
    from ..reporting.plots import _plt

    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(curves)
    cols = min(3, max(1, len(names)))
    rows = (max(1, len(names)) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 3.4, rows * 3.0), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        c = curves[name]
        ax.axis("on")
        ax.plot(c["recall"], c["precision"], "-", lw=1.6)
        ap = float(np.mean(c["precision"]))
        ax.set_title(f"{name}  AP@0.5 {ap:.3f}", fontsize=8)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=7)
        ax.set_ylabel("precision", fontsize=7)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def curves_png(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss (training, augmented, and validation) and validation mAP@0.5 per epoch."""
    from ..reporting.plots import training_curves_png

    return training_curves_png(history, path, title,
                               panels=(("loss", "loss (focal + GIoU + centre-ness)"), ("map50", "mAP@0.5")))
