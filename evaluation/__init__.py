"""Metrics: pure, batched functions of (model, images, targets, maps).

They never write files. Two families re-run the method by definition and take the explainer
instead of (or besides) maps: the sanity checks (on a randomised model) and the robustness
metrics (on perturbed copies of the images). `meta_evaluation` says, per run, which metrics
can be believed.
"""

from xai.evaluation.faithfulness import (PRESETS, CurveResult, ModelScorer, causal_curves, deletion,
                                         gaussian_blur, insertion, step_counts, symmetric_relevance_gain)
from xai.evaluation.map_complexity import complexity, sparseness
from xai.evaluation.meta_evaluation import MetricVerdict, evaluate_metric, meta_evaluate
from xai.evaluation.faithfulness_correlation import mufidelity
from xai.evaluation.remove_and_debias import noisy_linear_impute, road
from xai.evaluation.robustness import average_stability, max_sensitivity
from xai.evaluation.localisation import pointing_game, relevance_mass
from xai.evaluation.sanity import model_randomisation, random_logit, spearman_per_image
from xai.evaluation.statistics import holm, pairwise_tests, paired_test, rank_methods, summarise, tidy

__all__ = [
    "PRESETS", "CurveResult", "MetricVerdict", "ModelScorer", "causal_curves", "deletion", "evaluate_metric",
    "gaussian_blur", "holm", "insertion", "meta_evaluate", "symmetric_relevance_gain",
    "average_stability", "complexity", "max_sensitivity", "mufidelity", "noisy_linear_impute", "road",
    "sparseness",
    "model_randomisation", "paired_test", "pairwise_tests", "pointing_game", "random_logit",
    "rank_methods", "relevance_mass", "spearman_per_image", "step_counts", "summarise", "tidy",
]
