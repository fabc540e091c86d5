"""The explainer registry, filled from the ``xai.explainers`` entry-point group.

Built-in methods (``xai.plugins``) are declared in xai's own pyproject exactly as a
third-party package declares its own, so discovery is proven by use. Entry points are
loaded lazily on the first look-up; a plugin that fails to import is recorded with its
error (see `plugin_errors`) and the others still load. Set ``XAI_DISABLE_PLUGIN_AUTOLOAD=1``
to load only xai's own built-ins (like ``PYTEST_DISABLE_PLUGIN_AUTOLOAD``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import os
import warnings
from importlib import metadata
from typing import Optional

from xai.errors import PluginError
from xai.explainer import Explainer

GROUP = "xai.explainers"
AUTOLOAD_ENV = "XAI_DISABLE_PLUGIN_AUTOLOAD"
OWN_DISTRIBUTION = "xai-saliency-bench"


@dataclasses.dataclass(frozen=True)
class PluginInfo:
    """Where a registered explainer came from (printed in reports)."""

    name: str
    cls: type
    distribution: Optional[str]
    version: Optional[str]
    entry_point: Optional[str]

    @property
    def qualname(self) -> str:
        return f"{self.cls.__module__}.{self.cls.__qualname__}"


class Registry:
    """Name -> explainer class, with provenance. One instance: `xai.registry.REGISTRY`."""

    def __init__(self, group: str = GROUP):
        self.group = group
        self._entries: dict[str, PluginInfo] = {}
        self._errors: dict[str, str] = {}
        self._loaded = False

    def register(self, name: str, cls: type, *, distribution=None, version=None, entry_point=None) -> type:
        if not isinstance(name, str) or not name.isidentifier():
            raise PluginError(f"explainer names must be identifiers like 'grad_cam'; got {name!r}.")
        if not (isinstance(cls, type) and issubclass(cls, Explainer)):
            raise PluginError(f"{name!r}: only subclasses of xai.Explainer can be registered; got {cls!r}.")
        existing = self._entries.get(name)
        if existing is not None and existing.cls is cls:
            # The same class again (decorator, then its entry point): keep the richer provenance.
            if distribution and not existing.distribution:
                self._entries[name] = dataclasses.replace(
                    existing, distribution=distribution, version=version, entry_point=entry_point)
            return cls
        if existing is not None:
            # A notebook cell run again defines a new class with the same qualified name: the
            # edited code must win, or the user keeps running what they just changed.
            warnings.warn(f"xai: explainer {name!r} ({existing.qualname}) is replaced by "
                          f"{cls.__module__}.{cls.__qualname__}.", RuntimeWarning, stacklevel=3)
        cls.name = name
        self._entries[name] = PluginInfo(name, cls, distribution, version, entry_point)
        return cls

    def load_entry_points(self) -> None:
        if self._loaded:
            return
        self._loaded = True
        autoload = os.environ.get(AUTOLOAD_ENV, "").lower() not in ("1", "true", "yes")
        for ep in metadata.entry_points(group=self.group):
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            if not autoload and dist_name != OWN_DISTRIBUTION:
                continue
            try:
                obj = ep.load()
                self.register(ep.name, obj, distribution=dist_name,
                              version=dist.version if dist is not None else None,
                              entry_point=ep.value)
            except Exception as exc:  # a broken plugin must not take the others down
                message = f"{type(exc).__name__}: {exc}"
                self._errors[ep.name] = message
                warnings.warn(f"xai: explainer plugin {ep.name!r} ({ep.value}) failed to load: "
                              f"{message}", RuntimeWarning, stacklevel=2)

    def names(self, filter: str = "*") -> list[str]:
        self.load_entry_points()
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, filter))

    def info(self, name: str) -> PluginInfo:
        self.load_entry_points()
        if name not in self._entries:
            hint = f" ({name!r} failed to load: {self._errors[name]})" if name in self._errors else ""
            raise PluginError(f"unknown explainer {name!r}{hint}; registered: "
                              f"{', '.join(self.names()) or 'none'}.")
        return self._entries[name]

    def errors(self) -> dict[str, str]:
        self.load_entry_points()
        return dict(self._errors)

    def unregister(self, name: str) -> None:
        self._entries.pop(name, None)


REGISTRY = Registry()


def register_explainer(name: str):
    """Class decorator: register an `Explainer` subclass under `name`.

    A packaged plugin needs no decorator: its entry point in the ``xai.explainers`` group
    names it. The decorator is for explainers defined in a script or a notebook.

    >>> import xai
    >>> @xai.register_explainer("doc_example_zeros")
    ... class Zeros(xai.Explainer):
    ...     def compute(self, images, targets):
    ...         return images[..., 0] * 0.0
    >>> "doc_example_zeros" in xai.list_explainers("doc_*")
    True
    >>> xai.registry.REGISTRY.unregister("doc_example_zeros")
    """
    def decorate(cls):
        # Installed plugins first, so that a class defined here replaces one of theirs, not
        # the other way round when they load later.
        REGISTRY.load_entry_points()
        return REGISTRY.register(name, cls)
    return decorate


def list_explainers(filter: str = "*") -> list[str]:
    """Registered explainer names matching a shell-style `filter`, sorted."""
    return REGISTRY.names(filter)


def get_explainer(name: str) -> type:
    return REGISTRY.info(name).cls


def create_explainer(name: str, model, **params) -> Explainer:
    """Instantiate the explainer registered as `name` on `model` with `params`."""
    return get_explainer(name)(model, **params)


def plugin_info(name: str) -> PluginInfo:
    return REGISTRY.info(name)


def plugin_errors() -> dict[str, str]:
    """Plugins that failed to load: entry-point name -> error."""
    return REGISTRY.errors()
