"""Trained models of every task: the typed bundle (:mod:`.bundle`), the predictor protocol (:mod:`.predictor`)
and one module per kind of model.

Adding a kind of model: write ``vinspect/models/<module>.py`` with a :class:`~.predictor.Predictor` subclass
decorated with ``@register("<kind>")`` (its ``predict_pixels``, and ``explain_pixels`` / ``export_onnx`` where
it can), save its bundles with :func:`~.bundle.save_bundle`, and add the module's name to ``KINDS`` below.
Nothing else in vinspect branches on the kind: ``predict``, ``serve``, ``export`` and ``explain`` take any
predictor.
"""

# modules holding the registered predictor kinds (imported lazily, on the first bundle of an unknown kind)
KINDS = ("head", "cnn", "anomaly", "segment", "detect")
