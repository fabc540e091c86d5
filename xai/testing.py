"""The explainer contract suite, for plugin authors and for xai's own tests.

Like scikit-learn's ``check_estimator`` / ``parametrize_with_checks``: `explainer_checks`
yields independent, named checks; `parametrize_with_checks` makes each one its own pytest
case in a plugin author's suite; `check_explainer` runs them all and returns the names of
those that passed (raising ``AssertionError`` naming the first broken promise).

>>> from xai.testing import parametrize_with_checks
>>> @parametrize_with_checks(["my_method"], lambda: xai.vgg16_gap((32, 32, 3), width=0.125))
... def test_contract(check):                                          # doctest: +SKIP
...     check()
"""

from __future__ import annotations

import functools
from typing import Callable, Iterator, Optional, Sequence, Union

import numpy as np

from xai.errors import XAIError
from xai.explainer import Explainer

#: Values tried when checking that a parameter changes the output.
_ALTERNATIVES = {bool: lambda v: not v, int: lambda v: v + 1 if v else 1,
                 float: lambda v: v * 2 if v else 0.5}


def _alternative(param, value):
    if param.choices is not None:
        return next((c for c in param.choices if c != value), None)
    for kind, alt in _ALTERNATIVES.items():
        if type(value) is kind:  # noqa: E721 - bool must not match int
            return alt(value)
    return None


def _explainer_class(explainer) -> type:
    from xai.registry import get_explainer

    cls = get_explainer(explainer) if isinstance(explainer, str) else explainer
    if not (isinstance(cls, type) and issubclass(cls, Explainer)):
        raise TypeError(f"explainer must be a registered name or an Explainer subclass; got {explainer!r}.")
    return cls


def _expect_user_error(fn, what: str, name: str):
    try:
        fn()
    except XAIError as exc:
        if not str(exc):
            raise AssertionError(f"{name}: {what} raised {type(exc).__name__} with no message")
        return
    except Exception as exc:  # noqa: BLE001 - anything else is a crash, not a clear error
        raise AssertionError(f"{name}: {what} raised {type(exc).__name__} ({exc}); expected an "
                             "xai.errors.XAIError with a clear message") from exc
    raise AssertionError(f"{name}: {what} was accepted; expected a clear error")


class _Case:
    """What the checks of one explainer share, built on first use: the model, a batch, the
    reference maps. Sharing saves time; each check still asserts one thing."""

    def __init__(self, cls, model, params, n_images, seed):
        self.cls, self._model, self.params = cls, model, dict(params or {})
        self.n_images, self.seed = n_images, seed
        self.name = cls.name or cls.__name__

    @functools.cached_property
    def model(self):
        from xai.models import prepare_model

        return prepare_model(self._model() if callable(self._model) and not hasattr(self._model, "layers")
                             else self._model)

    @functools.cached_property
    def spec(self):
        from xai.models import model_spec

        return model_spec(self.model)

    @functools.cached_property
    def batch(self):
        rng = np.random.default_rng(self.seed)
        low, high = self.spec.input_range
        images = np.float32(low) + np.float32(high - low) * rng.random(
            (self.n_images, *self.spec.input_shape), dtype=np.float32)
        targets = rng.integers(0, self.spec.num_classes, size=self.n_images).astype(np.int32)
        return images, targets

    def build(self, **overrides):
        return self.cls(self.model, **{**self.params, **overrides})

    @functools.cached_property
    def explainer(self):
        return self.build()

    @functools.cached_property
    def maps(self):
        return self.explainer.explain(*self.batch)


def explainer_checks(explainer: Union[str, type], model, *, params: Optional[dict] = None,
                     n_images: int = 3, seed: int = 0) -> Iterator[tuple[str, Callable[[], None]]]:
    """Yield ``(check name, check)`` pairs; each check is a no-argument callable that raises
    ``AssertionError`` when the explainer breaks that promise.

    Parameters
    ----------
    explainer : str or Explainer subclass
    model : keras.Model, path, or a no-argument callable returning one (built on first use,
        so collecting the checks costs nothing)
    params : dict, optional
        Parameters every instance is built with (e.g. fewer samples for speed).

    Checks: output shape (N, H, W), float32, finite; the same call twice gives identical
    maps (stochastic methods: for the same seed); batch_size never changes maps; targets
    None works; clear `XAIError`s for a wrong rank, a wrong channel count, a NaN input,
    an out-of-range target, too few targets, an unknown parameter and an invalid value of
    each typed parameter; each parameter that should change the output does.
    """
    cls = _explainer_class(explainer)
    case = _Case(cls, model, params, n_images, seed)
    name = case.name

    def output():
        maps = case.maps
        if not isinstance(maps, np.ndarray):
            raise AssertionError(f"{name}: explain returned {type(maps).__name__}, not a numpy array")
        expected = (case.n_images, *case.spec.input_shape[:2])
        if maps.shape != expected:
            raise AssertionError(f"{name}: maps have shape {maps.shape}; expected {expected}")
        if maps.dtype != np.float32:
            raise AssertionError(f"{name}: maps have dtype {maps.dtype}; expected float32")
        if not np.all(np.isfinite(maps)):
            raise AssertionError(f"{name}: maps contain NaN or infinite values")

    def deterministic():
        if not np.array_equal(case.maps, case.build().explain(*case.batch)):
            raise AssertionError(f"{name}: two runs with the same parameters (and seed) differ")

    def batch_size_independent():
        other = case.build(batch_size=1).explain(*case.batch)
        maps = case.maps
        # A map that is a difference of probabilities (a KernelSHAP coefficient) moves by the
        # float32 rounding of the model's outputs, which changes with the rows per call (about
        # 1e-6 of the map's maximum); a seeding bug moves it by the map's own scale.
        if not np.allclose(maps, other, rtol=1e-4, atol=1e-5 * (np.abs(maps).max() + 1e-12)):
            raise AssertionError(f"{name}: maps change with batch_size")

    def predicted_class_default():
        images, _ = case.batch
        maps = case.explainer.explain(images)
        if maps.shape != case.maps.shape or not np.all(np.isfinite(maps)):
            raise AssertionError(f"{name}: targets=None gives shape {maps.shape} or non-finite maps")

    yield "output shape, dtype and values", output
    yield "deterministic", deterministic
    yield "batch_size does not change maps", batch_size_independent
    yield "targets=None explains the predicted class", predicted_class_default

    def bad_input(what, make):
        def check():
            images, targets = case.batch
            args = make(images, targets)
            _expect_user_error(lambda: case.explainer.explain(*args), what, name)
        return check

    def with_nan(images, targets):
        images = images.copy()
        images[0, 0, 0, 0] = np.nan
        return images, targets

    yield "rejects a rank-3 input", bad_input("a rank-3 input", lambda x, t: (x[0], t[:1]))
    yield "rejects a wrong channel count", bad_input(
        "a wrong channel count", lambda x, t: (np.concatenate([x, x[..., :1]], -1), t))
    yield "rejects a NaN input", bad_input("a NaN input", with_nan)
    yield "rejects an out-of-range target", bad_input(
        "an out-of-range target", lambda x, t: (x, np.full(len(x), case.spec.num_classes)))
    yield "rejects too few targets", bad_input("too few targets", lambda x, t: (x, t[:1]))
    yield "rejects an unknown parameter", lambda: _expect_user_error(
        lambda: case.build(no_such_parameter=1), "an unknown parameter", name)

    for pname, param in cls.parameters.items():
        if param.choices is None and param.types is not object:
            yield f"rejects an invalid {pname}", functools.partial(
                _expect_user_error, lambda p=pname: case.build(**{p: "not-a-valid-value"}),
                f"parameter {pname}='not-a-valid-value'", name)
        if param.affects_output:
            yield f"parameter {pname} changes the output", functools.partial(_changes_output, case, pname)


def _changes_output(case: _Case, pname: str) -> None:
    current = case.explainer.resolved[pname]
    alt = _alternative(case.cls.parameters[pname], current)
    if alt is None:
        return  # no generic alternative for this type (a layer name, a baseline...)
    changed = case.build(**{pname: alt}).explain(*case.batch)
    if np.allclose(changed, case.maps, rtol=1e-6, atol=0):
        raise AssertionError(f"{case.name}: changing parameter {pname!r} from {current!r} to {alt!r} "
                             "does not change the output (accepted and ignored?)")


def check_explainer(explainer: Union[str, type], model, *, params: Optional[dict] = None,
                    n_images: int = 3, seed: int = 0) -> list[str]:
    """Run every check of `explainer_checks`; return the names of those that passed."""
    passed = []
    for name, check in explainer_checks(explainer, model, params=params, n_images=n_images, seed=seed):
        check()
        passed.append(name)
    return passed


def parametrize_with_checks(explainers: Sequence[Union[str, type]], model, *,
                            params: Optional[dict] = None, n_images: int = 3):
    """A ``pytest.mark.parametrize`` over every check of every explainer, one test case each.

    Parameters
    ----------
    explainers : sequence of names or Explainer subclasses
    model : keras.Model, or a no-argument callable returning one (called once, on first use)
    params : dict, optional
        Name -> parameters, per explainer (e.g. ``{"smoothgrad": {"n_samples": 4}}``).
    """
    import pytest

    if callable(model) and not hasattr(model, "layers"):
        model = functools.lru_cache(maxsize=1)(model)  # one model for every explainer's checks
    cases = []
    for explainer in explainers:
        cls = _explainer_class(explainer)
        label = cls.name or cls.__name__
        for check_name, check in explainer_checks(cls, model, params=(params or {}).get(label, {}),
                                                  n_images=n_images):
            cases.append(pytest.param(check, id=f"{label}: {check_name}"))
    return pytest.mark.parametrize("check", cases)
