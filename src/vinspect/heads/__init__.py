"""Classifier heads on features: scikit-learn estimators behind a standard scaler; model bundles."""

from .factory import HEADS, make_head
from .bundle import ModelBundle, load_bundle, save_bundle

__all__ = ["HEADS", "make_head", "ModelBundle", "load_bundle", "save_bundle"]
