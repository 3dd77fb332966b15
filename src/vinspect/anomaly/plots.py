"""Plots of an anomaly evaluation: ROC curve, score histograms, and a grid of images with their maps."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def roc_png(labels, scores, path, title: str = "") -> Path:
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _plt()
    fpr, tpr, _ = roc_curve(labels, scores)
    fig, ax = plt.subplots(figsize=(4.2, 4.2), dpi=110)
    ax.plot(fpr, tpr, lw=1.6, label=f"AUROC {roc_auc_score(labels, scores):.3f}")
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (normal parts flagged)")
    ax.set_ylabel("true positive rate (defects found)")
    ax.legend(loc="lower right")
    ax.set_title(title or "image-level ROC (first split)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def histogram_png(labels, scores, threshold, path, title: str = "") -> Path:
    plt = _plt()
    y = np.asarray(labels)
    s = np.asarray(scores)
    fig, ax = plt.subplots(figsize=(5.2, 3.4), dpi=110)
    bins = np.linspace(s.min(), s.max(), 40)
    ax.hist(s[y == 0], bins, alpha=0.6, label=f"normal ({(y == 0).sum()})", color="tab:blue")
    ax.hist(s[y == 1], bins, alpha=0.6, label=f"anomalous ({(y == 1).sum()})", color="tab:red")
    if threshold is not None:
        ax.axvline(threshold, color="k", ls="--", lw=1, label=f"threshold {threshold:.3g}")
    ax.set_xlabel("anomaly score")
    ax.set_ylabel("images")
    ax.legend(fontsize=8)
    ax.set_title(title or "scores of the test images (first split)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def maps_grid_png(items: list[dict], path, vmax: float | None = None, title: str = "", cols: int = 4) -> Path:
    """``items``: {pixels (H, W, 3) uint8, map (H, W), score, path, anomalous?, mask?}; each image above its
    overlay (the ground-truth mask, when given, outlined in white).

    The colour scale is common to every panel (0 .. ``vmax``, default the largest map value shown)."""
    plt = _plt()
    if not items:
        raise ValueError("no images to plot")
    vmax = vmax or max(float(it["map"].max()) for it in items)
    vmin = min(float(it["map"].min()) for it in items)
    cols = min(cols, len(items))
    rows = (len(items) + cols - 1) // cols
    fig, axes = plt.subplots(2 * rows, cols, figsize=(2.4 * cols, 4.6 * rows), dpi=100, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for k, it in enumerate(items):
        r, c = divmod(k, cols)
        axes[2 * r, c].imshow(it["pixels"])
        tag = "" if "anomalous" not in it else ("anomalous, " if it["anomalous"] else "normal, ")
        axes[2 * r, c].set_title(f"{Path(it['path']).parent.name}/{Path(it['path']).name[:18]}\n{tag}score "
                                 f"{it['score']:.3g}", fontsize=7)
        axes[2 * r + 1, c].imshow(it["pixels"])
        axes[2 * r + 1, c].imshow(it["map"], cmap="jet", alpha=0.45, vmin=vmin, vmax=vmax)
        if it.get("mask") is not None and it["mask"].any():  # the ground truth, outlined
            axes[2 * r + 1, c].contour(it["mask"].astype(float), levels=[0.5], colors="white", linewidths=0.8)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
