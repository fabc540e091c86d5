"""xai: comparative explainability for Keras image classifiers.

Explainer plugins share one contract (`Explainer`), live in one registry
(`register_explainer`, `list_explainers`, `create_explainer`), and are scored by the
metrics in `xai.evaluation`.

``import xai`` has no side effects and is cheap: it sets no environment variable, leaves
matplotlib's backend alone, and imports neither TensorFlow, Keras nor matplotlib. The
public names below are looked up in their modules on first use (PEP 562), which is when
TensorFlow loads.
"""

import importlib as _importlib
import typing as _typing

from xai.errors import (ConfigError, DataError, MissingDependencyError, ModelError, ParameterError,
                        PluginError, StoreError, XAIError)

__version__ = "0.1.0"

#: Public name -> the module that defines it, imported when the name is first read.
_LAZY = {
    "Explainer": "xai.explainer",
    "Param": "xai.explainer",
    "PerturbationExplainer": "xai.explainer",
    "ModelSpec": "xai.models",
    "vgg16_gap": "xai.models",
    "compare": "xai.api",
    "Comparison": "xai.api",
    "explain": "xai.api",
    "Explanation": "xai.api",
    "create_explainer": "xai.registry",
    "list_explainers": "xai.registry",
    "plugin_errors": "xai.registry",
    "plugin_info": "xai.registry",
    "register_explainer": "xai.registry",
}
#: Submodules reachable as attributes without importing them first (``xai.models.model_spec``).
_SUBMODULES = ("explainer", "models", "registry")

__all__ = [
    "Comparison", "ConfigError", "DataError", "Explainer", "MissingDependencyError", "ModelError", "ModelSpec",
    "Param", "ParameterError", "PerturbationExplainer", "PluginError", "StoreError", "XAIError",
    "compare", "create_explainer", "explain", "Explanation", "list_explainers", "models", "plugin_errors", "plugin_info",
    "register_explainer", "vgg16_gap", "__version__",
]

if _typing.TYPE_CHECKING:  # what type checkers and IDEs see; at run time these load on first use
    from xai import explainer, models, registry  # noqa: F401
    from xai.api import Comparison, Explanation, compare, explain  # noqa: F401
    from xai.explainer import Explainer, Param, PerturbationExplainer  # noqa: F401
    from xai.models import ModelSpec, vgg16_gap  # noqa: F401
    from xai.registry import (create_explainer, list_explainers, plugin_errors,  # noqa: F401
                              plugin_info, register_explainer)


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(_importlib.import_module(_LAZY[name]), name)
    elif name in _SUBMODULES:
        value = _importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later reads skip this function
    return value


def __dir__() -> list:
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))
