"""Layer-CAM (Jiang et al. 2021): feature maps weighted position by position by their positive gradient."""

from __future__ import annotations

from xai._lazy import tf
from xai.plugin_api import Param, ParameterError, check_layer_ref, conv_layer
from xai.plugins.grad_cam import GradCAM

#: The paper's gamma of Eq. 9, scaling each layer's map before the fusion.
FUSION_GAMMA = 2.0


def check_layer_refs(owner: str, value) -> None:
    """One layer reference, or a non-empty list of them."""
    refs = value if isinstance(value, (list, tuple)) else [value]
    if not refs:
        raise ParameterError(f"{owner}: parameter 'layer' must name at least one layer; got an empty list.")
    for ref in refs:
        check_layer_ref(owner, ref)


class LayerCAM(GradCAM):
    """``ReLU(sum_k ReLU(d y_c / d A_k) * A_k)``, position by position, upsampled.

    Jiang, Zhang, Hou, Cheng and Wei, "LayerCAM: Exploring Hierarchical Class Activation
    Maps for Localization", IEEE TIP 2021. Where Grad-CAM weights each feature map by its
    mean gradient, Layer-CAM weights every position of it by its own positive gradient,
    which keeps the maps of shallow layers meaningful. ``A`` is the output of ``layer``
    (default: the model's declared ``last_conv_layer``) and ``y_c`` the class logit, as in
    the authors' code; the map is upsampled bilinearly (half-pixel centres, the authors'
    ``align_corners=False``). The final ReLU always applies (on ReLU feature maps the sum is
    never negative anyway), so there is no ``relu`` switch.

    A list of layers fuses their maps as the paper does: each is scaled by Eq. 9,
    ``tanh(2 M / max M)`` per image (gamma 2, the paper's), upsampled to the input size, and
    the element-wise maximum is kept (torch-cam's reading of the fusion). The scaling
    normalises, so fused maps lie in [0, tanh 2]; a single layer's map stays raw. All the
    layers' gradients come from one forward and one backward pass.

    tf-keras-vis' ``Layercam`` computes the same grid-level map (with
    ``ReplaceToLinear`` for the logit and ``normalize_cam=False``); it upsamples with
    ``scipy.ndimage.zoom(order=1)``, whose corner pixels align (``align_corners=True``), and
    min-max normalises by default.

    Parameters
    ----------
    layer : str, layer object, list of them, or None, default None
        As Grad-CAM's, or a list of layers to fuse (e.g. the last convolution of the
        last three blocks).
    score : {"logit", "probability", "loss"}, default "logit"
    interpolation : {"bilinear", "nearest", "bicubic"}, default "bilinear"
    batch_size : int, default 32
    jit_compile : bool, default False
    """

    parameters = {
        "layer": Param(None, allow_none=True, check=check_layer_refs,
                       doc="Feature layer, or a list of layers whose maps are fused (None: the model's)."),
        **{name: p for name, p in GradCAM.parameters.items() if name not in ("layer", "relu")},
    }

    def setup(self):
        ref = self.resolved["layer"]
        refs = list(ref) if isinstance(ref, (list, tuple)) else [ref]
        self.layers = [conv_layer(self.model, self.spec, r, self.display_name) for r in refs]
        names = [layer.name for layer in self.layers]
        repeated = sorted({name for name in names if names.count(name) > 1})
        if repeated:
            raise ParameterError(f"{self.display_name}: parameter 'layer' names {repeated} more than once; "
                                 "list each layer once.")
        self.layer = self.layers[0]

    def head_layers(self):
        return list(self.layers)

    def layer_maps(self, images, targets):
        """Each layer's map at its own resolution, before the ReLU: a list of (N, h, w)."""
        activations, gradients, _ = self.layer_gradients(images, targets, [layer.name for layer in self.layers])
        return [tf.reduce_sum(tf.nn.relu(g) * a, axis=-1) for a, g in zip(activations, gradients)]

    def feature_map(self, images, targets):
        """The first layer's map at its resolution (h, w), before the ReLU and upsampling."""
        return self.layer_maps(images, targets)[0]

    def compute(self, images, targets):
        maps = [tf.nn.relu(m) for m in self.layer_maps(images, targets)]
        if len(maps) == 1:
            return self.upsample(maps[0])
        scaled = [tf.tanh(FUSION_GAMMA * tf.math.divide_no_nan(m, tf.reduce_max(m, axis=[1, 2], keepdims=True)))
                  for m in maps]
        return tf.reduce_max(tf.stack([self.upsample(m) for m in scaled]), axis=0)
