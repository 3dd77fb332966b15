"""How a decoded image becomes a network's input: one shape for every kind of model (stored in every bundle)."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

RESIZE_MODES = ("squash", "letterbox")
COLOURS = ("rgb", "grey")


@dataclass(frozen=True)
class Preprocessing:
    """How a decoded image becomes the network's input, the same for every kind of model.

    ``width`` x ``height``: the input size in pixels; ``resize``: ``squash`` (no crop, aspect changed) or
    ``letterbox`` (aspect kept, padded); ``colour``: ``rgb`` or ``grey`` (luminance, replicated to three
    channels); ``mean`` / ``std``: per-channel normalisation of 0..1 pixels (applied inside the networks).
    """

    width: int
    height: int
    resize: str = "squash"
    colour: str = "rgb"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    interpolation: str = "bicubic"

    def __post_init__(self):
        if not (isinstance(self.width, int) and isinstance(self.height, int)) or \
                not (8 <= self.width <= 8192 and 8 <= self.height <= 8192):
            raise ValueError(f"input size {self.width}x{self.height}: each side must be an integer in 8..8192")
        if self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r}: use one of {', '.join(RESIZE_MODES)}")
        if self.colour not in COLOURS:
            raise ValueError(f"colour {self.colour!r}: use one of {', '.join(COLOURS)}")
        if len(self.mean) != 3 or len(self.std) != 3 or any(s <= 0 for s in self.std):
            raise ValueError("mean and std: three numbers each, std positive")
        if self.interpolation not in ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"):
            raise ValueError(f"interpolation {self.interpolation!r}: unknown")

    @property
    def size_hw(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def square(self) -> int | None:
        """The side of a square input, else None."""
        return self.width if self.width == self.height else None

    def decode(self, source) -> np.ndarray:
        """A path or bytes -> (height, width, 3) uint8, exactly as the model saw its training images."""
        from .decode import load_rgb

        a = load_rgb(source, self.size_hw, self.interpolation, self.resize)
        if self.colour == "grey":
            from .decode import to_grey

            a = np.repeat(to_grey(a), 3, axis=-1)
        return a

    def content_box(self, orig_w: int, orig_h: int) -> tuple[int, int, int, int]:
        """(x0, y0, w, h) of the image's own pixels inside the input grid (all of it unless letterboxed)."""
        if self.resize != "letterbox":
            return 0, 0, self.width, self.height
        r = min(self.width / orig_w, self.height / orig_h)
        nw, nh = max(1, round(orig_w * r)), max(1, round(orig_h * r))
        return (self.width - nw) // 2, (self.height - nh) // 2, nw, nh

    def to_original(self, grid_map: np.ndarray, orig_w: int, orig_h: int) -> np.ndarray:
        """A map over the input grid -> the same map over the original image (letterbox padding cut away)."""
        from PIL import Image

        m = np.asarray(grid_map, np.float32)
        if m.shape != (self.height, self.width):
            m = np.asarray(Image.fromarray(m).resize((self.width, self.height), Image.Resampling.BILINEAR))
        x0, y0, w, h = self.content_box(orig_w, orig_h)
        m = m[y0:y0 + h, x0:x0 + w]
        return np.asarray(Image.fromarray(np.ascontiguousarray(m)).resize((orig_w, orig_h),
                                                                          Image.Resampling.BILINEAR), np.float32)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(width=d["width"], height=d["height"], resize=d.get("resize", "squash"),
                   colour=d.get("colour", "rgb"), mean=tuple(float(v) for v in d.get("mean", cls.mean)),
                   std=tuple(float(v) for v in d.get("std", cls.std)),
                   interpolation=d.get("interpolation", "bicubic"))

    @classmethod
    def from_backbone(cls, pre, size: tuple[int, int] | None = None, resize: str | None = None,
                      colour: str = "rgb") -> "Preprocessing":
        """From a registry entry's preprocessing (``vinspect.backbones.registry.Preprocessing``);
        ``size`` as (height, width)."""
        h, w = size or (pre.input_size, pre.input_size)
        return cls(width=int(w), height=int(h), resize=resize or pre.resize, colour=colour, mean=tuple(pre.mean),
                   std=tuple(pre.std), interpolation=pre.interpolation)
