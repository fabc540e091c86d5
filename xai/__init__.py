"""xai: comparative explainability for Keras image classifiers.

Explainer plugins share one contract (`Explainer`), live in one registry
(`register_explainer`, `list_explainers`, `create_explainer`), and are scored by the
metrics in `xai.evaluation`.
"""

import os as _os

# TensorFlow's C++ start-up chatter (CUDA probing, oneDNN notices) buries xai's own output.
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from xai import models  # noqa: E402
from xai.errors import DataError, ModelError, PluginError, XAIError  # noqa: E402
from xai.explainer import Explainer, Param  # noqa: E402
from xai.models import ModelSpec, vgg16_gap  # noqa: E402
from xai.registry import (create_explainer, list_explainers, plugin_errors,  # noqa: E402
                          plugin_info, register_explainer)

__version__ = "0.1.0"

__all__ = [
    "DataError", "Explainer", "ModelError", "ModelSpec", "Param", "PluginError", "XAIError",
    "create_explainer", "list_explainers", "models", "plugin_errors", "plugin_info",
    "register_explainer", "vgg16_gap", "__version__",
]
