"""Image folders -> datasets; decoding of any common image kind; stratified splits."""

from .dataset import Dataset, Skipped, collect_images, file_sha256, parse_class_map, scan_folder
from .decode import IMAGE_EXTENSIONS, load_rgb, open_image, resize
from .splits import check_class_sizes, repeated_splits

__all__ = ["Dataset", "Skipped", "collect_images", "file_sha256", "parse_class_map", "scan_folder",
           "IMAGE_EXTENSIONS", "load_rgb", "open_image", "resize", "check_class_sizes", "repeated_splits"]
