"""The service's heatmaps: the predictor's explanation (Grad-CAM, channel ablation, an anomaly map, a mask) of
an inspected image, drawn as a PNG overlay.  One heatmap at a time (the app runs them in one thread)."""

from __future__ import annotations

import threading

import numpy as np

from ..errors import BadInputError
from ..explain.gradcam import HeatmapUnavailable
from .inference import InferenceService

__all__ = ["HeatmapMaker", "HeatmapUnavailable"]


class HeatmapMaker:
    def __init__(self, service: InferenceService, max_side: int = 512, image_weight: float = 0.55):
        self.service = service
        self.predictor = service.predictor
        self.max_side = int(max_side)
        self.image_weight = float(image_weight)
        self._lock = threading.Lock()
        how = getattr(self.predictor, "explain_method", None)
        self.method, self.reason = how() if how else ("prediction-map", "the model's own map")

    def cam(self, pixels: np.ndarray, class_index: int) -> tuple[np.ndarray, dict]:
        """(map over the model input in 0..1, facts) for ``class_index``."""
        with self._lock:
            try:
                m, _, info = self.predictor.explain_pixels(pixels, self.service.classes[class_index])
            except BadInputError as e:
                raise HeatmapUnavailable(str(e)) from None
        return m, info

    def render(self, data: bytes, label: str) -> tuple[bytes, dict]:
        """The PNG overlay of the heatmap for ``label`` on the image in ``data`` (original aspect ratio)."""
        if label not in self.service.classes:
            raise HeatmapUnavailable(f"label {label!r} is not a class of the model")
        with self._lock:
            try:
                e = self.predictor.explain(data, label)
            except BadInputError as err:
                raise HeatmapUnavailable(str(err)) from None
        png = e.overlay_png(data, max_side=self.max_side, image_weight=self.image_weight)
        from PIL import Image
        import io

        w, h = Image.open(io.BytesIO(png)).size
        info = {**{k: v for k, v in e.info.items() if k in ("probability", "map_size", "logit_mode", "why")},
                "method": e.method, "label": e.label, "class_index": self.service.classes.index(e.label),
                "peak_xy": list(e.peak_xy), "width": w, "height": h}
        return png, info
