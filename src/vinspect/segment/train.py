"""Train a segmenter with vinspect's training loop, and predict mask probabilities."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..backbones.registry import DEFAULT_BACKBONE
from ..errors import BadInputError
from ..training.config import LoopTaskConfig

# Defaults chosen before any evaluation, from the recipe measured in issue 13 (U-Net, efficientnet_lite0,
# 320 x 128, Dice + BCE, AdamW 1e-3 with warm-up then cosine decay, 30 epochs, flips and brightness).
DEFAULT_AUGMENT = "hflip=0.5,brightness=0.2"


@dataclass
class SegmentConfig(LoopTaskConfig):
    backbone: str = DEFAULT_BACKBONE
    arch: str = "unet"
    weights: str | None = None
    input_size: tuple[int, int] | None = None  # (height, width); default: the images' median aspect (see fit_size)
    resize: str = "squash"
    epochs: int = 30
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 8
    warmup_epochs: int = 3
    augment: str = DEFAULT_AUGMENT
    val_fraction: float = 0.15  # held out of the training images for early stopping / best epoch (0: none)
    patience: int = 10
    threshold: float = 0.5
    seed: int = 0
    device: str | None = None
    decoder_channels: tuple[int, ...] | None = None

    def __post_init__(self):
        from ..training.augment import parse_augment
        from ..training.config import parse_size
        from .model import ARCHS

        self.input_size = parse_size(self.input_size)
        parse_augment(self.augment)  # refuse a bad spec now
        if self.arch not in ARCHS:
            raise BadInputError(f"--arch {self.arch!r}: use one of {', '.join(ARCHS)}")
        if self.resize not in ("squash", "letterbox"):
            raise BadInputError(f"--resize {self.resize!r}: use squash or letterbox")
        if not 0.0 <= self.val_fraction <= 0.5:
            raise BadInputError(f"--val-fraction {self.val_fraction}: must be between 0 and 0.5")
        if not 0.0 < self.threshold < 1.0:
            raise BadInputError(f"--threshold {self.threshold}: must be between 0 and 1")
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise BadInputError("--epochs and --batch-size must be at least 1")
        if self.decoder_channels is not None:
            self.decoder_channels = tuple(int(c) for c in self.decoder_channels)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        d["decoder_channels"] = list(self.decoder_channels) if self.decoder_channels else None
        return d


def fit_size(sizes: list[tuple[int, int]], long_side: int = 320, multiple: int = 32) -> tuple[int, int]:
    """(height, width) keeping the images' median aspect, the long side ``long_side``, both multiples of 32
    (the encoder's stride): e.g. about 320 x 130 crops -> 320 x 128."""
    w = float(np.median([s[0] for s in sizes]))
    h = float(np.median([s[1] for s in sizes]))
    r = h / w
    if r <= 1:
        W, H = long_side, long_side * r
    else:
        H, W = long_side, long_side / r
    return max(multiple, int(round(H / multiple)) * multiple), max(multiple, int(round(W / multiple)) * multiple)


def preprocessing_for(cfg: SegmentConfig, size_hw: tuple[int, int]):
    from ..backbones.registry import get_spec
    from ..data.preprocessing import Preprocessing

    h, w = size_hw
    if h % 32 or w % 32:
        raise BadInputError(f"input size {w}x{h}: both sides must be multiples of 32 for the encoder-decoder")
    return Preprocessing.from_backbone(get_spec(cfg.backbone).preprocessing, (h, w), cfg.resize)


def load_images(paths, pre, progress: bool = True) -> np.ndarray:
    """Every image on the input grid, exactly as ``pre.decode`` gives it; an undecodable image is an error here
    (its mask would be left without an image)."""
    from ..training.data import decode_all

    images, _, skipped = decode_all(paths, pre.size_hw, pre.resize, False, pre.interpolation, progress=progress,
                                     desc="decode")
    if skipped:
        raise BadInputError(f"{skipped[0].path}: {skipped[0].reason} ({len(skipped)} image(s) cannot be decoded)")
    if pre.colour == "grey":
        from ..training.data import to_grey

        images = np.repeat(to_grey(images), 3, axis=-1)
    return images


def train_segmenter(images: np.ndarray, masks: np.ndarray, n_classes: int, cfg: SegmentConfig,
                    strata: np.ndarray | None = None, checkpoint: str | Path | None = None,
                    progress: bool = True, desc: str = "train"):
    """Train on (N, H, W, 3) uint8 images and (N, H, W) uint8 masks of class indices on the input grid.

    A fraction ``cfg.val_fraction`` of the images (stratified by ``strata`` when given) is held out for early
    stopping; returns ``(net, fit info)`` with the best epoch's weights."""
    from ..training.trainer import fit, seed_everything
    from .model import build_segmenter

    rng = np.random.default_rng(cfg.seed)
    n = len(images)
    val = np.zeros(n, bool)
    if cfg.val_fraction > 0 and n >= 10:
        if strata is None:
            strata = np.zeros(n, int)
        for s in np.unique(strata):
            idx = np.flatnonzero(strata == s)
            k = int(round(len(idx) * cfg.val_fraction))
            val[rng.permutation(idx)[:k]] = True
    seed_everything(cfg.seed)  # the decoder's initialisation is reproducible from the seed too
    net, info = build_segmenter(cfg.backbone, cfg.arch, n_classes, cfg.weights,
                                decoder_channels=cfg.decoder_channels)
    tc = cfg.train_config()
    res = fit(net, tc, images[~val], masks[~val], images[val] if val.any() else None,
              masks[val] if val.any() else None, n_classes, checkpoint=checkpoint,
              fingerprint=cfg.fingerprint(n, int(masks.sum()), n_classes), progress=progress, desc=desc,
              task="segment")
    res.update(encoder=info, n_train=int((~val).sum()), n_val=int(val.sum()))
    net.eval()
    return net, res


def predict_proba(net, images: np.ndarray, batch_size: int = 8, progress: bool = False) -> np.ndarray:
    """(N, H, W, 3) uint8 -> (N, K, H, W) float32 class probabilities (binary: K = 2, background first)."""
    import torch
    from tqdm.auto import tqdm

    from ..training.trainer import CL

    device = next(net.parameters()).device
    net.eval()
    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(images), batch_size), desc="segment", unit="batch", disable=not progress,
                      leave=False):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).permute(0, 3, 1, 2).float()
            logits = net(x.to(device, memory_format=CL)).float()
            if logits.shape[1] == 1:
                p = torch.sigmoid(logits)
                p = torch.cat([1 - p, p], 1)
            else:
                p = torch.softmax(logits, 1)
            out.append(p.cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2) + images.shape[1:3], np.float32)


def to_labels(proba: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(K, H, W) probabilities -> (H, W) uint8 class indices (binary: defect where p(defect) >= threshold)."""
    if proba.shape[0] == 2:
        return (proba[1] >= threshold).astype(np.uint8)
    return proba.argmax(0).astype(np.uint8)
