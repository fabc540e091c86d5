"""FEM (Fuad et al. 2020): feature maps thresholded by a k-sigma rule, weighted by their mean."""

from __future__ import annotations

import warnings

from xai._lazy import tf
from xai.plugin_api import INTERPOLATIONS, LAYER, Explainer, Param, conv_layer, no_feature_layer


class FEM(Explainer):
    """``sum_k mean(A_k) * [A_k > mean(A_k) + k * std(A_k)]``, upsampled to the input size.

    Fuad, Martin, Giot, Bourqui, Benois-Pineau and Zemmari, "Features Understanding in 3D
    CNNs for Actions Recognition in Video" (FEM, the Feature Explanation Method), IPTA
    2020. Gradient-free and class-agnostic: one forward pass, and the target is not used.
    ``A_k`` is channel ``k`` of the output of ``layer`` (default: the model's declared
    ``last_conv_layer``, ``block5_conv3`` on VGG16-GAP); its spatial mean and (population)
    standard deviation set the threshold, and the channel's mean weights its binary mask.
    Maps are raw, not normalised.

    Departures: the authors' code divides each map by its maximum and returns it at the
    feature grid's resolution; here maps are raw (as every xai method) and upsampled like
    the rest of the CAM family (bilinear by default). Xplique's ``FEM`` thresholds with
    ``>=`` where the authors' code uses ``>``; the two differ only on ties, chiefly a
    constant channel (``std = 0``), which Xplique adds everywhere with its weight and the
    paper ignores; it upsamples bicubically (``interpolation="bicubic"`` reproduces it).

    With ``n`` positions on the feature grid no value exceeds its channel's mean by more
    than ``sqrt(n - 1)`` standard deviations, so when ``k >= sqrt(n - 1)`` every map is
    zero (``k=2`` needs at least 6 positions; a 2x2 grid never passes): a warning says so.

    Parameters
    ----------
    layer : str, layer object or None, default None
        As Grad-CAM's.
    k : float, default 2.0
        Standard deviations above the channel's mean a position must exceed.
    interpolation : {"bilinear", "nearest", "bicubic"}, default "bilinear"
    batch_size : int, default 32
    jit_compile : bool, default False

    Raises
    ------
    xai.errors.NotApplicable
        No ``layer`` given and the model shows no convolution (a subclassed model).
    """

    parameters = {
        "layer": LAYER,
        "k": Param(2.0, float, low=0.0, doc="Threshold in standard deviations above the channel mean."),
        "interpolation": Param("bilinear", choices=INTERPOLATIONS,
                               doc="Upsampling from the feature grid to the input size."),
    }

    @classmethod
    def not_applicable(cls, spec, params):
        return no_feature_layer(spec, params)

    def setup(self):
        from xai.models import layer_output_shapes

        self.layer = conv_layer(self.model, self.spec, self.resolved["layer"], self.display_name)
        _, h, w, _ = layer_output_shapes(self.model, [self.layer])[id(self.layer)]
        if h * w - 1 <= self.resolved["k"] ** 2:
            warnings.warn(f"{self.display_name}: layer {self.layer.name!r} has a {h}x{w} grid, where no "
                          f"value can exceed its channel's mean by more than sqrt({h * w - 1}) standard "
                          f"deviations, so with k={self.resolved['k']:g} every map is zero; pass an "
                          "earlier layer or a smaller k.", UserWarning, stacklevel=3)

    def head_layers(self):
        return [self.layer]

    def feature_map(self, images):
        """The map at the layer's resolution (h, w), before upsampling."""
        activations = self.head(images)[self.layer.name]
        mean = tf.reduce_mean(activations, axis=[1, 2], keepdims=True)
        threshold = mean + self.resolved["k"] * tf.math.reduce_std(activations, axis=[1, 2], keepdims=True)
        return tf.reduce_sum(tf.cast(activations > threshold, activations.dtype) * mean, axis=-1)

    def compute(self, images, targets):
        return self.upsample(self.feature_map(images))
