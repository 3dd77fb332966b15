"""Pool a layer's output to one vector per image."""

from __future__ import annotations

POOLS = ("avg", "max", "avgmax")


def pool(x, how: str = "avg"):
    """(N, C, H, W) -> (N, C) or (N, 2C) for ``avgmax``; (N, T, C) token maps pool over tokens; (N, C) passes."""
    if how not in POOLS:
        raise ValueError(f"unknown pooling {how!r} (use {', '.join(POOLS)})")
    import torch

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
    return torch.cat([x.mean(dim=dims), x.amax(dim=dims)], dim=1)
