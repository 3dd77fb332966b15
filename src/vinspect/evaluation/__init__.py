"""Evaluation protocols (repeated stratified splits, k-fold) and metrics."""

from .metrics import per_class_from_confusion, split_metrics, summarize
from .protocol import evaluate_features

__all__ = ["per_class_from_confusion", "split_metrics", "summarize", "evaluate_features"]
