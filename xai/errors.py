"""Exceptions xai raises for user mistakes. Each subclasses ValueError so callers that
catch bad input generically still catch them, and the CLI turns them into one-line errors."""


class XAIError(ValueError):
    """Base class of xai's user-facing errors."""


class ModelError(XAIError):
    """A model lacks what a method needs, or cannot be loaded."""


class DataError(XAIError):
    """A dataset, image file or batch is not what xai can use."""


class PluginError(XAIError):
    """An explainer name is unknown, duplicated, or its plugin misbehaves."""
