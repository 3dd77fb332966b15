"""Wear grades from the measured wear: the repeated-split protocol of ``vinspect evaluate`` on wear measures.

Every image is measured on a **predicted** mask: either the out-of-fold maps of ``vinspect segment evaluate``
(each image predicted by a network that never saw it; ``predicted=DIR``), or, inside each split, a segmenter
trained on that split's training images and masks only (``train_segmenter=True``; training images are then
measured on the network's own predictions of them, test images on predictions of images it never saw).  A
classifier on the measures is fitted on the training part and scored on the test part of the same stratified
splits (seed, test fraction) as ``vinspect evaluate``, and the same ``results.json`` keys come out.  The ordinal
view: the VB max threshold(s) that best separate the ordered grades on the training part, scored on the test part.

The classifier is not picked on the test parts: the candidates (logistic regression and a random forest on the
wear measures, the ordinal VB max thresholds, and logistic regression on the wear measures joined with the
pooled CNN features of the whole image, reduced to 16 principal components fitted on the training part) are
compared by an inner stratified 5-fold cross-validation on each split's TRAINING part only; the best (ties: the
earlier in that list) is refitted on the whole training part and scored once on the test part (nested
cross-validation).  That nested figure is the headline (``variant``); every fixed candidate is reported beside it
on the same splits.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, TransformerMixin

from ..errors import BadInputError
from .measure import measure

FEATURES = ["vb_max", "vb_mean", "vb_mean_edge", "vb_median", "worn_length", "area", "notch_depth",
            "area_per_edge", "worn_fraction", "vb_p90"]


def features_of(grey: np.ndarray, mask: np.ndarray, edge: str = "bottom") -> dict:
    """The wear measures of one image used as features (all in px: the crops share one scale)."""
    wm, geo = measure(grey, mask, edge)
    d = wm.as_dict()
    f = {k: float(d[k]) for k in FEATURES if k in d}
    f["area_per_edge"] = wm.area / max(wm.edge_length, 1.0)
    f["worn_fraction"] = wm.worn_length / max(wm.edge_length, 1.0)
    f["vb_p90"] = _vb_percentile(geo, 90)
    return f


def _vb_percentile(geo: dict, q: float) -> float:
    from .measure import _to_bottom

    keep = _to_bottom(geo["kept"], geo["side"])
    e = geo["edge"]
    ys, xs = np.nonzero(keep)
    if xs.size == 0:
        return 0.0
    norm = np.sqrt(1 + e.slope ** 2)
    d = np.maximum((e.slope * xs + e.offset - ys) / norm, 0)
    s = np.floor((xs + e.slope * (ys - e.offset)) / norm).astype(int)
    width = np.zeros(s.max() - s.min() + 1)
    np.maximum.at(width, s - s.min(), d + 0.5)
    return float(np.percentile(width[width > 0], q))


def fit_thresholds(x: np.ndarray, y_ord: np.ndarray, k: int | None = None) -> list[float]:
    """Thresholds t_1 < ... < t_{k-1} on ``x`` between consecutive ordered grades (0 < 1 < ... < k-1), chosen for
    the best accuracy on (x, y_ord) (greedy, one threshold at a time, candidates midway between values)."""
    k = int(y_ord.max()) + 1 if k is None else int(k)
    cand = np.unique(x)
    cand = (cand[:-1] + cand[1:]) / 2 if len(cand) > 1 else cand
    ths: list[float] = []
    lo = -np.inf
    for g in range(k - 1):  # threshold between grade g and g + 1
        best, best_t = -1.0, None
        for t in cand[cand > lo]:
            trial = ths + [t] + [np.inf] * (k - 2 - g)
            acc = float(np.mean(np.searchsorted(trial, x, side="right") == y_ord))
            if acc > best:
                best, best_t = acc, t
        if best_t is None:
            best_t = lo
        ths.append(float(best_t))
        lo = best_t
    return ths


def ordinal_accuracy(x: np.ndarray, y_ord: np.ndarray, train, test) -> tuple[float, list[float]]:
    """The thresholds of :func:`fit_thresholds` chosen on ``train``, scored on ``test``."""
    ths = fit_thresholds(x[train], y_ord[train], int(y_ord.max()) + 1)
    pred = np.searchsorted(ths, x[test], side="right")
    return float(np.mean(pred == y_ord[test])), ths


class VBThresholds(ClassifierMixin, BaseEstimator):
    """A scikit-learn classifier on one column (VB max): ordered grades by thresholds (see fit_thresholds).
    ``order``: the class labels from least to most worn."""

    def __init__(self, column: int = 0, order: tuple = ()):
        self.column = column
        self.order = order

    def fit(self, X, y):
        y = np.asarray(y)
        self.order_ = np.asarray(list(self.order) if len(self.order) else np.unique(y))
        rank = {c: i for i, c in enumerate(self.order_.tolist())}
        y_ord = np.array([rank[v] for v in y.tolist()])
        self.thresholds_ = fit_thresholds(np.asarray(X, np.float64)[:, self.column], y_ord, len(self.order_))
        self.classes_ = np.unique(self.order_)
        return self

    def predict(self, X):
        return self.order_[np.searchsorted(self.thresholds_, np.asarray(X, np.float64)[:, self.column],
                                           side="right")]


def load_predicted(predicted: str | Path, relpaths: list[str], threshold: float = 0.5) -> list[np.ndarray]:
    """Out-of-fold maps of ``vinspect segment evaluate`` (``DIR/oof/<relative path>.png``, or ``DIR/<...>``)."""
    from PIL import Image

    root = Path(predicted)
    if (root / "oof").is_dir():
        root = root / "oof"
    out, missing = [], []
    for r in relpaths:
        p = root / Path(r).with_suffix(".png")
        if not p.is_file():
            missing.append(r)
            continue
        a = np.asarray(Image.open(p).convert("L"))
        out.append(a >= threshold * 255 if a.max() > 1 else a > 0)
    if missing:
        raise BadInputError(f"--predicted {root}: no predicted mask for {len(missing)} image(s): "
                            f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''} (run vinspect segment "
                            f"evaluate on every fold first)")
    return out


LR, RF, ORD, CNN = ("wear measures, logistic regression", "wear measures, random forest (300 trees)",
                     "VB max thresholds (ordinal)", "wear measures + CNN features (PCA 16), logistic regression")
NESTED = "chosen by inner CV on each training part (nested)"
PRIMARY = NESTED  # fixed in advance: the headline is chosen inside the training parts, never on the test parts
INNER_FOLDS = 5
CNN_COMPONENTS = 16


def save_results(out: Path, table: dict, info: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    res = {**table[PRIMARY], "variant": PRIMARY, "variants": table, **info}
    (out / "results.json").write_text(json.dumps(res, indent=2, default=float))
    return out / "results.json"


class _TopPCA(TransformerMixin, BaseEstimator):
    """PCA to at most ``k`` components (fewer when there are fewer samples or features)."""

    def __init__(self, k: int = CNN_COMPONENTS):
        self.k = k

    def fit(self, X, y=None):
        from sklearn.decomposition import PCA

        self.pca_ = PCA(max(1, min(self.k, X.shape[0] - 1, X.shape[1])), random_state=0).fit(X)
        return self

    def transform(self, X):
        return self.pca_.transform(X)


def candidates(n_wear: int, n_cnn: int, order_labels: list[int] | None) -> dict:
    """The classifiers compared (in this order; ties go to the earlier).  Every one takes the same X: the wear
    measures (first ``n_wear`` columns), then the CNN features (``n_cnn`` columns, 0: none)."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    wear = list(range(n_wear))
    only_wear = ColumnTransformer([("wear", "passthrough", wear)])
    out = {LR: make_pipeline(only_wear, StandardScaler(), LogisticRegression(max_iter=5000)),
           RF: make_pipeline(only_wear, RandomForestClassifier(300, random_state=0, n_jobs=1))}
    if order_labels is not None:
        out[ORD] = VBThresholds(FEATURES.index("vb_max"), tuple(order_labels))
    if n_cnn:
        reduce = make_pipeline(StandardScaler(), _TopPCA(CNN_COMPONENTS), StandardScaler())
        joined = ColumnTransformer([("wear", StandardScaler(), wear),
                                    ("cnn", reduce, list(range(n_wear, n_wear + n_cnn)))])
        out[CNN] = make_pipeline(joined, LogisticRegression(max_iter=5000))
    return out


def inner_scores(cands: dict, X: np.ndarray, y: np.ndarray, folds: int = INNER_FOLDS, seed: int = 0) -> dict:
    """Mean accuracy of every candidate by stratified ``folds``-fold CV on (X, y) only (fewer folds when a class
    has fewer images; none possible: every candidate scores 0, so the first is chosen)."""
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    k = min(folds, int(min(np.sum(y == c) for c in np.unique(y))))
    if k < 2:
        return {name: 0.0 for name in cands}
    cv = list(StratifiedKFold(k, shuffle=True, random_state=seed).split(X, y))
    out = {}
    for name, est in cands.items():
        accs = [float(np.mean(clone(est).fit(X[a], y[a]).predict(X[b]) == y[b])) for a, b in cv]
        out[name] = float(np.mean(accs))
    return out


def choose(scores: dict) -> str:
    """The best inner score; ties go to the earlier candidate."""
    best = None
    for name, v in scores.items():
        if best is None or v > scores[best] + 1e-12:
            best = name
    return best


def measure_all(data, masks: list[np.ndarray], edge: str = "bottom", progress: bool = False) -> np.ndarray:
    """(N, len(FEATURES)) wear measures of every image of ``data`` (a SegData) on the given masks."""
    from tqdm.auto import tqdm

    from ..data.decode import open_image

    rows = []
    for p, m in tqdm(list(zip(data.paths, masks)), desc="measure", unit="img", disable=not progress, leave=False):
        grey = np.asarray(open_image(p).convert("L"))
        f = features_of(grey, m, edge)
        rows.append([f[k] for k in FEATURES])
    return np.asarray(rows, np.float64)


def grade(data, out: str | Path, predicted: str | Path | None = None, cfg=None, splits: int = 10,
          test_size: float = 0.3, seed: int = 0, order: list[str] | None = None, edge: str = "bottom",
          with_true: bool = True, cnn_feats: np.ndarray | None = None, cnn: str | None = None,
          inner_folds: int = INNER_FOLDS, progress: bool = True) -> dict:
    """The repeated-split protocol on wear measures of predicted masks (see the module's docstring).

    ``predicted``: out-of-fold maps of ``vinspect segment evaluate``; else a segmenter (``cfg``) is trained in
    every split on its training part.  ``cnn_feats``: pooled CNN features of every whole image (one row per
    image, e.g. ``vinspect.pipeline.wear.cnn_features``; ``cnn`` names their backbone) joined with the wear
    measures in one candidate; None: no such candidate.  ``with_true``: also the same classifiers on the TRUE
    masks' measures, a reference (what a perfect segmenter would give), never the method's figure.
    ``inner_folds``: the folds of the inner cross-validation that chooses the classifier in each split."""
    from sklearn.base import clone
    from tqdm.auto import tqdm

    from ..data.splits import check_class_sizes, repeated_splits
    from ..evaluation.metrics import split_metrics, summarize
    from ..segment.masks import read_mask

    classes = list(data.folders)
    y = np.asarray(data.strata)
    check_class_sizes(y, classes, test_size, None, 2)
    if inner_folds < 2:
        raise BadInputError(f"--inner-folds {inner_folds}: must be at least 2")
    folds = list(repeated_splits(y, splits, test_size, seed))
    if order is None and set(classes) <= {"low", "medium", "high"}:
        order = [c for c in ("low", "medium", "high") if c in classes]
    if order is not None:
        bad = [c for c in order if c not in classes]
        if bad or len(order) != len(classes):
            raise BadInputError(f"--order {','.join(order)}: name each class once ({', '.join(classes)})")
    order_labels = [classes.index(c) for c in order] if order else None
    if cnn_feats is not None and len(cnn_feats) != len(y):
        raise BadInputError(f"CNN features for {len(cnn_feats)} images, {len(y)} images given")
    n_cnn = 0 if cnn_feats is None else cnn_feats.shape[1]
    per: dict[str, list] = {}
    extra: dict[str, list] = {}

    def score(prefix: str, W: np.ndarray, tr, te):
        X = W if cnn_feats is None else np.hstack([W, cnn_feats])
        cands = candidates(W.shape[1], n_cnn, order_labels)
        preds = {}
        for name, est in cands.items():
            model = clone(est).fit(X[tr], y[tr])
            preds[name] = model.predict(X[te])
            per.setdefault(prefix + name, []).append(split_metrics(y[te], preds[name], len(classes)))
            if name == ORD:
                extra.setdefault(prefix + name, []).append({"thresholds_px": model.thresholds_})
        inner = inner_scores(cands, X[tr], y[tr], inner_folds, seed)
        best = choose(inner)
        per.setdefault(prefix + NESTED, []).append(split_metrics(y[te], preds[best], len(classes)))
        extra.setdefault(prefix + NESTED, []).append({"chosen": best, "inner_accuracy": inner})

    source = "out-of-fold predictions" if predicted is not None else "segmenter trained inside each split"
    if predicted is not None:
        W = measure_all(data, load_predicted(predicted, data.relpaths), edge, progress)
        for tr, te in tqdm(folds, desc="splits", unit="split", disable=not progress, leave=False):
            score("", W, tr, te)
    else:
        from ..segment.data import load_grid
        from ..segment.train import fit_size, predict_proba, preprocessing_for, to_labels, train_segmenter

        if cfg is None:
            raise BadInputError("give --predicted DIR (out-of-fold masks) or segmenter settings")
        pre = preprocessing_for(cfg, cfg.input_size or fit_size(data.sizes))
        images, masks_grid = load_grid(data, pre, progress=progress)
        for k, (tr, te) in enumerate(tqdm(folds, desc="splits", unit="split", disable=not progress)):
            net, _ = train_segmenter(images[tr], masks_grid[tr], len(data.class_names), cfg, strata=y[tr],
                                     checkpoint=Path(out) / f".split{k}.ckpt", progress=progress,
                                     desc=f"split {k + 1}/{len(folds)}")
            proba = predict_proba(net, images)
            ms = [to_labels(np.stack([pre.to_original(p[c], *data.sizes[i]) for c in range(p.shape[0])]),
                            cfg.threshold) > 0 for i, p in enumerate(proba)]
            score("", measure_all(data, ms, edge), tr, te)
            (Path(out) / f".split{k}.ckpt").unlink(missing_ok=True)
    if with_true:
        Wt = measure_all(data, [read_mask(mp, sz, data.fmt) > 0 for mp, sz in zip(data.mask_paths, data.sizes)],
                         edge, progress)
        for tr, te in folds:
            score("TRUE masks (reference): ", Wt, tr, te)
    table = {}
    counts = np.bincount(y, minlength=len(classes))
    for name, ms in per.items():
        s = summarize(ms, classes)
        s.update(protocol="repeated_stratified_shuffle_split", splits=len(folds), test_size=test_size, seed=seed,
                 majority_baseline=float(counts.max() / counts.sum()),
                 class_counts={c: int(n) for c, n in zip(classes, counts)})
        if name.endswith(ORD):
            s["thresholds_px"] = [e["thresholds_px"] for e in extra[name]]
            s["order"] = list(order)
        if name.endswith(NESTED):
            s["chosen"] = [e["chosen"] for e in extra[name]]
            s["chosen_counts"] = {c: s["chosen"].count(c) for c in dict.fromkeys(s["chosen"])}
            s["inner_accuracy"] = [e["inner_accuracy"] for e in extra[name]]
            s["inner_folds"] = inner_folds
        table[name] = s
    info = {"masks": source, "features": FEATURES, "classes": classes, "edge": edge, "data": data.summary(),
            "candidates": list(candidates(len(FEATURES), n_cnn, order_labels)),
            "cnn": ({"backbone": cnn, "components": CNN_COMPONENTS, "dim": int(n_cnn)} if n_cnn else None)}
    save_results(Path(out), table, info)
    return {**table[PRIMARY], "variant": PRIMARY, "variants": table, **info}
