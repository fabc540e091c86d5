"""Integrated Gradients (Sundararajan, Taly & Yan 2017)."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from xai.baselines import baseline_images, check_baseline
from xai.explainer import BATCH_SIZE, JIT_COMPILE, Explainer, Param, copy_chunks
from xai.head import (
    INDEX_SIGNATURE,
    REDUCTIONS,
    SCORES,
    TARGETS_SIGNATURE,
    ModelHead,
    compile_fn,
    image_signature,
    input_gradients,
    reduce_channels,
    targets_fn,
)
from xai.registry import register_explainer

RULES = ("riemann", "trapezoid")


@register_explainer("integrated_gradients")
class IntegratedGradients(Explainer):
    """``(x - x') * integral_0^1 dF(x' + a (x - x')) / dx da``, summed over channels.

    Sundararajan et al., "Axiomatic Attribution for Deep Networks", ICML 2017. The
    integral is approximated on ``steps`` equal intervals, by the paper's right Riemann
    sum (``steps`` gradients at a = 1/steps ... 1, the default) or the trapezoid rule
    (``steps + 1`` gradients, both ends included). The right sum never evaluates the
    gradient at the baseline itself: at a black image every ReLU sits on its kink, where
    TensorFlow's gradient is 0, and on a bias-free ReLU network that one point costs the
    trapezoid rule exactly ``1 / (2 steps)`` of the total (measured). ``F`` is the class
    logit by default. With ``reduce="sum"`` (signed, the default) a map sums to about
    ``F(x) - F(x')`` (completeness); the error shrinks as ``steps`` grows (tested).
    The interpolated copies of several images share model calls of ``batch_size`` rows.

    Parameters
    ----------
    steps : int, default 50
    baseline : {"black", "zero", "white", "mean", "blur"} or float, default "black"
    rule : {"riemann", "trapezoid"}, default "riemann"
    score : {"logit", "probability", "loss"}, default "logit"
    reduce : {"sum", "sum_abs", "max_abs"}, default "sum"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    parameters = {
        "steps": Param(50, int, low=1, doc="Intervals of the path integral."),
        "baseline": Param("black", (str, float), doc="Where the path starts."),
        "rule": Param("riemann", choices=RULES, doc="Quadrature rule."),
        "score": Param("logit", choices=SCORES, doc="What is differentiated."),
        "reduce": Param("sum", choices=("sum",) + REDUCTIONS, doc="Channel reduction."),
        "batch_size": BATCH_SIZE,
        "jit_compile": JIT_COMPILE,
    }

    def _setup(self):
        check_baseline(type(self).__name__, self.resolved["baseline"])
        self._head = ModelHead(self.model)
        self._head.check_score(self.resolved["score"])
        steps = self.resolved["steps"]
        if self.resolved["rule"] == "trapezoid":
            alphas = np.linspace(0.0, 1.0, steps + 1)
            weights = np.full(steps + 1, 1.0 / steps)
            weights[[0, -1]] /= 2
        else:
            alphas = np.arange(1, steps + 1) / steps
            weights = np.full(steps, 1.0 / steps)
        self._alphas = tf.constant(alphas, tf.float32)
        self._weights = tf.constant(weights, tf.float32)
        image_sig = image_signature(self.spec)
        jit = self.resolved["jit_compile"]
        self._predict = targets_fn(self._head, self.spec, jit)
        self._baselines = compile_fn(lambda x: baseline_images(x, self.resolved["baseline"]),
                                     [image_sig], jit)
        self._accumulate = compile_fn(
            self._accumulate_rows,
            [image_sig, image_sig, TARGETS_SIGNATURE, image_sig, INDEX_SIGNATURE, INDEX_SIGNATURE], jit)

    def _copies_per_image(self):
        return len(self._alphas)

    def _accumulate_rows(self, images, baselines, targets, total, rows, points):
        """Add the weighted gradients at path points `points` of images `rows` to `total`."""
        start = tf.gather(baselines, rows)
        alpha = tf.gather(self._alphas, points)[:, None, None, None]
        path = start + alpha * (tf.gather(images, rows) - start)
        gradients = input_gradients(self._head, path, tf.gather(targets, rows), self.resolved["score"])
        weighted = gradients * tf.gather(self._weights, points)[:, None, None, None]
        return tf.tensor_scatter_nd_add(total, rows[:, None], weighted)

    def _explain_batch(self, images, targets, offset):
        # The class is the one predicted for the image itself, not for points on the path.
        if bool(tf.reduce_any(targets < 0)):
            targets = self._predict(images, targets)
        baselines = self._baselines(images)
        total = tf.zeros_like(images)
        for rows, points in copy_chunks(int(images.shape[0]), len(self._alphas),
                                        self.resolved["batch_size"]):
            total = self._accumulate(images, baselines, targets, total, rows, points)
        attributions = (images - baselines) * total
        if self.resolved["reduce"] == "sum":
            return tf.reduce_sum(attributions, axis=-1)
        return reduce_channels(attributions, self.resolved["reduce"])
