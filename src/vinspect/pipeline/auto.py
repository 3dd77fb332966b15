"""``evaluate --auto`` and ``train --auto``: the automatic model selection (:mod:`vinspect.selection`) on an
image folder: every feature variant extracted once (cached), then the nested protocol, or the search on
every image followed by a normal head bundle of the chosen configuration.  ``--auto finetune`` adds
fine-tuning (:class:`Finetuner`) when the budget allows it (:mod:`vinspect.selection.finetune`)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np

from ..backbones.registry import DEFAULT_BACKBONE, get_spec
from ..errors import BadInputError
from ..models.bundle import versions
from ..selection import nested as _nested
from ..selection.report import auto_text
from ..selection.search import DEFAULT_SELECT
from ..selection.space import describe_space, feature_variants, head_grid, image_sizes, resolutions, stage_layers
from ..selection.variants import load_variants

DEFAULT_BUDGET = "10m"
AUTO_MODES = ("features", "finetune")  # --auto (features: the head search), --auto finetune
# what a bundle's metrics.selection keeps of the search summary (training.selection keeps all of it)
SELECTION_KEYS = ("chosen", "select", "inner_folds", "fits", "seconds", "budget_reached", "excluded_heads",
                  "finetune")


class Finetuner:
    """Fine-tuning as a candidate of the selection: ``vinspect train --method finetune`` with that method's
    defaults (EfficientNet-Lite0's top 2 blocks and a new head started from a linear probe, validation carved
    from the training rows, early stopping) on rows of a folder's images, decoded once into memory."""

    def __init__(self, root, relpaths: list[str], labels: np.ndarray, n_classes: int, backbone: str, seed: int = 0,
                 progress: bool = True):
        from ..training.config import TrainConfig
        from ..training.data import decode_all
        from .cnn import resolve

        self.cfg = TrainConfig.for_method("finetune", backbone=backbone, seed=seed)
        self.net_meta = resolve(self.cfg)
        m = self.net_meta
        self.images, ok, skipped = decode_all([Path(root) / r for r in relpaths], tuple(m["input_size"]),
                                              m["resize"], m["grey"], m["interpolation"], progress=progress,
                                              desc="decode for fine-tuning")
        if skipped:  # the features were extracted from these very files
            raise BadInputError(f"{skipped[0].path}: could not be decoded again for fine-tuning ({skipped[0].reason})")
        self.labels, self.n_classes = np.asarray(labels), int(n_classes)
        h, w = m["input_size"]
        self.label = (f"finetune {backbone} (top {m['unfreeze']} blocks, {self.cfg.epochs} epochs, "
                      f"{w}x{h} {m['resize']})")
        self.config = {"method": "finetune", **{k: v for k, v in self.cfg.as_dict().items()
                                                if k in ("backbone", "epochs", "unfreeze", "lr", "finetune_lr",
                                                         "patience", "val_fraction", "seed")}}
        self._timing: tuple[float, float] | None = None

    def timing(self) -> tuple[float, float]:
        """(seconds of one training step of a batch, of one image's forward pass), timed once on this machine."""
        if self._timing is None:
            import torch

            from ..training.models import build_network

            net, _ = build_network(self.net_meta, self.n_classes, pretrained=True)
            net.stage("finetune")
            bs = min(self.cfg.batch_size, len(self.images))
            x = torch.from_numpy(np.ascontiguousarray(self.images[:bs])).permute(0, 3, 1, 2).float()
            y = torch.zeros(bs, dtype=torch.long)  # a timing only: no label is used, the network is thrown away
            opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], 1e-5)
            steps = []
            for _ in range(3):  # the first is a warm-up
                t = time.perf_counter()
                net.train()
                opt.zero_grad()
                torch.nn.functional.cross_entropy(net(x), y).backward()
                opt.step()
                steps.append(time.perf_counter() - t)
            net.eval()
            with torch.inference_mode():
                t = time.perf_counter()
                net(x)
                fwd = (time.perf_counter() - t) / bs
            self._timing = (float(np.median(steps[1:])), fwd)
        return self._timing

    def estimate(self, n: int) -> float:
        """Seconds of one fine-tuning on ``n`` images: every epoch of every stage run in full (no early stop), the
        probe's and each epoch's validation forward passes."""
        step, fwd = self.timing()
        c = self.cfg
        n_val = int(round(c.val_fraction * n))
        epochs = c.epochs + c.head_epochs
        return epochs * (math.ceil((n - n_val) / c.batch_size) * step + n_val * fwd) + (n - n_val) * fwd

    def fit_predict(self, train_rows, test_rows) -> np.ndarray:
        from ..training.trainer import predict_proba
        from .cnn import train_members

        nets, _, _ = train_members(self.cfg, self.net_meta, self.images[train_rows], self.labels[train_rows],
                                   self.n_classes, progress=False)
        return predict_proba(nets[0], self.images[test_rows]).argmax(1)


def prepare(ds, backbone: str = DEFAULT_BACKBONE, cache_dir=None, engine: str = "auto", batch_size: int = 32,
            workers: int | None = None, weights=None, progress: bool = True) -> dict:
    """The search space for ``ds`` and the features of every variant (extracted once, cached)."""
    spec = get_spec(backbone)
    if not spec.default_layer:
        raise BadInputError(f"--auto: backbone {backbone!r} has no default layer to build the search space on")
    stages = stage_layers(spec.default_layer)
    res = resolutions(image_sizes(ds.paths), spec.preprocessing.input_size)
    variants = feature_variants(spec.default_layer, res)
    heads = head_grid()
    t = time.perf_counter()
    loaded = load_variants(ds, variants, stages, backbone, cache_dir, engine, batch_size, workers, weights, progress)
    y = loaded["labels"]
    missing = [c for i, c in enumerate(ds.classes) if not np.any(y == i)]
    if missing:
        raise BadInputError(f"class(es) {', '.join(missing)}: no decodable image left (see the skipped files)")
    loaded.update(variants=variants, heads=heads, stages=stages, extract_seconds=time.perf_counter() - t,
                  space=describe_space(variants, heads))
    return loaded


def _common(ds, loaded: dict, backbone: str) -> dict:
    st = loaded["stats"]
    return {"data": str(ds.root), "method": "head-auto", "classes": list(ds.classes),
            "n_images": len(loaded["labels"]), "skipped": [s.as_dict() for s in loaded["skipped"]],
            "backbone": backbone, "weights_sha256": loaded["weights_sha256"], "search_space": loaded["space"],
            "extract_seconds": loaded["extract_seconds"], "n_computed": st["n_computed"],
            "extraction_passes": st["passes"], **loaded["engine"], "versions": versions()}


def evaluate_auto(data, backbone: str = DEFAULT_BACKBONE, classes=None, splits: int = 10, test_size: float = 0.3,
                  kfold: int | None = None, seed: int = 0, budget=DEFAULT_BUDGET, select: str = DEFAULT_SELECT,
                  cache_dir=None, engine: str = "auto", batch_size: int = 32, workers: int | None = None,
                  weights=None, out=None, progress: bool = True, n_jobs: int = 2, folds=None,
                  mode: str = "features") -> dict:
    """Nested model selection on an image folder; writes results.json and results.txt to ``out``.  ``mode``
    finetune: fine-tuning is a candidate too when the budget allows."""
    from . import load_dataset

    t0 = time.perf_counter()
    budget_s = _nested.parse_budget(budget)
    ds = load_dataset(data, classes, test_size, kfold, 1)
    _check_mode(mode, weights)
    loaded = prepare(ds, backbone, cache_dir, engine, batch_size, workers, weights, progress)
    y = loaded["labels"]
    ft = (Finetuner(ds.root, loaded["relpaths"], y, len(ds.classes), backbone, seed, progress)
          if mode == "finetune" else None)
    ev = _nested.nested_evaluate(loaded["features"], y, list(ds.classes), loaded["variants"], loaded["heads"],
                                 splits, test_size, seed, kfold, folds, budget_s, select, n_jobs, progress,
                                 finetune=ft)
    res = {**_common(ds, loaded, backbone), "auto": mode, **ev}
    res["total_seconds"] = time.perf_counter() - t0
    if out is not None:
        import json

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(res, indent=2) + "\n")
        (out / "results.txt").write_text(auto_text(res))
    res["_loaded"] = loaded  # for callers in-process (the benchmark); not written
    return res


def _check_mode(mode: str, weights) -> None:
    if mode not in AUTO_MODES:
        raise BadInputError(f"--auto {mode!r}: use --auto (features and heads) or --auto finetune")
    if mode == "finetune" and weights:
        raise BadInputError("--auto finetune fine-tunes the backbone's own pretrained weights: drop --weights")


def train_auto(data, out, backbone: str = DEFAULT_BACKBONE, classes=None, seed: int = 0, budget=DEFAULT_BUDGET,
               select: str = DEFAULT_SELECT, cache_dir=None, engine: str = "auto", batch_size: int = 32,
               workers: int | None = None, weights=None, progress: bool = True, n_jobs: int = 2,
               mode: str = "features"):
    """The search on every image, then a normal head bundle of the chosen configuration (the search summary in
    its ``metrics.selection`` and ``training.selection``); ``mode`` finetune: a ``cnn`` bundle instead when
    fine-tuning was tried and beat the search's choice on the inner folds."""
    from ..features.extract import Extractor
    from ..models.head import save_head_bundle
    from . import load_dataset

    budget_s = _nested.parse_budget(budget)
    if budget_s < _nested.MIN_SEARCH_SECONDS:
        raise BadInputError(f"--budget {budget_s:g} s: too small; the search needs at least "
                            f"{_nested.MIN_SEARCH_SECONDS:g} s")
    _check_mode(mode, weights)
    ds = load_dataset(data, classes, test_size=None)
    loaded = prepare(ds, backbone, cache_dir, engine, batch_size, workers, weights, progress)
    X, y = loaded["features"], loaded["labels"]
    from tqdm.auto import tqdm

    from ..selection.finetune import search_and_finetune
    from ..selection.search import INNER_FOLDS, inner_repeats, planned_fits

    k = INNER_FOLDS * inner_repeats(len(y))  # the inner folds (repeated passes on small data)
    ft = (Finetuner(ds.root, loaded["relpaths"], y, len(ds.classes), backbone, seed, progress)
          if mode == "finetune" else None)
    with tqdm(total=planned_fits(len(loaded["variants"]), len(loaded["heads"]), k), desc="auto search", unit="fit",
              disable=not progress) as bar:
        res, summary = search_and_finetune(X, y, np.arange(len(y)), loaded["variants"], loaded["heads"], select,
                                           seed, budget_s, n_jobs, ft, on_fit=bar.update,
                                           on_status=bar.set_postfix_str)
    if summary.get("finetune", {}).get("chosen"):
        return _train_finetuned(ds, classes, out, ft, summary, loaded, budget_s, select, progress)
    best = res.best
    v = best.variant
    model = best.head.make(X[v].shape[1], seed).fit(X[v], y)
    ex = Extractor(backbone, weights=weights, batch_size=batch_size, workers=workers, engine=engine,
                   **v.extractor_kwargs())
    rec = next(r for r in res.records if r["label"] == best.label)
    metrics = {"train_accuracy": float((model.predict(X[v]) == y).mean()),
               "inner_cv_" + select: rec["mean_" + select],
               "inner_cv_accuracy": rec["mean_accuracy"], "inner_cv_balanced_accuracy": rec["mean_balanced_accuracy"],
               "inner_cv_note": "the search's own estimate of the chosen candidate (the best of many: optimistic); "
                                "vinspect evaluate --auto gives the honest nested figure",
               "selection": {k: summary[k] for k in SELECTION_KEYS if k in summary}}
    training = {"classes": list(ds.classes), "root": str(ds.root), "n_images": len(y),
                "class_counts": {c: int((y == i).sum()) for i, c in enumerate(ds.classes)},
                "skipped": [s.as_dict() for s in loaded["skipped"]],
                "selection": {**summary, "search_space": loaded["space"], "budget_seconds": budget_s}}
    return save_head_bundle(out, model, ex, best.head.bundle_config(X[v].shape[1], seed), X[v].shape[1], metrics,
                            training)


def _train_finetuned(ds, classes, out, ft: Finetuner, summary: dict, loaded: dict, budget_s: float, select: str,
                     progress: bool):
    """Fine-tuning won on the inner folds: a ``cnn`` bundle fine-tuned on every image (``train --method
    finetune`` with the same settings), the selection recorded as for a head."""
    from .cnn import train_cnn

    f = summary["finetune"]
    summary["chosen"] = {"label": ft.label, "method": "finetune", "config": ft.config}
    extra = {"inner_cv_" + select: f["mean_" + select],
             "inner_cv_note": f"fine-tuning's mean on {len(f['folds'])} inner folds, against "
                              f"{f['features_mean_' + select]:.4f} for the feature search's choice "
                              f"({f['features_label']}) on the same folds",
             "selection": {k: summary[k] for k in SELECTION_KEYS}}
    b = train_cnn(ds.root, out, ft.cfg, classes=classes, progress=progress, extra_metrics=extra)
    b.training["selection"] = {**summary, "search_space": loaded["space"], "budget_seconds": budget_s}
    from ..models.bundle import save_bundle

    save_bundle(out, b, {})
    return b
