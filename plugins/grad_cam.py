"""Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean gradient."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import INTERPOLATIONS, LAYER, Explainer, Param, conv_layer, no_feature_layer


class GradCAM(Explainer):
    """``ReLU(sum_k alpha_k A_k)`` with ``alpha_k`` the spatial mean of ``d y_c / d A_k``.

    Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
    Localization", ICCV 2017. ``A`` is the output of ``layer`` (default: the model's
    declared ``last_conv_layer``, ``block5_conv3`` on VGG16-GAP) and ``y_c`` the class
    logit, as in the paper. The map is upsampled to the input size (bilinear, as in the
    paper). On VGG16-GAP with the logit, ``alpha_k = w[k, c] / (h * w)``: Grad-CAM at
    ``block5_conv3`` is CAM computed one pooling earlier (tested).

    Parameters
    ----------
    layer : str, layer object or None, default None
        Layer whose output is weighted: a name, a path ``"base/layer"`` into a nested base,
        or the layer object (how to point at a layer of a subclassed model). None: the
        model's ``last_conv_layer`` (the feature map its global pooling reads, or the
        convolution just before it when only pooling separates them).
    score : {"logit", "probability", "loss"}, default "logit"
    relu : bool, default True
        The paper's ReLU; False keeps the negative evidence.
    interpolation : {"bilinear", "nearest", "bicubic"}, default "bilinear"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    differentiates_score = True

    default_score = "logit"
    parameters = {
        "layer": LAYER,
        "relu": Param(True, bool, doc="Keep only positive evidence."),
        "interpolation": Param("bilinear", choices=INTERPOLATIONS,
                               doc="Upsampling from the feature grid to the input size."),
    }

    @classmethod
    def not_applicable(cls, spec, params):
        return no_feature_layer(spec, params)

    def setup(self):
        self.layer = conv_layer(self.model, self.spec, self.resolved["layer"], self.display_name)

    def head_layers(self):
        return [self.layer]

    def channel_weights(self, activations, gradients):
        """(N, K) weight of each feature map."""
        return tf.reduce_mean(gradients, axis=[1, 2])

    def feature_map(self, images, targets):
        """The map at the layer's resolution (h, w), before the ReLU and upsampling."""
        activations, gradients, _ = self.layer_gradients(images, targets, self.layer.name)
        return tf.einsum("nhwk,nk->nhw", activations, self.channel_weights(activations, gradients))

    def compute(self, images, targets):
        cam = self.feature_map(images, targets)
        if self.resolved.get("relu", True):
            cam = tf.nn.relu(cam)
        return self.upsample(cam)
