"""Robustness: how much a map moves when the image moves a little.

Average stability (Bhatt et al. 2020) and max sensitivity (Yeh et al. 2019) are the mean and
the maximum of one set of distances: each image is perturbed ``n_samples`` times, every
perturbed copy is explained for the image's target, and its map is compared with the map of
the image itself. Sampling and distances follow Xplique 2.0.2's ``AverageStability``:

- noise is uniform in [0, radius) for every input value, independently: a one-sided box
  corner, not the ball around the image of the papers;
- the perturbed images are not clipped to the model's input range (Xplique does not clip;
  with radius 0.1 on [0, 1] images they overshoot by at most 0.1);
- the distance is the L2 (or L1) norm of the difference of the whole maps;
- the perturbed copies keep the image's target, whatever the model predicts for them
  (Bhatt's neighbourhood keeps only copies with the same prediction).

Where Xplique draws one set of noise shared by every image, image i here gets noise from a
generator seeded by ``(seed, hash of the image's float32 bytes)``: an image scores the same
alone or in any batch, at any position (for explainers whose maps do not depend on their
position in a call: all but the seeded stochastic ones).
"""

from __future__ import annotations

import hashlib

import numpy as np

from xai.evaluation.registry import MetricInputs, MetricOutput, register_metric
from xai.errors import ConfigError, DataError, ParameterError
from xai.explainer import Param

DISTANCES = ("l1", "l2")
#: Floor of the unperturbed map's norm in relative distances (an all-zero map).
EPS = 1e-12


def _positive(owner, value):
    if value <= 0:
        raise ParameterError(f"{owner}: parameter 'radius' must be > 0 (input units); got {value!r}.")


PARAMS = {
    "radius": Param(0.1, float, check=_positive),
    "n_samples": Param(20, int, low=1),
    "distance": Param("l2", choices=DISTANCES),
    "seed": Param(0, int, low=0),
    "relative": Param(False, bool),
    "batch_size": Param(64, int, low=1),
}


def image_noise(image, *, radius: float, n_samples: int, seed: int) -> np.ndarray:
    """The ``n_samples`` noise draws (n_samples, *image.shape) float32 of one image.

    Uniform in [0, radius) per value (Xplique's sampling), from a generator seeded by
    `seed` and a hash of the image's float32 bytes, so that it depends on nothing else.
    """
    image = np.ascontiguousarray(image, dtype=np.float32)
    digest = hashlib.blake2b(image.tobytes(), digest_size=8).digest()
    rng = np.random.default_rng([seed, int.from_bytes(digest, "little")])
    return rng.random((n_samples, *image.shape), dtype=np.float32) * np.float32(radius)


def _norm(values, distance: str) -> np.ndarray:
    """L1 or L2 norm over the last axis."""
    if distance == "l1":
        return np.abs(values).sum(axis=-1)
    return np.sqrt((values ** 2).sum(axis=-1))


def sensitivities(explainer, images, targets, *, radius=0.1, n_samples=20, distance="l2", seed=0,
                  relative=False, batch_size=64) -> np.ndarray:
    """Distances (N, n_samples) between each image's map and its perturbed copies' maps.

    The shared step of `average_stability` and `max_sensitivity` (see them for parameters).
    Each ``explain`` call holds ``batch_size // (n_samples + 1)`` images (at least one),
    each followed by its copies. The image's own map is computed in the same call as its
    copies' maps: a stochastic explainer that seeds each map by its position in the call
    (the random baseline, SmoothGrad) then draws independent noise for all of them, where
    a separate call would give copy j the noise of image j.
    """
    owner = "robustness metric"
    given = dict(radius=radius, n_samples=n_samples, distance=distance, seed=seed, relative=relative,
                 batch_size=batch_size)
    radius, n_samples, distance, seed, relative, batch_size = (
        PARAMS[name].validate(owner, name, value) for name, value in given.items())
    x = np.asarray(images, dtype=np.float32)
    if x.ndim != 4 or len(x) == 0:
        raise DataError(f"images must be a non-empty batch (N, H, W, C); got shape {x.shape}.")
    n = len(x)
    if targets is None:
        raise ParameterError(f"{owner}: targets are required: a perturbed copy is explained for its "
                             "image's class, not for whatever the model predicts for the copy.")
    t = np.asarray(targets)
    t = np.full(n, t) if t.ndim == 0 else t
    if t.shape != (n,):
        raise DataError(f"targets must be one class index per image ({n}); got shape {t.shape}.")

    rows = n_samples + 1  # the image, then its copies
    per_call = max(1, batch_size // rows)
    distances = np.empty((n, n_samples))
    for start in range(0, n, per_call):
        idx = np.arange(start, min(start + per_call, n))
        batch = np.concatenate([np.concatenate([x[i][None], x[i] + image_noise(
            x[i], radius=radius, n_samples=n_samples, seed=seed)]) for i in idx])
        maps = np.asarray(explainer.explain(batch, np.repeat(t[idx], rows)), np.float64)
        maps = maps.reshape(len(idx), rows, -1)
        distances[idx] = _norm(maps[:, 1:] - maps[:, :1], distance)
        if relative:
            base = _norm(maps[:, 0], distance)[:, None]
            # An all-zero map has no scale: 0 when its copies are all-zero too, else undefined
            # (NaN, counted as missing) rather than a 1e12 that would swamp every mean.
            distances[idx] = np.where(base > EPS, distances[idx] / np.maximum(base, EPS),
                                      np.where(distances[idx] == 0, 0.0, np.nan))
    return distances


def average_stability(explainer, images, targets, *, radius=0.1, n_samples=20, distance="l2", seed=0,
                      relative=False, batch_size=64) -> np.ndarray:
    """Mean distance between an image's map and the maps of nearby images; lower is stabler.

    Bhatt et al., "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020,
    definition 2 (average sensitivity), estimated as Xplique 2.0.2's ``AverageStability``
    does: the mean over ``n_samples`` copies ``x + u``, ``u`` uniform in [0, radius) per
    value, not clipped, explained for the image's target (see the module docstring).

    Parameters
    ----------
    explainer : object with ``explain(images, targets) -> (N, H, W)``
        An `xai.Explainer`, or anything with that method.
    images : array-like (N, H, W, C)
    targets : array-like of int (N,) or int
        The class explained, at the image and at every copy.
    radius : float, default 0.1
        Largest noise value, in the model's input units.
    n_samples : int, default 20
    distance : {"l2", "l1"}, default "l2"
        Norm of the difference of the flattened maps.
    seed : int, default 0
        With a hash of each image's bytes, seeds that image's noise.
    relative : bool, default False
        Divide each distance by the same norm of the unperturbed map (floored at 1e-12),
        so that maps on different scales compare; an all-zero map then scores 0 if its
        copies' maps are zero too, and a very large value otherwise.
    batch_size : int, default 64
        Most images per ``explain`` call, copies included (bounds memory); at least one
        image with its ``n_samples`` copies.

    Returns
    -------
    numpy.ndarray (N,) float64

    Raises
    ------
    ParameterError
        For a bad parameter or missing targets.
    DataError
        For images that are not a batch, or targets / maps of another length.

    Examples
    --------
    An explainer whose map is the image itself moves exactly as the noise does, whose L2
    norm over 16 values is about ``radius * sqrt(16 / 3) = 0.23``:

    >>> class Identity:
    ...     def explain(self, images, targets):
    ...         return images[..., 0]
    >>> images = np.zeros((2, 4, 4, 1), np.float32)
    >>> average_stability(Identity(), images, [0, 0], radius=0.1, n_samples=100).round(2).tolist()
    [0.23, 0.23]
    """
    return sensitivities(explainer, images, targets, radius=radius, n_samples=n_samples, distance=distance,
                         seed=seed, relative=relative, batch_size=batch_size).mean(axis=1)


def max_sensitivity(explainer, images, targets, *, radius=0.1, n_samples=20, distance="l2", seed=0,
                    relative=False, batch_size=64) -> np.ndarray:
    """Largest distance between an image's map and the maps of nearby images; lower is stabler.

    Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019
    (SENS_MAX), estimated by Monte Carlo: the maximum over the same copies, the same noise
    and the same distances as `average_stability` (same parameters), so that for one seed
    ``max_sensitivity >= average_stability`` image by image. A sampled maximum
    underestimates the supremum of the paper, more so in high dimension.

    Examples
    --------
    >>> class Identity:
    ...     def explain(self, images, targets):
    ...         return images[..., 0]
    >>> images = np.zeros((1, 4, 4, 1), np.float32)
    >>> bool(max_sensitivity(Identity(), images, 0) >= average_stability(Identity(), images, 0))
    True
    """
    return sensitivities(explainer, images, targets, radius=radius, n_samples=n_samples, distance=distance,
                         seed=seed, relative=relative, batch_size=batch_size).max(axis=1)


#: Settings of the registered metrics; the radius is this fraction of the model's input range.
RADIUS_FRACTION = 0.1
N_SAMPLES = 20


def _registered(fn, inputs: MetricInputs) -> MetricOutput:
    if inputs.explainer is None:
        raise ConfigError(f"{fn.__name__} re-explains perturbed images and needs the method's explainer "
                          "(MetricInputs.explainer).")
    low, high = inputs.explainer.spec.input_range
    radius = RADIUS_FRACTION * (high - low)
    values = fn(inputs.explainer, inputs.images, inputs.targets, radius=radius, n_samples=N_SAMPLES,
                distance="l2", seed=inputs.seed, relative=True)
    return MetricOutput(values, protocol={
        "radius": radius, "noise": "uniform [0, radius) per value, not clipped (Xplique)",
        "n_samples": N_SAMPLES, "distance": "l2", "relative": True, "seed": inputs.seed})


@register_metric("average_stability", higher_is_better=False, stochastic=True, uses_explainer=True,
                 default=False, order=70,
                 description="mean L2 change of the map, relative to its norm, under uniform noise of "
                             "0.1 x the input range (Bhatt et al. 2020)")
def _average_stability_metric(inputs: MetricInputs) -> MetricOutput:
    return _registered(average_stability, inputs)


@register_metric("max_sensitivity", higher_is_better=False, stochastic=True, uses_explainer=True,
                 default=False, order=71,
                 description="largest L2 change of the map, relative to its norm, under uniform noise of "
                             "0.1 x the input range (Yeh et al. 2019)")
def _max_sensitivity_metric(inputs: MetricInputs) -> MetricOutput:
    return _registered(max_sensitivity, inputs)
