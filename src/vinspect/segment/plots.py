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
    """A grid of RGB pictures with captions (matplotlib)."""
    from ..reporting.plots import _plt

    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, len(items))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    h, w = items[0][0].shape[:2] if items else (100, 100)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.0, rows * 4.0 * h / w + 0.6), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, caption) in zip(axes.ravel(), items):
        ax.imshow(img)
        ax.set_title(caption, fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def curves_png(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and IoU per epoch, training (augmented) vs validation."""
    from ..reporting.plots import _plt

    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = list(range(1, len(history) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), dpi=110)
    for ax, key in ((axes[0], "loss"), (axes[1], "iou")):
        ax.plot(x, [h.get(f"train_{key}", float("nan")) for h in history], "o-", ms=3, label="train (augmented)")
        if any(f"val_{key}" in h for h in history):
            ax.plot(x, [h.get(f"val_{key}", float("nan")) for h in history], "o-", ms=3, label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(key)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
