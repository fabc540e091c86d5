"""The explainer contract: every method, built-in or third-party, is an `Explainer`.

A subclass declares its parameters (`Param`s, validated at construction with messages
that name the parameter, what is allowed and what was passed), which declared model
layers it needs, and implements `_explain_batch` on one tensor batch. The base class does
the rest: input checks, target resolution, batching that bounds memory, numpy output.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar, Mapping, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

from xai.errors import DataError
from xai.models import ModelSpec, model_spec, prepare_model, require_layers

_MISSING = object()


@dataclasses.dataclass(frozen=True)
class Param:
    """A declared explainer parameter: its default and what values it allows.

    Parameters
    ----------
    default : object
    types : type or tuple of types, optional
        Allowed types (``bool`` is never accepted where ``int``/``float`` is asked).
    choices : tuple, optional
    low, high : float, optional
        Inclusive bounds for numbers.
    allow_none : bool, default False
    doc : str
    """

    default: Any
    types: Any = object
    choices: Optional[tuple] = None
    low: Optional[float] = None
    high: Optional[float] = None
    allow_none: bool = False
    doc: str = ""
    #: False for parameters that only change speed or memory (the contract suite then
    #: checks the output does NOT change with them).
    affects_output: bool = True

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        text = " or ".join(t.__name__ for t in types)
        if self.low is not None and self.high is not None:
            text += f" in [{self.low}, {self.high}]"
        elif self.low is not None:
            text += f" >= {self.low}"
        elif self.high is not None:
            text += f" <= {self.high}"
        return text + (" or None" if self.allow_none else "")

    def validate(self, owner: str, name: str, value: Any) -> Any:
        if value is None and self.allow_none:
            return value
        problem = None
        if self.choices is not None:
            if value not in self.choices:
                problem = True
        else:
            types = self.types if isinstance(self.types, tuple) else (self.types,)
            numeric = any(t in (int, float) for t in types)
            if (numeric and isinstance(value, (bool, np.bool_))) or not isinstance(value, types):
                if float in types and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                    value = float(value)
                else:
                    raise TypeError(f"{owner}: parameter {name!r} must be {self.allowed()}; "
                                    f"got {value!r} ({type(value).__name__}).")
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                if not np.isfinite(value):
                    problem = True
                if self.low is not None and value < self.low:
                    problem = True
                if self.high is not None and value > self.high:
                    problem = True
        if problem:
            raise ValueError(f"{owner}: parameter {name!r} must be {self.allowed()}; got {value!r}.")
        return value


BATCH_SIZE = Param(32, int, low=1, affects_output=False,
                   doc="Images (or perturbed copies) per model call; bounds memory.")
JIT_COMPILE = Param(False, bool, affects_output=False,
                    doc="Compile with XLA (faster on most hardware; results equal to rounding).")


class Explainer:
    """Base class of every explanation method.

    Parameters
    ----------
    model : keras.Model or path
        A classifier taking (N, H, W, C) float32 images in [0, 1] and returning class
        scores. Nested models are flattened; layers are read from its `ModelSpec`.
    spec : ModelSpec, optional
        Override the model's declared or derived facts (name layers explicitly).
    **params
        The method's parameters (see its ``parameters``); stored as given in ``params``.

    Attributes
    ----------
    name : str
        Registry name (set by `xai.register_explainer`).
    parameters : dict of str -> Param
    needs : tuple of str
        `ModelSpec` fields the method requires (e.g. ``"feature_layer"``).
    params : dict
        The parameters exactly as passed.
    """

    name: ClassVar[str] = ""
    parameters: ClassVar[Mapping[str, Param]] = {"batch_size": BATCH_SIZE}
    needs: ClassVar[Sequence[str]] = ()
    #: Whether the output depends on a random seed (the contract suite checks determinism).
    stochastic: ClassVar[bool] = False

    def __init__(self, model, spec: Optional[ModelSpec] = None, **params):
        owner = type(self).__name__
        unknown = sorted(set(params) - set(self.parameters))
        if unknown:
            raise TypeError(f"{owner} got unknown parameter(s) {unknown}; it takes "
                            f"{sorted(self.parameters)}.")
        self.params = dict(params)
        self.resolved = {name: p.validate(owner, name, params.get(name, p.default))
                         for name, p in self.parameters.items()}
        self.model: keras.Model = prepare_model(model, spec)
        self.spec: ModelSpec = model_spec(self.model)
        require_layers(self.spec, self.name or owner, *self.needs)
        self._setup()

    # -- for subclasses ----------------------------------------------------------------
    def _setup(self) -> None:
        """Build compiled functions once (called at the end of ``__init__``)."""

    def _copies_per_image(self) -> int:
        """Model rows one image costs (noise samples, path points, masks...); 1 by default."""
        return 1

    def _images_per_call(self) -> int:
        """How many images `explain` hands to one `_explain_batch` call: as many as fill
        ``batch_size`` model rows with their copies, at least one."""
        return max(1, self.resolved["batch_size"] // self._copies_per_image())

    def _explain_batch(self, images: tf.Tensor, targets: tf.Tensor, offset: int) -> tf.Tensor:
        """Maps (n, H', W') for one batch. ``targets`` hold -1 for "predicted class";
        ``offset`` is the batch's first index in the whole call (for per-image seeds)."""
        raise NotImplementedError

    # -- the contract ----------------------------------------------------------------------
    def explain(self, images, targets=None) -> np.ndarray:
        """Explain a batch.

        Parameters
        ----------
        images : array-like (N, H, W, C) float32
            Values in the model's input range ([0, 1] for xai models).
        targets : array-like of int (N,), int, or None
            Class to explain per image; None explains the model's predicted class.

        Returns
        -------
        numpy.ndarray (N, H, W) float32
            Raw maps at input resolution (no normalisation).
        """
        x = check_images(images, self.spec)
        t = check_targets(targets, len(x), self.spec.num_classes)
        batch_size = self._images_per_call()
        maps = []
        for start in range(0, len(x), batch_size):
            batch = tf.convert_to_tensor(x[start:start + batch_size])
            result = self._explain_batch(batch, tf.convert_to_tensor(t[start:start + batch_size]), start)
            maps.append(np.asarray(result, dtype=np.float32))
        return np.concatenate(maps, axis=0) if maps else np.zeros((0, *x.shape[1:3]), np.float32)

    __call__ = explain

    def get_params(self) -> dict:
        """All parameters with defaults filled in (what actually ran)."""
        return dict(self.resolved)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


def copy_chunks(n_images: int, n_copies: int, batch_size: int):
    """Every (image, copy) pair of a batch, image-major, in chunks of `batch_size` rows.

    Sampling and perturbation methods push many copies of each image through the model;
    chunking the pairs (not the images) keeps every model call full and memory bounded
    by `batch_size` whatever the number of copies. Yields (rows, copies) int32 tensors.
    """
    rows = np.repeat(np.arange(n_images, dtype=np.int32), n_copies)
    copies = np.tile(np.arange(n_copies, dtype=np.int32), n_images)
    for start in range(0, len(rows), batch_size):
        yield (tf.constant(rows[start:start + batch_size]),
               tf.constant(copies[start:start + batch_size]))


def check_images(images, spec: ModelSpec) -> np.ndarray:
    """Validate a batch against the model: rank 4, size and channels, finite values."""
    if isinstance(images, tf.Tensor):
        images = images.numpy()
    try:
        x = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"images must be a numeric array (N, H, W, C); got {type(images).__name__}.") from exc
    expected = tuple(spec.input_shape)
    if x.ndim == 3 and x.shape == expected:
        raise DataError(f"images must be a batch (N, H, W, C); got one image of shape {x.shape}. "
                        "Add a batch axis: images[None].")
    if x.ndim != 4:
        raise DataError(f"images must have rank 4 (N, H, W, C); got shape {x.shape}.")
    if x.shape[-1] != expected[-1]:
        raise DataError(f"images have {x.shape[-1]} channel(s) but the model takes {expected[-1]}; "
                        f"got shape {x.shape}.")
    if x.shape[1:3] != expected[:2]:
        raise DataError(f"images are {x.shape[1]}x{x.shape[2]} but the model takes "
                        f"{expected[0]}x{expected[1]}; resize them (xai.data.load_image(path, size)).")
    if x.shape[0] == 0:
        raise DataError("images is an empty batch.")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x).all(axis=(1, 2, 3))))
        raise DataError(f"images contain NaN or infinite values ({bad} image(s)).")
    return x


def check_targets(targets, n: int, num_classes: int) -> np.ndarray:
    """Targets as int32 (N,), -1 where the predicted class is to be used."""
    if targets is None:
        return np.full((n,), -1, np.int32)
    t = np.asarray(targets)
    if t.ndim == 0:
        t = np.full((n,), t)
    if t.ndim != 1 or len(t) != n:
        raise DataError(f"targets must be one class index per image ({n}); got shape {t.shape}.")
    if not np.issubdtype(t.dtype, np.integer):
        raise DataError(f"targets must be integer class indices; got dtype {t.dtype}.")
    if np.any((t < 0) | (t >= num_classes)):
        raise DataError(f"targets must be in [0, {num_classes - 1}] (the model has {num_classes} "
                        f"classes); got {sorted(set(t[(t < 0) | (t >= num_classes)].tolist()))[:5]}.")
    return t.astype(np.int32)
