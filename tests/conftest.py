"""Shared fixtures: real data from ../shared (skipped with a reason when absent) and honestly generated
images for the bad-input cases.  No test reaches a network: HF_HUB_OFFLINE=1 and a private cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TQDM_DISABLE", "1")

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
NEU = SHARED / "neu-cls"
WEAR = SHARED / "insert-wear" / "images"
PHOTOS = SHARED / "photos"


def need(path: Path) -> Path:
    if not path.is_dir():
        pytest.skip(f"real data not found at {path} (../shared/datasets is absent on this machine)")
    return path


@pytest.fixture(autouse=True)
def _private_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("VINSPECT_CACHE", str(tmp_path_factory.getbasetemp() / "feature-cache"))


@pytest.fixture(scope="session")
def neu_small(tmp_path_factory) -> Path:
    """A real subset of NEU: 3 classes x 10 images."""
    src = need(NEU)
    dst = tmp_path_factory.mktemp("neu_small")
    for cls in ("crazing", "patches", "scratches"):
        (dst / cls).mkdir()
        for p in sorted((src / cls).glob("*.jpg"))[:10]:
            shutil.copy(p, dst / cls / p.name)
    return dst


def draw_class_images(folder: Path, kind: str, n: int, seed: int = 0, size: int = 48) -> None:
    """Honestly generated texture images: 'stripes' (horizontal bands) or 'spots' (bright blobs) on noise."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = rng.normal(110, 12, (size, size))
        if kind == "stripes":
            period = rng.integers(6, 12)
            img += 50 * (np.sin(2 * np.pi * (yy + rng.integers(0, period)) / period) > 0)
        else:
            for _ in range(rng.integers(3, 7)):
                cy, cx, r = rng.integers(5, size - 5), rng.integers(5, size - 5), rng.integers(2, 5)
                img[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] += 90
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8), "L").save(folder / f"{kind}_{i:03d}.png")


@pytest.fixture()
def generated(tmp_path) -> Path:
    """Two generated classes, 12 images each (used where real data is not the point)."""
    root = tmp_path / "generated"
    draw_class_images(root / "spots", "spots", 12, seed=1)
    draw_class_images(root / "stripes", "stripes", 12, seed=2)
    return root


def add_bad_files(root: Path, cls: str) -> list[str]:
    """A truncated JPEG, a text file and a zero-byte PNG in class ``cls``; returns their relative paths."""
    from PIL import Image

    d = root / cls
    good = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    full = d / "_full.jpg"
    good.save(full, quality=90)
    data = full.read_bytes()
    full.unlink()
    (d / "corrupt.jpg").write_bytes(data[: len(data) // 2])
    (d / "notes.txt").write_text("operator notes, not an image\n")
    (d / "empty.png").write_bytes(b"")
    return [f"{cls}/corrupt.jpg", f"{cls}/notes.txt", f"{cls}/empty.png"]
