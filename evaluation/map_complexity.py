"""Complexity of a map on its own: sparseness (Gini index) and complexity (entropy).

Both are computed as Xplique 2.0.2's ``Sparseness`` and ``Complexity`` compute them, so the
values can be set side by side: the map's absolute value, averaged over channels for 4-D
maps (N, H, W, C), flattened and L1-normalised with ``eps = 1e-8`` added to the mass
(``tests/test_metric_complexity.py`` checks this against Xplique's own output). Neither needs
the model.

Because of that eps, a map whose total absolute mass is below about 1e-6 is no longer scale
free: its normalised values sum to less than 1 and its entropy reads low. Raw maps that
small (gradients of a saturated probability) are best rescaled first.
"""

from __future__ import annotations

import numpy as np

from xai.evaluation.registry import MetricInputs, MetricOutput, register_metric
from xai.errors import DataError

EPS = 1e-8  # Xplique's: added to the L1 mass and inside the logarithm


def _mass(maps) -> np.ndarray:
    """|maps| (N, n) in float64, channel-averaged when maps are (N, H, W, C)."""
    m = np.asarray(maps, dtype=np.float64)
    if m.ndim not in (3, 4):
        raise DataError(f"maps must be (N, H, W) or (N, H, W, C); got shape {m.shape}.")
    if not np.all(np.isfinite(m)):
        raise DataError("maps contain NaN or infinite values.")
    a = np.abs(m)  # before the channel mean, as Xplique does: opposite signs do not cancel
    if a.ndim == 4:
        a = a.mean(axis=-1)
    return a.reshape(len(a), -1)


def sparseness(maps) -> np.ndarray:
    """Gini index of each map's absolute values: 0 for a uniform map, 1 - 1/n for one pixel.

    Chalasani et al., "Concise Explanations of Neural Networks using Adversarial Training",
    ICML 2020. With the n values of |map| sorted ascending and L1-normalised,
    ``G = 2 * sum_i i x_(i) / (n * sum_i x_(i)) - (n + 1) / n``, exactly as Xplique 2.0.2
    computes it (eps 1e-8 in both denominators). Higher is sparser.

    Parameters
    ----------
    maps : array-like (N, H, W) or (N, H, W, C)
        4-D maps are reduced to the mean of |map| over channels first.

    Returns
    -------
    numpy.ndarray (N,) float64
        An all-zero map scores 0, as a uniform map does: it singles out no pixel (Xplique's
        eps would give it -(n + 1) / n instead, below any real map).

    Raises
    ------
    DataError
        For maps of another rank, or with NaN or infinite values.

    Examples
    --------
    >>> maps = np.zeros((3, 2, 2)); maps[0, 0, 0] = 5.0; maps[1, 0] = -2.0  # one pixel; two
    >>> sparseness(maps).round(6).tolist()
    [0.75, 0.5, 0.0]
    """
    a = _mass(maps)
    n = a.shape[1]
    total = a.sum(axis=1, keepdims=True)
    x = np.sort(a / (total + EPS), axis=1)
    ranks = np.arange(1, n + 1, dtype=np.float64)
    gini = 2.0 * (x * ranks).sum(axis=1) / (n * x.sum(axis=1) + EPS) - (n + 1.0) / n
    return np.where(total[:, 0] > 0, gini, 0.0)


def complexity(maps) -> np.ndarray:
    """Shannon entropy (nats) of each map's absolute values read as a distribution over pixels.

    Bhatt et al., "Evaluating and Aggregating Feature-based Model Explanations", IJCAI 2020
    (their complexity mu_C). ``p = |map| / (sum |map| + eps)``, ``H = -sum_i p_i log(p_i +
    eps)``, exactly as Xplique 2.0.2 computes it (eps 1e-8). Between 0 (one pixel) and
    log(n) (uniform); lower is simpler.

    Parameters
    ----------
    maps : array-like (N, H, W) or (N, H, W, C)
        4-D maps are reduced to the mean of |map| over channels first.

    Returns
    -------
    numpy.ndarray (N,) float64
        An all-zero map scores log(n), as a uniform map does (Xplique's eps would give it 0,
        the score of a perfectly concentrated map).

    Raises
    ------
    DataError
        For maps of another rank, or with NaN or infinite values.

    Examples
    --------
    >>> maps = np.zeros((3, 2, 2)); maps[0] = 3.0; maps[1, 0] = -2.0  # uniform; two pixels
    >>> complexity(maps).round(6).tolist()
    [1.386294, 0.693147, 1.386294]
    """
    a = _mass(maps)
    total = a.sum(axis=1, keepdims=True)
    p = a / (total + EPS)
    entropy = -(p * np.log(p + EPS)).sum(axis=1)
    return np.where(total[:, 0] > 0, entropy, np.log(a.shape[1]))


@register_metric("sparseness", higher_is_better=True, default=False, order=60,
                 description="Gini index of |map|: how few pixels carry the map (Chalasani et al. 2020)")
def _sparseness_metric(inputs: MetricInputs) -> MetricOutput:
    return MetricOutput(sparseness(inputs.maps), protocol=_protocol("Gini index", "0"))


@register_metric("complexity", higher_is_better=False, default=False, order=61,
                 description="entropy of |map| as a distribution over pixels (Bhatt et al. 2020)")
def _complexity_metric(inputs: MetricInputs) -> MetricOutput:
    return MetricOutput(complexity(inputs.maps), protocol=_protocol("entropy (natural log)", "log(H*W)"))


def _protocol(statistic: str, all_zero: str) -> dict:
    return {"statistic": f"{statistic} of |map| over pixels", "map": "|map|, mean over channels of 4-D maps, "
            "L1-normalised with eps 1e-8 (Xplique 2.0.2)", "all-zero map": f"{all_zero}, as a uniform map"}
