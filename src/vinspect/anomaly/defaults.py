"""The anomaly models' methods and default settings, in a module without torch (the CLI reads them to build
its help)."""

from __future__ import annotations

from ..backbones.registry import DEFAULT_BACKBONE

METHODS = ("patchcore", "padim")

# Defaults chosen on development data (ELPV, insert-wear, and magnetic-tile splits with seeds 100-102, never the
# benchmark's seeds 0-4): see benchmarks/results/anomaly-dev.md.
DEFAULTS = {
    "backbone": DEFAULT_BACKBONE,
    "layers": {"patchcore": ["blocks.2", "blocks.4"], "padim": ["blocks.1", "blocks.2", "blocks.3"]},
    "local": 3,  # PatchCore's 3x3 neighbourhood aggregation
    "long_side": 224,  # input: squash to long_side x long_side (letterbox: the short side from the median aspect)
    "resize": "squash",  # the whole image stretched to the square input (PatchCore's and anomalib's practice)
    "sigma": 4.0,  # Gaussian blur of the map, input pixels (PatchCore's)
    "image_score": "method",  # PatchCore: re-weighted nearest-neighbour distance; PaDiM: the largest patch
    "coreset_ratio": 0.01,
    "max_bank": 20000,
    "threshold_quantile": 0.99,
    "threshold_folds": 5,  # threshold from 5-fold out-of-fold scores of the normal images; the model uses them all
    "holdout": 0.15,  # the older rule (holdout given, folds not): 15 % held out of a first fit, then added
}
