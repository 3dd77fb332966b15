"""Wear grades from the measured wear: the repeated-split protocol of ``vinspect evaluate`` on wear measures.

Every image is measured on a **predicted** mask: either the out-of-fold maps of ``vinspect segment evaluate``
(each image predicted by a network that never saw it; ``predicted=DIR``), or, inside each split, a segmenter
trained on that split's training images and masks only (``train_segmenter=True``; training images are then
measured on the network's own predictions of them, test images on predictions of images it never saw).  A
classifier on the measures is fitted on the training part and scored on the test part of the same stratified
splits (seed, test fraction) as ``vinspect evaluate``, and the same ``results.json`` keys come out.  The ordinal
view: the VB max threshold(s) that best separate the ordered grades on the training part, scored on the test part.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

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


def ordinal_accuracy(x: np.ndarray, y_ord: np.ndarray, train, test) -> tuple[float, list[float]]:
    """Thresholds t_1 < ... on ``x`` between consecutive ordered grades (0 < 1 < ...) chosen on ``train`` for
    the best training accuracy (greedy, one threshold at a time), scored on ``test``."""
    k = int(y_ord.max()) + 1
    xt, yt = x[train], y_ord[train]
    cand = np.unique(xt)
    cand = (cand[:-1] + cand[1:]) / 2 if len(cand) > 1 else cand
    ths: list[float] = []
    lo = -np.inf
    for g in range(k - 1):  # threshold between grade g and g + 1
        best, best_t = -1.0, None
        for t in cand[cand > lo]:
            trial = ths + [t] + [np.inf] * (k - 2 - g)
            acc = float(np.mean(np.searchsorted(trial, xt, side="right") == yt))
            if acc > best:
                best, best_t = acc, t
        if best_t is None:
            best_t = lo
        ths.append(float(best_t))
        lo = best_t
    pred = np.searchsorted(ths, x[test], side="right")
    return float(np.mean(pred == y_ord[test])), ths


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


PRIMARY = "wear measures, logistic regression"  # fixed in advance: the headline is never the best of several


def save_results(out: Path, table: dict, info: dict) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    res = {**table[PRIMARY], "variant": PRIMARY, "variants": table, **info}
    (out / "results.json").write_text(json.dumps(res, indent=2, default=float))
    return out / "results.json"


def _heads():
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {"wear measures, logistic regression": make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
            "wear measures, random forest (300 trees)": RandomForestClassifier(300, random_state=0, n_jobs=1)}


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
          with_true: bool = True, progress: bool = True) -> dict:
    """The repeated-split protocol on wear measures of predicted masks (see the module's docstring).

    ``predicted``: out-of-fold maps of ``vinspect segment evaluate``; else a segmenter (``cfg``) is trained in
    every split on its training part.  ``with_true``: also the same classifiers on the TRUE masks' measures, a
    reference (what a perfect segmenter would give), never the method's figure."""
    from sklearn.base import clone
    from tqdm.auto import tqdm

    from ..data.splits import check_class_sizes, repeated_splits
    from ..evaluation.metrics import split_metrics, summarize
    from ..segment.masks import read_mask

    classes = list(data.folders)
    y = np.asarray(data.strata)
    check_class_sizes(y, classes, test_size, None, 2)
    folds = list(repeated_splits(y, splits, test_size, seed))
    if order is None and set(classes) <= {"low", "medium", "high"}:
        order = [c for c in ("low", "medium", "high") if c in classes]
    per: dict[str, list] = {}
    ordinal: dict[str, list] = {}

    def score(prefix: str, Xs: np.ndarray, tr, te):
        for name, head in _heads().items():
            model = clone(head).fit(Xs[tr], y[tr])
            per.setdefault(prefix + name, []).append(split_metrics(y[te], model.predict(Xs[te]), len(classes)))
        if order:
            rank = {c: i for i, c in enumerate(order)}
            y_ord = np.array([rank[classes[v]] for v in y])
            a, t = ordinal_accuracy(Xs[:, FEATURES.index("vb_max")], y_ord, tr, te)
            ordinal.setdefault(prefix + "VB max thresholds (ordinal)", []).append((a, t))

    source = "out-of-fold predictions" if predicted is not None else "segmenter trained inside each split"
    if predicted is not None:
        X = measure_all(data, load_predicted(predicted, data.relpaths), edge, progress)
        for tr, te in folds:
            score("", X, tr, te)
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
        Xt = measure_all(data, [read_mask(mp, sz, data.fmt) > 0 for mp, sz in zip(data.mask_paths, data.sizes)],
                         edge, progress)
        for tr, te in folds:
            score("TRUE masks (reference): ", Xt, tr, te)
    table = {}
    counts = np.bincount(y, minlength=len(classes))
    for name, ms in per.items():
        s = summarize(ms, classes)
        s.update(protocol="repeated_stratified_shuffle_split", splits=len(folds), test_size=test_size, seed=seed,
                 majority_baseline=float(counts.max() / counts.sum()),
                 class_counts={c: int(n) for c, n in zip(classes, counts)})
        table[name] = s
    for name, v in ordinal.items():
        accs = [a for a, _ in v]
        table[name] = {"accuracy_mean": float(np.mean(accs)),
                       "accuracy_std": float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0,
                       "per_split": accs, "thresholds_px": [t for _, t in v], "order": list(order)}
    info = {"masks": source, "features": FEATURES, "classes": classes, "edge": edge,
            "data": data.summary()}
    save_results(Path(out), table, info)
    return {**table[PRIMARY], "variant": PRIMARY, "variants": table, **info}
