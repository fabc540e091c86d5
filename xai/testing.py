"""The explainer contract suite, for plugin authors and for xai's own tests.

>>> from xai.testing import check_explainer
>>> check_explainer("vanilla_gradient", xai.vgg16_gap((32, 32, 3), width=0.125))  # doctest: +SKIP

Like scikit-learn's ``check_estimator``: it raises ``AssertionError`` naming the first
broken promise, and returns the list of checks that passed.
"""

from __future__ import annotations

from typing import Optional, Union

import numpy as np

from xai.errors import DataError
from xai.explainer import Explainer
from xai.models import model_spec, prepare_model
from xai.registry import get_explainer

#: Values tried when checking that a parameter changes the output.
_ALTERNATIVES = {bool: lambda v: not v, int: lambda v: v + 1 if v else 1,
                 float: lambda v: v * 2 if v else 0.5}


def _alternative(param, value):
    if param.choices is not None:
        return next(c for c in param.choices if c != value)
    for kind, alt in _ALTERNATIVES.items():
        if type(value) is kind:  # noqa: E721 - bool must not match int
            return alt(value)
    return None


def _expect_error(fn, what: str, name: str):
    try:
        fn()
    except (DataError, ValueError, TypeError) as exc:
        if not str(exc):
            raise AssertionError(f"{name}: {what} raised {type(exc).__name__} with no message")
        return
    except Exception as exc:  # noqa: BLE001 - anything else is a crash, not a clear error
        raise AssertionError(f"{name}: {what} raised {type(exc).__name__} ({exc}); expected a "
                             "ValueError/TypeError with a clear message") from exc
    raise AssertionError(f"{name}: {what} was accepted; expected a clear error")


def check_explainer(explainer: Union[str, type], model, *, params: Optional[dict] = None,
                    n_images: int = 3, seed: int = 0) -> list[str]:
    """Run the contract checks on `explainer` (a registered name or an Explainer class).

    Checks: output shape (N, H, W), float32 dtype, finite values; determinism (the same
    call twice gives identical maps, and stochastic methods the same maps for the same
    seed); independence of batch_size; clear errors for a wrong rank, wrong channel
    count, NaN input, out-of-range targets, an unknown parameter and a bad parameter
    value; and that each declared parameter that should change the output does.
    """
    cls = get_explainer(explainer) if isinstance(explainer, str) else explainer
    if not (isinstance(cls, type) and issubclass(cls, Explainer)):
        raise TypeError(f"explainer must be a registered name or an Explainer subclass; got {explainer!r}.")
    name = getattr(cls, "name", "") or cls.__name__
    params = dict(params or {})
    model = prepare_model(model)
    spec = model_spec(model)
    rng = np.random.default_rng(seed)
    images = rng.random((n_images, *spec.input_shape), dtype=np.float32)
    targets = rng.integers(0, spec.num_classes, size=n_images).astype(np.int32)
    passed = []

    ex = cls(model, **params)
    maps = ex.explain(images, targets)
    if not isinstance(maps, np.ndarray):
        raise AssertionError(f"{name}: explain returned {type(maps).__name__}, not a numpy array")
    if maps.shape != (n_images, *spec.input_shape[:2]):
        raise AssertionError(f"{name}: maps have shape {maps.shape}; expected {(n_images, *spec.input_shape[:2])}")
    if maps.dtype != np.float32:
        raise AssertionError(f"{name}: maps have dtype {maps.dtype}; expected float32")
    if not np.all(np.isfinite(maps)):
        raise AssertionError(f"{name}: maps contain NaN or infinite values")
    passed += ["shape", "dtype", "finite"]

    if not np.array_equal(maps, cls(model, **params).explain(images, targets)):
        raise AssertionError(f"{name}: two runs with the same parameters (and seed) differ")
    passed.append("deterministic")

    if "batch_size" in cls.parameters:
        other = cls(model, **{**params, "batch_size": 1}).explain(images, targets)
        if not np.allclose(maps, other, rtol=1e-4, atol=1e-6 * (np.abs(maps).max() + 1e-12)):
            raise AssertionError(f"{name}: maps change with batch_size")
        passed.append("batch_size-independent")

    default_targets = ex.explain(images)
    if default_targets.shape != maps.shape:
        raise AssertionError(f"{name}: targets=None gives shape {default_targets.shape}")
    passed.append("predicted-class default")

    _expect_error(lambda: ex.explain(images[0], targets[:1]), "a rank-3 input", name)
    _expect_error(lambda: ex.explain(np.concatenate([images, images[..., :1]], -1), targets),
                  "a wrong channel count", name)
    nan_images = images.copy()
    nan_images[0, 0, 0, 0] = np.nan
    _expect_error(lambda: ex.explain(nan_images, targets), "a NaN input", name)
    _expect_error(lambda: ex.explain(images, np.full(n_images, spec.num_classes)), "an out-of-range target", name)
    _expect_error(lambda: ex.explain(images, targets[:1]), "too few targets", name)
    _expect_error(lambda: cls(model, **params, no_such_parameter=1), "an unknown parameter", name)
    passed.append("clear errors")

    for pname, param in cls.parameters.items():
        current = ex.resolved[pname]
        if param.choices is None and param.types is not object:
            _expect_error(lambda: cls(model, **{**params, pname: "not-a-valid-value"}),
                          f"parameter {pname}='not-a-valid-value'", name)
        if not param.affects_output:
            continue
        alt = _alternative(param, current)
        if alt is None:
            continue
        changed = cls(model, **{**params, pname: alt}).explain(images, targets)
        if np.allclose(changed, maps, rtol=1e-6, atol=0):
            raise AssertionError(f"{name}: changing parameter {pname!r} from {current!r} to {alt!r} "
                                 "does not change the output (accepted and ignored?)")
        passed.append(f"parameter {pname}")
    return passed
