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

Detection (``vinspect detect``: torchvision's FCOS) needs one of those operators for real: ``nms``.
:func:`ensure_nms` gives it a pure-torch CPU kernel (greedy non-maximum suppression, the same rule as
torchvision's C++ one: a box is dropped when its IoU with a kept, higher-scoring box exceeds the threshold) and
lets ``torchvision.ops.nms`` / ``batched_nms`` reach it; again only when the compiled extension failed to load.
FCOS and RetinaNet need nothing else compiled (Faster R-CNN would: ``roi_align``).
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


def nms_reference(dets, scores, iou_threshold: float):
    """Greedy NMS in numpy (float32, like the C++ kernel): indices of the kept boxes, by decreasing score."""
    import numpy as np
    import torch

    if dets.numel() == 0:
        return torch.empty(0, dtype=torch.long, device=dets.device)
    b = dets.detach().to("cpu", torch.float32).numpy()
    s = scores.detach().to("cpu", torch.float32).numpy()
    x1, y1, x2, y2 = b[:, 0], b[:, 1], b[:, 2], b[:, 3]
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-s, kind="stable")
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        union = areas[i] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[~(iou > iou_threshold)]
    return torch.as_tensor(np.asarray(keep, dtype=np.int64), device=dets.device)


_nms_state: dict[str, bool] = {"done": False, "kernel": False}


def _assert_nms_kernel() -> None:
    """Stands in for torchvision.ops.boxes' ``_assert_has_ops`` once ``nms`` has the kernel above."""


def ensure_nms() -> bool:
    """Make ``torchvision.ops.nms`` / ``batched_nms`` work.  Returns True when the pure-torch kernel was
    registered (torchvision's extension did not load), False when torchvision's own kernel is used."""
    if _nms_state["done"]:
        return _nms_state["kernel"]
    patched = ensure_torchvision()
    import torch
    import torchvision.ops.boxes as tv_boxes

    from torchvision.extension import _has_ops

    if not patched and _has_ops():
        _nms_state.update(done=True, kernel=False)
        return False
    global _library
    if _library is None:  # the extension failed after torchvision had been imported by someone else
        _library = torch.library.Library("torchvision", "FRAGMENT")
    try:
        _library.impl("nms", nms_reference, "CPU")
    except RuntimeError:  # a kernel is already there (registered by an earlier Library object)
        pass
    tv_boxes._assert_has_ops = _assert_nms_kernel  # nms and batched_nms only; other operators stay missing
    _nms_state.update(done=True, kernel=True)
    return True
