"""Registry of backbones: name -> spec (timm architecture, weights, preprocessing, layers).

The registry itself is light (no torch import); building a model (``create_backbone``) loads torch and timm.
"""

from .registry import (DEFAULT_BACKBONE, BackboneSpec, Preprocessing, WeightSource, get_spec, import_timm,
                       list_backbones, register)

_LAZY = {"LoadedBackbone", "check_layer", "create_backbone", "layer_shapes"}


def __getattr__(name):
    if name in _LAZY:
        from . import build

        return getattr(build, name)
    raise AttributeError(name)


__all__ = ["DEFAULT_BACKBONE", "BackboneSpec", "Preprocessing", "WeightSource", "get_spec", "import_timm",
           "list_backbones", "register", *sorted(_LAZY)]
