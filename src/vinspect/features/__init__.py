"""Feature extraction: engines, pooling and the HDF5 cache keyed by image content."""

from .cache import FeatureCache, default_cache_dir
from .extract import (Extractor, FeatureSet, extract, read_features_h5, stream_features,
                      write_features_h5)
from ..backbones.pooling import POOLS

__all__ = ["FeatureCache", "default_cache_dir", "Extractor", "FeatureSet", "extract", "read_features_h5",
           "stream_features", "write_features_h5", "POOLS"]
