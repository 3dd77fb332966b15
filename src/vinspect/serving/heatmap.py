"""Heatmaps: where the model looked for its verdict, as a PNG overlay on the inspected image.

Two methods, chosen by the head of the bundle:

``grad-cam`` (logistic-regression heads): the bundle's StandardScaler + LogisticRegression is rebuilt as an
exact differentiable torch layer (``W' = coef / scale``, ``b' = intercept - W' . mean``; softmax for
multinomial models, the sigmoid pair for binary ones, normalised sigmoids for one-vs-rest), checked against
scikit-learn's ``predict_proba`` to 1e-6 before use, and put behind the backbone cut at the bundle's layer
and its pooling.  Grad-CAM (the ``grad-cam`` package, ``pytorch_grad_cam.GradCAM``) then weights the
layer's channels by the mean gradient of the verdict's logit.

``ablation-cam`` (SVM, k-NN and any other head): these heads are not differentiable functions of the
features that we can rebuild exactly (k-NN is piecewise constant; multi-class SVMs vote), so Grad-CAM would
have to explain a surrogate, not the model.  Instead each channel's weight is the relative drop of the
verdict's probability when that channel is removed (Ablation-CAM, Desai & Ramaswamy, WACV 2020), computed
with the real scikit-learn head.  Because everything after the layer is pooling and the head, removing a
channel's map is exactly removing its pooled value(s), so all channels cost one ``predict_proba`` call on
C rows.  (The ``grad-cam`` package's own AblationCAM re-runs the whole network per batch of channels and
fills ablated channels of layers with negative outputs with ``min - 1e7``, far outside a scaled head's
domain; hence this direct form.)

Both give a map at the layer's resolution (7x7 for the default 224-pixel input at ``blocks.6``), min-max
scaled to 0..1 (so every map has a hot spot, even for an intact part), upsampled to the image and undone
from the letterbox padding when the model used it.  Layers without a spatial map (already pooled, or token
sequences) have no heatmap: :class:`HeatmapUnavailable`.
"""

from __future__ import annotations

import copy
import io
import threading

import numpy as np

from ..data.decode import open_image
from ..errors import VinspectError
from .inference import InferenceService


class HeatmapUnavailable(VinspectError):
    """This model (or this image) cannot have a heatmap; the message says why."""


def _torch():
    from .._torchvision_guard import ensure_torchvision

    ensure_torchvision()  # pytorch_grad_cam imports torchvision
    import torch

    return torch


def linear_head(pipeline, n_classes: int):
    """An exact torch version of a StandardScaler(s) + LogisticRegression pipeline, or ``(None, reason)``.

    Returns ``(module, mode)`` where ``module(features) -> logits`` and ``mode`` is ``softmax``, ``binary``
    or ``ovr`` (how logits become the probabilities scikit-learn reports).
    """
    torch = _torch()
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    steps = [s for _, s in pipeline.steps] if isinstance(pipeline, Pipeline) else [pipeline]
    clf, pre = steps[-1], steps[:-1]
    if not isinstance(clf, LogisticRegression):
        return None, f"head {type(clf).__name__} is not a linear model"
    if not all(isinstance(s, StandardScaler) for s in pre):
        return None, "pre-processing other than StandardScaler"
    coef = np.asarray(clf.coef_, np.float64)
    intercept = np.asarray(clf.intercept_, np.float64)
    d = coef.shape[1]
    # compose the scalers: x -> (x - m) / s, applied in order
    a, c = np.ones(d), np.zeros(d)  # x_scaled = a * x + c
    for s in pre:
        m = s.mean_ if getattr(s, "mean_", None) is not None and s.with_mean else np.zeros(d)
        sc = s.scale_ if getattr(s, "scale_", None) is not None and s.with_std else np.ones(d)
        a, c = a / sc, (c - m) / sc
    w = coef * a[None, :]
    b = intercept + coef @ c
    rng = np.random.default_rng(0)
    probe = (rng.normal(size=(64, d)) - c[None, :]) / a[None, :]  # about unit variance after scaling
    want = pipeline.predict_proba(probe)
    z = probe @ w.T + b
    modes = []
    if coef.shape[0] == 1 and n_classes == 2:
        modes.append("binary")
    else:
        modes += ["softmax", "ovr"]
    for mode in modes:
        got = _proba_np(z, mode)
        if got.shape == want.shape and np.max(np.abs(got - want)) < 1e-6:
            lin = torch.nn.Linear(d, w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w).float())
                lin.bias.copy_(torch.from_numpy(b).float())
            return _LinearHead(lin, mode), mode
    return None, "the logistic regression's probabilities could not be reproduced exactly"


def _proba_np(z: np.ndarray, mode: str) -> np.ndarray:
    if mode == "binary":
        p1 = 1 / (1 + np.exp(-z[:, 0]))
        return np.stack([1 - p1, p1], 1)
    if mode == "softmax":
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    s = 1 / (1 + np.exp(-z))
    return s / s.sum(1, keepdims=True)


def _LinearHead(lin, mode):  # noqa: N802 - a module factory (torch imported lazily)
    torch = _torch()

    class LinearHead(torch.nn.Module):
        """features -> one logit per class; softmax of the logits is scikit-learn's predict_proba."""

        def __init__(self):
            super().__init__()
            self.linear = lin
            self.mode = mode

        def forward(self, f):
            z = self.linear(f)
            if self.mode == "binary":  # p(1) = sigmoid(z) = softmax([-z/2, z/2])[1]
                return torch.cat([-z / 2, z / 2], dim=1)
            return z

        def proba(self, logits):
            if self.mode == "ovr":
                s = torch.sigmoid(logits)
                return s / s.sum(1, keepdim=True)
            return torch.softmax(logits, 1)

    return LinearHead()


def _feature_net(extractor):
    """A private torch copy of the extractor's network (hooks on it never touch the serving one)."""
    torch = _torch()
    from ..features.torch_engine import FeatureNet

    if callable(getattr(extractor, "torch_net", None)):  # the extractor's own network, copied
        fnet = copy.deepcopy(extractor.torch_net()).to("cpu")
    else:
        net = getattr(extractor.engine, "net", None) if getattr(extractor, "engine_name", "torch") == "torch" \
            else None
        if isinstance(net, FeatureNet):
            fnet = copy.deepcopy(net).to("cpu")
        else:  # build the same network in torch from the same weights
            from ..backbones.build import create_backbone

            if extractor.random_init:
                torch.manual_seed(0)  # as Extractor does
            loaded = create_backbone(extractor.backbone, extractor.weights, extractor.random_init)
            if loaded.weights_sha256 != extractor.weights_sha256:
                raise HeatmapUnavailable("the torch weights differ from the serving engine's")
            fnet = FeatureNet(loaded, extractor.layer, extractor.pool, extractor.preprocessing)
    fnet = fnet.to(memory_format=torch.contiguous_format).eval()
    fnet.requires_grad_(False)  # gradients are needed w.r.t. activations only
    return fnet


def _cam_net(fnet, head):
    torch = _torch()
    from ..features.pooling import pool

    class CamNet(torch.nn.Module):
        """float NCHW 0..255 -> normalise -> backbone to the layer -> (hook point) -> pool -> head logits."""

        def __init__(self):
            super().__init__()
            self.register_buffer("mean", fnet.mean.clone())
            self.register_buffer("std", fnet.std.clone())
            self.body = fnet.body
            self.at = torch.nn.Identity()  # Grad-CAM's target layer: the bundle's layer output
            self.pooling = fnet.pooling
            self.head = head

        def activations(self, x):
            return self.at(self.body((x - self.mean) / self.std))

        def forward(self, x):
            return self.head(pool(self.activations(x), self.pooling))

    return CamNet().eval()


class HeatmapMaker:
    """Builds its torch network on first use; one heatmap at a time (callers run it in one thread)."""

    def __init__(self, service: InferenceService, max_side: int = 512, image_weight: float = 0.55):
        self.service = service
        self.max_side = int(max_side)
        self.image_weight = float(image_weight)
        self._lock = threading.Lock()
        self._net = None
        self._mode = None
        self.method, self.reason = self._choose()

    def _choose(self) -> tuple[str, str]:
        from sklearn.linear_model import LogisticRegression

        head = self.service.bundle.head
        clf = head.steps[-1][1] if hasattr(head, "steps") else head
        q = getattr(self.service.extractor, "quantize", None)
        note = f"; drawn with the float32 network (the served backbone is {q})" if q else ""
        if isinstance(clf, LogisticRegression):
            return "grad-cam", "logistic regression head rebuilt exactly in torch" + note
        return "ablation-cam", (f"{type(clf).__name__} head is not differentiable in closed form: channel "
                                f"ablation with the real head" + note)

    def _ensure(self):
        if self._net is None:
            fnet = _feature_net(self.service.extractor)
            head = None
            if self.method == "grad-cam":
                head, mode = linear_head(self.service.bundle.head, len(self.service.classes))
                if head is None:  # should not happen for a LogisticRegression; stay honest if it does
                    self.method, self.reason = "ablation-cam", mode
                self._mode = mode
            self._net = _cam_net(fnet, head if head is not None else _torch().nn.Identity())
        return self._net

    def cam(self, pixels: np.ndarray, class_index: int) -> tuple[np.ndarray, dict]:
        """(S, S) map in 0..1 over the model input for ``class_index``, and facts about it."""
        torch = _torch()
        with self._lock:
            net = self._ensure()
            x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
            s = pixels.shape[0]
            if self.method == "grad-cam":
                from pytorch_grad_cam import GradCAM
                from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

                with torch.no_grad():
                    a = net.activations(x)
                if a.ndim != 4:
                    raise HeatmapUnavailable(f"layer {self.service.extractor.layer} has no spatial map "
                                             f"(output shape {tuple(a.shape)})")
                cam = GradCAM(model=net, target_layers=[net.at])
                try:
                    with torch.enable_grad():
                        mask = cam(input_tensor=x.requires_grad_(True),
                                   targets=[ClassifierOutputTarget(class_index)])[0]
                    logits = cam.outputs.detach()
                finally:
                    cam.activations_and_grads.release()
                p = float(net.head.proba(logits)[0, class_index])
                return mask, {"method": "grad-cam", "probability": p, "map_size": list(a.shape[2:]),
                              "logit_mode": self._mode}
            with torch.no_grad():
                a = net.activations(x)
            if a.ndim != 4:
                raise HeatmapUnavailable(f"layer {self.service.extractor.layer} has no spatial map "
                                         f"(output shape {tuple(a.shape)})")
            mask, p = self._ablation(a[0].numpy().astype(np.float64), class_index, s)
            return mask, {"method": "ablation-cam", "probability": p, "map_size": list(a.shape[2:])}

    def _ablation(self, act: np.ndarray, k: int, size: int) -> tuple[np.ndarray, float]:
        from pytorch_grad_cam.utils.image import scale_cam_image

        c = act.shape[0]
        pooling = self.service.extractor.pool
        f = {"avg": act.mean((1, 2)), "max": act.max((1, 2)),
             "avgmax": np.concatenate([act.mean((1, 2)), act.max((1, 2))])}[pooling]
        rows = np.repeat(f[None, :], c + 1, 0)
        idx = np.arange(c)
        rows[1 + idx, idx] = 0.0
        if pooling == "avgmax":
            rows[1 + idx, c + idx] = 0.0
        p = self.service.bundle.head.predict_proba(rows.astype(np.float32))[:, k]
        w = (p[0] - p[1:]) / max(float(p[0]), 1e-7)
        cam = np.maximum((w[:, None, None] * act).sum(0), 0)
        return scale_cam_image(cam[None].astype(np.float32), (size, size))[0], float(p[0])

    def render(self, data: bytes, label: str) -> tuple[bytes, dict]:
        """The PNG overlay of the heatmap for ``label`` on the image in ``data`` (original aspect ratio)."""
        import cv2
        from PIL import Image
        from pytorch_grad_cam.utils.image import show_cam_on_image

        ex = self.service.extractor
        if label not in self.service.classes:
            raise HeatmapUnavailable(f"label {label!r} is not a class of the model")
        k = self.service.classes.index(label)
        pixels = ex.decode(data)
        mask, info = self.cam(pixels, k)
        img = open_image(data)
        w, h = img.size
        s = mask.shape[0]
        if ex.preprocessing.resize == "letterbox":  # only the image's part of the padded square
            r = s / max(w, h)
            nw, nh = max(1, round(w * r)), max(1, round(h * r))
            x0, y0 = (s - nw) // 2, (s - nh) // 2
            mask = mask[y0:y0 + nh, x0:x0 + nw]
        disp = img.copy()
        disp.thumbnail((self.max_side, self.max_side), Image.Resampling.BILINEAR)
        m = cv2.resize(mask.astype(np.float32), disp.size, interpolation=cv2.INTER_LINEAR)
        overlay = show_cam_on_image(np.asarray(disp, np.float32) / 255.0, np.clip(m, 0, 1), use_rgb=True,
                                    image_weight=self.image_weight)
        buf = io.BytesIO()
        Image.fromarray(overlay).save(buf, "PNG")
        info.update(label=label, class_index=k, width=disp.size[0], height=disp.size[1])
        return buf.getvalue(), info
