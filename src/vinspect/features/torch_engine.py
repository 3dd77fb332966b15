"""The torch engine: a backbone cut at a layer, with normalisation and pooling, on uint8 RGB batches."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..backbones.build import LoadedBackbone, check_layer
from ..backbones.registry import Preprocessing
from .pooling import pool


class _Truncated(nn.Module):
    """Run the backbone only up to ``layer`` (FX graph pruned at that node; hooks as a fallback)."""

    def __init__(self, model: nn.Module, layer: str):
        super().__init__()
        self.layer = layer
        try:
            from timm.models import create_feature_extractor

            self.net = create_feature_extractor(model, return_nodes={layer: "out"})
            self.fx = True
        except Exception:  # noqa: BLE001 - architectures FX cannot trace fall back to a hook
            self.net = model
            self.fx = False

    def forward(self, x):
        if self.fx:
            return self.net(x)["out"]
        box = {}

        class _Stop(Exception):
            pass

        def hook(_m, _i, out):
            box["out"] = out
            raise _Stop

        h = dict(self.net.named_modules())[self.layer].register_forward_hook(hook)
        try:
            self.net(x)
        except _Stop:
            pass
        finally:
            h.remove()
        return box["out"]


class FeatureNet(nn.Module):
    """uint8 NHWC images -> normalised -> backbone up to ``layer`` -> pooled (N, D) features.

    Normalisation lives in the module so callers hand it decoded pixels only.
    """

    def __init__(self, backbone: LoadedBackbone, layer: str, pooling: str, preprocessing: Preprocessing):
        super().__init__()
        check_layer(backbone.model, layer, backbone.spec.name)
        self.body = _Truncated(backbone.model, layer)
        self.pooling = pooling
        self.register_buffer("mean", torch.tensor(preprocessing.mean).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(preprocessing.std).view(1, 3, 1, 1) * 255.0)

    def forward(self, images_nhwc_uint8: torch.Tensor) -> torch.Tensor:
        x = images_nhwc_uint8.permute(0, 3, 1, 2).float()  # channels-last memory layout, fast on CPU
        x = (x - self.mean) / self.std
        return pool(self.body(x), self.pooling)


CPU_CHUNK = 8  # images per forward pass on a CPU (see TorchEngine.__call__)


class TorchEngine:
    name = "torch"

    def __init__(self, backbone: LoadedBackbone, layer: str, pooling: str, preprocessing: Preprocessing,
                 device: str | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.net = FeatureNet(backbone, layer, pooling, preprocessing).eval().to(self.device)
        self.net = self.net.to(memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # On a CPU, batches of more than a few 224-px images spill the caches: 32 at once took 21-23 ms an image
        # on the 2-core reference machine, chunks of 8 took 14-15 ms (onnxruntime is flat either way).
        step = CPU_CHUNK if self.device.type == "cpu" else max(len(batch), 1)
        outs = []
        with torch.inference_mode():
            for i in range(0, max(len(batch), 1), step):  # an empty batch runs once, as before
                x = torch.from_numpy(np.ascontiguousarray(batch[i:i + step])).to(self.device)
                outs.append(self.net(x).float().cpu().numpy())
        return outs[0] if len(outs) == 1 else np.concatenate(outs)
