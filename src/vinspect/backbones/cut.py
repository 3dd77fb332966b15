"""The backbone cut: normalise -> run a backbone up to a layer -> pool.  One module used by everyone:
the feature engines (``vinspect.features``), CNN training (``vinspect.training``) and the heatmaps
(``vinspect.explain``), so the three can never disagree on what "the features of a layer" are.

Input: float (N, C, H, W) pixels in 0..255 (one channel is replicated to three); normalisation is inside.
"""

from __future__ import annotations

import torch
from torch import nn

from .pooling import pool


class Truncated(nn.Module):
    """Run the backbone only up to ``layer`` (FX graph pruned at that node; a forward hook as a fallback, or
    when ``fx=False``: the original modules then stay callable and hookable, as explanations need)."""

    def __init__(self, model: nn.Module, layer: str, fx: bool = True):
        super().__init__()
        self.layer = layer
        # several layers joined by "+" (e.g. "blocks.5+blocks.6"): forward returns their maps as a list
        self.layers = layer.split("+")
        self.fx = False
        self.net = model
        if fx:
            try:
                from timm.models import create_feature_extractor

                self.net = create_feature_extractor(model, return_nodes={n: f"out{i}" for i, n in
                                                                         enumerate(self.layers)})
                self.fx = True
            except Exception:  # noqa: BLE001 - architectures FX cannot trace fall back to a hook
                pass

    def forward(self, x):
        if self.fx:
            out = self.net(x)
            return out["out0"] if len(self.layers) == 1 else [out[f"out{i}"] for i in range(len(self.layers))]
        box = {}

        class _Stop(Exception):
            pass

        def hooker(name):
            def hook(_m, _i, out):
                box[name] = out
                if len(box) == len(self.layers):
                    raise _Stop
            return hook

        modules = dict(self.net.named_modules())
        hs = [modules[n].register_forward_hook(hooker(n)) for n in self.layers]
        try:
            self.net(x)
        except _Stop:
            pass
        finally:
            for h in hs:
                h.remove()
        return box[self.layer] if len(self.layers) == 1 else [box[n] for n in self.layers]


class BackboneCut(nn.Module):
    """normalise -> backbone up to ``layer`` -> ``pooling`` (avg, max, avgmax).

    ``spatial(x)`` stops before the pooling (the layer's map, for heatmaps and patch features).
    State-dict keys: ``body.*`` (the backbone), ``mean``, ``std`` (kept stable: bundles store them).
    """

    def __init__(self, model: nn.Module, layer: str, mean, std, pooling: str = "avg", fx: bool = True):
        super().__init__()
        self.body = Truncated(model, layer, fx)
        self.pooling = pooling
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1) * 255.0)

    @property
    def layer(self) -> str:
        return self.body.layer

    def plain(self, model: nn.Module | None = None) -> "BackboneCut":
        """The same cut run through the backbone's own modules (no FX graph), sharing this cut's weights:
        its layers can be hooked (``model.get_submodule("blocks.5")``) for explanations.  ``model``: the
        backbone the FX graph was made from (found in the graph when not given)."""
        if not self.body.fx:
            return self
        if model is None:
            raise ValueError("the backbone module is needed for a plain cut of an FX graph")
        missing = [k for k in self.body.net.state_dict() if k not in model.state_dict()]
        if missing:
            raise ValueError(f"the backbone does not hold the graph's weights ({missing[0]} ...)")
        model.load_state_dict(self.body.net.state_dict(), strict=False)
        cut = BackboneCut(model, self.layer, [0.0] * 3, [1.0] * 3, self.pooling, fx=False)
        cut.mean, cut.std = self.mean, self.std
        return cut

    def spatial(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        return self.body((x - self.mean) / self.std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool(self.spatial(x), self.pooling)
