"""Automatic, honest model selection (``vinspect classify evaluate|train --auto``).

:mod:`.space`: the documented search space (feature variants x heads); :mod:`.variants`: every variant's
features from the HDF5 cache, one extraction pass per resolution; :mod:`.search`: a staged search on
inner folds within a time budget; :mod:`.finetune`: fine-tuning as one more candidate after the search, when the
budget allows (``--auto finetune``); :mod:`.nested`: the nested protocol (the search inside each outer split, on
its training part only); :mod:`.report`: results.txt.
"""

from .nested import nested_evaluate, outer_folds, outer_scores, parse_budget
from .search import DEFAULT_SELECT, SELECT, Clock, search
from .space import Candidate, FeatureVariant, HeadConfig, feature_variants, head_grid

__all__ = ["nested_evaluate", "outer_folds", "outer_scores", "parse_budget", "DEFAULT_SELECT", "SELECT", "Clock",
           "search", "Candidate", "FeatureVariant", "HeadConfig", "feature_variants", "head_grid"]
