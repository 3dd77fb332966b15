"""Make ``import torchvision`` (and so ``import timm``) work with a CPU-only torch wheel.

Why this exists: PyPI's torchvision 0.28.0 wheels are CUDA builds.  Next to the CPU build of
torch 2.13.0 that these machines install, torchvision's compiled extension (``torchvision._C``)
cannot load, and ``import torchvision`` then dies with
``RuntimeError: operator torchvision::nms does not exist`` while registering the Python
"fake" kernels of ``nms``/``qnms``.  vinspect never calls those detection operators, so it is
enough to declare their schemas (a torch.library FRAGMENT ``define``) before torchvision is
imported, and only when the extension really fails to load.  With a working torchvision
(matching CPU/CUDA builds) this module does nothing.

Call :func:`ensure_torchvision` before the first ``import torchvision`` / ``import timm``;
``vinspect.backbones`` does it on import.
"""

from __future__ import annotations

import importlib.util
import sys

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor",
}

_library = None  # keep the Library object alive: the definitions live as long as it does
_state: dict[str, bool] = {"checked": False, "patched": False}


def _extension_loads() -> bool:
    """True when torchvision's compiled extension loads on its own (no guard needed)."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to guard, the import error will be clear
    import glob
    import os

    libs = []
    for loc in spec.submodule_search_locations:
        libs += glob.glob(os.path.join(loc, "_C*.so")) + glob.glob(os.path.join(loc, "_C*.pyd"))
    if not libs:
        return False
    try:
        torch.ops.load_library(libs[0])
    except (OSError, RuntimeError):
        return False
    return hasattr(torch.ops.torchvision, "nms")


def ensure_torchvision() -> bool:
    """Declare the missing operator schemas if (and only if) torchvision's extension cannot load.

    Returns True when the guard had to patch, False when torchvision works as shipped.
    Safe to call many times.
    """
    global _library
    if _state["checked"]:
        return _state["patched"]
    _state["checked"] = True
    if "torchvision" in sys.modules:  # already imported successfully: nothing to do
        return False
    if _extension_loads():
        return False
    import torch.library

    _library = torch.library.Library("torchvision", "FRAGMENT")
    for name, schema in _SCHEMAS.items():
        try:
            _library.define(schema)
        except RuntimeError:  # defined meanwhile by someone else
            pass
    _state["patched"] = True
    return True
