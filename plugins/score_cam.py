"""Score-CAM (Wang et al. 2020): feature maps weighted by the score of the image they mask."""

from __future__ import annotations

import tensorflow as tf

from xai.explainer import BATCH_SIZE, JIT_COMPILE, Explainer, Param, copy_chunks
from xai.head import (
    INDEX_SIGNATURE,
    INTERPOLATIONS,
    SCORES,
    TARGETS_SIGNATURE,
    ModelHead,
    check_interpolation,
    class_score,
    compile_fn,
    conv_layer,
    image_signature,
    resolve_targets,
    upsample,
)
from xai.models import layer_tensors
from xai.registry import register_explainer


@register_explainer("score_cam")
class ScoreCAM(Explainer):
    """``ReLU(sum_k s(x * H_k) A_k)``, ``H_k`` = ``A_k`` upsampled and scaled to [0, 1].

    Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional Neural
    Networks", CVPR workshops 2020. ``A`` is the output of ``layer`` (default: the
    declared last convolution) and ``s`` the target's softmax probability of the masked
    image, as in the authors' code (the paper's "increase of confidence" subtracts a
    baseline score that the code omits). ``max_maps`` keeps only the maps with the largest
    spatial variance, like tf-keras-vis' Faster-Score-CAM; None uses all. A map that is
    constant cannot be scaled to [0, 1]; it becomes an all-zero mask. The paper's
    final ReLU always applies (with probabilities as weights and ReLU feature maps, the
    sum is never negative anyway). The masked
    copies of all maps and images share model calls of ``batch_size`` rows.

    Parameters
    ----------
    layer : str or None, default None
    max_maps : int or None, default None
    score : {"probability", "logit", "loss"}, default "probability"
    interpolation : {"bilinear", "nearest", "bicubic"}, default "bilinear"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    parameters = {
        "layer": Param(None, str, allow_none=True, doc="Feature layer (None: last convolution)."),
        "max_maps": Param(None, int, low=1, allow_none=True, doc="Maps used (None: all)."),
        "score": Param("probability", choices=SCORES, doc="Score of the masked copies."),
        "interpolation": Param("bilinear", choices=INTERPOLATIONS, doc="Upsampling of the maps."),
        "batch_size": BATCH_SIZE,
        "jit_compile": JIT_COMPILE,
    }

    def _setup(self):
        check_interpolation(type(self).__name__, self.resolved)
        self.layer = conv_layer(self.model, self.spec, self.resolved["layer"], self.name or "score_cam")
        self._head = ModelHead(self.model, extra_layers=[self.layer])
        self._head.check_score(self.resolved["score"])
        channels = int(layer_tensors(self.model, self.layer)[1].shape[-1])
        self.n_maps = min(channels, self.resolved["max_maps"] or channels)
        image_sig = image_signature(self.spec)
        feature_sig = tf.TensorSpec((None, None, None, None), tf.float32)
        jit = self.resolved["jit_compile"]
        self._features = compile_fn(self._select_maps, [image_sig, TARGETS_SIGNATURE], jit)
        self._scores = compile_fn(self._masked_scores,
                                  [image_sig, feature_sig, TARGETS_SIGNATURE, INDEX_SIGNATURE, INDEX_SIGNATURE], jit)
        self._combine = compile_fn(self._weighted_sum, [feature_sig, tf.TensorSpec((None, None), tf.float32)], jit)

    def _copies_per_image(self):
        return self.n_maps

    def _select_maps(self, images, targets):
        """The `n_maps` maps used per image (N, h, w, n_maps) and the resolved targets."""
        out = self._head(images)
        resolved = resolve_targets(targets, out["probabilities"])
        maps = out[self.layer]
        if self.n_maps < maps.shape[-1]:
            variance = tf.math.reduce_variance(maps, axis=[1, 2])
            keep = tf.math.top_k(variance, k=self.n_maps, sorted=True).indices
            maps = tf.gather(maps, keep, axis=3, batch_dims=1)
        return maps, resolved

    def _masked_scores(self, images, maps, targets, rows, channels):
        """Score of image `rows[r]` masked by its map `channels[r]`, (R,)."""
        chosen = tf.gather(tf.gather(maps, rows), channels[:, None], axis=3, batch_dims=1)
        masks = upsample(chosen[..., 0], self.spec.input_shape[:2], self.resolved["interpolation"])
        low = tf.reduce_min(masks, axis=[1, 2], keepdims=True)
        high = tf.reduce_max(masks, axis=[1, 2], keepdims=True)
        masks = tf.math.divide_no_nan(masks - low, high - low)
        masked = tf.gather(images, rows) * masks[..., None]
        return class_score(self.resolved["score"], self._head(masked), tf.gather(targets, rows))

    def _weighted_sum(self, maps, weights):
        cam = tf.nn.relu(tf.einsum("nhwk,nk->nhw", maps, weights))
        return upsample(cam, self.spec.input_shape[:2], self.resolved["interpolation"])

    def _explain_batch(self, images, targets, offset):
        maps, targets = self._features(images, targets)
        n = int(images.shape[0])
        scores = [self._scores(images, maps, targets, rows, channels)
                  for rows, channels in copy_chunks(n, self.n_maps, self.resolved["batch_size"])]
        weights = tf.reshape(tf.concat(scores, axis=0), (n, self.n_maps))
        return self._combine(maps, weights)
