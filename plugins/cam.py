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
    xai.errors.ModelError
        The model has no GlobalAveragePooling2D feeding its final Dense layer.
    """

    parameters = {
        "relu": Param(False, bool, doc="Clip negative evidence."),
        "interpolation": Param("bilinear", choices=INTERPOLATIONS,
                               doc="Upsampling from the feature grid to the input size."),
    }
    needs = ("feature_layer", "classifier_layer")

    def head_layers(self):
        return [self.spec.feature_layer]

    def feature_cam(self, images, targets):
        """CAM at the feature grid's resolution (h, w), before upsampling."""
        out = self.head(images)
        resolved = resolve_targets(targets, out["probabilities"])
        weights = tf.gather(tf.transpose(self.head.classifier.kernel), resolved)  # (N, K)
        features = out[self.spec.feature_layer]
        return tf.einsum("nhwk,nk->nhw", features, tf.cast(weights, features.dtype))

    def compute(self, images, targets):
        cam = self.feature_cam(images, targets)
        if self.resolved["relu"]:
            cam = tf.nn.relu(cam)
        return self.upsample(cam)
