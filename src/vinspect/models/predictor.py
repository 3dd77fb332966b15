"""One predictor protocol for every kind of model.

:class:`Predictor` is the base class: decoding exactly as at training time (the bundle's preprocessing),
streaming prediction over files and folders with a progress bar, explanations and ONNX export.  Each kind of
model (``head``, ``cnn``, ``patchcore`` ...) is one subclass in ``vinspect/models/<module>.py``, registered
with :func:`register`; :func:`load_predictor` builds the right one from a bundle folder.  Nothing else in
vinspect branches on the kind.
"""

from __future__ import annotations

import importlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.dataset import Skipped, collect_images
from ..errors import BadInputError, ImageDecodeError
from .bundle import Bundle, load_bundle

_KINDS: dict[str, type["Predictor"]] = {}


def register(kind: str):
    """Class decorator: ``@register("head")`` makes bundles of that kind load with the class."""

    def deco(cls):
        cls.kind = kind
        _KINDS[kind] = cls
        return cls

    return deco


def predictor_class(kind: str) -> type["Predictor"]:
    if kind not in _KINDS:
        from . import KINDS

        for module in KINDS:  # import lazily: a kind's module may pull in heavy libraries
            importlib.import_module(f".{module}", __package__)
            if kind in _KINDS:
                break
    if kind not in _KINDS:
        raise BadInputError(f"unknown model kind {kind!r} (known: {', '.join(sorted(known_kinds()))}); "
                            f"a newer vinspect may read it")
    return _KINDS[kind]


def known_kinds() -> list[str]:
    from . import KINDS

    for module in KINDS:
        importlib.import_module(f".{module}", __package__)
    return sorted(_KINDS)


@dataclass
class Prediction:
    """One image's answer.  ``map`` (optional) lies over the model's input grid."""

    label: str
    score: float
    probabilities: dict[str, float] | None = None
    map: np.ndarray | None = None
    extra: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        d = {"label": self.label}
        if self.probabilities is not None:
            d["probabilities"] = self.probabilities
        else:
            d["score"] = self.score
        d.update(self.extra)
        return d


@dataclass
class Explanation:
    """Where the model looked: a map in 0..1 over the original image, its peak, and how it was made."""

    map: np.ndarray
    label: str
    method: str
    score: float
    peak_xy: tuple[int, int] = (0, 0)
    info: dict = field(default_factory=dict)

    def overlay_png(self, image, max_side: int = 512, image_weight: float = 0.55) -> bytes:
        from ..explain import overlay_png

        return overlay_png(image, self.map, max_side=max_side, image_weight=image_weight)


def peak_xy(m: np.ndarray) -> tuple[int, int]:
    """[x, y] of the map's maximum (the centre of mass of the maximal pixels when several tie)."""
    ys, xs = np.nonzero(m >= m.max())
    return int(round(xs.mean())), int(round(ys.mean()))


class Predictor:
    """A loaded model of any kind.  Subclasses implement :meth:`predict_pixels` (and may override the rest)."""

    kind = "?"

    def __init__(self, bundle: Bundle, *, engine: str | None = None, weights=None, batch_size: int = 32,
                 device: str | None = None, precision: str | None = None):
        self.bundle = bundle
        self.engine = engine
        self.precision = precision
        self.weights = weights
        self.batch_size = int(batch_size)
        self.device = device
        if self.batch_size < 1:
            raise BadInputError(f"--batch-size {batch_size}: must be at least 1")

    # -- what every kind shares -----------------------------------------------------------------------

    @property
    def task(self) -> str:
        return self.bundle.task

    @property
    def classes(self) -> list[str]:
        return list(self.bundle.classes)

    @property
    def preprocessing(self):
        return self.bundle.preprocessing

    def decode(self, source) -> np.ndarray:
        """A path or bytes -> the (height, width, 3) uint8 input, exactly as at training time."""
        return self.bundle.preprocessing.decode(source)

    def describe(self) -> dict:
        """A short public description (no local paths)."""
        b = self.bundle
        return {"task": b.task, "kind": b.kind, "classes": self.classes,
                "backbone": (b.backbone or {}).get("name"), "preprocessing": b.preprocessing.as_dict(),
                "created_at": b.created_at}

    def warm_up(self) -> None:
        p = self.preprocessing
        self.predict_pixels(np.zeros((1, p.height, p.width, 3), np.uint8))

    # -- what each kind provides ----------------------------------------------------------------------

    def predict_pixels(self, pixels: np.ndarray) -> list[Prediction]:
        raise NotImplementedError

    def export_onnx(self, path) -> Path:
        raise BadInputError(f"{self.kind} models cannot be exported to ONNX yet")

    def display_scale(self, pred: Prediction) -> float | None:
        """The map value drawn as full heat, or None: each map scaled to its own range (a heatmap of where the
        evidence lies, which every image has).  Kinds whose map values mean something across images (an anomaly
        score against its threshold) override it, so that a normal part does not look as hot as a defective one."""
        return None

    def map_to_unit(self, m: np.ndarray, pred: Prediction) -> np.ndarray:
        """A map scaled to 0..1 for display (see :meth:`display_scale`)."""
        scale = self.display_scale(pred)
        if scale:
            return np.clip(m / scale, 0, 1).astype(np.float32)
        lo, hi = float(m.min()), float(m.max())
        return ((m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)).astype(np.float32)

    def explanation_target(self, pixels: np.ndarray, label: str | None) -> tuple[Prediction, int]:
        """(the prediction for one input, the index of the class to explain: ``label``, else the predicted one)."""
        if label is not None and label not in self.classes:
            raise BadInputError(f"label {label!r} is not a class of the model")
        pred = self.predict_pixels(pixels[None])[0]
        return pred, self.classes.index(label or pred.label)

    def explain_pixels(self, pixels: np.ndarray, label: str | None = None) -> tuple[np.ndarray, Prediction, dict]:
        """(map over the input grid, the prediction, facts); default: the prediction's own map."""
        pred = self.predict_pixels(pixels[None])[0]
        if pred.map is None:
            raise BadInputError(f"{self.kind} models give no map to explain with")
        return pred.map, pred, {"method": "prediction-map"}

    # -- built on the above ---------------------------------------------------------------------------

    def explain(self, source, label: str | None = None) -> Explanation:
        """The heatmap of one image (a path or bytes) over the original image, with its peak."""
        from ..data.decode import open_image

        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
        img = open_image(data)
        pixels = self.decode(data)
        grid, pred, info = self.explain_pixels(pixels, label)
        m = self.map_to_unit(self.preprocessing.to_original(grid, *img.size), pred)
        return Explanation(m, info.get("label", pred.label), info.get("method", "?"), pred.score,
                           peak_xy(m), {**info, "image_size": list(img.size)})

    def predict(self, inputs: list, progress: bool = True, on_result=None,
                workers: int | None = None) -> tuple[list[dict], list[Skipped]]:
        """Rows ``{path, label, ...}`` for every decodable image in ``inputs`` (files and folders, recursively).

        Decoding runs in threads one batch ahead of the model; ``on_result(path, prediction)`` sees each
        :class:`Prediction` (with its map) as it comes."""
        from tqdm.auto import tqdm

        paths, skipped = collect_images(inputs)
        if not paths:
            raise BadInputError("no image files to predict (" + ", ".join(map(str, inputs)) + ")")
        rows: list[dict] = []

        def dec(p):
            try:
                return self.decode(p)
            except ImageDecodeError as e:
                return e.reason

        step = self.batch_size
        chunks = [paths[i:i + step] for i in range(0, len(paths), step)]
        with ThreadPoolExecutor(workers or max(1, min(4, os.cpu_count() or 1))) as pool, \
                tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
            pending = [pool.submit(dec, p) for p in chunks[0]] if chunks else []
            for k, chunk in enumerate(chunks):
                decoded = [f.result() for f in pending]
                pending = [pool.submit(dec, p) for p in chunks[k + 1]] if k + 1 < len(chunks) else []
                ok = [(p, a) for p, a in zip(chunk, decoded) if isinstance(a, np.ndarray)]
                skipped += [Skipped(str(p), a) for p, a in zip(chunk, decoded) if not isinstance(a, np.ndarray)]
                if ok:
                    preds = self.predict_pixels(np.stack([a for _, a in ok]))
                    for (p, _), pr in zip(ok, preds):
                        rows.append({"path": str(p), **pr.as_dict()})
                        if on_result is not None:
                            on_result(p, pr)
                bar.update(len(chunk))
        return rows, skipped


def load_predictor(directory, **runtime) -> Predictor:
    """The predictor of the bundle in ``directory`` (any task), built for ``runtime`` (engine, weights ...)."""
    bundle = directory if isinstance(directory, Bundle) else load_bundle(directory)
    return predictor_class(bundle.kind)(bundle, **runtime)
