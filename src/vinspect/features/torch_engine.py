"""The torch engine: a backbone cut at a layer, with normalisation and pooling, on uint8 RGB batches."""

from __future__ import annotations

import numpy as np
import torch

from ..backbones.build import LoadedBackbone, check_layer
from ..backbones.registry import Preprocessing
from ..backbones.cut import BackboneCut


class FeatureNet(BackboneCut):
    """uint8 NHWC images -> normalised -> backbone up to ``layer`` -> pooled (N, D) features.

    The backbone cut (:class:`vinspect.backbones.cut.BackboneCut`) with a uint8 NHWC front, so callers hand it
    decoded pixels only.
    """

    def __init__(self, backbone: LoadedBackbone, layer: str, pooling: str, preprocessing: Preprocessing):
        check_layer(backbone.model, layer, backbone.spec.name)
        super().__init__(backbone.model, layer, preprocessing.mean, preprocessing.std, pooling)

    def forward(self, images_nhwc_uint8: torch.Tensor) -> torch.Tensor:
        x = images_nhwc_uint8.permute(0, 3, 1, 2).float()  # channels-last memory layout, fast on CPU
        return super().forward(x)


class TiledNet(torch.nn.Module):
    """Tiles: a uint8 NHWC canvas of ``rows`` x ``cols`` tiles of ``side`` px -> every tile through ``net``
    (uint8 NHWC tiles -> (T, D)) -> the tiles' features reduced per image: ``max`` or ``mean`` over the tiles
    (``both``: the two joined, max first; one pass for the automatic selection).  Exportable to ONNX (reshapes and a
    reduction), so every engine runs it."""

    def __init__(self, net: torch.nn.Module, rows: int, cols: int, side: int, reduce: str):
        super().__init__()
        if reduce not in ("max", "mean", "both"):
            raise ValueError(f"tile reduce {reduce!r}: use max, mean or both")
        self.net, self.rows, self.cols, self.side, self.reduce = net, int(rows), int(cols), int(side), reduce

    def forward(self, canvas: torch.Tensor) -> torch.Tensor:
        r, c, s = self.rows, self.cols, self.side  # -1: the batch axis stays dynamic in an ONNX export
        tiles = canvas.reshape(-1, r, s, c, s, 3).permute(0, 1, 3, 2, 4, 5).reshape(-1, s, s, 3)
        f = self.net(tiles.contiguous())
        f = f.reshape(-1, r * c, f.shape[-1])
        if self.reduce == "max":
            return f.amax(dim=1)
        if self.reduce == "mean":
            return f.mean(dim=1)
        return torch.cat([f.amax(dim=1), f.mean(dim=1)], dim=1)


CPU_CHUNK = 8  # images per forward pass on a CPU (see TorchEngine.__call__)


class TorchEngine:
    name = "torch"

    def __init__(self, backbone: LoadedBackbone, layer: str, pooling: str, preprocessing: Preprocessing,
                 device: str | None = None, tiles: tuple[int, int, str] | None = None):
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        net = FeatureNet(backbone, layer, pooling, preprocessing)
        if tiles:
            net = TiledNet(net, tiles[0], tiles[1], preprocessing.input_size, tiles[2])
        self.tiles_per_image = tiles[0] * tiles[1] if tiles else 1
        self.net = net.eval().to(self.device)
        self.net = self.net.to(memory_format=torch.channels_last)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        # On a CPU, batches of more than a few 224-px images spill the caches: 32 at once took 21-23 ms an image
        # on the 2-core reference machine, chunks of 8 took 14-15 ms (onnxruntime is flat either way).
        # (tiled: CPU_CHUNK tiles, at least one image, per pass)
        step = max(1, CPU_CHUNK // self.tiles_per_image) if self.device.type == "cpu" else max(len(batch), 1)
        outs = []
        with torch.inference_mode():
            for i in range(0, max(len(batch), 1), step):  # an empty batch runs once, as before
                x = torch.from_numpy(np.ascontiguousarray(batch[i:i + step])).to(self.device)
                outs.append(self.net(x).float().cpu().numpy())
        return outs[0] if len(outs) == 1 else np.concatenate(outs)
