"""Metrics of a set of test predictions, and their summary over repeated splits."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix


def split_metrics(y_true, y_pred, n_classes: int) -> dict:
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=list(range(n_classes))),
    }


def per_class_from_confusion(cm: np.ndarray, classes: list[str]) -> dict:
    """Precision, recall, F1 and support per class from a (summed) confusion matrix (rows = truth)."""
    out = {}
    for i, c in enumerate(classes):
        tp = float(cm[i, i])
        pred = float(cm[:, i].sum())
        true = float(cm[i, :].sum())
        p = tp / pred if pred else 0.0
        r = tp / true if true else 0.0
        f1 = 2 * p * r / (p + r) if p + r else 0.0
        out[c] = {"precision": p, "recall": r, "f1": f1, "support": int(true)}
    return out


def summarize(per_split: list[dict], classes: list[str]) -> dict:
    acc = np.array([s["accuracy"] for s in per_split])
    bal = np.array([s["balanced_accuracy"] for s in per_split])
    cm = np.sum([s["confusion_matrix"] for s in per_split], axis=0)
    return {
        "accuracy_mean": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=1)) if len(acc) > 1 else 0.0,
        "balanced_accuracy_mean": float(bal.mean()),
        "balanced_accuracy_std": float(bal.std(ddof=1)) if len(bal) > 1 else 0.0,
        "per_split": [float(a) for a in acc],
        "confusion_matrix": cm.astype(int).tolist(),
        "per_class": per_class_from_confusion(cm, classes),
    }
