"""An image folder with its masks, read once: images and masks on the network's input grid."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .masks import MaskFormat, find_masks, image_size, load_masks


@dataclass
class SegData:
    root: Path
    paths: list[Path]
    relpaths: list[str]
    strata: np.ndarray  # class folder index of each image (for stratified splits); zeros for a flat folder
    folders: list[str]
    mask_paths: list[Path]
    sizes: list[tuple[int, int]]  # (width, height) of each original image
    fmt: MaskFormat

    @property
    def class_names(self) -> list[str]:
        return self.fmt.class_names

    def summary(self) -> dict:
        return {"root": str(self.root), "n_images": len(self.paths),
                "folders": {f: int((self.strata == i).sum()) for i, f in enumerate(self.folders)},
                "mask_format": self.fmt.as_dict()}


def scan(images_root: str | Path, masks_root: str | Path, fmt: MaskFormat | None = None,
         classes=None) -> SegData:
    """Images under ``images_root`` (class sub-folders, or a flat folder) and their masks (all must exist)."""
    from ..data.dataset import IMAGE_EXTENSIONS, scan_folder

    fmt = fmt or MaskFormat()
    root = Path(images_root).expanduser()
    if not root.is_dir():
        raise BadInputError(f"{root}: no such directory")
    has_sub = any(p.is_dir() and not p.name.startswith(".") for p in root.iterdir())
    if has_sub:
        ds = scan_folder(root, classes, min_classes=1)
        paths, rel, strata, folders = list(ds.paths), list(ds.relpaths), np.asarray(ds.labels), list(ds.classes)
    else:
        root = root.resolve()
        paths = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not paths:
            raise BadInputError(f"{root}: no images")
        rel = [p.name for p in paths]
        strata, folders = np.zeros(len(paths), int), [root.name]
    mpaths = find_masks(masks_root, rel)
    sizes = [image_size(p) for p in paths]
    return SegData(root, paths, rel, strata, folders, mpaths, sizes, fmt)


def load_grid(data: SegData, pre, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(images (N, H, W, 3) uint8, masks (N, H, W) uint8) on the input grid of ``pre``."""
    from .train import load_images

    masks = np.stack(load_masks(data.mask_paths, data.paths, data.fmt, pre, progress=progress))
    images = load_images(data.paths, pre, progress=progress)
    return images, masks
