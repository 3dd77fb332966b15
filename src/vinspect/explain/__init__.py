"""Explanations behind one call: heatmaps (Grad-CAM, channel ablation, anomaly maps, mask probabilities) as
maps in 0..1 over the image, and their PNG overlays.  A predictor's ``explain(image)`` is the entry point
(:meth:`vinspect.models.predictor.Predictor.explain`); this package holds the machinery."""

from __future__ import annotations

import io

import numpy as np


def overlay_png(image, heat: np.ndarray, max_side: int = 512, image_weight: float = 0.55) -> bytes:
    """A PNG of ``heat`` (0..1, any size) in the jet colour map over ``image`` (PIL image, path or bytes),
    shown at most ``max_side`` pixels wide or high, original aspect ratio."""
    from PIL import Image

    from ..data.decode import open_image

    img = image if isinstance(image, Image.Image) else open_image(image)
    disp = img.convert("RGB").copy()
    disp.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
    m = np.asarray(Image.fromarray(np.asarray(heat, np.float32)).resize(disp.size, Image.Resampling.BILINEAR))
    overlay = colour_overlay(np.asarray(disp, np.float32) / 255.0, np.clip(m, 0, 1), image_weight)
    buf = io.BytesIO()
    Image.fromarray(overlay).save(buf, "PNG")
    return buf.getvalue()


def colour_overlay(rgb01: np.ndarray, heat01: np.ndarray, image_weight: float = 0.55) -> np.ndarray:
    """uint8 RGB: the jet colour map of ``heat01`` blended with ``rgb01`` (both in 0..1)."""
    from matplotlib import colormaps

    cam = colormaps["jet"](heat01)[..., :3]
    out = image_weight * rgb01 + (1 - image_weight) * cam
    return np.uint8(np.clip(out / max(out.max(), 1e-8), 0, 1) * 255)
