"""Score-CAM (Wang et al. 2020): feature maps weighted by the score of the image they mask."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import INTERPOLATIONS, LAYER, Param, PerturbationExplainer, conv_layer, no_feature_layer


class ScoreCAM(PerturbationExplainer):
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
    layer : str, layer object or None, default None
        As Grad-CAM's.
    max_maps : int or None, default None
    score : {"probability", "logit", "loss"}, default "probability"
    interpolation : {"bilinear", "nearest", "bicubic"}, default "bilinear"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    default_score = "probability"
    parameters = {
        "layer": LAYER,
        "max_maps": Param(None, int, low=1, allow_none=True, doc="Maps used (None: all)."),
        "interpolation": Param("bilinear", choices=INTERPOLATIONS, doc="Upsampling of the maps."),
    }

    @classmethod
    def not_applicable(cls, spec, params):
        return no_feature_layer(spec, params)

    def setup(self):
        from xai.models import layer_output_shapes

        self.layer = conv_layer(self.model, self.spec, self.resolved["layer"], self.display_name)
        channels = int(layer_output_shapes(self.model, [self.layer])[id(self.layer)][-1])
        self.n_maps = min(channels, self.resolved["max_maps"] or channels)

    def head_layers(self):
        return [self.layer]

    def n_copies(self):
        return self.n_maps

    def accumulator_shape(self):
        return (self.n_maps,)

    def prepare(self, images, targets):
        """The `n_maps` maps used per image, (N, h, w, n_maps)."""
        maps = tf.cast(self.head(images)[self.layer.name], tf.float32)
        if self.n_maps < maps.shape[-1]:
            variance = tf.math.reduce_variance(maps, axis=[1, 2])
            keep = tf.math.top_k(variance, k=self.n_maps, sorted=True).indices
            maps = tf.gather(maps, keep, axis=3, batch_dims=1)
        return {"maps": maps}

    def contribution(self, images, targets, state, rows, channels, drawn):
        """Score of image `rows[r]` masked by its map `channels[r]`, in that map's slot."""
        chosen = tf.gather(tf.gather(state["maps"], rows), channels[:, None], axis=3, batch_dims=1)
        masks = self.upsample(chosen[..., 0])
        low = tf.reduce_min(masks, axis=[1, 2], keepdims=True)
        high = tf.reduce_max(masks, axis=[1, 2], keepdims=True)
        masks = tf.math.divide_no_nan(masks - low, high - low)
        scores = self.scores(tf.gather(images, rows) * masks[..., None], tf.gather(targets, rows))
        return scores[:, None] * tf.one_hot(channels, self.n_maps)

    def finalize(self, images, targets, state, weights):
        return self.upsample(tf.nn.relu(tf.einsum("nhwk,nk->nhw", state["maps"], weights)))
