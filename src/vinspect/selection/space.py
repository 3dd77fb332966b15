"""The search space of the automatic model selection (``--auto``), fixed in code and documented in the README.

It was written down from what is usual for frozen ImageNet features, before looking at any benchmark figure,
and is not tuned to any data set:

* **features** (one feature variant = layer(s) x pooling x resolution):

  - layers: the backbone's default layer ``L`` (the last stage, e.g. ``blocks.6``), the two stages before it
    (``blocks.5``, ``blocks.4``) and the concatenations ``L-1+L`` and ``L-2+L-1+L`` (each layer pooled, the
    vectors joined);
  - pooling: ``avg``, ``max``, ``avgmax`` (both, joined), ``gem`` (generalised mean, p = 3);
  - resolution: the backbone's input squashed (224 px for the default backbone); for images that are not
    square, the same size letterboxed (aspect kept, padded); and when the images are larger than the input,
    letterboxed at their native size (the median of their longer side, rounded to a multiple of 32) up to
    ``NATIVE_CAP`` = 448 px;
  - tiles, for images much larger than the input (median longer side above ``TILE_FROM`` = 2 input sides, where
    the native letterbox above is capped): the image squashed onto a grid of input-sized tiles at about its
    native scale (rows and columns from the median height and width, at most ``MAX_SEARCH_TILES`` = 16 tiles,
    scaled down to fit), each tile through the network, and the tiles' pooled features reduced by ``max`` (the
    strongest local evidence: a small defect in one tile) or ``mean`` over the tiles.

* **heads** (scikit-learn, behind a standard scaler; :mod:`vinspect.heads.factory`): logistic regression with
  C in {0.1, 1, 10}; linear SVM with C in {0.1, 1}; RBF SVM with C in {1, 10, 100} x gamma in {1, 1/4} x
  "scale" (1/feature dimension); k nearest neighbours with k in {1, 5, 15}; a random forest of 100 trees;
  each but kNN with and without balanced class weights.

The default configuration of ``vinspect evaluate`` (``blocks.6``, ``avg``, 224 px squash, logistic regression
C=1) is always the first candidate.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from ..heads.factory import MIN_TRAIN_PER_CLASS, make_head

BASE_POOLS = ("avg", "max", "gem")  # what one extraction pass computes per layer; avgmax is avg and max joined
POOLS = ("avg", "max", "avgmax", "gem")
NATIVE_CAP = 448
NATIVE_STEP = 32
NON_SQUARE = 1.15  # median aspect ratio (long / short side) above which images count as not square
TILE_FROM = 2  # tiles when the median longer side exceeds this many input sides (the native letterbox is capped)
MAX_SEARCH_TILES = 16
TILE_REDUCE = ("max", "mean")


@dataclass(frozen=True)
class FeatureVariant:
    """One way to turn an image into a feature vector: ``layer`` (several joined by "+"), ``pool``, ``size``
    (square input side) and ``resize`` (squash, letterbox, or tiles: the image squashed onto ``grid`` = (rows,
    cols) tiles of ``size`` px, their features reduced by ``tiles``, max or mean)."""

    layer: str
    pool: str
    size: int
    resize: str
    grid: tuple[int, int] | None = None
    tiles: str | None = None

    def __post_init__(self):
        if self.grid is not None:  # a list when read back from JSON
            object.__setattr__(self, "grid", (int(self.grid[0]), int(self.grid[1])))
        if (self.resize == "tiles") != (self.grid is not None and self.tiles in TILE_REDUCE):
            raise ValueError(f"feature variant {self.resize!r}: tiles need a grid and max or mean, and only tiles")

    @property
    def name(self) -> str:
        if self.grid:
            return f"{self.layer}/{self.pool}/{self.size}-tiles{self.grid[0]}x{self.grid[1]}-{self.tiles}"
        return f"{self.layer}/{self.pool}/{self.size}-{self.resize}"

    @property
    def layers(self) -> list[str]:
        return self.layer.split("+")

    @property
    def pass_key(self) -> tuple:
        """The variants with one key come out of one extraction pass (max and mean over tiles included)."""
        return self.size, self.resize, self.grid

    def extractor_kwargs(self) -> dict:
        """The :class:`vinspect.features.Extractor` settings of this variant."""
        return {"layer": self.layer, "pool": self.pool, "image_size": self.size,
                "resize": "squash" if self.grid else self.resize,
                "tiles": (*self.grid, self.tiles) if self.grid else None}

    def as_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items() if v is not None}


@dataclass(frozen=True)
class HeadConfig:
    """A head and its hyper-parameters.  ``gamma_scale``: the RBF gamma as a multiple of 1/feature dimension
    (scikit-learn's "scale" on standardised features)."""

    name: str
    C: float | None = None
    gamma_scale: float | None = None
    n_neighbors: int | None = None
    class_weight: str | None = None

    @property
    def label(self) -> str:
        parts = [self.name]
        if self.C is not None:
            parts.append(f"C={self.C:g}")
        if self.gamma_scale is not None:
            parts.append(f"gamma={self.gamma_scale:g}/d")
        if self.n_neighbors is not None:
            parts.append(f"k={self.n_neighbors}")
        if self.class_weight:
            parts.append(self.class_weight)
        return " ".join(parts)

    def make(self, dim: int, seed: int = 0):
        gamma = None if self.gamma_scale is None else self.gamma_scale / max(int(dim), 1)
        return make_head(self.name, self.class_weight, seed, C=self.C, gamma=gamma, n_neighbors=self.n_neighbors)

    def bundle_config(self, dim: int, seed: int = 0) -> dict:
        """What a bundle records about this head (``config.head``)."""
        d = {"name": self.name, "class_weight": self.class_weight, "seed": seed}
        if self.C is not None:
            d["C"] = self.C
        if self.gamma_scale is not None:
            d["gamma"] = self.gamma_scale / max(int(dim), 1)
        if self.n_neighbors is not None:
            d["n_neighbors"] = self.n_neighbors
        return d

    @property
    def min_train(self) -> int:
        return MIN_TRAIN_PER_CLASS[self.name]

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


REFERENCE_HEAD = HeadConfig("logreg", C=1.0)  # the default head; stage 1 compares feature variants with it


def head_grid() -> list[HeadConfig]:
    """Every head candidate, the default (logistic regression C=1) first."""
    out: list[HeadConfig] = []
    for cw in (None, "balanced"):
        out += [HeadConfig("logreg", C=c, class_weight=cw) for c in (1.0, 0.1, 10.0)]
        out += [HeadConfig("svm-linear", C=c, class_weight=cw) for c in (1.0, 0.1)]
        out += [HeadConfig("svm-rbf", C=c, gamma_scale=g, class_weight=cw) for c in (10.0, 1.0, 100.0)
                for g in (1.0, 0.25)]
        out.append(HeadConfig("rf", class_weight=cw))
    out += [HeadConfig("knn", n_neighbors=k) for k in (5, 1, 15)]
    return out


@dataclass(frozen=True)
class Candidate:
    variant: FeatureVariant
    head: HeadConfig

    @property
    def label(self) -> str:
        return f"{self.variant.name} + {self.head.label}"

    def as_dict(self) -> dict:
        return {"features": self.variant.as_dict(), "head": self.head.as_dict(), "label": self.label}


def stage_layers(default_layer: str) -> list[str]:
    """The default layer and the (up to) two stages before it, earliest first: ``blocks.6`` ->
    [blocks.4, blocks.5, blocks.6]; a layer whose name does not end in a stage number stands alone."""
    m = re.fullmatch(r"(.*\.)(\d+)", default_layer)
    if not m:
        return [default_layer]
    n = int(m.group(2))
    return [f"{m.group(1)}{i}" for i in range(max(0, n - 2), n + 1)]


def layer_sets(stages: list[str]) -> list[str]:
    """Single stages (last first) and the concatenations of the last two and last three."""
    last = stages[-1]
    out = [last] + [s for s in reversed(stages[:-1])]
    if len(stages) >= 2:
        out.append("+".join(stages[-2:]))
    if len(stages) >= 3:
        out.append("+".join(stages[-3:]))
    return out


def image_sizes(paths) -> list[tuple[int, int]]:
    """(width, height) of each image from its header (no pixel decoded); unreadable files are left out."""
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(Path(p)) as im:
                out.append((int(im.size[0]), int(im.size[1])))
        except Exception:  # noqa: BLE001 - the extraction names unreadable files
            continue
    return out


def resolutions(sizes: list[tuple[int, int]], input_size: int, cap: int = NATIVE_CAP) -> list[tuple]:
    """(side, resize, grid) triples: the backbone's squash; letterbox at that size for non-square images;
    letterbox at the images' native size (median longer side, multiple of 32, at most ``cap``) when that is
    larger; tiles (see :func:`tile_grid`) for images much larger than the input.  ``grid`` is None but for
    tiles."""
    out: list[tuple] = [(input_size, "squash", None)]
    if not sizes:
        return out
    long_side = statistics.median(max(w, h) for w, h in sizes)
    aspect = statistics.median(max(w, h) / max(1, min(w, h)) for w, h in sizes)
    if aspect > NON_SQUARE:
        out.append((input_size, "letterbox", None))
    native = int(min(cap, round(long_side / NATIVE_STEP) * NATIVE_STEP))
    if native > input_size:
        out.append((native, "letterbox", None))
    grid = tile_grid(sizes, input_size)
    if grid is not None:
        out.append((input_size, "tiles", grid))
    return out


def tile_grid(sizes: list[tuple[int, int]], input_size: int, max_tiles: int = MAX_SEARCH_TILES) -> tuple | None:
    """(rows, cols) of input-sized tiles covering the median image at about its native scale (scaled down until
    at most ``max_tiles``), or None when the median longer side is at most ``TILE_FROM`` input sides."""
    if not sizes:
        return None
    w = statistics.median(s[0] for s in sizes)
    h = statistics.median(s[1] for s in sizes)
    if max(w, h) <= TILE_FROM * input_size:
        return None
    scale = 1.0
    while True:
        rows, cols = max(1, round(h * scale / input_size)), max(1, round(w * scale / input_size))
        if rows * cols <= max_tiles:
            return rows, cols
        scale *= 0.9


def feature_variants(default_layer: str, res: list[tuple]) -> list[FeatureVariant]:
    """Every feature variant, the default (default layer, avg, the backbone's squash) first."""
    sets = layer_sets(stage_layers(default_layer))
    out = []
    for size, resize, *grid in res:
        grid = grid[0] if grid else None
        for layer in sets:
            for pool in POOLS:
                if resize == "tiles":
                    out += [FeatureVariant(layer, pool, size, resize, grid, t) for t in TILE_REDUCE]
                else:
                    out.append(FeatureVariant(layer, pool, size, resize))
    return out


def describe_space(variants: list[FeatureVariant], heads: list[HeadConfig]) -> dict:
    """The space as recorded in results.json and model.json."""
    return {
        "layers": sorted({v.layer for v in variants}, key=lambda s: (s.count("+"), s)),
        "pooling": list(POOLS),
        "resolutions": sorted({f"{v.size}-{v.resize}" if not v.grid else
                               f"{v.size}-tiles{v.grid[0]}x{v.grid[1]}" for v in variants}),
        "feature_variants": len(variants),
        "heads": [h.label for h in heads],
        "tiles": (sorted({f"{v.grid[0]}x{v.grid[1]} tiles of {v.size} px, {v.tiles} over tiles" for v in variants
                          if v.grid}) or "not searched: the images are not much larger than the input"),
    }
