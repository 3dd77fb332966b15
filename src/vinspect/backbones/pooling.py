"""Pool a layer's output to one vector per image."""

from __future__ import annotations

POOLS = ("avg", "max", "avgmax", "gem")
GEM_P = 3.0  # generalised-mean pooling exponent (Radenovic et al., TPAMI 2019: p = 3), fixed, not learnt
GEM_EPS = 1e-6


def pool(x, how: str = "avg"):
    """(N, C, H, W) -> (N, C) or (N, 2C) for ``avgmax``; (N, T, C) token maps pool over tokens; (N, C) passes.

    ``gem``: generalised mean, (mean of max(x, eps)^3)^(1/3), between average and max pooling (a map of
    several layers, e.g. ``blocks.5+blocks.6``, is a list: each is pooled and the vectors concatenated)."""
    if how not in POOLS:
        raise ValueError(f"unknown pooling {how!r} (use {', '.join(POOLS)})")
    import torch

    if isinstance(x, (list, tuple)):
        return torch.cat([pool(a, how) for a in x], dim=1)
    if x.ndim == 2:
        return x
    dims = (2, 3) if x.ndim == 4 else (1,)
    if x.ndim not in (3, 4):
        x = x.flatten(1)
        return x
    if how == "avg":
        return x.mean(dim=dims)
    if how == "max":
        return x.amax(dim=dims)
    if how == "gem":
        return x.clamp(min=GEM_EPS).pow(GEM_P).mean(dim=dims).pow(1.0 / GEM_P)
    return torch.cat([x.mean(dim=dims), x.amax(dim=dims)], dim=1)
