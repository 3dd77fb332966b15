"""Predictors of the anomaly kinds ``patchcore`` and ``padim`` (task ``anomaly``, classes normal/anomalous).

Bundle files: ``anomaly.safetensors`` (PatchCore: the float16 memory bank; PaDiM: the kept channels, the
per-position means and float16 inverse covariances).  ``config`` holds the method's settings and the threshold.
``export_onnx`` writes the feature part only (uint8 NHWC pixels -> locally aware patch features); the
nearest-neighbour search in the memory bank (PatchCore) or the Mahalanobis distances (PaDiM), the map blur and
the threshold stay in Python.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import BadInputError
from .predictor import Prediction, Predictor, register

STATE_FILE = "anomaly.safetensors"
CLASSES = ["normal", "anomalous"]


def _to_preprocessing(spec):
    from .bundle import Preprocessing

    return Preprocessing(width=int(spec.width), height=int(spec.height), resize=spec.resize, colour="rgb",
                         mean=tuple(spec.mean), std=tuple(spec.std), interpolation=spec.interpolation)


def _to_spec(pre):
    from ..anomaly.features import InputSpec

    return InputSpec(pre.width, pre.height, pre.resize, pre.interpolation, tuple(pre.mean), tuple(pre.std))


def save_anomaly_bundle(directory, model, summary: dict, metrics: dict | None = None) -> Path:
    """Write a trained :class:`vinspect.anomaly.model.AnomalyModel` as a bundle folder."""
    from safetensors.torch import save_file

    from .bundle import Bundle, save_bundle

    model.net  # noqa: B018 - builds the backbone (records the weights actually used)
    lb = model.loaded
    backbone = {"name": model.backbone, "arch": lb.spec.arch, "layers": list(model.layers),
                "weights_sha256": lb.weights_sha256, "weights_path": lb.weights_path,
                "weights_source": lb.weights_source, "random_init": lb.weights_path is None}
    bundle = Bundle(task="anomaly", kind=model.method, classes=list(CLASSES),
                    preprocessing=_to_preprocessing(model.spec), backbone=backbone, config=model.config(),
                    metrics=dict(metrics or {}), training=summary)
    state = {k: v.contiguous() for k, v in model.state().items()}
    return save_bundle(directory, bundle, {STATE_FILE: lambda p: save_file(state, str(p))})


@register("patchcore")
class AnomalyPredictor(Predictor):
    """PatchCore (and, as a subclass, PaDiM): score, verdict against the threshold, and the anomaly map."""

    def __init__(self, bundle, **runtime):
        super().__init__(bundle, **runtime)
        from safetensors.torch import load_file

        from ..anomaly.model import AnomalyModel

        if bundle.task != "anomaly":
            raise BadInputError(f"{bundle.path}: task {bundle.task!r}, expected anomaly")
        try:
            tensors = load_file(str(bundle.file(STATE_FILE)))
        except (OSError, ValueError) as e:
            raise BadInputError(f"{bundle.file(STATE_FILE)}: unreadable ({e})") from None
        bb = bundle.backbone or {}
        weights = self.weights
        if weights is None and bb.get("weights_source") == "file" and bb.get("weights_path"):
            weights = bb["weights_path"]
        self.model = AnomalyModel.from_state(bundle.config, _to_spec(bundle.preprocessing), bb.get("name"),
                                             tensors, weights=weights)
        if bb.get("weights_sha256") and not bb.get("random_init"):
            lb = self.model.net and self.model.loaded
            if lb.weights_sha256 != bb["weights_sha256"]:
                raise BadInputError(f"{bundle.path}: the backbone weights on this machine ({lb.weights_path}) differ "
                                    "from the ones the model was trained with (sha256); pass the original file "
                                    "with --weights")

    @property
    def threshold(self) -> float | None:
        return self.model.threshold

    def display_scale(self, pred: Prediction) -> float | None:
        """Anomaly maps are drawn against the threshold: full heat at twice it, so a normal part stays cool."""
        t = pred.extra.get("threshold")
        return 2.0 * t if t else None

    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        if len(pixels) == 0:
            return []
        maps, scores = self.model.score(np.asarray(pixels, np.uint8))
        t = self.model.threshold
        out = []
        for m, s in zip(maps, scores):
            label = "anomalous" if t is not None and s > t else "normal"
            out.append(Prediction(label=label, score=float(s), map=m.astype(np.float32),
                                  extra={"threshold": None if t is None else float(t)}))
        return out

    def export_onnx(self, path) -> Path:
        """The feature part only: uint8 (N, H, W, 3) -> float (N, C, h, w) patch features.  The memory-bank
        search / Mahalanobis distance, the blur and the threshold stay in Python (vinspect.anomaly)."""
        import torch

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        pre = self.preprocessing
        dummy = torch.zeros(1, pre.height, pre.width, 3, dtype=torch.uint8)
        torch.onnx.export(self.model.net, (dummy,), str(path), input_names=["images"], output_names=["patch_features"],
                          dynamic_axes={"images": {0: "batch"}, "patch_features": {0: "batch"}}, opset_version=17,
                          dynamo=False)
        return path


@register("padim")
class PadimPredictor(AnomalyPredictor):
    pass
