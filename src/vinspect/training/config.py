"""Hyper-parameters of CNN training (methods ``transfer``, ``finetune``, ``scratch``) with per-method defaults."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields

from ..backbones.registry import DEFAULT_BACKBONE
from ..errors import BadInputError
from .augment import AugmentConfig, parse_augment

METHODS = ("head", "transfer", "finetune", "scratch")
CNN_METHODS = ("transfer", "finetune", "scratch")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULERS = ("cosine", "step", "none")

# What a method uses when an option is not given: small enough for a 2-core CPU in minutes.
METHOD_DEFAULTS = {
    "transfer": dict(epochs=10, lr=1e-3, optimizer="adamw", dropout=0.2, patience=5, augment="default", probe=True),
    "finetune": dict(epochs=6, head_epochs=0, lr=1e-3, finetune_lr=3e-5, optimizer="adamw", dropout=0.2,
                     patience=3, augment="default", unfreeze=2, probe=True),
    "scratch": dict(epochs=30, lr=1e-3, optimizer="adam", dropout=0.3, patience=6, augment="default", grey=True,
                    input_size=(128, 128)),
}


def parse_size(value) -> tuple[int, int] | None:
    """``224`` -> (224, 224); ``"320x144"`` (width x height) -> (144, 320); ``[h, w]`` -> (h, w)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)) and len(value) == 2:
        h, w = int(value[0]), int(value[1])
    elif isinstance(value, int):
        h = w = value
    else:
        s = str(value).lower().replace(" ", "")
        try:
            if "x" in s:
                w, h = (int(v) for v in s.split("x"))
            else:
                h = w = int(s)
        except ValueError:
            raise BadInputError(f"input size {value!r}: give N or WIDTHxHEIGHT, e.g. 224 or 320x144") from None
    if not (16 <= h <= 4096 and 16 <= w <= 4096):
        raise BadInputError(f"input size {value!r}: each side must be between 16 and 4096 pixels")
    return h, w


@dataclass
class TrainConfig:
    method: str = "transfer"
    # network
    backbone: str = DEFAULT_BACKBONE
    layer: str | None = None  # where the backbone is cut (default: the backbone's default layer)
    weights: str | None = None
    input_size: tuple[int, int] | None = None  # (height, width); default: the backbone's (scratch: 128)
    resize: str = "squash"
    grey: bool = False
    dropout: float = 0.2
    widths: tuple[int, ...] = (32, 64, 128)  # the lab network's convolutions (scratch)
    dense: int = 128  # the lab network's hidden dense layer (scratch)
    unfreeze: int = 2  # finetune: top blocks of the backbone trained in the second stage
    # optimisation
    epochs: int = 15
    head_epochs: int = 0  # finetune: epochs of a first stage training the head only, with augmentation
    probe: bool = True  # transfer/finetune: start the head from a linear probe (logistic regression on the
    #                     frozen backbone's features of the training images), then train
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 1e-3
    finetune_lr: float | None = None  # finetune: second stage (default lr / 10)
    momentum: float = 0.9
    weight_decay: float = 1e-4
    scheduler: str = "cosine"
    warmup_epochs: int = 1
    step_size: int = 5
    gamma: float = 0.5
    label_smoothing: float = 0.0
    class_weight: str | None = None  # "balanced"
    patience: int = 5  # early stopping on validation loss (0: off)
    val_fraction: float = 0.15
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    seed: int = 0
    device: str | None = None  # default: cuda when present, else cpu

    def __post_init__(self):
        if self.method not in CNN_METHODS:
            raise BadInputError(f"method {self.method!r}: CNN training methods are {', '.join(CNN_METHODS)}")
        if self.optimizer not in OPTIMIZERS:
            raise BadInputError(f"optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.scheduler not in SCHEDULERS:
            raise BadInputError(f"scheduler {self.scheduler!r}: use one of {', '.join(SCHEDULERS)}")
        if self.resize not in ("squash", "letterbox"):
            raise BadInputError(f"resize {self.resize!r}: use squash or letterbox")
        if isinstance(self.augment, (str, dict)) or self.augment is None:
            self.augment = parse_augment(self.augment)
        self.input_size = parse_size(self.input_size)
        self.widths = tuple(int(w) for w in self.widths)
        for name, lo, hi in (("dropout", 0.0, 0.95), ("label_smoothing", 0.0, 0.5), ("val_fraction", 0.0, 0.5)):
            v = getattr(self, name)
            if not lo <= v <= hi:
                raise BadInputError(f"{name.replace('_', '-')} {v}: must be between {lo} and {hi}")
        for name in ("epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise BadInputError(f"{name.replace('_', '-')} {getattr(self, name)}: must be at least 1")
        if self.lr <= 0 or (self.finetune_lr is not None and self.finetune_lr <= 0):
            raise BadInputError("learning rates must be positive")
        if self.class_weight not in (None, "balanced"):
            raise BadInputError(f"class weight {self.class_weight!r}: use balanced or none")

    @classmethod
    def for_method(cls, method: str, **options) -> TrainConfig:
        """The method's defaults, overridden by the options that are not None."""
        if method not in CNN_METHODS:
            raise BadInputError(f"method {method!r}: CNN training methods are {', '.join(CNN_METHODS)}")
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(options) - names)
        if unknown:
            raise BadInputError(f"unknown training option(s): {', '.join(unknown)}")
        kw = dict(METHOD_DEFAULTS[method])
        kw.update({k: v for k, v in options.items() if v is not None})
        return cls(method=method, **kw)

    @property
    def second_stage_lr(self) -> float:
        return self.finetune_lr if self.finetune_lr is not None else self.lr / 10

    def as_dict(self) -> dict:
        d = asdict(self)
        d["augment"] = self.augment.as_dict()
        d["input_size"] = list(self.input_size) if self.input_size else None
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        d = dict(d)
        d["augment"] = parse_augment(d.get("augment"))
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})

    def fingerprint(self, *extra) -> str:
        """What a checkpoint must match to be resumed (device and progress output excluded)."""
        return settings_fingerprint(self.as_dict(), *extra)


def settings_fingerprint(settings: dict, *extra) -> str:
    """A short hash of a config's settings (``as_dict()``) and ``extra``, the device left out: what a checkpoint
    must match to be resumed."""
    d = dict(settings)
    d.pop("device", None)
    return hashlib.sha256(json.dumps([d, *extra], sort_keys=True, default=str).encode()).hexdigest()[:16]


class LoopTaskConfig:
    """Shared by the dataclass configs of the tasks that train through the shared loop in one stage (segment,
    detect): reading from a dict, the resume fingerprint and the loop's :class:`TrainConfig`.  The subclass has
    the fields backbone, epochs, lr, weight_decay, batch_size, warmup_epochs, patience, val_fraction, augment,
    seed and device, and an ``as_dict()``."""

    @classmethod
    def from_dict(cls, d: dict):
        return cls(**{k: v for k, v in d.items() if k in {f.name for f in fields(cls)}})

    def fingerprint(self, *extra) -> str:
        return settings_fingerprint(self.as_dict(), *extra)

    def train_config(self) -> TrainConfig:
        """The shared loop's settings (its stages are not used here: one stage trains all)."""
        return TrainConfig(method="finetune", backbone=self.backbone, epochs=int(self.epochs), lr=float(self.lr),
                           finetune_lr=float(self.lr), optimizer="adamw", weight_decay=float(self.weight_decay),
                           batch_size=int(self.batch_size), scheduler="cosine", warmup_epochs=int(self.warmup_epochs),
                           patience=int(self.patience), val_fraction=float(self.val_fraction), augment=self.augment,
                           seed=int(self.seed), device=self.device, probe=False)
