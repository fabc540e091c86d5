"""One forward pass that exposes what explainers differentiate or read.

`ModelHead` turns a prepared model into a function image batch -> (probabilities,
logits, extra layer outputs) from a single graph, so a method never runs the model twice
to get the predicted class, the logit and the feature maps.
"""

from __future__ import annotations

import warnings
from typing import Sequence

from xai._lazy import keras, tf
from xai.errors import ModelError, ParameterError

SCORES = ("loss", "probability", "logit")


class ModelHead:
    """Callable: images (N, H, W, C) -> dict(output, probabilities, logits, *extra layers),
    each (N, classes) but the extra layers'.

    One call of the model itself (any Keras model, subclassed included); the extra layers'
    outputs and the classifier's input are recorded as the model runs
    (`xai._keras_internals.capture`). Whatever the model's output (`xai.models.OUTPUTS`),
    ``probabilities`` are (N, classes) and sum to one, and ``logits`` are each class's
    logit: the final Dense layer's pre-activation (a softmax Dense still yields logits);
    for a one-unit head, ``+z`` for class 1 and ``-z`` for class 0 (the log-odds of
    each class). Where a softmax model's logits cannot be reached (a subclassed model),
    ``logits`` are log-probabilities, which differ from them by a per-image constant.
    """

    def __init__(self, model: keras.Model, extra_layers: Sequence = ()):
        from xai.models import model_spec, resolve_layer

        self.model = model
        self.spec = model_spec(model)
        self.classifier = (resolve_layer(model, self.spec.classifier_layer)
                           if self.spec.classifier_layer else None)
        if self.classifier is not None and not isinstance(self.classifier, keras.layers.Dense):
            raise ModelError(f"classifier layer {self.spec.classifier_layer!r} must be a Dense layer.")
        self.logits_layer = (resolve_layer(model, self.spec.logits_layer)
                             if self.spec.logits_layer else None)
        self.layers = {layer_key(ref): resolve_layer(model, ref) for ref in extra_layers}
        self.logits_reachable = (self.spec.output != "softmax" or self.classifier is not None
                                 or self.logits_layer is not None)

    def __call__(self, images: tf.Tensor) -> dict:
        return self.forward(images)[0]

    def class_weights(self):
        """(features, classes) float32 weights and (classes,) bias of the classifier, a
        one-unit head's ``w`` written as ``[-w, w]`` (CAM's ``w[k, c]``)."""
        kernel, bias = self._classifier_parts()
        if self.spec.output in ("sigmoid", "binary_logit"):
            return tf.concat([-kernel, kernel], axis=-1), tf.concat([-bias, bias], axis=-1)
        return kernel, bias

    def _classifier_parts(self):
        """The final Dense layer's kernel and bias (zeros without one) as float32."""
        kernel = tf.cast(self.classifier.kernel, tf.float32)
        bias = (tf.cast(self.classifier.bias, tf.float32) if self.classifier.use_bias
                else tf.zeros([kernel.shape[-1]], tf.float32))
        return kernel, bias

    def forward(self, images: tf.Tensor) -> tuple[dict, dict]:
        """(outputs cast to float32, the extra layers' own output tensors).

        Everything after the model is float32, whatever the model computes in (a
        mixed_bfloat16 / mixed_float16 model returns half-precision tensors); gradients
        with respect to a layer must be taken on the raw tensor, which the score uses.
        """
        from xai._keras_internals import capture

        reads_input = [l for l in (self.classifier, self.logits_layer) if l is not None]
        with capture(outputs_of=self.layers.values(), inputs_of=reads_input) as got:
            output = tf.cast(self.model(images, training=False), tf.float32)
        missing = [key for key, layer in self.layers.items() if ("output", id(layer)) not in got]
        missing += [layer.name for layer in reads_input if ("input", id(layer)) not in got]
        if missing:
            raise ModelError(f"layer(s) {missing} were not called when the model ran on the images; "
                             "pass a layer the model's forward pass uses.")
        raw = {key: got[("output", id(layer))] for key, layer in self.layers.items()}
        out = {key: tf.cast(value, tf.float32) for key, value in raw.items()}
        z = None
        if self.classifier is not None:
            kernel, bias = self._classifier_parts()
            z = tf.matmul(tf.cast(got[("input", id(self.classifier))], tf.float32), kernel) + bias
        elif self.logits_layer is not None:
            z = tf.cast(got[("input", id(self.logits_layer))], tf.float32)
        kind = self.spec.output
        if kind == "softmax":
            probabilities = output
            logits = z if z is not None else tf.math.log(tf.maximum(output, 1e-30))
        elif kind == "logits":
            probabilities, logits = tf.nn.softmax(output), output
        else:
            if kind == "sigmoid":
                p = output[:, 0]
                z = z[:, 0] if z is not None else tf.math.log(tf.maximum(p, 1e-30)) - tf.math.log1p(-tf.minimum(p, 1 - 1e-7))
            else:
                z = output[:, 0]
                p = tf.sigmoid(z)
            probabilities, logits = tf.stack([1 - p, p], axis=-1), tf.stack([-z, z], axis=-1)
            output = probabilities if kind == "sigmoid" else logits  # one column per class
        out.update(output=output, probabilities=probabilities, logits=logits)
        return out, raw

    def check_score(self, score: str, method: str = "this method") -> None:
        if score == "logit" and not self.logits_reachable:
            warnings.warn(
                f"{method}: the logits of {self.model.name!r} are not reachable (its softmax is "
                "inside a subclassed model), so score='logit' uses log-probabilities, which differ "
                "from the logits by a constant per image.", UserWarning, stacklevel=3)


def layer_key(ref) -> str:
    """The name a layer's output has in a head's outputs (a name, a path, or a layer's name)."""
    return ref if isinstance(ref, str) else ref.name


def resolve_targets(targets: tf.Tensor, probabilities: tf.Tensor) -> tf.Tensor:
    """Replace target -1 ("the model's predicted class") by the argmax of the same pass."""
    predicted = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
    return tf.where(targets < 0, predicted, targets)


def class_score(score: str, out: dict, targets: tf.Tensor) -> tf.Tensor:
    """Per-image scalar to differentiate: the seed's loss, the probability or the logit."""
    probabilities = out["probabilities"]
    onehot = tf.one_hot(targets, tf.shape(probabilities)[-1], dtype=probabilities.dtype)
    if score == "loss":
        # The seed's recipe, to the letter: Keras' categorical cross-entropy on one-hot targets.
        return keras.losses.categorical_crossentropy(onehot, probabilities)
    if score == "probability":
        return tf.reduce_sum(probabilities * onehot, axis=-1)
    if score == "logit":
        return tf.reduce_sum(out["logits"] * tf.cast(onehot, out["logits"].dtype), axis=-1)
    raise ParameterError(f"score must be one of {SCORES}; got {score!r}.")


REDUCTIONS = ("sum_abs", "max_abs")
#: With the signed channel sum, for attributions whose sign means something (x * gradient).
SIGNED_REDUCTIONS = ("sum",) + REDUCTIONS


def input_gradients(head: ModelHead, images: tf.Tensor, targets: tf.Tensor, score: str) -> tf.Tensor:
    """d score / d images for each image's target (-1: its predicted class), (N, H, W, C)."""
    with tf.GradientTape() as tape:
        tape.watch(images)
        out = head(images)
        resolved = resolve_targets(targets, out["probabilities"])
        # Images are independent, so the gradient of the sum is each image's own gradient.
        total = tf.reduce_sum(class_score(score, out, resolved))
    return tape.gradient(total, images)


def layer_gradients(head: ModelHead, images: tf.Tensor, targets: tf.Tensor, score: str, layer):
    """Layer `layer`'s output A, d score / dA and the resolved targets, from one pass.

    `layer` is a name, or a sequence of names (then lists of outputs and gradients, still
    one forward and one backward pass). `head` must have been built with them among its
    ``extra_layers``.
    """
    names = [layer] if isinstance(layer, str) else list(layer)
    with tf.GradientTape() as tape:
        # Watching the input records every op downstream, so the gradient with respect to
        # an intermediate output exists even when the model's weights are frozen.
        tape.watch(images)
        out, raw = head.forward(images)
        resolved = resolve_targets(targets, out["probabilities"])
        total = tf.reduce_sum(class_score(score, out, resolved))
    gradients = [tf.cast(g, tf.float32) for g in tape.gradient(
        total, [raw[name] for name in names], unconnected_gradients=tf.UnconnectedGradients.ZERO)]
    if isinstance(layer, str):
        return out[layer], gradients[0], resolved
    return [out[name] for name in names], gradients, resolved


def upsample(maps: tf.Tensor, size, method: str = "bilinear") -> tf.Tensor:
    """(N, h, w) -> (N, H, W) by `tf.image.resize` (CAM-family maps to the input size)."""
    return tf.image.resize(maps[..., None], size, method=method)[..., 0]


INTERPOLATIONS = ("bilinear", "nearest", "bicubic")  # bicubic: as Xplique's Grad-CAM


def reduce_channels(gradients: tf.Tensor, reduce: str) -> tf.Tensor:
    """(N, H, W, C) -> (N, H, W): the seed's sum of |g| over channels, Xplique's max, or the
    signed sum."""
    if reduce == "sum":
        return tf.reduce_sum(gradients, axis=-1)
    if reduce == "sum_abs":
        return tf.reduce_sum(tf.abs(gradients), axis=-1)
    if reduce == "max_abs":
        return tf.reduce_max(tf.abs(gradients), axis=-1)
    raise ParameterError(f"reduce must be one of {SIGNED_REDUCTIONS}; got {reduce!r}.")


def compile_fn(fn, input_signature, jit_compile: bool):
    """A `tf.function` with a fixed signature: one trace for every batch size."""
    return tf.function(fn, input_signature=input_signature, jit_compile=jit_compile,
                       reduce_retracing=True)


def image_signature(spec) -> tf.TensorSpec:
    """(N, H, W, C) float32 images of the model's size, any N."""
    return tf.TensorSpec((None, *spec.input_shape), tf.float32)


def index_signature() -> tf.TensorSpec:
    """(N,) int32: targets, or row indices into a batch (which image, which copy)."""
    return tf.TensorSpec((None,), tf.int32)


def batch_signature(structure):
    """Signature of a nest of per-image tensors with the batch axis left free."""
    return tf.nest.map_structure(
        lambda t: tf.TensorSpec((None, *t.shape[1:]) if t.shape.rank else (), t.dtype), structure)


def no_feature_layer(spec, params) -> str:
    """The CAM family's `not_applicable`: no ``layer`` given and none the structure shows."""
    if params.get("layer") is None and spec.last_conv_layer is None:
        return ("it weights a feature map and this model's structure shows none (a subclassed "
                "model has no readable graph); pass its layer: layer=model.some_conv in Python, "
                "--param METHOD.layer=NAME on the command line.")
    return ""


def conv_layer(model: keras.Model, spec, layer, method: str):
    """The layer object a CAM-family method reads: `layer` (a name, a path into a nested
    base, or a layer object) if given, else the model's ``last_conv_layer``. A head built
    with it exposes its output under its ``name``.

    Raises `ModelError` when there is none, it is unknown, or its output is not a
    (N, h, w, K) feature map.
    """
    from xai.models import layer_output_shapes, resolve_layer

    if layer is None:
        if spec.last_conv_layer is None:
            raise ModelError(f"{method} needs a feature map to weight and this model's structure "
                             "shows none (a subclassed model has no readable graph). Pass layer=: a "
                             "layer object (layer=model.some_conv), a name, or a path 'base/layer'.")
        layer = spec.last_conv_layer
    obj = resolve_layer(model, layer, method)
    shape = layer_output_shapes(model, [obj]).get(id(obj))
    if shape is None:
        raise ModelError(f"{method}: layer {layer_key(layer)!r} is not called when the model runs; "
                         "pass a layer of its forward pass.")
    if len(shape) != 4:
        raise ModelError(f"{method}: layer {layer_key(layer)!r} outputs shape {shape}; it needs a "
                         "(N, h, w, channels) feature map. Pass layer= a convolutional layer.")
    return obj
