"""SmoothGrad (Smilkov et al. 2017): gradients averaged over noisy copies."""

from __future__ import annotations

import math

import tensorflow as tf

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


@register_explainer("smoothgrad")
class SmoothGrad(Explainer):
    """Mean input gradient over ``n_samples`` copies with Gaussian noise, then reduced.

    Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017. Noise is
    ``N(0, sigma^2)`` with ``sigma = noise_level * (max - min)`` of each input image (the
    paper's 10–20%). As in the paper and Xplique, raw gradients are averaged and the
    channel reduction (the same ``score`` and ``reduce`` as `VanillaGradient`) comes last.
    The noise of image i, sample j is drawn from a counter-based generator seeded with
    ``(seed, i * n_samples + j)``: maps do not depend on ``batch_size``. The predicted
    class (targets None) is the clean image's, not the noisy copies'.

    Parameters
    ----------
    n_samples : int, default 50
    noise_level : float, default 0.15
    seed : int, default 0
    score : {"loss", "probability", "logit"}, default "loss"
    reduce : {"sum_abs", "max_abs"}, default "sum_abs"
    batch_size : int, default 32
        Noisy copies per model call (several images' copies share a call).
    jit_compile : bool, default False
    """

    stochastic = True
    parameters = {
        "n_samples": Param(50, int, low=1, doc="Noisy copies per image."),
        "noise_level": Param(0.15, float, low=0.0, doc="sigma as a fraction of (max - min)."),
        "seed": Param(0, int, low=0, doc="Seed of the noise."),
        "score": Param("loss", choices=SCORES, doc="What is differentiated."),
        "reduce": Param("sum_abs", choices=REDUCTIONS, doc="Channel reduction of |gradient|."),
        "batch_size": BATCH_SIZE,
        "jit_compile": JIT_COMPILE,
    }

    def _setup(self):
        self._head = ModelHead(self.model)
        self._head.check_score(self.resolved["score"])
        image_sig = image_signature(self.spec)
        jit = self.resolved["jit_compile"]
        self._predict = targets_fn(self._head, self.spec, jit)
        # The noise is drawn outside XLA: XLA's stateless generators give other numbers,
        # and the same seed must give the same maps with and without jit_compile.
        self._noisy = compile_fn(self._noisy_copies, [image_sig, INDEX_SIGNATURE, INDEX_SIGNATURE], False)
        self._accumulate = compile_fn(
            self._accumulate_rows, [image_sig, TARGETS_SIGNATURE, image_sig, INDEX_SIGNATURE], jit)

    def _copies_per_image(self):
        return self.resolved["n_samples"]

    def _noisy_copies(self, images, rows, counters):
        """Image `rows[r]` plus its noise number `counters[r]`."""
        x = tf.gather(images, rows)
        span = tf.reduce_max(x, axis=[1, 2, 3]) - tf.reduce_min(x, axis=[1, 2, 3])
        sigma = self.resolved["noise_level"] * span
        shape = tf.shape(images)[1:]
        seed = self.resolved["seed"]
        noise = tf.map_fn(
            lambda c: tf.random.stateless_normal(shape, seed=tf.stack([seed, c])),
            counters, fn_output_signature=tf.float32)
        return x + noise * sigma[:, None, None, None]

    def _accumulate_rows(self, noisy, targets, total, rows):
        """Add the gradients of the noisy copies of images `rows` to `total`."""
        gradients = input_gradients(self._head, noisy, tf.gather(targets, rows), self.resolved["score"])
        return tf.tensor_scatter_nd_add(total, rows[:, None], gradients)

    def _explain_batch(self, images, targets, offset):
        n_samples, batch_size = self.resolved["n_samples"], self.resolved["batch_size"]
        if bool(tf.reduce_any(targets < 0)):
            targets = self._predict(images, targets)
        total = tf.zeros_like(images)
        for rows, samples in copy_chunks(int(images.shape[0]), n_samples, batch_size):
            counters = (offset + rows) * n_samples + samples
            total = self._accumulate(self._noisy(images, rows, counters), targets, total, rows)
        return reduce_channels(total / n_samples, self.resolved["reduce"])

    def n_model_calls(self, n_images: int) -> int:
        """Forward+backward batches this explainer runs for `n_images` (for benchmarks)."""
        return math.ceil(n_images * self.resolved["n_samples"] / self.resolved["batch_size"])
