"""The picture of a measurement: the image, the fitted cutting edge, the wear land and VB max."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .measure import WearMeasure, edge_line_image


def draw_measure(image: np.ndarray, wm: WearMeasure, geo: dict, ax, title: str | None = None) -> None:
    """Draw on a matplotlib axis: the image, the wear land (red), the edge (cyan), VB max (yellow)."""
    from ..segment.plots import contours_rgb

    ax.imshow(contours_rgb(image, geo["kept"], None, fill=0.35))
    x0, y0, x1, y1 = edge_line_image(geo)
    ax.plot([x0, x1], [y0, y1], "-", color="cyan", lw=1.2, label="cutting edge (fitted outline)")
    if wm.vb_max_at is not None:
        a, b, c, d = wm.vb_max_at
        ax.plot([a, c], [b, d], "-", color="yellow", lw=2.0, label="VB max")
    unit = lambda v, mm: f"{v:.1f} px" + (f" ({mm:.3f} mm)" if mm is not None else "")
    s = wm.mm_per_px
    text = (f"VB max {unit(wm.vb_max, wm.vb_max * s if s else None)}, VB mean {unit(wm.vb_mean, wm.vb_mean * s if s else None)}"
            f"\nworn length {wm.worn_length:.0f} px, area {wm.area:.0f} px²" + (", BREAKAGE" if wm.breakage else ""))
    ax.set_title((title + "\n" if title else "") + text, fontsize=8)
    ax.axis("off")


def measure_png(image: np.ndarray, wm: WearMeasure, geo: dict, path: str | Path, title: str | None = None) -> Path:
    from ..reporting.plots import _plt

    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = image.shape[:2]
    fig, ax = plt.subplots(figsize=(6, 6 * h / w + 0.7), dpi=120)
    draw_measure(image, wm, geo, ax, title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def measures_grid_png(items: list[tuple[np.ndarray, WearMeasure, dict, str]], path: str | Path,
                      cols: int = 3) -> Path:
    from ..reporting.plots import _plt

    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = len(items)
    cols = min(cols, max(n, 1))
    rows = (n + cols - 1) // cols
    h, w = items[0][0].shape[:2]
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 4.2, rows * (4.2 * h / w + 0.8)), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, wm, geo, title) in zip(axes.ravel(), items):
        draw_measure(img, wm, geo, ax, title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
