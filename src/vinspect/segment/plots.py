"""Pictures of segmentations: contours of predicted vs true masks, the worst images, training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

TRUE_RGB = (40, 220, 60)  # green: the annotated region
PRED_RGB = (255, 40, 40)  # red: the predicted region


def _thick_boundary(mask: np.ndarray, width: int = 1) -> np.ndarray:
    from scipy import ndimage as ndi

    m = np.asarray(mask, bool)
    inner = ndi.binary_erosion(m, iterations=width, border_value=0)
    return m & ~inner


def contours_rgb(image: np.ndarray, pred: np.ndarray | None = None, true: np.ndarray | None = None,
                 fill: float = 0.25) -> np.ndarray:
    """The image (H, W, 3 uint8) with the predicted region tinted and outlined in red, the true one in green."""
    out = np.asarray(image, np.float32).copy()
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=-1)
    if pred is not None and fill > 0:
        p = np.asarray(pred) > 0
        out[p] = (1 - fill) * out[p] + fill * np.array(PRED_RGB)
    for m, colour in ((true, TRUE_RGB), (pred, PRED_RGB)):
        if m is not None:
            out[_thick_boundary(np.asarray(m) > 0)] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def overlay_png(image: np.ndarray, pred: np.ndarray, path: str | Path, true: np.ndarray | None = None) -> Path:
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(contours_rgb(image, pred, true)).save(path)
    return path


def grid_png(items: list[tuple[np.ndarray, str]], path: str | Path, cols: int = 3, title: str = "") -> Path:
    """A grid of RGB pictures with captions."""
    from ..reporting.plots import image_grid_png

    return image_grid_png(items, path, cols, title, cell=4.0)


def curves_png(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and IoU per epoch, training (augmented) vs validation."""
    from ..reporting.plots import training_curves_png

    return training_curves_png(history, path, title, panels=(("loss", "loss"), ("iou", "iou")))
