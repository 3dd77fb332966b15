"""Supervised defect segmentation: masks (:mod:`.masks`), encoder-decoder networks on registry backbones
(:mod:`.model`), training with vinspect's loop and prediction (:mod:`.train`), k-fold evaluation with IoU,
Dice, pixel and boundary F1 (:mod:`.evaluate`), pictures (:mod:`.plots`); training and predicting whole folders into bundles: :mod:`vinspect.pipeline.segment`."""
