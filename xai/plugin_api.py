"""Everything a plugin author needs, from one module.

The whole of a gradient-times-input plugin::

    import tensorflow as tf
    from xai.plugin_api import Explainer

    class GradientTimesInput(Explainer):
        # Input gradient times the input, summed over channels.

        default_score = "logit"

        def compute(self, images, targets):
            return tf.reduce_sum(self.input_gradients(images, targets) * images, axis=-1)

See docs/writing-a-plugin.md for the hooks and the contract suite (`xai.testing`).
"""

from xai.baselines import NAMED_BASELINES, baseline_images, blur, check_baseline
from xai.errors import DataError, ModelError, NotApplicable, ParameterError, PluginError, XAIError
from xai.explainer import (BATCH_SIZE, JIT_COMPILE, LAYER, SCORES, Explainer, Param, PerturbationExplainer,
                           check_layer_ref, content_digest)
from xai.head import (INTERPOLATIONS, REDUCTIONS, SIGNED_REDUCTIONS, class_score, conv_layer, no_feature_layer,
                      reduce_channels, resolve_targets)
from xai.registry import register_explainer

__all__ = [
    "BATCH_SIZE", "DataError", "Explainer", "INTERPOLATIONS", "JIT_COMPILE", "LAYER", "ModelError",
    "NAMED_BASELINES", "NotApplicable", "Param", "ParameterError", "PerturbationExplainer", "PluginError",
    "REDUCTIONS", "SCORES", "SIGNED_REDUCTIONS", "XAIError", "baseline_images", "blur", "check_baseline",
    "check_layer_ref", "class_score", "content_digest", "conv_layer", "no_feature_layer", "reduce_channels", "register_explainer",
    "resolve_targets",
]
