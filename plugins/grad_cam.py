"""Grad-CAM (Selvaraju et al. 2017): feature maps weighted by their mean gradient."""

from __future__ import annotations

import tensorflow as tf

from xai.explainer import BATCH_SIZE, JIT_COMPILE, Explainer, Param
from xai.head import (
    INTERPOLATIONS,
    SCORES,
    TARGETS_SIGNATURE,
    ModelHead,
    check_interpolation,
    compile_fn,
    conv_layer,
    image_signature,
    layer_gradients,
    upsample,
)
from xai.registry import register_explainer


@register_explainer("grad_cam")
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
    layer : str or None, default None
        Layer whose output is weighted (None: the declared last convolution).
    score : {"logit", "probability", "loss"}, default "logit"
    relu : bool, default True
        The paper's ReLU; False keeps the negative evidence.
    interpolation : {"bilinear", "nearest", "bicubic"}, default "bilinear"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    parameters = {
        "layer": Param(None, str, allow_none=True, doc="Feature layer (None: last convolution)."),
        "score": Param("logit", choices=SCORES, doc="What is differentiated."),
        "relu": Param(True, bool, doc="Keep only positive evidence."),
        "interpolation": Param("bilinear", choices=INTERPOLATIONS,
                               doc="Upsampling from the feature grid to the input size."),
        "batch_size": BATCH_SIZE,
        "jit_compile": JIT_COMPILE,
    }

    def _setup(self):
        check_interpolation(type(self).__name__, self.resolved)
        self.layer = conv_layer(self.model, self.spec, self.resolved["layer"], self.name or "grad_cam")
        self._head = ModelHead(self.model, extra_layers=[self.layer])
        self._head.check_score(self.resolved["score"])
        self._maps = compile_fn(self._compute, [image_signature(self.spec), TARGETS_SIGNATURE],
                                self.resolved["jit_compile"])

    def channel_weights(self, activations: tf.Tensor, gradients: tf.Tensor) -> tf.Tensor:
        """(N, K) weight of each feature map."""
        return tf.reduce_mean(gradients, axis=[1, 2])

    def feature_map(self, images, targets):
        """The map at the layer's resolution (h, w), before the ReLU and upsampling."""
        activations, gradients, _ = layer_gradients(self._head, images, targets,
                                                    self.resolved["score"], self.layer)
        weights = self.channel_weights(activations, gradients)
        return tf.einsum("nhwk,nk->nhw", activations, weights)

    def _compute(self, images, targets):
        cam = self.feature_map(images, targets)
        if self.resolved.get("relu", True):
            cam = tf.nn.relu(cam)
        return upsample(cam, self.spec.input_shape[:2], self.resolved["interpolation"])

    def _explain_batch(self, images, targets, offset):
        return self._maps(images, targets)
