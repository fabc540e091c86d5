"""Errors a user can cause, and only those.

Everything here derives from `XAIError`: the CLI prints these as one line (exit 1) and shows
any other exception, an internal bug, with its traceback. `XAIError` subclasses ValueError
so that callers who catch bad input generically still catch it.
"""


class XAIError(ValueError):
    """Base class of xai's user-facing errors."""


class ModelError(XAIError):
    """A model lacks what a method needs, or cannot be loaded."""


class NotApplicable(ModelError):
    """A method is not defined for this model's architecture (CAM on a head that is not
    global average pooling then one Dense layer). Reports show it as "not applicable",
    not as a failure."""


class DataError(XAIError):
    """A dataset, image file or batch is not what xai can use."""


class PluginError(XAIError):
    """An explainer name is unknown, duplicated, or its plugin misbehaves."""


class ParameterError(XAIError, TypeError):
    """A parameter (of an explainer, a metric or a run) is unknown, of the wrong type or out of
    range. Also a TypeError, as Python raises for an unknown keyword argument."""


class ConfigError(XAIError):
    """A comparison's configuration is inconsistent (unknown metric, protocol, backend...)."""


class StoreError(XAIError):
    """A run directory's results store belongs to another run, or cannot be read or written."""


class MissingDependencyError(XAIError):
    """An optional dependency (Ray, ...) is needed for what was asked and is not installed."""
