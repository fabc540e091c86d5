"""KernelSHAP (Lundberg & Lee 2017): Shapley values of superpixels by a kernel-weighted fit."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import baseline_images
from xai.plugins._coalitions import CoalitionExplainer, least_squares


class KernelSHAP(CoalitionExplainer):
    """Each superpixel's Shapley value for the target's score, estimated by KernelSHAP.

    Lundberg & Lee, "A Unified Approach to Interpreting Model Predictions", NeurIPS 2017
    (Theorem 2). A coalition ``z`` of the image's ``m`` superpixels shows the image in its
    superpixels and ``baseline`` elsewhere; ``f(z)`` is the target's probability on it. The
    Shapley values are the solution of
    ``min sum_z pi(z) (f(z) - phi_0 - z.phi)^2`` with the Shapley kernel
    ``pi(z) = (m - 1) / (C(m, k) k (m - k))`` for ``k = |z|``. Its infinite weights on the
    empty and the full coalition are the paper's constraints, enforced exactly:
    ``phi_0 = f(empty)`` and ``sum phi = f(full) - f(empty)`` (two extra forward passes per
    image), the rest of the fit solved where ``sum phi`` is fixed (minimum-norm least
    squares, float64); the ``shap`` package eliminates one variable instead, which is the
    same solution.

    The kernel is realised by the sampling, as in ``shap``, Captum and Xplique: a size
    ``k`` in ``1..m-1`` is drawn with probability proportional to ``(m - 1) / (k (m - k))``,
    then a uniform subset of that size, and the copies are weighted equally. As in ``shap``,
    copies come in pairs, a coalition and its complement (which has the same probability),
    which cancels much of the sampling noise. Every pixel gets its superpixel's value, so
    the map sums, over superpixels, to ``f(image) - f(baseline)``.

    Departures: Xplique's ``KernelShap`` fits an unconstrained least squares with a free
    intercept, without the empty and full coalitions, and draws unpaired coalitions; its
    limit is not the Shapley values of a non-additive model (measured on a small CNN: 10-13%
    of the maximum off the exact values at 20000 samples, where this is within 3%). ``shap``
    also enumerates the small and large coalition sizes completely when its budget allows;
    this samples every size. Superpixels and the baseline are LIME's (see `LIME`). Draws
    come from (seed, image number * n_samples + copy), copy ``2i + 1`` reusing those of
    ``2i``: maps do not depend on ``batch_size``.

    Cost: ``n_samples + 2`` forward passes per image, plus one SLIC segmentation on the host.

    Parameters
    ----------
    n_samples : int, default 2000
        About ``shap``'s default (``2 m + 2048``) for 50 superpixels (Xplique's is 800).
    segmentation : {"slic", "grid"}, default "slic"
    n_segments : int, default 50
    baseline : {"grey", "zero", "black", "white", "mean", "blur"} or float, default "grey"
    seed : int, default 0
    score : {"probability", "logit", "loss"}, default "probability"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    paired = True
    parameters = CoalitionExplainer.coalition_parameters(2000)

    def prepare(self, images, targets):
        baselines = baseline_images(images, self.resolved["baseline"], self.spec.input_range)
        return {"baselines": baselines, "empty": self.scores(baselines, targets),
                "full": self.scores(images, targets)}

    def coalitions(self, uniforms, copies, n_features):
        k_max = self.max_features
        present = tf.range(k_max)[None, :] < n_features[:, None]
        m = tf.cast(tf.maximum(n_features, 2), tf.float32)[:, None]
        sizes = tf.cast(tf.range(1, max(k_max, 2)), tf.float32)[None, :]
        mass = tf.where(sizes < m, 1.0 / (sizes * (m - sizes)), 0.0)
        cdf = tf.cumsum(mass, axis=1) / tf.reduce_sum(mass, axis=1, keepdims=True)
        size = 1 + tf.reduce_sum(tf.cast(cdf < uniforms[:, :1], tf.int32), axis=1)
        size = tf.minimum(size, tf.maximum(n_features - 1, 1))
        # The `size` present superpixels with the smallest uniforms: a uniform subset.
        ranks = tf.argsort(tf.argsort(tf.where(present, uniforms[:, 1:], 2.0), axis=1), axis=1)
        z = tf.cast((ranks < size[:, None]) & present, tf.float32)
        complement = tf.cast(copies % 2 == 1, tf.float32)[:, None]
        return z + complement * (tf.cast(present, tf.float32) - 2.0 * z)

    def response(self, scores, state, rows):
        return scores - tf.gather(state["empty"], rows)

    def solve(self, gram, moments, present, state):
        # phi = total / m on every superpixel meets the constraint; the rest of phi lies in the
        # sum-zero subspace of the present superpixels (projector P), where the fit is free.
        gram, moments = gram[:, 1:, 1:], moments[:, 1:]
        m = tf.reduce_sum(present, axis=1, keepdims=True)
        even = present * tf.cast(state["full"] - state["empty"], tf.float64)[:, None] / m
        projector = tf.linalg.diag(present) - present[:, :, None] * present[:, None, :] / m[:, :, None]
        residual = moments - tf.linalg.matvec(gram, even)
        free = least_squares(projector @ gram @ projector, tf.linalg.matvec(projector, residual))
        return even + tf.linalg.matvec(projector, free)
