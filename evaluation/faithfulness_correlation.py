"""MuFidelity, the faithfulness correlation (Bhatt, Weller & Moura, IJCAI 2020, def. 3).

Remove a random subset S of the image (set it to a baseline) and compare two numbers: the
sum of the map over S and the drop of the model's score. Over many subsets, a faithful map
correlates with the drops: ``mu_F = corr_S(sum_{i in S} map_i, f(x) - f(x with S removed))``.

Subsets are cells of a ``grid_size`` x ``grid_size`` grid upsampled to the image (nearest,
as ``tf.image.resize``), the same masks for every image, drawn once from
``numpy.random.default_rng(seed)``: a value depends on (seed, n_subsets, grid_size,
subset_fraction, image size), never on how images are batched.

Two protocols:

- ``"xplique"``: Xplique 2.0.2's ``MuFidelity``. Each cell is removed independently with
  probability ``subset_fraction`` (so |S| varies), the score is the model's output as is
  (``score="output"``), the correlation is Spearman's.
- ``"bhatt"``: the paper. Exactly ``round(subset_fraction * grid_size**2)`` cells, drawn
  uniformly without replacement (the paper's fixed |S|), the predicted probability of the
  target, Pearson's correlation (the paper asks for drops *proportional* to the sums).
  The paper's features are pixels; we keep grid cells so that both protocols share the
  masks. ``grid_size`` equal to the side of a square image gives pixel subsets.

Where the two differ, Xplique departs from the paper: rank correlation, a random subset
size, superpixels by default, and the raw output (logits for a logits model).

Either way, an image whose drops (or map sums) are all equal has no defined correlation
and scores 0, as in Xplique: a model blind to every subset gives no evidence either way.

Cost: ``N * n_subsets`` forward passes, plus N for the unperturbed images; memory: the
masks as one bool per value (``n_subsets * H * W * C`` bytes: 30 MB at 224x224x3 and 200
subsets) and one batch of perturbed images. The perturbed images' scores do not depend on
the map, so they are kept on the `ModelScorer` (the last four settings, keyed by a digest of
images, targets, masks, baseline and score): the second method compared on the same batch
costs no forward pass.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Union

import numpy as np
from scipy.stats import rankdata

from xai._lazy import tf
from xai.baselines import baseline_images, check_baseline
from xai.evaluation.faithfulness import ModelScorer, checked_inputs
from xai.evaluation.registry import MetricInputs, MetricOutput, register_metric
from xai.errors import ParameterError

PROTOCOLS = {
    "xplique": {"score": "output", "correlation": "spearman", "subsets": "bernoulli"},
    "bhatt": {"score": "probability", "correlation": "pearson", "subsets": "fixed"},
}
SCORES = ("probability", "output", "logit")
#: Attribute of a ModelScorer holding the cached scores of perturbed images.
CACHE_ATTRIBUTE = "mufidelity_cache"
CACHE_ENTRIES = 4  # seed and seed + 1 of one batch, twice over


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _check_settings(n_subsets, subset_fraction, grid_size, protocol, score, seed, batch_size, baseline):
    if protocol not in PROTOCOLS:
        raise ParameterError(f"mufidelity: protocol must be one of {sorted(PROTOCOLS)}; got {protocol!r}.")
    if not _is_int(n_subsets) or n_subsets < 2:
        raise ParameterError(f"mufidelity: n_subsets must be an integer >= 2 (a correlation needs two "
                             f"points); got {n_subsets!r}.")
    if isinstance(subset_fraction, bool) or not isinstance(subset_fraction, (int, float, np.number)) \
            or not 0 < subset_fraction < 1:
        raise ParameterError(f"mufidelity: subset_fraction must be a number in (0, 1), the share of grid "
                             f"cells removed; got {subset_fraction!r}.")
    if not _is_int(grid_size) or grid_size < 1:
        raise ParameterError(f"mufidelity: grid_size must be an integer >= 1; got {grid_size!r}.")
    if score is not None and score not in SCORES:
        raise ParameterError(f"mufidelity: score must be one of {SCORES}; got {score!r}.")
    if not _is_int(seed):
        raise ParameterError(f"mufidelity: seed must be an integer; got {seed!r}.")
    if not _is_int(batch_size) or batch_size < 1:
        raise ParameterError(f"mufidelity: batch_size must be an integer >= 1; got {batch_size!r}.")
    check_baseline("mufidelity", baseline)


def cell_index(size: int, grid_size: int) -> np.ndarray:
    """Grid cell of each of `size` pixels: ``tf.image.resize(method="nearest")``'s map from
    `grid_size` to `size` (half-pixel centres, in float32 as TensorFlow computes it).

    Examples
    --------
    >>> cell_index(5, 2).tolist()
    [0, 0, 1, 1, 1]
    """
    scale = np.float32(grid_size) / np.float32(size)
    centres = (np.arange(size, dtype=np.float32) + np.float32(0.5)) * scale
    return np.minimum(np.floor(centres), grid_size - 1).astype(np.intp)


def subset_cells(n_subsets: int, grid_size: int, subset_fraction: float, seed: int = 0,
                 subsets: str = "bernoulli") -> np.ndarray:
    """Which grid cells each subset keeps, (n_subsets, grid_size**2) bool, row-major
    (False = set to the baseline); `cell_index` maps them to pixels.

    ``subsets="bernoulli"``: each cell removed with probability `subset_fraction` (Xplique);
    ``"fixed"``: ``round(subset_fraction * grid_size**2)`` cells (at least one), uniformly.
    """
    rng = np.random.default_rng(seed)
    cells = grid_size * grid_size
    if subsets == "bernoulli":
        return rng.random((n_subsets, cells)) > subset_fraction
    k = int(np.clip(round(subset_fraction * cells), 1, cells))
    removed = np.argsort(rng.random((n_subsets, cells)), axis=1)[:, :k]
    keep = np.ones((n_subsets, cells), bool)
    np.put_along_axis(keep, removed, False, axis=1)
    return keep


def pixel_cells(height: int, width: int, grid_size: int) -> np.ndarray:
    """Row-major grid cell of each pixel, (H, W) int."""
    return cell_index(height, grid_size)[:, None] * grid_size + cell_index(width, grid_size)[None, :]


def correlation_rows(a: np.ndarray, b: np.ndarray, rank: bool = False) -> np.ndarray:
    """Pearson (Spearman with ``rank=True``, average ranks for ties) correlation of each row
    of `a` with the same row of `b`; 0 where either row is constant.

    Examples
    --------
    >>> correlation_rows(np.array([[1., 2, 3], [1, 1, 1]]), np.array([[1., 4, 9], [1, 2, 3]]), rank=True)
    array([1., 0.])
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    defined = (np.ptp(a, axis=1) > 0) & (np.ptp(b, axis=1) > 0)
    if rank:
        a, b = rankdata(a, axis=1), rankdata(b, axis=1)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    num = (a * b).sum(axis=1)
    den = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    out = np.zeros(len(a))
    np.divide(num, den, out=out, where=defined & (den > 0))
    return np.clip(out, -1.0, 1.0)


def _digest(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        is_array = isinstance(part, np.ndarray)
        h.update(np.ascontiguousarray(part).tobytes() if is_array else repr(part).encode())
        h.update(b"|")
    return h.hexdigest()


def perturbed_scores(scorer: ModelScorer, images: np.ndarray, targets: np.ndarray, keep: np.ndarray,
                     cells: np.ndarray, baseline, score: str, batch_size: int):
    """Scores of the unperturbed images (N,) and of each image under each subset (N, S);
    `keep` (S, cells) from `subset_cells`, `cells` (H, W) from `pixel_cells`.

    Rows (image, subset) are built on the host `batch_size` at a time and scored with
    `ModelScorer.scores`; results are cached on `scorer` (see the module docstring).
    """
    key = _digest(images.shape, images, targets, keep.shape, keep, cells, baseline,
                  scorer.spec.input_range, score)
    cache = scorer.__dict__.setdefault(CACHE_ATTRIBUTE, OrderedDict())
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    substrate = baseline_images(tf.convert_to_tensor(images), baseline, scorer.spec.input_range).numpy()
    n, s = len(images), len(keep)
    base = scorer.scores(images, targets, score, batch_size)
    # One bool per value (S, H, W, C): copyto with a full-size mask runs several times faster
    # than a mask broadcast over channels.
    keep_values = np.repeat(keep[:, cells, None], images.shape[-1], axis=-1)
    perturbed = np.empty(n * s)
    block = np.empty((min(batch_size, n * s), *images.shape[1:]), np.float32)
    for start in range(0, n * s, batch_size):
        stop = min(start + batch_size, n * s)
        # Rows are image-major, so a block spans a few images: loop over those, not over subsets.
        for i in range(start // s, (stop - 1) // s + 1):
            lo, hi = max(start, i * s), min(stop, (i + 1) * s)
            part = block[lo - start:hi - start]
            np.copyto(part, substrate[i])
            np.copyto(part, images[i], where=keep_values[lo - i * s:hi - i * s])
        rows = np.arange(start, stop) // s
        perturbed[start:stop] = scorer.scores(block[:stop - start], targets[rows], score, batch_size)
    result = (base, perturbed.reshape(n, s))
    for array in result:
        array.flags.writeable = False  # shared by every later call on the same batch
    cache[key] = result
    while len(cache) > CACHE_ENTRIES:
        cache.popitem(last=False)
    return result


def mufidelity_with_protocol(model, images, targets, maps, *, n_subsets: int = 200,
                             subset_fraction: float = 0.2, grid_size: int = 9,
                             baseline: Union[str, float] = "zero", protocol: str = "xplique",
                             score=None, seed: int = 0, batch_size: int = 256) -> tuple[np.ndarray, dict]:
    """`mufidelity`'s values and the settings that produced them (for reports)."""
    _check_settings(n_subsets, subset_fraction, grid_size, protocol, score, seed, batch_size, baseline)
    preset = PROTOCOLS[protocol]
    score = score or preset["score"]
    scorer, x, t, m = checked_inputs(model, images, targets, maps, "mufidelity")
    scorer.head.check_score(score, "mufidelity")
    m = m.astype(np.float64)
    n, height, width = m.shape
    if grid_size > min(height, width):
        raise ParameterError(f"mufidelity: grid_size must be <= the image size "
                             f"({min(height, width)}); got {grid_size}.")
    baseline = baseline if isinstance(baseline, str) else float(baseline)

    g2 = int(grid_size) ** 2
    keep = subset_cells(int(n_subsets), int(grid_size), float(subset_fraction), int(seed), preset["subsets"])
    cells = pixel_cells(height, width, int(grid_size))
    base, perturbed = perturbed_scores(scorer, x, t, keep, cells, baseline, score, int(batch_size))
    # Sum the map per cell once; a subset's sum is then a sum of cells (no per-pixel mask).
    ids = (cells.reshape(1, -1) + g2 * np.arange(n)[:, None]).ravel()
    cell_sums = np.bincount(ids, weights=m.ravel(), minlength=n * g2).reshape(n, g2)
    sums = cell_sums @ (~keep).T.astype(np.float64)  # (N, S)
    values = correlation_rows(sums, base[:, None] - perturbed, rank=preset["correlation"] == "spearman")
    record = {
        "metric": "mufidelity", "preset": protocol, "n_subsets": int(n_subsets), "grid_size": int(grid_size),
        "subset_fraction": float(subset_fraction),
        "subsets": ("each cell removed with probability subset_fraction" if preset["subsets"] == "bernoulli"
                    else "round(subset_fraction * grid_size**2) cells, uniformly without replacement"),
        "baseline": baseline, "correlation": preset["correlation"], "score": score, "seed": int(seed),
        "undefined": "0 where the drops or the map sums are constant",
    }
    return values, record


def mufidelity(model, images, targets, maps, *, n_subsets: int = 200, subset_fraction: float = 0.2,
               grid_size: int = 9, baseline: Union[str, float] = "zero", protocol: str = "xplique",
               score=None, seed: int = 0, batch_size: int = 256) -> np.ndarray:
    """Faithfulness correlation per image (higher is better, in [-1, 1]).

    Bhatt, Weller & Moura, "Evaluating and Aggregating Feature-based Model Explanations",
    IJCAI 2020 (def. 3); ``protocol="xplique"`` is Xplique 2.0.2's ``MuFidelity``.

    Parameters
    ----------
    model : keras.Model, path, or ModelScorer (build one to reuse across calls and methods)
    images : (N, H, W, C) float32
    targets : (N,) int
    maps : (N, H, W) float
    n_subsets : int, default 200
        Random subsets per image (Xplique's ``nb_samples``), >= 2.
    subset_fraction : float, default 0.2
        Share of grid cells removed, in (0, 1) (Xplique's ``subset_percent``).
    grid_size : int, default 9
        Subsets are cells of a grid_size x grid_size grid; at most the image size.
    baseline : {"zero", "black", "white", "mean", "blur"} or number, default "zero"
        What removed cells become (`xai.baselines`).
    protocol : {"xplique", "bhatt"}, default "xplique"
        Subset sampling, correlation and default score; see the module docstring.
    score : {"probability", "output", "logit"}, optional
        Default: "output" (xplique), "probability" (bhatt).
    seed : int, default 0
        Seeds the masks, which are the same for every image.
    batch_size : int, default 256
        Perturbed images per model call.

    Returns
    -------
    (N,) float64; 0 for an image whose drops or map sums are all equal.

    Raises
    ------
    ParameterError
        A setting out of range.
    DataError
        Images, targets or maps of the wrong shape, or not finite.

    Examples
    --------
    >>> import numpy as np, xai
    >>> model = xai.vgg16_gap((32, 32, 3), width=0.125)
    >>> x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    >>> values = mufidelity(model, x, [0, 1], x.mean(-1), n_subsets=16, grid_size=4)
    >>> values.shape, bool(np.all(np.abs(values) <= 1))
    ((2,), True)
    """
    return mufidelity_with_protocol(model, images, targets, maps, n_subsets=n_subsets,
                                    subset_fraction=subset_fraction, grid_size=grid_size,
                                    baseline=baseline, protocol=protocol, score=score, seed=seed,
                                    batch_size=batch_size)[0]


@register_metric("mufidelity", higher_is_better=True, stochastic=True, default=False, order=50,
                 description="correlation of map sums over random cell subsets with the score drop "
                             "when they are removed (Bhatt et al. 2020, Xplique protocol)")
def _mufidelity_metric(inputs: MetricInputs) -> MetricOutput:
    # Xplique's 9x9 grid, or one cell per pixel on images smaller than that.
    grid_size = int(min(9, *np.shape(inputs.maps)[1:3]))
    values, record = mufidelity_with_protocol(inputs.scorer, inputs.images, inputs.targets, inputs.maps,
                                              grid_size=grid_size, seed=inputs.seed)
    return MetricOutput(values, protocol=record)
