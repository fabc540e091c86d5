"""Metrics: pure, batched functions of (model, images, targets, maps).

They never re-run an explainer and never write files; the sanity checks, which by
definition re-run the method on a randomised model, take the explainer instead of maps.
"""

from xai.evaluation.faithfulness import (PRESETS, CurveResult, ModelScorer, causal_curves, deletion,
                                         gaussian_blur, insertion, step_counts)
from xai.evaluation.localisation import pointing_game, relevance_mass
from xai.evaluation.sanity import model_randomisation, random_logit, spearman_per_image
from xai.evaluation.statistics import pairwise_tests, paired_test, rank_methods, summarise, tidy

__all__ = [
    "PRESETS", "CurveResult", "ModelScorer", "causal_curves", "deletion", "gaussian_blur", "insertion",
    "model_randomisation", "paired_test", "pairwise_tests", "pointing_game", "random_logit",
    "rank_methods", "relevance_mass", "spearman_per_image", "step_counts", "summarise", "tidy",
]
