"""Heads: ``name -> sklearn Pipeline(StandardScaler, estimator)`` with ``predict_proba``."""

from __future__ import annotations

from sklearn.calibration import CalibratedClassifierCV
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.svm import SVC

from ..errors import BadInputError

HEADS = {
    "logreg": "logistic regression (L2, C=1)",
    "svm-linear": "support vector machine, linear kernel (sigmoid-calibrated probabilities, 3-fold)",
    "svm-rbf": "support vector machine, RBF kernel, C=10 (sigmoid-calibrated probabilities, 3-fold)",
    "knn": "k nearest neighbours (k=5, uniform votes)",
    "rf": "random forest (100 trees, sqrt(features) per split)",
}

# training images each class needs for the head to fit (the SVMs calibrate their probabilities by 3-fold CV)
MIN_TRAIN_PER_CLASS = {"logreg": 1, "svm-linear": 3, "svm-rbf": 3, "knn": 1, "rf": 1}


def make_head(name: str = "logreg", class_weight: str | None = None, seed: int = 0, C: float | None = None,
              gamma: float | str | None = None, n_neighbors: int | None = None) -> Pipeline:
    """A fresh, unfitted head.  ``class_weight='balanced'`` re-weights classes (not available for knn).
    ``C`` (logreg, SVMs), ``gamma`` (svm-rbf: a number, or "scale") and ``n_neighbors`` (knn) override the
    defaults (the automatic model selection searches them, :mod:`vinspect.selection`)."""
    if name not in HEADS:
        raise BadInputError(f"unknown head {name!r}: use one of {', '.join(HEADS)}")
    if class_weight not in (None, "none", "balanced"):
        raise BadInputError(f"--class-weight {class_weight!r}: use balanced or none")
    cw = "balanced" if class_weight == "balanced" else None
    if name == "logreg":
        est = LogisticRegression(C=C or 1.0, max_iter=3000, class_weight=cw)
    elif name == "svm-linear":
        est = CalibratedClassifierCV(SVC(kernel="linear", C=C or 1.0, class_weight=cw), method="sigmoid",
                                     cv=3, ensemble=False)
    elif name == "svm-rbf":
        est = CalibratedClassifierCV(SVC(kernel="rbf", C=C or 10.0, gamma=gamma or "scale", class_weight=cw),
                                     method="sigmoid", cv=3, ensemble=False)
    elif name == "rf":
        est = RandomForestClassifier(n_estimators=100, class_weight=cw, random_state=seed, n_jobs=1)
    else:
        if cw:
            raise BadInputError("--class-weight balanced is not available for the knn head")
        est = KNeighborsClassifier(n_neighbors=n_neighbors or 5)  # uniform votes: exports exactly to ONNX
    return Pipeline([("scale", StandardScaler()), ("clf", est)])
