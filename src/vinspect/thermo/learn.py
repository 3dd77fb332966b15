"""Learned per-pixel defect classifiers on the temperature time series: a 1-D CNN and an LSTM.

Input of a pixel: its cold-subtracted rise sampled at ``n`` times evenly spaced in log time (frames averaged
within each log-time bin), as four channels: the normalised contrast (ln T normalised at the earliest times,
minus the spatial median: uneven heating and emissivity cancel) smoothed by Gaussians of 1, 3 and 6 pixels
(the pixel and its surroundings: a defect's edge is where the pixel falls off against its neighbourhood), and
ln T minus the spatial median, smoothed by 1 pixel (the absolute contrast, which shows surface marks); the
slow spatial background is removed from each.  Output: the probability that the pixel lies over a defect;
the decision threshold is the one that maximises the pixel F1 on the validation plates.

Training (``train``): simulated sequences with ground truth; labels 1 on defects no deeper than half the plate
(the scope of the evaluation), 0 on sound area and surface marks, deeper defects and a margin around them
ignored; all positives, the negatives near defects and surface marks and as many random others; AdamW,
weighted binary cross-entropy, early stopping on held-out plates (validation split), tqdm progress.
Models are saved as ``model.safetensors`` + ``model.json`` (loading runs no code).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from ..errors import BadInputError

ARCHS = ("cnn1d", "lstm")
N_TIMES = 64


# ------------------------------------------------------------------------------------------ features

def grid_times(t0: float, t1: float, n: int = N_TIMES) -> np.ndarray:
    return np.exp(np.linspace(math.log(t0), math.log(t1), n))


def sample_log_rise(prep, grid: np.ndarray) -> np.ndarray:
    """ln(rise) at ``grid`` times: mean of the frames inside each log-time bin around a grid time, or a
    log-log interpolation between neighbouring frames when the bin holds none.  (n, H, W)."""
    t = prep.time
    lg = np.log(grid)
    edges = np.concatenate([[lg[0] - (lg[1] - lg[0]) / 2], (lg[:-1] + lg[1:]) / 2, [lg[-1] + (lg[-1] - lg[-2]) / 2]])
    lt = np.log(t)
    out = np.empty((len(grid),) + prep.rise.shape[1:])
    for j in range(len(grid)):
        sel = np.flatnonzero((lt >= edges[j]) & (lt < edges[j + 1]))
        if sel.size:
            out[j] = np.log(prep.rise[sel].mean(axis=0))
        else:
            k = int(np.clip(np.searchsorted(t, grid[j]), 1, len(t) - 1))
            w = (lg[j] - lt[k - 1]) / (lt[k] - lt[k - 1])
            w = float(np.clip(w, 0.0, 1.0))
            out[j] = (1 - w) * np.log(prep.rise[k - 1]) + w * np.log(prep.rise[k])
    return out


SCALES = (1.0, 3.0, 6.0)


def pixel_features(prep, grid: np.ndarray) -> np.ndarray:
    """(H*W, 4, n) float32 features of every pixel (see the module docstring)."""
    from .detect import highpass

    if prep.time_unit != "s":
        raise BadInputError("the learned models need times in seconds: give the frame rate (--fps)")
    t0, t1 = prep.time[0], prep.time[-1]
    if t0 > grid[0] * 1.5 or t1 < grid[-1] / 1.5:
        raise BadInputError(f"the model was trained on sequences covering {grid[0]:.3g}-{grid[-1]:.3g} s after the "
                            f"flash; this one covers {t0:.3g}-{t1:.3g} s")
    g = np.clip(grid, t0, t1)
    lnr = sample_log_rise(prep, g)
    n = len(g)
    early = lnr[: max(2, n // 32)].mean(axis=0)
    ch0 = highpass(lnr - early[None])
    ch1 = highpass(lnr)
    ch0 = ch0 - np.median(ch0.reshape(n, -1), axis=1)[:, None, None]
    ch1 = ch1 - np.median(ch1.reshape(n, -1), axis=1)[:, None, None]
    feats = [ndi.gaussian_filter(ch0, (0, s, s), mode="nearest") for s in SCALES]
    feats.append(ndi.gaussian_filter(ch1, (0, 1.0, 1.0), mode="nearest"))
    return (np.stack([f.reshape(n, -1).T for f in feats], axis=1) * 10.0).astype(np.float32)


def pixel_labels(gt, margin_frac: float = 0.5) -> np.ndarray:
    """1 in-scope defect, 0 sound or surface mark, -1 ignored (deeper defects and their margin)."""
    ids = gt.defect_ids
    y = np.zeros(ids.shape, np.int8)
    half = gt.thickness_mm / 2
    for k in range(1, int(ids.max()) + 1):
        m = ids == k
        if not m.any():
            continue
        d = float(np.median(gt.depth_map[m]))
        if d <= half + 1e-9:
            y[m] = 1
        else:
            r = max(2, int(round(margin_frac * d / gt.pixel_mm)))
            zone = ndi.binary_dilation(m, iterations=r)
            y[zone & (y != 1)] = -1
    return y


# ------------------------------------------------------------------------------------------ models

def build_model(arch: str, in_ch: int = 4, width: int = 32):
    import torch.nn as nn
    import torch

    if arch == "cnn1d":
        class CNN1D(nn.Module):
            def __init__(self):
                super().__init__()
                self.body = nn.Sequential(
                    nn.Conv1d(in_ch, width // 2, 5, padding=2), nn.ReLU(),
                    nn.Conv1d(width // 2, width, 5, padding=2, stride=2), nn.ReLU(),
                    nn.Conv1d(width, width, 5, padding=2, stride=2), nn.ReLU(),
                )
                self.head = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, 1))

            def forward(self, x):                           # x: (batch, channels, time)
                h = self.body(x)
                return self.head(torch.cat([h.mean(dim=2), h.amax(dim=2)], dim=1)).squeeze(1)

        return CNN1D()
    if arch == "lstm":
        class LSTMNet(nn.Module):
            def __init__(self):
                super().__init__()
                self.lstm = nn.LSTM(in_ch, width, batch_first=True)
                self.head = nn.Sequential(nn.Linear(2 * width, width), nn.ReLU(), nn.Linear(width, 1))

            def forward(self, x):                           # x: (batch, channels, time)
                out, (h, _) = self.lstm(x.transpose(1, 2))
                return self.head(torch.cat([h[-1], out.mean(dim=1)], dim=1)).squeeze(1)

        return LSTMNet()
    raise BadInputError(f"unknown model architecture {arch!r} (choose from {', '.join(ARCHS)})")


@dataclass
class PixelModel:
    arch: str
    net: object
    grid: np.ndarray
    meta: dict

    @property
    def threshold(self) -> float:
        return float(self.meta.get("threshold", 0.5))

    def predict_proba(self, prep, batch: int = 8192, X: np.ndarray | None = None) -> np.ndarray:
        X = pixel_features(prep, self.grid) if X is None else X
        return _proba(self.net, X, batch).reshape(prep.rise.shape[1:])

    def save(self, folder) -> Path:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        save_file({k: v.contiguous() for k, v in self.net.state_dict().items()}, str(folder / "model.safetensors"))
        meta = {**self.meta, "arch": self.arch, "grid_times_s": [float(t) for t in self.grid]}
        (folder / "model.json").write_text(json.dumps(meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder) -> "PixelModel":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "model.json").is_file() or not (folder / "model.safetensors").is_file():
            raise BadInputError(f"{folder}: not a thermo model (model.json + model.safetensors, written by "
                                "'vinspect thermo train')")
        try:
            meta = json.loads((folder / "model.json").read_text())
            net = build_model(meta["arch"], meta.get("in_channels", 4), meta.get("width", 32))
            net.load_state_dict(load_file(str(folder / "model.safetensors")))
        except (KeyError, json.JSONDecodeError, RuntimeError, OSError) as e:
            raise BadInputError(f"{folder}: unreadable thermo model ({e})") from None
        return cls(meta["arch"], net, np.asarray(meta["grid_times_s"]), meta)


# ------------------------------------------------------------------------------------------ training

def _proba(net, X: np.ndarray, batch: int = 8192) -> np.ndarray:
    import torch

    net.eval()
    out = np.empty(len(X), np.float32)
    with torch.no_grad():
        for i in range(0, len(X), batch):
            out[i:i + batch] = torch.sigmoid(net(torch.from_numpy(X[i:i + batch]))).numpy()
    return out


def _sample(y: np.ndarray, rng, neg_ratio: float = 3.0, near_px: int = 6, surface=None) -> np.ndarray:
    """Indices: all positives, all negatives within ``near_px`` of a defect or on a surface mark, random
    other negatives up to ``neg_ratio`` times the positives."""
    pos = y == 1
    near = ndi.binary_dilation(pos, iterations=near_px) & (y == 0)
    if surface is not None:
        near |= ndi.binary_dilation(surface, iterations=2) & (y == 0)
    far = (y == 0) & ~near
    idx_pos = np.flatnonzero(pos.ravel())
    idx_near = np.flatnonzero(near.ravel())
    idx_far = np.flatnonzero(far.ravel())
    n_far = int(max(neg_ratio * max(len(idx_pos), 200) - len(idx_near), 200))
    n_far = min(n_far, len(idx_far))
    return np.concatenate([idx_pos, idx_near, rng.choice(idx_far, n_far, replace=False)])


def build_dataset(files, grid: np.ndarray, seed: int = 0, progress: bool = False, keep_full: bool = False):
    """(X, y) sampled from simulated HDF5 files written by ``vinspect thermo simulate``; with ``keep_full``
    also the list of (all-pixel features, label image) per file."""
    from tqdm.auto import tqdm

    from .io import load_ground_truth, load_sequence
    from .processing import prepare

    rng = np.random.default_rng(seed)
    Xs, ys, full = [], [], []
    for f in tqdm(list(files), desc="features", disable=not progress, leave=False):
        seq = load_sequence(f)
        gt = load_ground_truth(f)
        prep = prepare(seq)
        X = pixel_features(prep, grid)
        y = pixel_labels(gt)
        idx = _sample(y, rng, surface=gt.surface_mask)
        Xs.append(X[idx])
        ys.append(y.ravel()[idx].astype(np.float32))
        if keep_full:
            full.append((X, y))
    if keep_full:
        return np.concatenate(Xs), np.concatenate(ys), full
    return np.concatenate(Xs), np.concatenate(ys)


def best_threshold(probs: list, labels: list) -> tuple[float, float]:
    """The threshold maximising the pooled pixel F1 (label -1 ignored) and that F1."""
    p = np.concatenate([a.ravel() for a in probs])
    y = np.concatenate([b.ravel() for b in labels])
    keep = y >= 0
    p, y = p[keep], y[keep] == 1
    best = (0.5, -1.0)
    for t in np.arange(0.05, 0.96, 0.025):
        pr = p >= t
        tp = np.sum(pr & y)
        f1 = 2 * tp / max(pr.sum() + y.sum(), 1)
        if f1 > best[1]:
            best = (float(round(t, 3)), float(f1))
    return best


def train(arch: str, train_files, val_files, out=None, epochs: int = 40, patience: int = 5, lr: float = 2e-3,
          batch: int = 512, seed: int = 0, width: int = 32, grid_range=None, threads: int = 1,
          progress: bool = True) -> PixelModel:
    """Train a per-pixel classifier; early stopping on the validation plates (best weights restored)."""
    import torch
    from tqdm.auto import tqdm

    if arch not in ARCHS:
        raise BadInputError(f"unknown model architecture {arch!r} (choose from {', '.join(ARCHS)})")
    train_files, val_files = list(train_files), list(val_files)
    if not train_files or not val_files:
        raise BadInputError("train: need at least one training and one validation sequence")
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    if grid_range is None:  # the time range of the training sequences (the first one's frames after the flash)
        from .io import load_sequence
        from .processing import prepare

        p = prepare(load_sequence(train_files[0]))
        if p.time_unit != "s":
            raise BadInputError(f"{train_files[0]}: the frame rate is unknown; training needs times in seconds")
        grid_range = (float(p.time[0]), float(p.time[-1]))
    grid = grid_times(*grid_range)
    t_start = time.perf_counter()
    Xtr, ytr = build_dataset(train_files, grid, seed, progress)
    Xva, yva, val_full = build_dataset(val_files, grid, seed + 1, progress, keep_full=True)
    if ytr.sum() == 0:
        raise BadInputError("train: the training sequences hold no defect pixel in scope")
    net = build_model(arch, Xtr.shape[1], width)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    pw = torch.tensor(float((ytr == 0).sum()) / max(float(ytr.sum()), 1.0))
    lossf = torch.nn.BCEWithLogitsLoss(pos_weight=pw)
    Xt, yt = torch.from_numpy(Xtr), torch.from_numpy(ytr)
    Xv, yv = torch.from_numpy(Xva), torch.from_numpy(yva)
    gen = torch.Generator().manual_seed(seed)
    best, best_state, bad, history = math.inf, None, 0, []
    bar = tqdm(range(epochs), desc=f"train {arch}", disable=not progress)
    for ep in bar:
        net.train()
        perm = torch.randperm(len(Xt), generator=gen)
        tot = 0.0
        for i in range(0, len(perm), batch):
            b = perm[i:i + batch]
            opt.zero_grad()
            loss = lossf(net(Xt[b]), yt[b])
            loss.backward()
            opt.step()
            tot += float(loss.detach()) * len(b)
        net.eval()
        with torch.no_grad():
            logits = torch.cat([net(Xv[i:i + 8192]) for i in range(0, len(Xv), 8192)])
            vloss = float(lossf(logits, yv))
            pred = logits > 0
            tp = float((pred & (yv > 0.5)).sum())
            vf1 = 2 * tp / max(float(pred.sum()) + float((yv > 0.5).sum()), 1.0)
        history.append({"epoch": ep + 1, "train_loss": tot / len(Xt), "val_loss": vloss, "val_f1_sampled": vf1})
        bar.set_postfix(train=f"{tot / len(Xt):.4f}", val=f"{vloss:.4f}", f1=f"{vf1:.3f}")
        if vloss < best - 1e-4:
            best, bad = vloss, 0
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        else:
            bad += 1
            if bad >= patience:
                break
    bar.close()
    net.load_state_dict(best_state)
    probs = [_proba(net, X).reshape(y.shape) for X, y in val_full]
    thr, vf1 = best_threshold(probs, [y for _, y in val_full])
    meta = {"threshold": thr, "val_pixel_f1_at_threshold": round(vf1, 4),
            "in_channels": int(Xtr.shape[1]), "width": width, "epochs_run": len(history),
            "best_val_loss": best, "history": history, "train_files": [str(f) for f in train_files],
            "val_files": [str(f) for f in val_files], "n_train_pixels": int(len(Xtr)),
            "n_val_pixels": int(len(Xva)), "seed": seed, "train_seconds": round(time.perf_counter() - t_start, 1),
            "torch": torch.__version__}
    model = PixelModel(arch, net, grid, meta)
    if out is not None:
        model.save(out)
    return model
