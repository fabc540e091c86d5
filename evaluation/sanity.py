"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018).

A map that barely changes when the model's weights are replaced by random ones explains
the input, not the model. Unlike the other metrics these checks must run the explainer
again (on a randomised copy of the model), so they take the explainer, not maps.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np
from scipy import stats

from xai.explainer import Explainer, check_targets
from xai.models import attach_spec, model_spec, prepare_model
from xai.registry import get_explainer


def spearman_per_image(a, b) -> np.ndarray:
    """Spearman rank correlation between paired maps, one value per image (NaN if constant)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        if np.ptp(a[i]) > 0 and np.ptp(b[i]) > 0:
            out[i] = stats.spearmanr(a[i], b[i]).statistic
    return out


def _explainer_class(method) -> type:
    return get_explainer(method) if isinstance(method, str) else method


def weighted_layers_top_down(model: keras.Model) -> list[str]:
    """Layers with weights, from the classifier down to the first convolution."""
    return [layer.name for layer in reversed(model.layers) if layer.weights]


def _reinitialise(layer: keras.layers.Layer, seed: int) -> None:
    for i, variable in enumerate(layer.weights):
        kind = "bias" if variable.path.endswith("bias") else "kernel"
        init = getattr(layer, f"{kind}_initializer", None)
        if init is None:
            init = keras.initializers.RandomNormal(stddev=0.05)
        config = init.get_config()
        if "seed" in config:
            config["seed"] = seed * 1000 + i
        fresh = init.__class__.from_config(config)
        variable.assign(fresh(variable.shape, dtype=variable.dtype))


def model_randomisation(method, model, images, targets, *, params: Optional[dict] = None,
                        layers: Optional[Sequence[str]] = None, seed: int = 0) -> dict:
    """Cascading model-parameter randomisation, classifier first.

    After randomising each layer in `layers` (cumulatively, top down: every layer above
    it stays random), the method is re-run on a copy of the model and each image's map is
    compared with its original map by Spearman rank correlation. A faithful method's
    correlation falls towards 0; one that stays high ignores the weights.

    Parameters
    ----------
    method : str or Explainer subclass
    model : keras.Model or path
    images : (N, H, W, C)
    targets : (N,) int
    params : dict, optional
        The method's parameters.
    layers : sequence of str, optional
        Checkpoints, top down (default: every layer with weights).
    seed : int, default 0

    Returns
    -------
    dict with ``layers`` (list of str) and ``spearman`` (len(layers), N).
    """
    cls = _explainer_class(method)
    params = dict(params or {})
    base = prepare_model(model)
    spec = model_spec(base)
    t = check_targets(targets, len(images), spec.num_classes)
    original = cls(base, **params).explain(images, t)

    copy = keras.models.clone_model(base)
    copy.set_weights(base.get_weights())
    attach_spec(copy, spec)
    explainer: Explainer = cls(copy, **params)  # compiled once; sees weights change in place
    order = weighted_layers_top_down(copy)
    checkpoints = list(layers) if layers is not None else order
    unknown = [name for name in checkpoints if name not in order]
    if unknown:
        raise ValueError(f"layers {unknown} have no weights in the model; choose from {order}.")
    rows, done = [], 0
    for name in checkpoints:
        stop = order.index(name) + 1
        for layer_name in order[done:stop]:
            _reinitialise(copy.get_layer(layer_name), seed + order.index(layer_name))
        done = max(done, stop)
        rows.append(spearman_per_image(original, explainer.explain(images, t)))
    return {"layers": checkpoints, "spearman": np.stack(rows)}


def random_logit(method, model, images, targets, *, params: Optional[dict] = None,
                 seed: int = 0) -> np.ndarray:
    """Spearman correlation between the map of each image's target and of another class
    drawn at random (Adebayo et al.'s random-logit test); high means class-insensitive."""
    cls = _explainer_class(method)
    explainer = cls(prepare_model(model), **dict(params or {}))
    n_classes = explainer.spec.num_classes
    t = check_targets(targets, len(images), n_classes)
    rng = np.random.default_rng(seed)
    other = (t + rng.integers(1, n_classes, size=len(t))) % n_classes
    return spearman_per_image(explainer.explain(images, t), explainer.explain(images, other.astype(np.int32)))
