"""Patch scores on the feature grid -> anomaly maps over the model input (bilinear upsampling, Gaussian blur)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(maps: torch.Tensor, sigma: float) -> torch.Tensor:
    """(N, H, W) -> the same, blurred with a separable Gaussian (kernel 2*ceil(4 sigma)+1, reflect padding)."""
    if sigma <= 0:
        return maps
    r = int(math.ceil(4 * sigma))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x ** 2) / (2 * sigma * sigma))
    k = (k / k.sum()).to(maps.dtype)
    m = maps.unsqueeze(1)
    h, w = m.shape[-2:]
    pad_y, pad_x = min(r, h - 1), min(r, w - 1)
    # reflect padding needs pad < size; fall back to replicate for tiny maps
    m = F.pad(m, (pad_x, pad_x, 0, 0), mode="reflect" if pad_x == r else "replicate") if r else m
    if pad_x != r:
        m = F.pad(m, (r - pad_x, r - pad_x, 0, 0), mode="replicate")
    m = F.conv2d(m, k.view(1, 1, 1, -1))
    m = F.pad(m, (0, 0, pad_y, pad_y), mode="reflect" if pad_y == r else "replicate")
    if pad_y != r:
        m = F.pad(m, (0, 0, r - pad_y, r - pad_y), mode="replicate")
    m = F.conv2d(m, k.view(1, 1, -1, 1))
    return m.squeeze(1)


def to_input_maps(patch_maps: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """(N, h, w) patch scores -> (N, height, width) float32 maps: bilinear upsampling, then the blur."""
    m = F.interpolate(patch_maps.float().unsqueeze(1), size=(height, width), mode="bilinear",
                      align_corners=False).squeeze(1)
    return gaussian_blur(m, sigma)


def top_mean(patch_maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """(N, h, w) patch scores -> (N,): the mean of each map's ``fraction`` highest scores (at least one)."""
    flat = patch_maps.float().flatten(1)
    k = max(1, min(flat.shape[1], int(round(fraction * flat.shape[1]))))
    return flat.topk(k, dim=1).values.mean(1)
