"""Train a detector with vinspect's training loop; predict boxes on the input grid and in original pixels."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..backbones.registry import DEFAULT_BACKBONE
from ..errors import BadInputError
from ..training.config import LoopTaskConfig
from .annotations import DetData

# Defaults fixed before any evaluation: NEU surfaces have no meaningful orientation, so both flips (which move
# the boxes); mild photometric changes; AdamW with one warm-up epoch then cosine decay; the input side is the
# images' median side rounded to a multiple of 32 (NEU's 200 px -> 192) and 12 epochs, chosen for speed on a
# 2-core CPU (measured before the benchmark: 0.14 s per training image on one quiet core at 192 px, 0.32 s under
# the load of other jobs; two threads were 4 times slower under that load).
DEFAULT_AUGMENT = "hflip=0.5,vflip=0.5,brightness=0.15,contrast=0.15"


@dataclass
class DetectConfig(LoopTaskConfig):
    backbone: str = DEFAULT_BACKBONE
    weights: str | None = None
    input_size: tuple[int, int] | None = None  # (height, width), multiples of 32; default: see fit_size
    epochs: int = 12
    lr: float = 5e-4
    weight_decay: float = 1e-4
    batch_size: int = 8
    warmup_epochs: int = 1
    augment: str = DEFAULT_AUGMENT
    val_fraction: float = 0.15  # of the training images, for early stopping and the best epoch (0: none)
    patience: int = 4
    fpn_channels: int = 128
    head_convs: int = 2
    nms_threshold: float = 0.5
    score_threshold: float = 0.05  # boxes kept for evaluation (mAP needs the low-scoring ones)
    display_threshold: float = 0.3  # boxes listed and drawn by predict / serve
    max_detections: int = 100
    seed: int = 0
    device: str | None = None

    def __post_init__(self):
        from ..training.augment import parse_augment
        from ..training.config import parse_size

        self.input_size = parse_size(self.input_size)
        if self.input_size and (self.input_size[0] % 32 or self.input_size[1] % 32):
            raise BadInputError(f"--input-size {self.input_size[1]}x{self.input_size[0]}: both sides must be "
                                f"multiples of 32 (the detector's largest stride)")
        parse_augment(self.augment)
        if not 0.0 <= self.val_fraction <= 0.5:
            raise BadInputError(f"--val-fraction {self.val_fraction}: must be between 0 and 0.5")
        for name in ("nms_threshold", "score_threshold", "display_threshold"):
            v = getattr(self, name)
            if not 0.0 < v < 1.0:
                raise BadInputError(f"--{name.replace('_', '-')} {v}: must be between 0 and 1")
        if int(self.epochs) < 1 or int(self.batch_size) < 1:
            raise BadInputError("--epochs and --batch-size must be at least 1")
        if self.lr <= 0:
            raise BadInputError("--lr must be positive")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = list(self.input_size) if self.input_size else None
        return d


def fit_size(data: DetData, multiple: int = 32) -> tuple[int, int]:
    """(height, width): the images' median sides, each rounded to the nearest multiple of 32 (200 -> 192)."""
    h = float(np.median([it.height for it in data.items]))
    w = float(np.median([it.width for it in data.items]))
    return (max(multiple, int(round(h / multiple)) * multiple), max(multiple, int(round(w / multiple)) * multiple))


def preprocessing_for(cfg: DetectConfig, size_hw: tuple[int, int]):
    from ..backbones.registry import get_spec
    from ..data.preprocessing import Preprocessing

    return Preprocessing.from_backbone(get_spec(cfg.backbone).preprocessing, tuple(size_hw), "squash")


def load_grid(data: DetData, pre, progress: bool = True) -> tuple[np.ndarray, list[dict]]:
    """(images (N, H, W, 3) uint8 on the input grid, targets: ``{boxes (K, 4) float32, labels (K,) int64}`` on
    the same grid).  Images are squashed to the grid, so boxes scale by (grid / original) on each axis."""
    from ..training.data import decode_all

    images, _, skipped = decode_all([it.path for it in data.items], pre.size_hw, "squash", False,
                                    pre.interpolation, progress=progress, desc="decode")
    if skipped:
        raise BadInputError(f"{skipped[0].path}: {skipped[0].reason} ({len(skipped)} image(s) cannot be decoded)")
    if pre.colour == "grey":
        from ..training.data import to_grey

        images = np.repeat(to_grey(images), 3, axis=-1)
    targets = [to_grid(it.boxes, data.label_indices(it), it.width, it.height, pre.size_hw) for it in data.items]
    return images, targets


def to_grid(boxes: np.ndarray, labels: np.ndarray, width: int, height: int, size_hw) -> dict:
    s = np.array([size_hw[1] / width, size_hw[0] / height] * 2, np.float32)
    return {"boxes": (np.asarray(boxes, np.float32).reshape(-1, 4) * s), "labels": np.asarray(labels, np.int64)}


def to_original(det: dict, width: int, height: int, size_hw) -> dict:
    """Boxes on the input grid -> the image's own pixels (numpy)."""
    s = np.array([width / size_hw[1], height / size_hw[0]] * 2, np.float32)
    return {"boxes": np.asarray(det["boxes"], np.float32).reshape(-1, 4) * s,
            "scores": np.asarray(det["scores"], np.float32), "labels": np.asarray(det["labels"], np.int64)}


class BoxArrayDataset:
    """(N, H, W, 3) uint8 images + targets -> ((3, H, W) float in 0..255, {boxes, labels} tensors)."""

    def __init__(self, images: np.ndarray, targets: list[dict], transform=None):
        if len(images) != len(targets):
            raise ValueError(f"{len(images)} images and {len(targets)} targets")
        self.images, self.targets, self.transform = images, targets, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i):
        import torch

        x = torch.from_numpy(np.ascontiguousarray(self.images[i])).permute(2, 0, 1)
        t = {"boxes": torch.from_numpy(self.targets[i]["boxes"]).float().reshape(-1, 4),
             "labels": torch.from_numpy(self.targets[i]["labels"]).long()}
        if self.transform is not None:
            return self.transform(x, t)
        return x.float(), t


def collate(batch):
    import torch

    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


class DetectObjective:
    """What the shared training loop needs for detection (see ``vinspect.training.trainer.fit``): the loss is
    FCOS's (focal + GIoU + centre-ness), the validation metric mAP@0.5 (torchmetrics)."""

    metric, short = "map50", "mAP50"
    val_batch_size = 16
    dataset = BoxArrayDataset
    collate = staticmethod(collate)

    def __init__(self, n_classes: int):
        self.n_classes = n_classes

    @staticmethod
    def transform(cfg, size):
        return cfg.augment.build(size, with_boxes=True)

    @staticmethod
    def to_device(y, device):
        return [{k: v.to(device) for k, v in t.items()} for t in y]

    @staticmethod
    def train_step(net, x, y):
        losses = net(x, y)
        return sum(losses.values()), None

    @staticmethod
    def counts(outputs, y):
        return 0, 0  # no training metric: mAP needs decoded boxes of the whole set

    def score(self, net, loader, device) -> tuple[float, float]:
        import torch

        from .metrics import detection_metrics
        from .model import decode

        net.eval()
        loss = 0.0
        n = 0
        preds, truths = [], []
        with torch.no_grad():
            for x, y in loader:
                x = x.to(device, memory_format=torch.channels_last)
                y = self.to_device(y, device)
                head, feats = net.raw(x)
                loss += float(sum(net.losses(x, head, feats, y).values())) * len(y)
                n += len(y)
                from .model import OUTPUTS

                for d in decode(net, [head[k] for k in OUTPUTS], tuple(x.shape[-2:])):
                    preds.append({k: v.cpu().numpy() for k, v in d.items()})
                truths += [{k: v.cpu().numpy() for k, v in t.items()} for t in y]
        m = detection_metrics(preds, truths, self.n_classes, summary_only=True)
        return loss / max(n, 1), m["map50"]


def split_validation(strata: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A boolean mask of the images held out for validation, stratified by ``strata``."""
    rng = np.random.default_rng(seed)
    n = len(strata)
    val = np.zeros(n, bool)
    if fraction > 0 and n >= 10:
        for s in np.unique(strata):
            idx = np.flatnonzero(strata == s)
            k = int(round(len(idx) * fraction))
            val[rng.permutation(idx)[:k]] = True
    return val


def train_detector(images: np.ndarray, targets: list[dict], n_classes: int, cfg: DetectConfig,
                   strata: np.ndarray | None = None, checkpoint: str | Path | None = None,
                   progress: bool = True, desc: str = "train"):
    """Train on (N, H, W, 3) uint8 images and their grid targets; ``cfg.val_fraction`` of them (stratified)
    is held out for early stopping.  Returns ``(net, fit info)`` with the best epoch's weights."""
    from ..training.trainer import fit, seed_everything
    from .model import build_detector

    n = len(images)
    val = split_validation(np.zeros(n, int) if strata is None else np.asarray(strata), cfg.val_fraction, cfg.seed)
    seed_everything(cfg.seed)  # the head's initialisation is reproducible from the seed too
    net, info = build_detector(cfg.backbone, n_classes, cfg.weights, fpn_channels=cfg.fpn_channels,
                               head_convs=cfg.head_convs, score_thresh=cfg.score_threshold,
                               nms_thresh=cfg.nms_threshold, detections_per_img=cfg.max_detections)
    tr, va = np.flatnonzero(~val), np.flatnonzero(val)
    n_boxes = int(sum(len(t["labels"]) for t in targets))
    res = fit(net, cfg.train_config(), images[tr], [targets[i] for i in tr],
              images[va] if len(va) else None, [targets[i] for i in va] if len(va) else None, n_classes,
              checkpoint=checkpoint, fingerprint=cfg.fingerprint(n, n_boxes, n_classes), progress=progress,
              desc=desc, task="detect", objective=DetectObjective(n_classes))
    res.update(backbone=info, n_train=int(len(tr)), n_val=int(len(va)))
    net.eval()
    return net, res


def predict_grid(net, images: np.ndarray, batch_size: int = 16, score_thresh: float | None = None,
                 progress: bool = False) -> list[dict]:
    """(N, H, W, 3) uint8 -> ``[{boxes (K, 4), scores (K,), labels (K,)}]`` numpy, on the input grid."""
    import torch
    from tqdm.auto import tqdm

    net.eval()
    dev = net.shift.device
    out = []
    with torch.inference_mode():
        for s in tqdm(range(0, len(images), batch_size), desc="detect", unit="batch", disable=not progress,
                      leave=False):
            x = torch.from_numpy(np.ascontiguousarray(images[s:s + batch_size])).permute(0, 3, 1, 2).float()
            for d in net.detect(x.to(dev, memory_format=torch.channels_last), score_thresh):
                out.append({k: v.cpu().numpy() for k, v in d.items()})
    return out
