"""One forward pass that exposes what explainers differentiate or read.

`ModelHead` turns a prepared model into a function image batch -> (probabilities,
logits, extra layer outputs) from a single graph, so a method never runs the model twice
to get the predicted class, the logit and the feature maps.
"""

from __future__ import annotations

from typing import Sequence

from xai._lazy import keras, tf
from xai.errors import ModelError, ParameterError

SCORES = ("loss", "probability", "logit")


def _ends_in_softmax(model: keras.Model) -> bool:
    producer = model.outputs[0]._keras_history[0]
    if isinstance(producer, keras.layers.Softmax):
        return True
    activation = getattr(producer, "activation", None)
    return activation is keras.activations.softmax


class ModelHead:
    """Callable: images (N, H, W, C) -> dict(output, probabilities, logits, *extra layers).

    ``logits`` are the classifier's pre-activation output, computed from its input and
    weights (so a softmax Dense layer still yields logits); ``None`` when the model
    declares no classifier layer.
    """

    def __init__(self, model: keras.Model, extra_layers: Sequence[str] = ()):
        from xai.models import layer_tensors, model_spec

        self.spec = model_spec(model)
        self.classifier = (model.get_layer(self.spec.classifier_layer)
                           if self.spec.classifier_layer else None)
        if self.classifier is not None and not isinstance(self.classifier, keras.layers.Dense):
            raise ModelError(f"classifier layer {self.spec.classifier_layer!r} must be a Dense layer.")
        outputs = {"output": model.outputs[0]}
        if self.classifier is not None:
            outputs["classifier_input"] = layer_tensors(model, self.classifier.name)[0]
        for name in extra_layers:
            outputs[name] = layer_tensors(model, name)[1]
        self._softmax_output = _ends_in_softmax(model)
        self._graph = keras.Model(model.inputs, outputs, name=f"{model.name}_head")

    def __call__(self, images: tf.Tensor) -> dict:
        return self.forward(images)[0]

    def forward(self, images: tf.Tensor) -> tuple[dict, dict]:
        """(outputs cast to float32, the graph's own output tensors).

        Everything after the model is float32, whatever the model computes in (a
        mixed_bfloat16 / mixed_float16 model returns half-precision tensors); gradients
        with respect to a layer must be taken on the raw tensor, which the score uses.
        """
        raw = dict(self._graph(images, training=False))
        out = {name: tf.cast(value, tf.float32) for name, value in raw.items()}
        logits = None
        if self.classifier is not None:
            logits = tf.matmul(out.pop("classifier_input"), tf.cast(self.classifier.kernel, tf.float32))
            if self.classifier.use_bias:
                logits = logits + tf.cast(self.classifier.bias, tf.float32)
        output = out["output"]
        if self._softmax_output or logits is None:
            probabilities = output
        else:
            probabilities = tf.nn.softmax(logits)
        out.update(probabilities=probabilities, logits=logits)
        return out, raw

    def check_score(self, score: str) -> None:
        if score == "logit" and self.classifier is None:
            raise ModelError("score='logit' needs the model's classifier layer (the final Dense); "
                             "this model declares none. Use score='probability' or 'loss'.")


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


def input_gradients(head: ModelHead, images: tf.Tensor, targets: tf.Tensor, score: str) -> tf.Tensor:
    """d score / d images for each image's target (-1: its predicted class), (N, H, W, C)."""
    with tf.GradientTape() as tape:
        tape.watch(images)
        out = head(images)
        resolved = resolve_targets(targets, out["probabilities"])
        # Images are independent, so the gradient of the sum is each image's own gradient.
        total = tf.reduce_sum(class_score(score, out, resolved))
    return tape.gradient(total, images)


def layer_gradients(head: ModelHead, images: tf.Tensor, targets: tf.Tensor, score: str,
                    layer: str) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """Layer `layer`'s output A, d score / dA and the resolved targets, from one pass.

    `head` must have been built with `layer` among its ``extra_layers``.
    """
    with tf.GradientTape() as tape:
        # Watching the input records every op downstream, so the gradient with respect to
        # an intermediate output exists even when the model's weights are frozen.
        tape.watch(images)
        out, raw = head.forward(images)
        resolved = resolve_targets(targets, out["probabilities"])
        total = tf.reduce_sum(class_score(score, out, resolved))
    gradients = tf.cast(tape.gradient(total, raw[layer]), tf.float32)
    return out[layer], gradients, resolved


def upsample(maps: tf.Tensor, size, method: str = "bilinear") -> tf.Tensor:
    """(N, h, w) -> (N, H, W) by `tf.image.resize` (CAM-family maps to the input size)."""
    return tf.image.resize(maps[..., None], size, method=method)[..., 0]


INTERPOLATIONS = ("bilinear", "nearest", "bicubic")  # bicubic: as Xplique's Grad-CAM


def reduce_channels(gradients: tf.Tensor, reduce: str) -> tf.Tensor:
    """(N, H, W, C) -> (N, H, W): the seed's sum of |g| over channels, or Xplique's max."""
    if reduce == "sum_abs":
        return tf.reduce_sum(tf.abs(gradients), axis=-1)
    if reduce == "max_abs":
        return tf.reduce_max(tf.abs(gradients), axis=-1)
    raise ParameterError(f"reduce must be one of {REDUCTIONS}; got {reduce!r}.")


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


def conv_layer(model: keras.Model, spec, layer, method: str) -> str:
    """The layer a CAM-family method reads: `layer` if named, else the declared last conv.

    Raises `ModelError` when there is none, the name is unknown, or its output is not a
    (N, h, w, K) feature map.
    """
    from xai.models import layer_tensors

    if layer is None:
        if spec.last_conv_layer is None:
            raise ModelError(f"{method} needs a convolutional layer: this model declares no "
                             "last_conv_layer. Pass layer='<name>' (a layer with a 4-D output).")
        layer = spec.last_conv_layer
    names = [lay.name for lay in model.layers]
    if layer not in names:
        raise ModelError(f"{method}: layer {layer!r} is not in model {model.name!r}; "
                         f"its layers are {names}.")
    shape = layer_tensors(model, layer)[1].shape
    if len(shape) != 4:
        raise ModelError(f"{method}: layer {layer!r} outputs shape {tuple(shape)}; it needs a "
                         "(N, h, w, channels) feature map.")
    return layer

