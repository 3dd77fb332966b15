"""Classifier heads on features: scikit-learn estimators behind a standard scaler (saved in ``head`` model
bundles, :mod:`vinspect.models.head`)."""

from .factory import HEADS, make_head

__all__ = ["HEADS", "make_head"]
