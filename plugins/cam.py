"""Class Activation Mapping (Zhou et al. 2016), the seed's previous post."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import INTERPOLATIONS, Explainer, Param, resolve_targets


class CAM(Explainer):
    """``CAM_c = sum_k w[k, c] * f_k``, upsampled to the input size.

    Zhou et al., "Learning Deep Features for Discriminative Localization", CVPR 2016.
    ``f_k`` are the maps the model's global average pooling averages (its declared
    ``feature_layer``; ``block5_pool`` on VGG16-GAP) and ``w`` the classifier's weights,
    so the map's spatial mean plus the class bias is the class logit. Departures: no
    ReLU by default (``relu=True`` clips negatives, as some implementations do; with two
    softmax classes the negative part is the evidence for the other class), and the
    paper's bilinear upsampling is one of two ``interpolation`` choices.

    Parameters
    ----------
    relu : bool, default False
    interpolation : {"bilinear", "nearest", "bicubic"}, default "bilinear"
    batch_size : int, default 32
    jit_compile : bool, default False

    Raises
    ------
    xai.errors.NotApplicable
        The model's head is not GlobalAveragePooling2D then (Dropout-like layers and) one
        Dense layer, the architecture CAM is defined for: e.g. a LayerNormalization after
        the pooling (ConvNeXt), Flatten and fully connected layers (VGG19), or a subclassed
        model whose graph cannot be read. Grad-CAM generalises CAM to those.
    """

    parameters = {
        "relu": Param(False, bool, doc="Clip negative evidence."),
        "interpolation": Param("bilinear", choices=INTERPOLATIONS,
                               doc="Upsampling from the feature grid to the input size."),
    }
    @classmethod
    def not_applicable(cls, spec, params):
        if spec.linear_head and spec.feature_layer and spec.classifier_layer:
            return ""
        return (f"CAM is defined for a head of global average pooling then one Dense layer; "
                f"here {spec.head_note or 'the model declares none'}. Use Grad-CAM, which "
                "generalises it, or name the layers with xai.models.derive_spec(model, "
                "feature_layer=..., classifier_layer=...).")

    def head_layers(self):
        return [self.spec.feature_layer]

    def feature_cam(self, images, targets):
        """CAM at the feature grid's resolution (h, w), before upsampling."""
        out = self.head(images)
        resolved = resolve_targets(targets, out["probabilities"])
        weights = tf.gather(tf.transpose(self.head.class_weights()[0]), resolved)  # (N, K)
        features = out[self.spec.feature_layer]
        return tf.einsum("nhwk,nk->nhw", features, tf.cast(weights, features.dtype))

    def compute(self, images, targets):
        cam = self.feature_cam(images, targets)
        if self.resolved["relu"]:
            cam = tf.nn.relu(cam)
        return self.upsample(cam)
