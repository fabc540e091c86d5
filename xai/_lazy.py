"""TensorFlow and Keras, imported on first use.

`import xai`, `xai --help` and `xai list` must not pay TensorFlow's ~3 s start-up, yet the
library's modules and built-in plugins use `tf.` and `keras.` in their method bodies. A
module-level ``from xai._lazy import tf`` binds a stand-in that imports the real module the
first time an attribute is read; from then on it forwards every attribute.
"""

from __future__ import annotations

import importlib
import types


class LazyModule(types.ModuleType):
    """A stand-in for module `name` that imports it on first attribute access."""

    def __init__(self, name: str):
        super().__init__(name)
        self.__dict__["_module"] = None

    def _load(self):
        module = self.__dict__["_module"]
        if module is None:
            module = importlib.import_module(self.__name__)
            self.__dict__["_module"] = module
        return module

    def __getattr__(self, attr):
        return getattr(self._load(), attr)

    def __dir__(self):
        return dir(self._load())

    def __repr__(self) -> str:
        state = "loaded" if self.__dict__["_module"] is not None else "not loaded yet"
        return f"<lazy module {self.__name__!r} ({state})>"


tf = LazyModule("tensorflow")
keras = LazyModule("keras")
