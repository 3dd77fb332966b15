"""Plots as PNG files (matplotlib, headless)."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def confusion_matrix_png(cm, classes: list[str], path: str | Path, title: str = "") -> Path:
    """Counts summed over splits, with row-normalised colour (recall per true class)."""
    plt = _plt()
    cm = np.asarray(cm)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * n, 1.0 + 0.8 * n), dpi=110)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), classes, rotation=45, ha="right")
    ax.set_yticks(range(n), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(int(cm[i, j])), ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def comparison_png(rows: list[dict], path: str | Path) -> Path:
    """Accuracy (mean +- std) against extraction speed, feature dimension and cache size, one point per backbone."""
    plt = _plt()
    panels = [("images_per_second", "extraction images/s (higher is faster)", False),
              ("feature_dim", "feature dimension", True),
              ("cache_mb", "feature cache size (MB)", True)]
    fig, axes = plt.subplots(1, 3, figsize=(13, 4.2), dpi=110, sharey=True)
    for ax, (key, label, log) in zip(axes, panels):
        for r in rows:
            x = r.get(key)
            if x is None:
                continue
            ax.errorbar(x, r["accuracy_mean"], yerr=r["accuracy_std"], fmt="o", capsize=4, ms=7)
            ax.annotate(r["backbone"], (x, r["accuracy_mean"]), textcoords="offset points", xytext=(6, 6),
                        fontsize=8)
        ax.set_xlabel(label)
        if log:
            ax.set_xscale("log")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("accuracy (mean +- std over splits)")
    fig.suptitle("backbones: accuracy against speed and size", fontsize=11)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def training_curves_png(history: list[dict], path: str | Path, title: str = "",
                        panels: tuple[tuple[str, str], ...] = (("loss", "loss"), ("accuracy", "accuracy"))) -> Path:
    """One panel per ``(key, label)`` of ``panels``: ``train_<key>`` (augmented) and ``val_<key>`` per epoch, each
    where the history has it; stages (head, fine-tuning) separated by a line when there are several."""
    plt = _plt()
    from matplotlib.ticker import MaxNLocator

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = list(range(1, len(history) + 1))
    stages = [h.get("stage") for h in history]
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), dpi=110, squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for part, name in (("train", "train (augmented)"), ("val", "validation")):
            ys = [h.get(f"{part}_{key}", float("nan")) for h in history]
            if any(y is not None and np.isfinite(y) for y in ys):  # not measured (missing or NaN): no line
                ax.plot(x, [float("nan") if y is None else y for y in ys], "o-", ms=3, label=name)
        if len(set(stages)) > 1:
            for i in range(1, len(history)):
                if stages[i] != stages[i - 1]:
                    ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
                    ax.text(i + 0.6, ax.get_ylim()[1], stages[i], va="top", fontsize=8, color="grey")
            ax.text(1, ax.get_ylim()[1], stages[0], va="top", fontsize=8, color="grey")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def image_grid_png(items: list[tuple[np.ndarray, str]], path: str | Path, cols: int = 3, title: str = "",
                   cell: float = 3.6) -> Path:
    """RGB pictures with their captions in a grid of ``cols`` columns (each about ``cell`` inches wide)."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n = max(1, len(items))
    cols = min(cols, n)
    rows = (n + cols - 1) // cols
    h, w = items[0][0].shape[:2] if items else (100, 100)
    fig, axes = plt.subplots(rows, cols, figsize=(cols * cell, rows * cell * h / w + 0.6), dpi=110, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, (img, caption) in zip(axes.ravel(), items):
        ax.imshow(img)
        ax.set_title(caption, fontsize=7 if cell < 4 else 8)
    if title:
        fig.suptitle(title, fontsize=9 if cell < 4 else 10)
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path
