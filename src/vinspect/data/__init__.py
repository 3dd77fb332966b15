"""Image folders -> datasets; decoding of any common image kind; stratified splits."""

from .dataset import Dataset, Skipped, collect_images, file_sha256, parse_class_map, scan_folder
from .decode import IMAGE_EXTENSIONS, load_rgb, open_image, resize

_LAZY = {"check_class_sizes": "splits", "repeated_splits": "splits"}  # scikit-learn only when splits are made


def __getattr__(name):  # PEP 562: keeps `import vinspect.data` (and the CLI's start-up) free of scikit-learn
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["Dataset", "Skipped", "collect_images", "file_sha256", "parse_class_map", "scan_folder",
           "IMAGE_EXTENSIONS", "load_rgb", "open_image", "resize", "check_class_sizes", "repeated_splits"]
