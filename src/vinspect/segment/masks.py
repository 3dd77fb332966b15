"""Defect masks: where they lie, how they are read and checked, and how they reach the network's input grid.

``MASKS/<relative path of the image, with the extension .png>``: one single-channel PNG per image.  Values:

* binary (default): 0 is background, any one other value (1 or 255) the defect;
* ``threshold=T`` (grey masks, e.g. magnetic-tile): defect where value >= T;
* ``classes=[a, b, ...]`` (multi-class): value 0 background, value k the k-th class (1-based), nothing else.

A mask must have its image's size; ``align="topleft"`` instead crops (or pads with background) a mask drawn
on a different canvas at the image's top-left corner (how the insert-wear masks are drawn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadInputError

ALIGNS = ("exact", "topleft")


@dataclass(frozen=True)
class MaskFormat:
    threshold: int | None = None  # grey masks: defect where value >= threshold
    classes: tuple[str, ...] = field(default_factory=tuple)  # multi-class: value k = classes[k - 1]
    align: str = "exact"

    def __post_init__(self):
        if self.align not in ALIGNS:
            raise BadInputError(f"--mask-align {self.align!r}: use one of {', '.join(ALIGNS)}")
        if self.threshold is not None and not 1 <= int(self.threshold) <= 65535:
            raise BadInputError(f"--mask-threshold {self.threshold}: must be between 1 and 65535")
        if self.threshold is not None and self.classes:
            raise BadInputError("--mask-threshold and --mask-classes exclude each other (grey binary masks, or "
                                "one value per class)")

    @property
    def class_names(self) -> list[str]:
        """All classes, background first: ``["background", "defect"]`` for binary masks."""
        return ["background", *(self.classes or ("defect",))]

    def as_dict(self) -> dict:
        return {"threshold": self.threshold, "classes": list(self.classes), "align": self.align}

    @classmethod
    def from_dict(cls, d: dict) -> MaskFormat:
        return cls(d.get("threshold"), tuple(d.get("classes") or ()), d.get("align", "exact"))


def mask_path(masks_root: str | Path, relpath: str) -> Path:
    return Path(masks_root) / Path(relpath).with_suffix(".png")


def find_masks(masks_root: str | Path, relpaths: list[str]) -> list[Path]:
    """The mask of every image; refuses, listing them, when some are missing."""
    root = Path(masks_root).expanduser()
    if not root.is_dir():
        raise BadInputError(f"--masks {root}: no such directory")
    paths = [mask_path(root, r) for r in relpaths]
    missing = [r for r, p in zip(relpaths, paths) if not p.is_file()]
    if missing:
        shown = ", ".join(str(Path(r).with_suffix(".png")) for r in missing[:10])
        more = f" and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise BadInputError(f"--masks {root}: no mask for {len(missing)} of {len(relpaths)} image(s): {shown}{more} "
                            f"(expected MASKS/<same relative path and stem>.png)")
    return paths


def read_mask(path: str | Path, image_size: tuple[int, int], fmt: MaskFormat = MaskFormat()) -> np.ndarray:
    """(H, W) uint8 class indices of the mask at ``path`` for an image of ``image_size`` = (width, height)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode in ("RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV"):
                a = np.asarray(im.convert("RGB"))
                if not (np.array_equal(a[..., 0], a[..., 1]) and np.array_equal(a[..., 0], a[..., 2])):
                    raise BadInputError(f"{path}: a colour mask ({mode}); masks are single-channel PNGs "
                                        f"(0 background, nonzero defect)")
                a = a[..., 0]
            elif mode == "P":
                a = np.asarray(im)  # palette indices are the values
            else:
                a = np.asarray(im.convert("I") if mode not in ("L", "1") else im.convert("L"))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise BadInputError(f"{path}: unreadable mask ({e})") from None
    a = np.asarray(a)
    w, h = image_size
    if a.shape != (h, w):
        if fmt.align != "topleft":
            raise BadInputError(f"{path}: mask is {a.shape[1]}x{a.shape[0]}, its image {w}x{h}; masks must have "
                                f"their image's size (or use --mask-align topleft for masks drawn on a larger "
                                f"canvas at the image's top-left corner)")
        out = np.zeros((h, w), a.dtype)
        hh, ww = min(h, a.shape[0]), min(w, a.shape[1])
        out[:hh, :ww] = a[:hh, :ww]
        a = out
    if fmt.threshold is not None:
        return (a >= fmt.threshold).astype(np.uint8)
    values = np.unique(a)
    if fmt.classes:
        bad = values[values > len(fmt.classes)]
        if bad.size:
            raise BadInputError(f"{path}: value(s) {', '.join(map(str, bad[:8].tolist()))} but only "
                                f"{len(fmt.classes)} class(es) given ({', '.join(fmt.classes)}): value k must be "
                                f"the k-th class, 0 background")
        return a.astype(np.uint8)
    nz = values[values != 0]
    if nz.size > 1:
        shown = ", ".join(map(str, values[:8].tolist())) + (" ..." if values.size > 8 else "")
        raise BadInputError(f"{path}: not a binary mask ({values.size} distinct values: {shown}); give "
                            f"--mask-threshold T for grey masks (defect where value >= T) or --mask-classes "
                            f"A,B,... when value k is the k-th class")
    return (a != 0).astype(np.uint8)


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) of an image file (its header only)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            return im.size
    except (UnidentifiedImageError, OSError) as e:
        raise BadInputError(f"{path}: unreadable image ({e})") from None


def to_grid(mask: np.ndarray, pre) -> np.ndarray:
    """A mask at the original image size -> the network's input grid (nearest neighbour; letterbox padding is
    background), the same geometry as ``pre.decode`` gives the image (``pre``: models.bundle.Preprocessing)."""
    from PIL import Image

    h, w = mask.shape
    x0, y0, cw, ch = pre.content_box(w, h)
    small = np.asarray(Image.fromarray(mask).resize((cw, ch), Image.Resampling.NEAREST))
    if (cw, ch) == (pre.width, pre.height):
        return np.ascontiguousarray(small)
    out = np.zeros((pre.height, pre.width), np.uint8)
    out[y0:y0 + ch, x0:x0 + cw] = small
    return out


def load_masks(paths: list[Path], image_paths: list[Path], fmt: MaskFormat, pre=None, workers: int = 2,
               progress: bool = True) -> list[np.ndarray]:
    """Every mask at its image's size (``pre`` None) or on the input grid of ``pre``; checked as read."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm.auto import tqdm

    def one(i):
        m = read_mask(paths[i], image_size(image_paths[i]), fmt)
        return to_grid(m, pre) if pre is not None else m

    with ThreadPoolExecutor(max(1, workers)) as pool:
        return list(tqdm(pool.map(one, range(len(paths))), total=len(paths), desc="masks", unit="mask",
                         disable=not progress, leave=False))
