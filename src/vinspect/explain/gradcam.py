"""LayerCAM, Grad-CAM and channel ablation: where a classifier looked for its verdict.

For a head bundle (CNN features + scikit-learn head) the method is chosen by the head:

``layer-cam`` (logistic-regression heads): the bundle's StandardScaler + LogisticRegression is rebuilt as an
exact differentiable torch layer (``W' = coef / scale``, ``b' = intercept - W' . mean``; softmax for
multinomial models, the sigmoid pair for binary ones, normalised sigmoids for one-vs-rest), checked against
scikit-learn's ``predict_proba`` to 1e-6 before use, and put behind the backbone cut at the bundle's layer
and its pooling.  LayerCAM (the ``grad-cam`` package, ``pytorch_grad_cam.LayerCAM``; Jiang et al. 2021) then
weights the activations of the bundle's layer and of the two stages before it element-wise by the positive
gradients of the verdict's logit and averages the three maps: the earlier stages (14x14 at 224 pixels) sharpen
the layer's coarse 7x7 map, which pointed at the defect less often (see benchmarks/explain.py).

``ablation-cam`` (SVM, k-NN and any other head): these heads are not differentiable functions of the
features that we can rebuild exactly (k-NN is piecewise constant; multi-class SVMs vote), so Grad-CAM would
have to explain a surrogate, not the model.  Instead each channel's weight is the relative drop of the
verdict's probability when that channel is removed (Ablation-CAM, Desai & Ramaswamy, WACV 2020), computed
with the real scikit-learn head.  Because everything after the layer is pooling and the head, removing a
channel's map is exactly removing its pooled value(s), so all channels cost one ``predict_proba`` call on
C rows.  (The ``grad-cam`` package's own AblationCAM re-runs the whole network per batch of channels and
fills ablated channels of layers with negative outputs with ``min - 1e7``, far outside a scaled head's
domain; hence this direct form.)

For a trained CNN (``cnn`` bundles) LayerCAM runs on the network itself (Grad-CAM at the last convolutional
stage of the lab's small CNN).

Every map is min-max scaled to 0..1 (so every map has a hot spot, even for an intact part), upsampled to the image and undone
from the letterbox padding when the model used it.  Layers without a spatial map (already pooled, or token
sequences) have no heatmap: :class:`HeatmapUnavailable`.
"""

from __future__ import annotations

import numpy as np

from ..errors import VinspectError


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


def cam_net(spatial, head):
    """A network for Grad-CAM: ``spatial(x)`` (float NCHW 0..255 -> the layer's map) -> hook point ``at`` ->
    ``head(map)`` -> logits."""
    torch = _torch()

    class CamNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.spatial = spatial
            self.at = torch.nn.Identity()  # Grad-CAM's target layer
            self.head = head

        def activations(self, x):
            return self.at(self.spatial(x))

        def forward(self, x):
            return self.head(self.activations(x))

    return CamNet().eval()


def _run_cam(cam_class, net, target_layers, pixels: np.ndarray, class_index: int, proba=None):
    """Run a ``pytorch_grad_cam`` method on :func:`cam_net` ``net`` for one (H, W, 3) uint8 input:
    (map over the input grid in 0..1, probability of the class, the layer map's size)."""
    torch = _torch()
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    x = torch.from_numpy(np.ascontiguousarray(pixels)).permute(2, 0, 1)[None].float()
    with torch.no_grad():
        a = net.activations(x)
    if a.ndim != 4:
        raise HeatmapUnavailable(f"the layer has no spatial map (output shape {tuple(a.shape)})")
    cam = cam_class(model=net, target_layers=list(target_layers))
    try:
        with torch.enable_grad():
            mask = cam(input_tensor=x.requires_grad_(True), targets=[ClassifierOutputTarget(class_index)])[0]
        logits = cam.outputs.detach()
    finally:
        cam.activations_and_grads.release()
    p = (proba or (lambda z: torch.softmax(z, 1)))(logits)
    return mask, float(p[0, class_index]), list(a.shape[2:])


def grad_cam(net, pixels: np.ndarray, class_index: int, proba=None) -> tuple[np.ndarray, float, list[int]]:
    """Grad-CAM of ``net`` (:func:`cam_net`) at its layer (the hook point ``at``) on one (H, W, 3) uint8 input
    for ``class_index``: (map over the input grid in 0..1, probability of the class, the layer map's size)."""
    _torch()  # the torchvision guard, before pytorch_grad_cam imports torchvision
    from pytorch_grad_cam import GradCAM

    return _run_cam(GradCAM, net, [net.at], pixels, class_index, proba)


def ablation_cam(act: np.ndarray, pooling: str, predict_proba, k: int, size_hw) -> tuple[np.ndarray, float]:
    """Channel ablation with the real head (see the module's docstring): ``act`` (C, h, w) the layer's map,
    ``predict_proba`` the head's; (map over the input grid in 0..1, probability of class ``k``)."""
    from pytorch_grad_cam.utils.image import scale_cam_image

    c = act.shape[0]
    f = {"avg": act.mean((1, 2)), "max": act.max((1, 2)),
         "avgmax": np.concatenate([act.mean((1, 2)), act.max((1, 2))])}[pooling]
    rows = np.repeat(f[None, :], c + 1, 0)
    idx = np.arange(c)
    rows[1 + idx, idx] = 0.0
    if pooling == "avgmax":
        rows[1 + idx, c + idx] = 0.0
    p = predict_proba(rows.astype(np.float32))[:, k]
    w = (p[0] - p[1:]) / max(float(p[0]), 1e-7)
    cam = np.maximum((w[:, None, None] * act).sum(0), 0)
    h, w_ = size_hw
    return scale_cam_image(cam[None].astype(np.float32), (w_, h))[0], float(p[0])


def explain_layers(model, layer: str, n: int = 3) -> list[str]:
    """The layers LayerCAM fuses: the model's layer and the ``n - 1`` candidate layers before it
    (:func:`vinspect.backbones.build.candidate_layers`: the stages of the backbone, in order)."""
    from ..backbones.build import candidate_layers

    names = candidate_layers(model)
    if layer not in names:
        return [layer]
    i = names.index(layer)
    return names[max(0, i - n + 1):i + 1]


def layer_cam(net, modules, pixels: np.ndarray, class_index: int, proba=None) -> tuple[np.ndarray, float]:
    """LayerCAM (Jiang et al., IEEE TIP 2021; the ``grad-cam`` package's ``LayerCAM``) of ``net``
    (:func:`cam_net`) on one (H, W, 3) uint8 input, over the layers ``modules``: each layer's activations weighted
    element-wise by their positive gradients, each map scaled to 0..1 and the layers averaged, so the finer
    earlier stages sharpen the last one's coarse map.  (map over the input grid in 0..1, probability)."""
    _torch()  # the torchvision guard, before pytorch_grad_cam imports torchvision
    from pytorch_grad_cam import LayerCAM

    mask, p, _ = _run_cam(LayerCAM, net, modules, pixels, class_index, proba)
    return mask, p
