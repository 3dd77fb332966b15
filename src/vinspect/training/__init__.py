"""Training CNNs with the lab's protocol: ``scratch`` (the lab's small network), ``transfer`` (a frozen
pretrained backbone with a new head) and ``finetune`` (then the top blocks unfrozen at a lower rate)."""

from .config import CNN_METHODS, METHODS, TrainConfig

__all__ = ["CNN_METHODS", "METHODS", "TrainConfig"]
