"""Long strips assembled from a texture set's real images: a generated set of images much larger than a network's
input whose evidence is small and local (one cell of another texture in a strip), to test and measure tiles.

Each strip is ``rows`` x ``cols`` cells, each cell a real image of the ``base`` class; a ``defect`` strip has one
cell, at a random place, replaced by a real image of one of the ``defects`` classes.  Built from NEU (200 px
cells) with the defaults: 400 x 1200 px strips, the defect one twelfth of the area.  Nothing is drawn by hand,
and the strips are a pure function of the source images and the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError

DEFAULT_BASE = "rolled-in_scale"
DEFAULT_DEFECTS = ("inclusion", "patches", "pitted_surface", "scratches")


def make_strips(src, dst, per_class: int = 100, rows: int = 2, cols: int = 6, base: str = DEFAULT_BASE,
                defects=DEFAULT_DEFECTS, seed: int = 0) -> Path:
    """Write ``dst/ok/*.jpg`` and ``dst/defect/*.jpg`` (JPEG quality 95) (``per_class`` each) from ``src/<class>/*``; returns
    ``dst``.  Cells are resized to the first base image's size."""
    from PIL import Image

    src, dst = Path(src), Path(dst)
    pool = {c: sorted(p for p in (src / c).glob("*") if p.is_file()) for c in (base, *defects)}
    empty = [c for c, ps in pool.items() if not ps]
    if empty:
        raise BadInputError(f"{src}: no images of class(es) {', '.join(empty)}")
    rng = np.random.default_rng(seed)
    with Image.open(pool[base][0]) as im:
        cw, ch = im.size

    def cell(p):
        with Image.open(p) as im:
            return im.convert("RGB").resize((cw, ch), Image.Resampling.BICUBIC)

    defect_cells = [p for c in defects for p in pool[c]]
    picks = rng.permutation(len(defect_cells))
    for label in ("ok", "defect"):
        (dst / label).mkdir(parents=True, exist_ok=True)
    for i in range(per_class):
        for label in ("ok", "defect"):
            canvas = Image.new("RGB", (cols * cw, rows * ch))
            cells = rng.choice(len(pool[base]), rows * cols, replace=len(pool[base]) < rows * cols)
            for j, k in enumerate(cells):
                canvas.paste(cell(pool[base][k]), ((j % cols) * cw, (j // cols) * ch))
            if label == "defect":
                j = int(rng.integers(rows * cols))
                canvas.paste(cell(defect_cells[picks[i % len(picks)]]), ((j % cols) * cw, (j // cols) * ch))
            canvas.save(dst / label / f"{label}_{i:03d}.jpg", quality=95)
    return dst
