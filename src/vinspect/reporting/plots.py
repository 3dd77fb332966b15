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


def training_curves_png(history: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss and accuracy per epoch, training vs validation; stages (head, fine-tuning) separated by a line."""
    plt = _plt()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    x = list(range(1, len(history) + 1))
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), dpi=110)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "accuracy", "accuracy")):
        ax.plot(x, [h[f"train_{key}"] for h in history], "o-", ms=3, label="train (augmented)")
        if any(f"val_{key}" in h for h in history):
            ax.plot(x, [h.get(f"val_{key}", float("nan")) for h in history], "o-", ms=3, label="validation")
        for i in range(1, len(history)):
            if history[i]["stage"] != history[i - 1]["stage"]:
                ax.axvline(i + 0.5, color="grey", ls="--", lw=1)
                ax.text(i + 0.6, ax.get_ylim()[1], history[i]["stage"], va="top", fontsize=8, color="grey")
        if history:
            ax.text(1, ax.get_ylim()[1], history[0]["stage"], va="top", fontsize=8, color="grey")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
