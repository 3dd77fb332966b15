"""vinspect: industrial visual inspection with CNN features (University of León insert-inspection pipeline).

The steps are importable::

    from vinspect import Extractor, evaluate, train, predict
    res = evaluate("../shared/datasets/neu-cls", Extractor("efficientnet_lite0"), head="logreg", splits=10)
"""

__version__ = "0.1.0"

_API = {
    "Extractor": "features.extract", "extract": "features.extract", "FeatureSet": "features.extract",
    "scan_folder": "data.dataset", "Dataset": "data.dataset",
    "evaluate": "pipeline", "train": "pipeline", "predict": "pipeline", "compare": "pipeline",
    "extract_to": "pipeline", "load_bundle": "models.bundle", "load_predictor": "models.predictor",
    "make_head": "heads.factory",
    "list_backbones": "backbones.registry", "create_backbone": "backbones.build",
}


def __getattr__(name):  # lazy: `import vinspect` stays fast and torch-free
    if name in _API:
        import importlib

        return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    raise AttributeError(f"module 'vinspect' has no attribute {name!r}")


__all__ = sorted(_API)
