"""Image folders for anomaly detection: the normal class(es), the rest as anomalous, and ground-truth masks."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.dataset import Skipped, scan_folder
from ..data.decode import IMAGE_EXTENSIONS
from ..errors import BadInputError

MIN_NORMAL = 10


@dataclass
class AnomalyData:
    root: Path
    paths: list[Path]
    anomalous: np.ndarray  # (N,) 0 normal, 1 anomalous
    classes: list[str]  # folder class of each image
    normal_classes: list[str]
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def relpaths(self) -> list[str]:
        return [p.relative_to(self.root).as_posix() for p in self.paths]


def parse_normal(normal: str | list[str] | None) -> list[str]:
    if not normal:
        raise BadInputError("--normal CLASS[,CLASS]: name the folder(s) of defect-free images")
    items = normal if isinstance(normal, (list, tuple)) else [normal]
    out = [c.strip() for item in items for c in str(item).split(",") if c.strip()]
    if not out:
        raise BadInputError("--normal: give at least one class folder")
    return out


def load_anomaly_data(root, normal, need_anomalous: bool) -> AnomalyData:
    """``root/<class>/<images>``; ``normal`` names the defect-free class folder(s).

    Refuses a normal class that does not exist, fewer than 10 normal images, and (when ``need_anomalous``) a
    ``--normal`` that covers every class."""
    normal = parse_normal(normal)
    ds = scan_folder(root, min_classes=1)
    missing = [c for c in normal if c not in ds.classes]
    if missing:
        raise BadInputError(f"--normal {','.join(missing)}: no such class folder in {ds.root} "
                            f"(it has: {', '.join(ds.classes)})")
    cls = [ds.classes[y] for y in ds.labels]
    an = np.array([c not in normal for c in cls], dtype=int)
    n_normal = int((an == 0).sum())
    if n_normal < MIN_NORMAL:
        raise BadInputError(f"--normal {','.join(normal)}: {n_normal} images; anomaly detection needs at least "
                            f"{MIN_NORMAL} normal images")
    if need_anomalous and not an.any():
        raise BadInputError(f"--normal {','.join(normal)} covers every class of {ds.root}: evaluation needs at least "
                            "one class folder of anomalous images")
    return AnomalyData(ds.root, list(ds.paths), an, cls, normal, list(ds.skipped))


def _read_mask(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode not in ("L", "1", "I", "I;16", "I;16B", "I;16L", "P", "F"):
                raise BadInputError(f"--masks: {path} is not single-channel (mode {mode}); masks must be grey images")
            if mode == "P":
                a = np.asarray(im)  # palette indices: non-zero is the defect
                return a > 0
            a = np.asarray(im.convert("L") if mode == "1" else im).astype(np.float64)
    except BadInputError:
        raise
    except Exception as e:  # noqa: BLE001 - any unreadable mask is the user's file
        raise BadInputError(f"--masks: {path}: unreadable ({type(e).__name__}: {e})") from None
    if a.ndim != 2:
        raise BadInputError(f"--masks: {path} is not single-channel; masks must be grey images")
    hi = 65535 if mode.startswith("I;16") else 255
    return a >= (hi + 1) / 2 if a.max() > 1 else a > 0


def find_masks(masks_dir, data: AnomalyData) -> dict[int, Path]:
    """Image index -> mask file (same relative folder and stem, any image extension).

    Refuses mask files that match no image (listed) and a folder without any mask."""
    d = Path(masks_dir).expanduser()
    if not d.is_dir():
        raise BadInputError(f"--masks {d}: no such directory")
    by_key = {}
    for p in sorted(d.rglob("*")):
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS:
            by_key[p.relative_to(d).with_suffix("").as_posix()] = p
    if not by_key:
        raise BadInputError(f"--masks {d}: no mask images found")
    keys = {Path(r).with_suffix("").as_posix(): i for i, r in enumerate(data.relpaths)}
    # masks of images that were skipped as undecodable are not orphans
    skipped = {Path(s.path).with_suffix("").as_posix() for s in data.skipped}
    orphans = sorted(k for k in by_key if k not in keys and k not in skipped)
    if orphans:
        more = f" and {len(orphans) - 5} more" if len(orphans) > 5 else ""
        raise BadInputError(f"--masks {d}: {len(orphans)} mask(s) match no image of the data (same relative path "
                            f"and stem expected): {', '.join(orphans[:5])}{more}")
    return {keys[k]: p for k, p in by_key.items() if k in keys}


def load_mask(path: Path | None, width: int, height: int) -> np.ndarray:
    """A boolean (height, width) mask: the file resized with nearest neighbour, or all False without a file."""
    if path is None:
        return np.zeros((height, width), bool)
    from PIL import Image

    m = _read_mask(path)
    if m.shape != (height, width):
        m = np.asarray(Image.fromarray(m.astype(np.uint8) * 255).resize((width, height), Image.Resampling.NEAREST)) > 127
    return m
