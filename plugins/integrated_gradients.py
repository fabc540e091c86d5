"""Integrated Gradients (Sundararajan, Taly & Yan 2017)."""

from __future__ import annotations

import numpy as np

from xai._lazy import tf
from xai.plugin_api import (SIGNED_REDUCTIONS, Param, PerturbationExplainer, baseline_images, check_baseline,
                            reduce_channels)

RULES = ("riemann", "trapezoid", "midpoint")


class IntegratedGradients(PerturbationExplainer):
    """``(x - x') * integral_0^1 dF(x' + a (x - x')) / dx da``, summed over channels.

    Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017. The
    integral is approximated on ``steps`` equal intervals, by the paper's right Riemann
    sum (``steps`` gradients at a = 1/steps ... 1, the default) or the trapezoid rule
    (``steps + 1`` gradients, both ends included). The right sum never evaluates the
    gradient at the baseline itself: at a black image every ReLU sits on its kink, where
    TensorFlow's gradient is 0, and on a bias-free ReLU network that one point costs the
    trapezoid rule exactly ``1 / (2 steps)`` of the total (measured). The midpoint rule
    (``steps`` gradients at a = 0.5/steps ... 1 - 0.5/steps) evaluates exactly the points that
    doubling ``steps`` adds to the other two, so tolerance mode doubles the steps by adding a
    midpoint sum (``R(2m) = (R(m) + M(m)) / 2``, the same for the trapezoid rule) instead of
    starting again: a map at ``steps`` costs ``steps`` gradients however many doublings it
    took. ``F`` is the class
    logit by default. With ``reduce="sum"`` (signed, the default) a map sums to about
    ``F(x) - F(x')`` (completeness); the error shrinks as ``steps`` grows (tested).
    The interpolated copies of several images share model calls of ``batch_size`` rows.

    Parameters
    ----------
    steps : int, default 50
    baseline : {"black", "zero", "white", "mean", "blur"} or float, default "black"
    rule : {"riemann", "trapezoid", "midpoint"}, default "riemann"
    score : {"logit", "probability", "loss"}, default "logit"
    reduce : {"sum", "sum_abs", "max_abs"}, default "sum"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    default_score = "logit"
    sample_count = "steps"  # what tolerance mode doubles (IG is not random: its error is the completeness gap)
    parameters = {
        "steps": Param(50, int, low=1, doc="Intervals of the path integral."),
        "baseline": Param("black", (str, float), check=check_baseline, doc="Where the path starts."),
        "rule": Param("riemann", choices=RULES, doc="Quadrature rule."),
        "reduce": Param("sum", choices=SIGNED_REDUCTIONS, doc="Channel reduction."),
    }

    def setup(self):
        steps = self.resolved["steps"]
        if self.resolved["rule"] == "trapezoid":
            alphas = np.linspace(0.0, 1.0, steps + 1)
            weights = np.full(steps + 1, 1.0 / steps)
            weights[[0, -1]] /= 2
        elif self.resolved["rule"] == "midpoint":
            alphas = (np.arange(steps) + 0.5) / steps
            weights = np.full(steps, 1.0 / steps)
        else:
            alphas = np.arange(1, steps + 1) / steps
            weights = np.full(steps, 1.0 / steps)
        self._alphas = tf.constant(alphas, tf.float32)
        self._weights = tf.constant(weights, tf.float32)

    def n_copies(self):
        return int(self._alphas.shape[0])

    def accumulator_shape(self):
        return tuple(self.spec.input_shape)

    def prepare(self, images, targets):
        return {"baselines": baseline_images(images, self.resolved["baseline"], self.spec.input_range)}

    def contribution(self, images, targets, state, rows, points, drawn):
        """The weighted gradients at path points `points` of images `rows`."""
        start = tf.gather(state["baselines"], rows)
        alpha = tf.gather(self._alphas, points)[:, None, None, None]
        path = start + alpha * (tf.gather(images, rows) - start)
        gradients = self.input_gradients(path, tf.gather(targets, rows))
        return gradients * tf.gather(self._weights, points)[:, None, None, None]

    def finalize(self, images, targets, state, total):
        attributions = (images - state["baselines"]) * total
        return reduce_channels(attributions, self.resolved["reduce"])

    def estimate_with_error(self, images, targets, tolerance, max_samples):
        """The error of an IG map is its completeness gap; tolerance mode doubles ``steps``."""
        from xai.monte_carlo import completeness_gap

        return completeness_gap(self, images, targets, tolerance, max_samples)

    def score_difference(self, images, targets) -> np.ndarray:
        """``F(x) - F(x')`` per image: what a complete map sums to."""
        def difference(x, t):
            return self.scores(x, t) - self.scores(baseline_images(x, self.resolved["baseline"],
                                                                   self.spec.input_range), t)

        fn = self.compiled("score_difference", difference, [self.image_signature, self.index_signature])
        step = self.resolved["batch_size"]
        return np.concatenate([np.asarray(fn(tf.convert_to_tensor(images[s:s + step]),
                                             tf.convert_to_tensor(targets[s:s + step])), np.float64)
                               for s in range(0, len(images), step)])
