"""The anomaly models' methods and default settings, in a module without torch (the CLI reads them to build
its help)."""

from __future__ import annotations

from ..backbones.registry import DEFAULT_BACKBONE

METHODS = ("patchcore", "padim")
IMAGE_SCORES = ("method", "topk", "map_max")

# Defaults chosen on development data (ELPV, insert-wear, and magnetic-tile splits with seeds 100-102, never the
# benchmark's seeds 0-4): see benchmarks/results/anomaly-dev.md.
DEFAULTS = {
    "backbone": DEFAULT_BACKBONE,
    "layers": {"patchcore": ["blocks.2", "blocks.4"], "padim": ["blocks.1", "blocks.2", "blocks.3"]},
    "local": 3,  # PatchCore's 3x3 neighbourhood aggregation
    "border": "zeros",  # ... counting the zero padding at the map's border, as PatchCore and anomalib do
    "long_side": 224,  # input: squash to long_side x long_side (letterbox: the short side from the median aspect)
    "resize": "squash",  # the whole image stretched to the square input (PatchCore's and anomalib's practice)
    "sigma": 8.0,  # Gaussian blur of the map, input pixels: the stride of the finest feature layer (PatchCore: 4)
    # the image score: "method" = PatchCore's re-weighted worst patch / PaDiM's largest patch; "topk" = the mean
    # of the top_fraction highest patch scores; "map_max" = the maximum of the blurred map
    "image_score": "method",
    "top_fraction": 0.02,  # topk: 16 of the 28 x 28 patches of the default input
    "coreset_ratio": 0.1,  # PatchCore's and anomalib's default (at most max_bank)
    "max_bank": 20000,
    "threshold_quantile": 0.99,
    "threshold_folds": 5,  # threshold from 5-fold out-of-fold scores of the normal images; the model uses them all
    "holdout": 0.15,  # the older rule (holdout given, folds not): 15 % held out of a first fit, then added
}
