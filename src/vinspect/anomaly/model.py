"""An anomaly model: the patch-feature network, a method (PatchCore or PaDiM), map post-processing and the
decision threshold.  Fitting and scoring take decoded pixels or cached patch features."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import BadInputError
from .defaults import DEFAULTS, IMAGE_SCORES, METHODS  # noqa: F401 - the defaults live in a module without torch
from .features import InputSpec, build_feature_net, extract
from .maps import to_input_maps, top_mean
from .padim import Padim
from .patchcore import PatchCore

class AnomalyModel:
    def __init__(self, method: str = "patchcore", spec: InputSpec | None = None, backbone: str | None = None,
                 layers: list[str] | None = None, local: int | None = None, sigma: float | None = None,
                 image_score: str | None = None, params: dict | None = None, weights=None,
                 random_init: bool = False, seed: int = 0, top_fraction: float | None = None,
                 border: str | None = None):
        if method not in METHODS:
            raise BadInputError(f"--method {method!r}: use one of {', '.join(METHODS)}")
        self.method = method
        self.backbone = backbone or DEFAULTS["backbone"]
        self.layers = list(layers or DEFAULTS["layers"][method])
        self.local = int(DEFAULTS["local"] if local is None else local)
        self.border = border or DEFAULTS["border"]
        self.sigma = float(DEFAULTS["sigma"] if sigma is None else sigma)
        self.image_score = image_score or DEFAULTS["image_score"]
        if self.image_score not in IMAGE_SCORES:
            raise BadInputError(f"image score {self.image_score!r}: use one of {', '.join(IMAGE_SCORES)}")
        self.top_fraction = float(DEFAULTS["top_fraction"] if top_fraction is None else top_fraction)
        if not 0 < self.top_fraction <= 1:
            raise BadInputError(f"top fraction {self.top_fraction}: must be in (0, 1]")
        self.params = dict(params or {})
        self.seed = seed
        self.weights = weights
        self.random_init = random_init
        self._net = None
        self.loaded = None
        self.spec = spec or input_spec(self.backbone)
        self.threshold: float | None = None
        self.core = self._new_core()

    def _new_core(self):
        if self.method == "patchcore":
            p = {k: self.params[k] for k in ("coreset_ratio", "max_bank", "min_bank", "projection", "neighbours")
                 if k in self.params}
            p.setdefault("coreset_ratio", DEFAULTS["coreset_ratio"])
            p.setdefault("max_bank", DEFAULTS["max_bank"])
            return PatchCore(**p, seed=self.seed)
        p = {k: self.params[k] for k in ("dims", "eps") if k in self.params}
        return Padim(**p, seed=self.seed)

    @property
    def net(self):
        if self._net is None:
            self._net, self.loaded = build_feature_net(self.backbone, self.layers, self.local, self.weights,
                                                       self.random_init, self.border)
        return self._net

    def features(self, pixels: np.ndarray, progress: bool = False) -> torch.Tensor:
        return extract(self.net, pixels, progress=progress)

    def fit_features(self, feats: torch.Tensor, progress: bool = False) -> "AnomalyModel":
        self.core = self._new_core()
        self.core.fit(feats, progress=progress)
        return self

    def extend_features(self, all_feats: torch.Tensor, new: torch.Tensor, progress: bool = False) -> "AnomalyModel":
        """Add the images ``new`` (rows of ``all_feats``) to a fitted model: PatchCore continues its coreset
        from the current bank over their patches; PaDiM refits its Gaussians on ``all_feats``."""
        if self.method == "patchcore":
            self.core.extend(all_feats[new], progress=progress)
        else:
            self.fit_features(all_feats, progress)
        return self

    def score_features(self, feats: torch.Tensor, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """-> (maps (N, height, width) float32 over the input grid, image scores (N,))."""
        maps, scores = [], []
        for i in range(0, len(feats), batch):
            patch, s = self.core.score(feats[i:i + batch])
            m = to_input_maps(patch, self.spec.height, self.spec.width, self.sigma)
            if self.image_score == "map_max":
                s = m.flatten(1).max(1).values
            elif self.image_score == "topk":
                s = top_mean(patch, self.top_fraction)
            maps.append(m.numpy().astype(np.float32))
            scores.append(s.float().numpy())
        return np.concatenate(maps), np.concatenate(scores).astype(np.float64)

    def fit(self, pixels: np.ndarray, progress: bool = False) -> "AnomalyModel":
        return self.fit_features(self.features(pixels, progress), progress)

    def score(self, pixels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.score_features(self.features(pixels))

    # -- persistence ----------------------------------------------------------------------------------

    def config(self) -> dict:
        return {"method": self.method, "layers": self.layers, "local": self.local, "border": self.border,
                "sigma": self.sigma,
                "image_score": self.image_score, "top_fraction": self.top_fraction, "threshold": self.threshold,
                "params": self.core.config(),
                "feature_grid": None}

    def state(self) -> dict[str, torch.Tensor]:
        if self.method == "patchcore":
            return {"memory_bank": self.core.bank.contiguous()}
        c = self.core
        return {"channels": c.channels.contiguous(), "mean": c.mean.contiguous(), "inv_cov": c.inv_cov.contiguous(),
                "grid": torch.tensor(c.shape)}

    @classmethod
    def from_state(cls, config: dict, spec: InputSpec, backbone: str, tensors: dict, weights=None) -> "AnomalyModel":
        params = dict(config.get("params", {}))
        seed = int(params.pop("seed", 0))
        params.pop("image_score", None)
        m = cls(config["method"], spec, backbone, config["layers"], config["local"], config["sigma"],
                config.get("image_score"), params, weights=weights, seed=seed,
                top_fraction=config.get("top_fraction"),
                border=config.get("border", "valid"))  # bundles from before the border setting: "valid"
        if m.method == "patchcore":
            m.core.set_bank(tensors["memory_bank"])
        else:
            m.core.set_state(tensors["channels"], tensors["mean"], tensors["inv_cov"], tensors["grid"].tolist())
        m.threshold = config.get("threshold")
        return m


def input_spec(backbone: str, size: tuple[int, int] | None = None, resize: str | None = None) -> InputSpec:
    """The backbone's normalisation with ``size`` = (height, width) (default: square, the default long side)."""
    from ..backbones.registry import get_spec

    pre = get_spec(backbone).preprocessing
    h, w = size or (DEFAULTS["long_side"], DEFAULTS["long_side"])
    return InputSpec(int(w), int(h), resize or DEFAULTS["resize"], pre.interpolation, tuple(pre.mean), tuple(pre.std))


def auto_size(paths, long_side: int | None = None, multiple: int = 32) -> tuple[int, int]:
    """(height, width) with the median aspect ratio of ``paths`` (image headers only), the long side
    ``long_side`` and both sides multiples of ``multiple``: an aspect-preserving input for the data's typical
    shape (letterboxed for the others), so defects are neither squashed nor lost in padding."""
    from PIL import Image

    long_side = int(long_side or DEFAULTS["long_side"])
    ratios = []
    for p in list(paths)[:2000]:
        try:
            with Image.open(p) as im:
                w, h = im.size
            ratios.append(w / h)
        except Exception:  # noqa: BLE001 - undecodable files are reported by the decoder
            continue
    r = float(np.median(ratios)) if ratios else 1.0
    if r >= 1:
        w, h = long_side, max(multiple, int(round(long_side / r / multiple)) * multiple)
    else:
        h, w = long_side, max(multiple, int(round(long_side * r / multiple)) * multiple)
    return h, w


def quantile_threshold(normal_scores: np.ndarray, q: float) -> float:
    """The decision threshold from held-out normal images only: their ``q`` quantile (linear interpolation)."""
    if not 0 < q < 1:
        raise BadInputError(f"--threshold-quantile {q}: must be between 0 and 1")
    return float(np.quantile(np.asarray(normal_scores, dtype=np.float64), q))


def calibrated_threshold(labels, scores) -> float:
    """With labelled images (1 = anomalous): the threshold of the best F1 (midpoint between adjacent scores)."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(labels, int)
    s = np.asarray(scores, np.float64)
    if y.min() == y.max():
        raise BadInputError("--calibrate needs both normal and anomalous images")
    p, r, t = precision_recall_curve(y, s)
    f1 = 2 * p * r / np.maximum(p + r, 1e-12)
    i = int(np.argmax(f1[:-1]))
    lower = s[s < t[i]]
    return float((t[i] + lower.max()) / 2) if len(lower) else float(t[i]) - 1e-9
