"""CNN methods end to end: train a bundle (one model or a k-fold ensemble), run the lab's protocol, predict.

Every split decodes nothing twice: the dataset is decoded once, at the input size, into memory.  Validation
sets are always carved from the training part of a split, never from its test part.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np

from ..data.dataset import scan_folder
from ..data.splits import check_class_sizes, repeated_splits
from ..errors import BadInputError
from ..evaluation.metrics import split_metrics, summarize
from ..training.config import TrainConfig
from ..training.data import decode_all
from ..training.models import build_network
from ..training.trainer import fit, pick_device, predict_proba, seed_everything

WEIGHTS_DIR = "weights"


def resolve(cfg: TrainConfig) -> dict:
    """The network description stored in a bundle (``net``) with every default filled in."""
    if cfg.method == "scratch":
        size = cfg.input_size or (128, 128)
        return {"kind": "labnet", "input_size": list(size), "in_channels": 1 if cfg.grey else 3,
                "widths": list(cfg.widths), "dense": cfg.dense, "dropout": cfg.dropout, "resize": cfg.resize,
                "grey": cfg.grey, "interpolation": "bilinear"}
    from ..backbones.registry import get_spec

    spec = get_spec(cfg.backbone)
    size = cfg.input_size or (spec.preprocessing.input_size,) * 2
    return {"kind": "backbone", "backbone": cfg.backbone, "arch": spec.arch, "layer": cfg.layer or spec.default_layer,
            "weights": cfg.weights, "input_size": list(size), "dropout": cfg.dropout,
            "unfreeze": cfg.unfreeze if cfg.method == "finetune" else 0, "resize": cfg.resize, "grey": cfg.grey,
            "interpolation": spec.preprocessing.interpolation}


def carve_validation(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (train, validation) indices of a training part; no validation when a class is too small."""
    from sklearn.model_selection import StratifiedShuffleSplit

    idx = np.arange(len(labels))
    counts = np.bincount(labels)
    n_val = int(round(fraction * len(labels)))
    if fraction <= 0 or counts[counts > 0].min() < 2 or n_val < len(counts[counts > 0]):
        return idx, idx[:0]
    tr, va = next(StratifiedShuffleSplit(1, test_size=n_val, random_state=seed).split(idx, labels))
    return tr, va


def train_members(cfg: TrainConfig, net_meta: dict, images: np.ndarray, labels: np.ndarray, n_classes: int,
                  ensemble: int | None = None, work: Path | None = None, progress: bool = True,
                  desc: str = "train", fingerprint: str = "") -> tuple[list, list[dict], np.ndarray | None]:
    """Train one network (validation carved from ``images``) or an ``ensemble``-fold ensemble (each member
    validated on its held-out fold).  Returns (networks, fit infos, out-of-fold probabilities or None)."""
    if ensemble and ensemble > 1:
        from sklearn.model_selection import StratifiedKFold

        folds = list(StratifiedKFold(ensemble, shuffle=True, random_state=cfg.seed).split(images, labels))
    else:
        folds = [carve_validation(labels, cfg.val_fraction, cfg.seed)]
    nets, infos = [], []
    oof = np.zeros((len(labels), n_classes), dtype=np.float32) if len(folds) > 1 else None
    for m, (tr, va) in enumerate(folds):
        seed_everything(cfg.seed + m)  # the new layers' initialisation is reproducible too
        net, winfo = build_network(net_meta, n_classes, pretrained=True)
        ck = work / f"member-{m}.ckpt" if work else None
        d = desc if len(folds) == 1 else f"{desc} member {m + 1}/{len(folds)}"
        info = fit(net, cfg, images[tr], labels[tr], images[va], labels[va], n_classes, checkpoint=ck,
                   fingerprint=f"{fingerprint}-{m}", progress=progress, desc=d)
        info["n_train"], info["n_val"], info["weights"] = len(tr), len(va), winfo
        if oof is not None and len(va):
            oof[va] = predict_proba(net, images[va])
        nets.append(net.cpu().eval())
        infos.append(info)
    return nets, infos, oof


def _ensemble_proba(nets, images, batch_size: int = 64) -> np.ndarray:
    """The members' softmax probabilities, averaged (one network: its own)."""
    return np.mean([predict_proba(n, images, batch_size) for n in nets], axis=0)


def _decode_dataset(ds, net_meta, progress):
    images, ok, skipped = decode_all(ds.paths, tuple(net_meta["input_size"]), net_meta["resize"], net_meta["grey"],
                                     net_meta["interpolation"], progress=progress)
    labels = np.asarray(ds.labels)[ok]
    missing = [c for i, c in enumerate(ds.classes) if not np.any(labels == i)]
    if missing:
        raise BadInputError(f"class(es) {', '.join(missing)}: no decodable image left (see the skipped files)")
    return images, labels, [str(ds.paths[i]) for i in ok], skipped


def _data_fingerprint(paths, labels) -> str:
    import hashlib

    return hashlib.sha256(json.dumps([list(map(str, paths)), np.asarray(labels).tolist()]).encode()).hexdigest()[:16]


def _curves(history, path, title):
    from ..reporting.plots import training_curves_png

    training_curves_png(history, path, title)


def evaluate_cnn(data, cfg: TrainConfig, splits: int = 10, test_size: float = 0.3, seed: int = 0,
                 kfold: int | None = None, classes=None, out=None, progress: bool = True,
                 ensemble: int | None = None) -> dict:
    """The lab's protocol for a CNN method: a network trained on each training part, scored on its test part.

    Finished splits are kept in ``out/splits`` and not recomputed when the same command runs again; an
    interrupted split resumes from its last epoch.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    net_meta = resolve(cfg)
    ds = scan_folder(data, classes)
    check_class_sizes(ds.labels, ds.classes, None if kfold else test_size, kfold, min_train=2)
    images, labels, paths, skipped = _decode_dataset(ds, net_meta, progress)
    folds = list(repeated_splits(labels, splits, test_size, seed, kfold))
    out = Path(out) if out is not None else None
    base_fp = cfg.fingerprint(net_meta, _data_fingerprint(paths, labels), ensemble)
    per = []
    bar = tqdm(folds, desc="splits", unit="split", disable=not progress)
    for k, (tr, te) in enumerate(bar):
        fp = f"{base_fp}-{k}-{_data_fingerprint(tr, te)}"
        sdir = out / "splits" / f"{k:02d}" if out is not None else None
        done = sdir / "result.json" if sdir is not None else None
        if done is not None and done.is_file():
            r = json.loads(done.read_text())
            if r.get("fingerprint") == fp:
                r["confusion_matrix"] = np.array(r["confusion_matrix"])
                per.append(r)
                continue
        nets, fits, _ = train_members(cfg, net_meta, images[tr], labels[tr], len(ds.classes), ensemble,
                                      work=sdir, progress=progress, desc=f"split {k + 1}/{len(folds)}",
                                      fingerprint=fp)
        proba = _ensemble_proba(nets, images[te])
        m = split_metrics(labels[te], proba.argmax(1), len(ds.classes))
        m["train_seconds"] = float(sum(f["train_seconds"] for f in fits))
        m["epochs"] = [len(f["history"]) for f in fits]
        m["n_train"], m["n_val"], m["n_test"] = [f["n_train"] for f in fits], [f["n_val"] for f in fits], len(te)
        per.append(m)
        bar.set_postfix(acc=f"{np.mean([p['accuracy'] for p in per]):.4f}")
        if sdir is not None:
            sdir.mkdir(parents=True, exist_ok=True)
            (sdir / "history.json").write_text(json.dumps([f["history"] for f in fits], indent=1) + "\n")
            _curves(fits[0]["history"], sdir / "training_curves.png", f"split {k + 1}: test accuracy {m['accuracy']:.4f}")
            (sdir / "result.json").write_text(json.dumps({**m, "confusion_matrix": m["confusion_matrix"].tolist(),
                                                          "fingerprint": fp}) + "\n")
            for f in sdir.glob("member-*.ckpt"):
                f.unlink()
    res = {"data": str(ds.root), "method": cfg.method}
    res.update(summarize(per, ds.classes))
    counts = np.bincount(labels, minlength=len(ds.classes))
    res.update(
        protocol="kfold" if kfold else "repeated_stratified_shuffle_split", splits=len(folds),
        test_size=None if kfold else test_size, kfold=kfold, seed=seed,
        train_seconds_mean=float(np.mean([p["train_seconds"] for p in per])),
        fit_seconds_mean=float(np.mean([p["train_seconds"] for p in per])),
        majority_baseline=float(counts.max() / counts.sum()),
        class_counts={c: int(n) for c, n in zip(ds.classes, counts)},
        classes=ds.classes, n_images=len(labels), skipped=[s.as_dict() for s in skipped],
        backbone=net_meta.get("backbone", "labnet"), arch=net_meta.get("arch", "labnet"),
        layer=net_meta.get("layer"), pool="avg" if net_meta["kind"] == "backbone" else "flatten",
        image_size=net_meta["input_size"], resize=net_meta["resize"], head="dense", class_weight=cfg.class_weight,
        ensemble=ensemble, epochs_mean=float(np.mean([np.mean(p["epochs"]) for p in per])),
        per_split_training=[{k: p[k] for k in ("epochs", "n_train", "n_val", "n_test", "train_seconds")}
                            for p in per],
        config=cfg.as_dict(), device=str(pick_device(cfg.device)),
    )
    from ..models.bundle import versions

    res["versions"] = versions()
    res["total_seconds"] = time.perf_counter() - t0
    if out is not None:
        from ..reporting.plots import confusion_matrix_png
        from ..reporting.results import write_results

        write_results(out, res)
        confusion_matrix_png(res["confusion_matrix"], res["classes"], out / "confusion_matrix.png",
                             f"{cfg.method} ({res['backbone']}): accuracy {res['accuracy_mean']:.4f}")
    return res


def train_cnn(data, out, cfg: TrainConfig, classes=None, ensemble: int | None = None, progress: bool = True,
              extra_metrics: dict | None = None):
    """Train on every image (validation carved from them, or k-fold members) and save a ``cnn`` bundle in
    ``out``; returns the :class:`vinspect.models.bundle.Bundle`."""
    import torch

    from ..models.cnn import save_cnn_bundle

    out = Path(out)
    net_meta = resolve(cfg)
    ds = scan_folder(data, classes)
    if ensemble and ensemble > 1:
        check_class_sizes(ds.labels, ds.classes, None, ensemble, min_train=1)
    images, labels, paths, skipped = _decode_dataset(ds, net_meta, progress)
    fp = cfg.fingerprint(net_meta, _data_fingerprint(paths, labels), ensemble)
    work = out / "checkpoints"
    nets, fits, oof = train_members(cfg, net_meta, images, labels, len(ds.classes), ensemble, work=work,
                                    progress=progress, desc="train", fingerprint=fp)
    metrics: dict = {"train_accuracy": float((_ensemble_proba(nets, images).argmax(1) == labels).mean())}
    if oof is not None:
        metrics["out_of_fold_accuracy"] = float((oof.argmax(1) == labels).mean())
    last_val = [f["history"][-1].get("val_accuracy") for f in fits if f["history"]]
    if all(v is not None for v in last_val) and last_val:
        metrics["val_accuracy_last_epoch"] = [float(v) for v in last_val]
    metrics.update(extra_metrics or {})
    out.mkdir(parents=True, exist_ok=True)
    history = [f["history"] for f in fits]
    (out / "history.json").write_text(json.dumps(history if len(history) > 1 else history[0], indent=1) + "\n")
    _curves(fits[0]["history"], out / "training_curves.png",
            f"{cfg.method} ({net_meta.get('backbone', 'lab network')})" + (" member 1" if len(fits) > 1 else ""))
    from ..backbones.registry import get_spec

    if net_meta["kind"] == "labnet":
        mean, std = [0.5] * 3, [0.5] * 3
    else:
        pre = get_spec(cfg.backbone).preprocessing
        mean, std = list(pre.mean), list(pre.std)
    config = {"method": cfg.method, "ensemble": len(nets) if len(nets) > 1 else None,
              "hyperparameters": cfg.as_dict(), "history_file": "history.json",
              "torch_threads": torch.get_num_threads()}
    training = {"root": str(ds.root), "n_images": len(labels),
                "class_counts": {c: int((labels == i).sum()) for i, c in enumerate(ds.classes)},
                "skipped": [s.as_dict() for s in skipped], "pretrained_weights": fits[0]["weights"],
                "runs": [{k: f[k] for k in ("best_epochs", "resumed_from", "train_seconds", "device", "n_train",
                                            "n_val")} for f in fits]}
    bundle = save_cnn_bundle(out, nets, ds.classes, net_meta, mean, std, config, metrics, training)
    shutil.rmtree(work, ignore_errors=True)
    return bundle
