"""Data augmentation for inspection images (torchvision transforms v2), configurable and off at evaluation.

A spec is a preset name or a comma list of ``name`` / ``name=value`` items, e.g.
``"hflip,vflip,rot90,rotate=10,shift=0.05,brightness=0.2,contrast=0.2,gamma=0.2,blur=0.2,noise=0.02,crop=0.8"``
(or the same as a YAML mapping).  ``none`` turns augmentation off.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..errors import BadInputError


@dataclass(frozen=True)
class AugmentConfig:
    hflip: float = 0.0  # probability of a left-right flip
    vflip: float = 0.0  # probability of an up-down flip
    rot90: bool = False  # random multiple of 90 degrees (square inputs only)
    rotate: float = 0.0  # small rotation, +- degrees
    shift: float = 0.0  # translation, fraction of the size
    scale: float = 0.0  # zoom, +- fraction
    brightness: float = 0.0  # +- fraction
    contrast: float = 0.0  # +- fraction
    gamma: float = 0.0  # gamma in [1 - g, 1 + g]
    blur: float = 0.0  # probability of a small Gaussian blur
    noise: float = 0.0  # std of Gaussian noise, fraction of the intensity range
    crop: float = 1.0  # random resized crop keeping at least this fraction of the area (1: off)

    @property
    def enabled(self) -> bool:
        return self != AugmentConfig()

    def as_dict(self) -> dict:
        return asdict(self)

    def build(self, size: tuple[int, int], with_mask: bool = False, with_boxes: bool = False):
        """A transform of one (C, H, W) uint8 tensor -> float tensor in 0..255 (None when nothing is enabled).

        ``with_mask``: a transform of ``(image, mask)`` -> ``(image, mask)`` instead, for segmentation: the
        geometric operations (crop, flips, rotations, affine) move the (H, W) mask of class indices with the
        image (nearest neighbour, zeros where the image is padded); the photometric ones leave it alone.
        ``with_boxes``: a transform of ``(image, target)`` -> ``(image, target)`` for detection, ``target`` a dict
        with ``boxes`` (K, 4) xyxy pixels and ``labels`` (K,): the geometric operations move the boxes (the box
        around each moved box), and boxes left smaller than 2 pixels are dropped with their labels.
        """
        if not self.enabled:
            return None
        if with_boxes:
            return _BoxTransform(self._compose(size, True, boxes=True))
        if with_mask:
            return _PairTransform(self._compose(size, True))
        return self._compose(size, False)

    def _compose(self, size: tuple[int, int], with_mask: bool, boxes: bool = False):
        from .._torchvision_guard import ensure_torchvision

        ensure_torchvision()
        import torch
        import torchvision.transforms.v2 as T
        import torchvision.transforms.v2.functional as F

        ops = []
        if self.crop < 1.0:
            ops.append(T.RandomResizedCrop(size, scale=(self.crop, 1.0), ratio=(size[1] / size[0] * 0.9,
                                                                                 size[1] / size[0] / 0.9),
                                           antialias=True))
        if self.hflip:
            ops.append(T.RandomHorizontalFlip(self.hflip))
        if self.vflip:
            ops.append(T.RandomVerticalFlip(self.vflip))
        if self.rot90 and size[0] == size[1]:
            ops.append(T.RandomChoice([T.RandomRotation((a, a)) for a in (0, 90, 180, 270)]))
        if self.rotate or self.shift or self.scale:
            ops.append(T.RandomAffine(degrees=self.rotate, translate=(self.shift, self.shift) if self.shift else None,
                                      scale=(1 - self.scale, 1 + self.scale) if self.scale else None))
        if self.brightness or self.contrast:
            ops.append(T.ColorJitter(brightness=self.brightness or None, contrast=self.contrast or None))
        if self.blur:
            ops.append(T.RandomApply([T.GaussianBlur(3, sigma=(0.1, 1.2))], p=self.blur))
        ops.append(T.ToDtype(torch.float32, scale=True))  # 0..1 from here on
        if with_mask:  # a mask travels with the image: the lambdas touch the image only (and keep its type)
            from torchvision import tv_tensors

            def _image_only(fn):
                return T.Lambda(lambda x: tv_tensors.Image(fn(x)), tv_tensors.Image)
        else:
            def _image_only(fn):
                return T.Lambda(fn)
        if self.gamma:
            g = self.gamma

            def _gamma(x):
                return F.adjust_gamma(x, float(torch.empty(1).uniform_(1 - g, 1 + g)))

            ops.append(_image_only(_gamma))
        if self.noise:
            ops.append(T.GaussianNoise(sigma=self.noise, clip=True))
        ops.append(_image_only(lambda x: x * 255.0))
        if boxes:
            ops.append(T.ClampBoundingBoxes())
            ops.append(T.SanitizeBoundingBoxes(min_size=2))
        return T.Compose(ops)


class _PairTransform:
    """(C, H, W) uint8 image tensor, (H, W) integer mask tensor -> (float image in 0..255, int64 mask)."""

    def __init__(self, compose):
        self.compose = compose

    def __call__(self, image, mask):
        import torch
        from torchvision import tv_tensors

        x, m = self.compose(tv_tensors.Image(image), tv_tensors.Mask(mask))
        return x.as_subclass(torch.Tensor), m.as_subclass(torch.Tensor).long()


class _BoxTransform:
    """(C, H, W) uint8 image tensor, {boxes (K, 4) xyxy, labels (K,)} -> (float image in 0..255, target)."""

    def __init__(self, compose):
        self.compose = compose

    def __call__(self, image, target):
        import torch
        from torchvision import tv_tensors

        h, w = image.shape[-2:]
        sample = {"image": tv_tensors.Image(image),
                  "boxes": tv_tensors.BoundingBoxes(target["boxes"], format="XYXY", canvas_size=(h, w)),
                  "labels": target["labels"]}
        out = self.compose(sample)
        return out["image"].as_subclass(torch.Tensor), {"boxes": out["boxes"].as_subclass(torch.Tensor).float(),
                                                        "labels": out["labels"].long()}


PRESETS = {
    "none": AugmentConfig(),
    # textures and surfaces whose orientation carries no meaning (steel strip, tiles, solar cells)
    "default": AugmentConfig(hflip=0.5, vflip=0.5, rot90=True, rotate=5, shift=0.05, brightness=0.2, contrast=0.2,
                             gamma=0.1, blur=0.1, noise=0.01, crop=0.8),
    # images whose geometry matters (a tool's cutting edge at the bottom): mirror left-right only
    "oriented": AugmentConfig(hflip=0.5, rotate=3, shift=0.04, scale=0.05, brightness=0.2, contrast=0.2, gamma=0.1,
                              blur=0.1, noise=0.01),
}


def parse_augment(spec) -> AugmentConfig:
    """A preset name, a ``name=value`` comma list, a mapping, or an AugmentConfig."""
    if isinstance(spec, AugmentConfig):
        return spec
    if spec is None or spec is False:
        return PRESETS["none"]
    names = {f.name: f.type for f in fields(AugmentConfig)}
    items: dict = {}
    if isinstance(spec, dict):
        items = dict(spec)
    else:
        s = str(spec).strip()
        if s in PRESETS:
            return PRESETS[s]
        for part in filter(None, (p.strip() for p in s.split(","))):
            if part in PRESETS:
                items.update(PRESETS[part].as_dict())
                continue
            k, _, v = part.partition("=")
            items[k.strip()] = v.strip() if v else True
    out = {}
    for k, v in items.items():
        if k not in names:
            raise BadInputError(f"augmentation {k!r}: unknown (use a preset {', '.join(PRESETS)} or items "
                                f"{', '.join(names)})")
        if k == "rot90":
            out[k] = str(v).lower() not in ("0", "false", "no", "off")
            continue
        if v is True:  # a bare name: its usual setting
            v = {"hflip": 0.5, "vflip": 0.5, "blur": 0.2, "crop": 0.8}.get(k)
            if v is None:
                raise BadInputError(f"augmentation {k!r} needs a value, e.g. {k}=0.1")
        try:
            out[k] = float(v)
        except (TypeError, ValueError):
            raise BadInputError(f"augmentation {k}={v!r}: not a number") from None
        if out[k] < 0 or (k in ("hflip", "vflip", "blur") and out[k] > 1) or (k == "crop" and not 0.1 <= out[k] <= 1):
            raise BadInputError(f"augmentation {k}={v}: out of range")
    return AugmentConfig(**out)
