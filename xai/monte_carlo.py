"""A map's own Monte Carlo error, and sampling until it is small enough.

A stochastic explainer's map is an estimate: SmoothGrad averages gradients at random noisy
copies, RISE scores at random masks, LIME and KernelSHAP fit random coalitions, Sobol and
HSIC estimate indices from random designs. Two seeds give two maps; how far apart they are
is the map's Monte Carlo error, which no confidence interval over images shows.

The estimate here is the textbook one for independent replicates: ``k >= 4`` replicates,
each from its own seed and ``n / 4`` samples (so four replicates cost what one map of ``n``
samples costs), are pooled into the map (their totals, or for Sobol and HSIC their designs,
so that the method's own estimator sees every sample), and its error is the standard error
of the mean of the replicates' maps, relative to the L2 norm,

    error = sqrt( sum_j |m_j - m|^2 / (k (k - 1)) ) / |m|.

It holds for any estimator, linear or not (LIME's ridge fit, Sobol's ratio of variances),
because it only looks at the replicates; two independent calls differ by about
``sqrt(2)`` times it (tested). Four replicates, not two: a map's error is often dominated by a
few shared modes (RISE's masks cover the image more or less on the whole, which moves every
pixel together), and the spread of two replicates then says little about its size (measured:
one difference in eight off by 3x or more); four give three degrees of freedom at least. With ``tolerance``, replicates are added, image by image, until
the error is at most the tolerance or ``max_samples`` are spent; images that hit the cap are
flagged. Tolerance mode starts from a quarter of the method's own count (four replicates of a
sixteenth), so an image whose map converges early costs less than a plain call. Integrated Gradients is not random: its error is the completeness gap,
``|sum(attributions) - (f(x) - f(baseline))| / |f(x) - f(baseline)|``, and its tolerance mode
doubles the steps until the gap is small enough.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Optional

import numpy as np

from xai.errors import ParameterError

#: Replicates of the first round: what `explain_with_error` costs without a tolerance is
#: one map's worth of samples, split into this many.
FIRST_REPLICATES = 4
#: Tolerance mode's later rounds give each image the replicates its error says it needs
#: (error ~ 1 / sqrt(samples)) times this margin, and at least `MIN_REPLICATES_PER_ROUND`.
GROWTH_MARGIN = 1.2
MIN_REPLICATES_PER_ROUND = 2
#: The cap of tolerance mode, in multiples of the method's own sample count, when none is given.
DEFAULT_CAP_FACTOR = 8


@dataclasses.dataclass
class MapsWithError:
    """Maps and the Monte Carlo error of each (see the module docstring).

    maps : (N, H, W) float32
    errors : (N,) float64
        Relative L2 error of each map (Integrated Gradients: its completeness gap); 0 for a
        deterministic method; NaN where the map estimates nothing (``random``).
    samples : (N,) int
        Samples (noise draws, masks, coalitions, designs; IG: steps) spent on each map.
    converged : (N,) bool
        Whether the error is at most the tolerance (True without one).
    """

    maps: np.ndarray
    errors: np.ndarray
    samples: np.ndarray
    converged: np.ndarray
    #: (N,) The same standard error for the maps' deviations from their own pixel mean, relative
    #: to the pooled map's: the noise in the order of the pixels, which is what deletion,
    #: insertion and every ranking metric read (a map that is mostly its mean, as RISE's,
    #: has a small L2 error and a large order error). NaN where it is not estimated from
    #: replicates (Integrated Gradients' gap, `random`); 0 for a deterministic method.
    order_errors: Optional[np.ndarray] = None

    def __iter__(self):  # maps, errors = explainer.explain_with_error(...)
        return iter((self.maps, self.errors))


def sample_cap(explainer) -> Optional[int]:
    """What tolerance mode may spend on a map in a comparison: the method's own sample count
    (Integrated Gradients: its steps), so a run never costs more than at fixed counts."""
    return int(explainer.resolved[explainer.sample_count]) if explainer.sample_count else None


def maps_at(explainer, images, targets, tolerance: Optional[float]) -> np.ndarray:
    """The explainer's maps: at its fixed count (``tolerance=None``), or in tolerance mode
    capped at `sample_cap`, as a comparison computes them."""
    if tolerance is None or not (explainer.stochastic and explainer.sample_count):
        return np.asarray(explainer.explain(images, targets))
    return np.asarray(explainer.explain_with_error(images, targets, tolerance=tolerance,
                                                   max_samples=sample_cap(explainer)).maps)


def centred(maps: np.ndarray) -> np.ndarray:
    """Each map less its own pixel mean: what is left decides the order of the pixels."""
    return maps - maps.mean(axis=(1, 2), keepdims=True)


def replicate_seed(seed: int, replicate: int) -> int:
    """A seed for replicate `replicate`, independent of the others' streams (int32)."""
    return int(np.random.SeedSequence([seed, replicate, 0x5EED]).generate_state(1)[0] & 0x7FFFFFFF)


def relative_standard_error(total, squares, k):
    """Per image: the relative L2 standard error of the mean of `k` replicate maps, from the
    sum of the maps `total` (N, H, W), the sum of their squared norms `squares` (N,)."""
    mean = total / k[:, None, None]
    norm2 = np.sum(mean ** 2, axis=(1, 2))
    spread = np.maximum(squares - k * norm2, 0.0)  # sum_j |m_j - m|^2
    with np.errstate(divide="ignore", invalid="ignore"):
        error = np.sqrt(spread / (k * (k - 1))) / np.sqrt(norm2)
    return np.where(norm2 > 0, error, np.where(spread > 0, np.inf, 0.0))


def check_tolerance(tolerance, max_samples, count: int):
    if tolerance is not None and not (isinstance(tolerance, (int, float)) and 0 < tolerance < np.inf):
        raise ParameterError(f"tolerance must be a positive number (a relative L2 error, e.g. 0.05); "
                             f"got {tolerance!r}.")
    if max_samples is not None and (not isinstance(max_samples, (int, np.integer)) or max_samples < 1):
        raise ParameterError(f"max_samples must be a positive integer; got {max_samples!r}.")
    if tolerance is None:
        return count
    return int(max_samples) if max_samples is not None else DEFAULT_CAP_FACTOR * count


@contextlib.contextmanager
def quiet_retracing():
    """Replicates and variants are explainers of their own, each tracing its functions once;
    TensorFlow's warning about frequent retracing would blame the user's code for it."""
    import logging

    class Drop(logging.Filter):
        def filter(self, record):
            return "triggered tf.function retracing" not in record.getMessage()

    logger, drop = logging.getLogger("tensorflow"), Drop()
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


def replicated(explainer, images, targets, tolerance: Optional[float], max_samples: Optional[int]):
    """`MapsWithError` of a stochastic explainer from independent replicates."""
    count = explainer.resolved[explainer.sample_count]
    cap = check_tolerance(tolerance, max_samples, count)
    # Tolerance mode starts at a sixteenth of the method's count, so that an image that
    # converges early costs far less than `explain` (RISE's antithetic masks reach 0.02 in a
    # quarter of its count); each replicate keeps the fewest samples its estimator is sound
    # with (a LIME fit needs more coalitions than superpixels).
    start = count if tolerance is None else max(1, count // 16)
    # ... but never so large that the first replicates alone cost more than `explain`, nor
    # below what the method accepts (VarGrad needs 2 samples): fewer replicates, two at least.
    low = int(explainer.parameters[explainer.sample_count].low or 1)
    first = max(2, min(FIRST_REPLICATES, count // low))
    per = max(low, min(max(explainer.smallest_replicate(), start // first), max(1, count // first)))
    cap = max(cap, first * per)
    n = len(images)
    total = np.zeros(images.shape[:3], np.float64)
    squares = np.zeros(n, np.float64)
    centred_squares = np.zeros(n, np.float64)  # sum_j |m_j - mean(m_j)|^2, for the order error
    k = np.zeros(n, np.float64)
    by_totals = getattr(explainer, "averages_totals", False)
    by_designs = getattr(explainer, "pools_designs", False)
    totals = None
    designs = []  # by_designs: (replicate's images, its designs, their scores) of each replicate
    # Replicates differ by their seed only: a state that ignores it (VarGrad's clean gradient,
    # LIME's segmentation) is computed once per batch for all of them.
    state_memo, twins = ({} if getattr(explainer, "seed_free_state", False) else None), {}

    def replica(replicate: int):
        twin = explainer.replicate(replicate, per)
        if state_memo is not None:
            twin.state_memo = state_memo
            twins[id(twin)] = twin
        return twin

    def run(replicate: int, which: np.ndarray):
        nonlocal totals
        twin = replica(replicate)
        if by_totals:
            sums, maps = twin.totals_and_maps(images[which], targets[which])
            if totals is None:
                totals = np.zeros((n, *sums.shape[1:]), np.float64)
            totals[which] += sums
            maps = maps.astype(np.float64)
        elif by_designs:
            scores, maps = twin.totals_and_maps(images[which], targets[which])
            designs.append((which, np.array(twin.designs), scores))
            maps = maps.astype(np.float64)
        else:
            maps = twin.explain(images[which], targets[which]).astype(np.float64)
        total[which] += maps
        squares[which] += np.sum(maps ** 2, axis=(1, 2))
        centred_squares[which] += np.sum(centred(maps) ** 2, axis=(1, 2))
        k[which] += 1

    def estimate():
        """(maps, errors, order errors). Pooling totals (or designs) gives the map of all
        k * per samples (the method's own estimator, not a mean of smaller ones, which is
        biased where the estimator is not linear in its samples); its standard error is still
        the replicates' spread over sqrt(k), now relative to the pooled map."""
        mean = total / k[:, None, None]
        errors = relative_standard_error(total, squares, k)
        order_errors = relative_standard_error(centred(total), centred_squares, k)
        if by_designs:
            pooled = pooled_design_maps(explainer, n, designs)
        elif by_totals:
            pooled = replica(0).finalize_totals(
                images, targets, totals / k.reshape(-1, *[1] * (totals.ndim - 1)))
            scale = explainer.pooled_scale(per, k * per)
            if scale is not None:
                pooled = (pooled * np.asarray(scale, np.float64)[:, None, None]).astype(np.float32)
        else:
            return mean.astype(np.float32), errors, order_errors
        norm = lambda a: np.maximum(np.linalg.norm(a.reshape(n, -1), axis=1), 1e-30)  # noqa: E731
        return (pooled, errors * norm(mean) / norm(pooled),
                order_errors * norm(centred(mean)) / norm(centred(pooled.astype(np.float64))))

    try:
        for replicate in range(first):
            run(replicate, np.arange(n))
        maps, errors, order_errors = estimate()
        replicate = first
        while tolerance is not None:
            todo = np.flatnonzero((errors > tolerance) & ((k + 1) * per <= cap))
            if not len(todo):
                break
            # An error falls as 1 / sqrt(samples): ask each image for what should reach the
            # tolerance (with a margin), within the cap, then look again.
            wanted = np.ceil(k[todo] * (errors[todo] / tolerance) ** 2 * GROWTH_MARGIN) - k[todo]
            more = np.clip(wanted, MIN_REPLICATES_PER_ROUND, cap // per - k[todo]).astype(int)
            for r in range(int(more.max())):
                run(replicate, todo[more > r])
                replicate += 1
            maps, errors, order_errors = estimate()
    finally:  # the memo holds for this call only: the weights may change after it
        for twin in twins.values():
            twin.__dict__.pop("state_memo", None)
    converged = np.ones(n, bool) if tolerance is None else errors <= tolerance
    return MapsWithError(maps, errors, (k * per).astype(int), converged, order_errors)


def pooled_design_maps(explainer, n: int, replicates: list) -> np.ndarray:
    """Each image's map from the designs of all its replicates at once (the method's
    estimator on their union, `pooled_maps`), for methods that `pools_designs`. In tolerance
    mode images have different replicates: those that share the same ones are estimated
    together. ``replicates`` holds (images' indices, designs, scores (images, designs))."""
    members = [[] for _ in range(n)]
    for r, (which, _, _) in enumerate(replicates):
        for row, image in enumerate(which):
            members[image].append((r, row))
    groups = {}
    for image, entries in enumerate(members):
        groups.setdefault(tuple(r for r, _ in entries), []).append(image)
    maps = None
    for used, images in groups.items():
        rows = np.array([[row for _, row in members[image]] for image in images])  # (m, len(used))
        scores = [replicates[r][2][rows[:, j]] for j, r in enumerate(used)]
        group_maps = np.asarray(explainer.pooled_maps([replicates[r][1] for r in used], scores), np.float32)
        if maps is None:
            maps = np.empty((n, *group_maps.shape[1:]), np.float32)
        maps[images] = group_maps
    return maps


def deterministic(explainer, images, targets) -> MapsWithError:
    maps = explainer.explain(images, targets)
    n = len(maps)
    error = np.full(n, np.nan if explainer.stochastic else 0.0)
    return MapsWithError(maps, error, np.zeros(n, int), np.ones(n, bool), error.copy())


def completeness_gap(explainer, images, targets, tolerance: Optional[float], max_samples: Optional[int]):
    """`MapsWithError` of Integrated Gradients: the error is the completeness gap; with a
    tolerance, the steps double (for the images still above it) up to ``max_samples`` steps.
    A doubling adds the midpoint sum of the current steps to the gradients already summed
    (exact for the right Riemann and the trapezoid rules), so an image at ``s`` steps has cost
    ``s`` gradients (the midpoint rule, which does not nest, starts again)."""
    steps = explainer.resolved["steps"]
    cap = check_tolerance(tolerance, max_samples, steps)
    if tolerance is not None:  # start at a quarter, as replicates do: early convergence saves
        steps = max(1, steps // 4)
    # The gap needs the attributions' signed sum: the same totals finalised with reduce="sum".
    signed = explainer if explainer.resolved["reduce"] == "sum" else explainer.variant(reduce="sum")
    nests = explainer.resolved["rule"] != "midpoint"
    difference = explainer.score_difference(images, targets)
    totals = explainer.variant(steps=steps).explain_totals(images, targets).astype(np.float64)
    maps = np.empty(images.shape[:3], np.float32)
    errors = np.full(len(images), np.inf)
    samples = np.zeros(len(images), int)
    todo = np.arange(len(images))
    while len(todo):
        x, t, total = images[todo], targets[todo], totals[todo].astype(np.float32)
        maps[todo] = explainer.finalize_totals(x, t, total)
        sums = (maps[todo] if signed is explainer else signed.finalize_totals(x, t, total)).sum(axis=(1, 2))
        with np.errstate(divide="ignore", invalid="ignore"):
            gap = np.abs(sums - difference[todo]) / np.abs(difference[todo])
        errors[todo] = np.where(np.abs(difference[todo]) > 0, gap, np.where(sums == 0, 0.0, np.inf))
        samples[todo] = steps
        if tolerance is None or 2 * steps > cap:
            break
        todo = todo[errors[todo] > tolerance]
        if len(todo) and nests:
            midpoints = explainer.variant(steps=steps, rule="midpoint").explain_totals(images[todo], targets[todo])
            totals[todo] = (totals[todo] + midpoints) / 2
        elif len(todo):
            totals[todo] = explainer.variant(steps=2 * steps).explain_totals(images[todo], targets[todo])
        steps *= 2
    converged = np.ones(len(images), bool) if tolerance is None else errors <= tolerance
    return MapsWithError(maps, errors, samples, converged, np.full(len(images), np.nan))
