"""Localisation against ground-truth masks: pointing game and relevance mass accuracy."""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy import ndimage

from xai.evaluation.registry import MetricInputs, MetricOutput, register_metric
from xai.errors import DataError, ParameterError


def _check(maps, masks) -> tuple[np.ndarray, np.ndarray]:
    m = np.asarray(maps, dtype=np.float64)
    g = np.asarray(masks) > 0.5
    if m.ndim != 3 or m.shape != g.shape:
        raise DataError(f"maps and masks must both be (N, H, W); got {m.shape} and {g.shape}.")
    if not np.all(np.isfinite(m)):
        raise DataError("maps contain NaN or infinite values.")
    return m, g


def default_tolerance(height: int, width: int) -> int:
    """Zhang et al.'s 15 pixels at 224x224, scaled to the image size."""
    return int(round(15 * max(height, width) / 224))


def pointing_game(maps, masks, tolerance: Optional[int] = None) -> np.ndarray:
    """1.0 where the map's maximum falls inside the object (grown by `tolerance` pixels).

    Zhang et al., "Top-down Neural Attention by Excitation Backprop", ECCV 2016. The mask is
    dilated by a disc of radius `tolerance` (default: 15 px at 224x224, scaled). Where the
    maximum is tied (a map upsampled from a coarse grid is flat over whole blocks, up to
    the image's corner), the score is the share of the tied pixels inside the object: the
    expected hit of a pointer that picks one of them at random, so a constant map scores
    chance, not whatever lies in the top-left corner (taking the first maximum in memory
    order, as `argmax` does, sends every tie there). Images with an empty mask score NaN
    (nothing to point at).

    Examples
    --------
    >>> maps = np.zeros((1, 5, 5)); maps[0, 1, 1] = 1
    >>> masks = np.zeros((1, 5, 5)); masks[0, 0:2, 0:2] = 1
    >>> pointing_game(maps, masks, tolerance=0).tolist()
    [1.0]
    >>> pointing_game(np.ones((1, 5, 5)), masks, tolerance=0).tolist()  # a tie everywhere
    [0.16]
    """
    m, g = _check(maps, masks)
    n, h, w = m.shape
    tol = default_tolerance(h, w) if tolerance is None else int(tolerance)
    if tol < 0:
        raise ParameterError(f"tolerance must be >= 0 pixels; got {tolerance!r}.")
    if tol > 0:
        yy, xx = np.mgrid[-tol:tol + 1, -tol:tol + 1]
        disc = (yy ** 2 + xx ** 2) <= tol ** 2
        g_tol = np.stack([ndimage.binary_dilation(gi, structure=disc) for gi in g])
    else:
        g_tol = g
    flat = m.reshape(n, -1)
    peaks = flat == flat.max(axis=1, keepdims=True)
    hits = (peaks & g_tol.reshape(n, -1)).sum(axis=1) / peaks.sum(axis=1)
    hits[~g.reshape(n, -1).any(axis=1)] = np.nan
    return hits


def relevance_mass(maps, masks) -> np.ndarray:
    """Share of the map's positive mass inside the object (Arras et al. 2022).

    Also called the energy-based pointing game (Wang et al., Score-CAM, 2020). Negative
    values are clipped to zero first; a map with no positive mass scores 0.

    Examples
    --------
    >>> maps = np.array([[[1.0, 3.0], [-2.0, 0.0]]])
    >>> masks = np.array([[[0, 1], [1, 0]]])
    >>> relevance_mass(maps, masks).tolist()
    [0.75]
    """
    m, g = _check(maps, masks)
    positive = np.clip(m, 0, None)
    total = positive.sum(axis=(1, 2))
    inside = (positive * g).sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)


@register_metric("pointing_game", higher_is_better=True, needs_masks=True, order=30,
                 description="share of maps whose maximum lies on the object (Zhang et al. 2016)")
def _pointing_game_metric(inputs: MetricInputs) -> MetricOutput:
    return MetricOutput(pointing_game(inputs.maps, inputs.masks))


@register_metric("relevance_mass", higher_is_better=True, needs_masks=True, order=40,
                 description="share of positive map mass on the object (Arras et al. 2022)")
def _relevance_mass_metric(inputs: MetricInputs) -> MetricOutput:
    return MetricOutput(relevance_mass(inputs.maps, inputs.masks))
