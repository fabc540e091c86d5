"""The shared VGG16-GAP model and the facts explainers need about any model.

`vgg16_gap` builds the CAM paper's classifier (Zhou et al. 2016): VGG16's
convolutional base, global average pooling, one Dense softmax layer. Every model an
explainer sees goes through `prepare_model`, which flattens nested sub-models into one
graph and attaches a `ModelSpec` naming the layers methods read, so nothing guesses.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Optional, Sequence

import keras
import numpy as np

from xai import _keras_internals as internals
from xai.baselines import check_range
from xai.errors import ModelError, ParameterError

#: Filter counts of VGG16's 13 convolutions, block by block (Simonyan & Zisserman 2015).
VGG16_BLOCKS: tuple[tuple[int, ...], ...] = (
    (64, 64),
    (128, 128),
    (256, 256, 256),
    (512, 512, 512),
    (512, 512, 512),
)
#: Trainable parameters of Keras' VGG16 convolutional base (include_top=False).
VGG16_CONV_PARAMS = 14_714_688

_SPEC_ATTR = "_xai_spec"
_SIDECAR_SUFFIX = ".xai.json"


#: What a model's output is, and how xai reads class probabilities and logits from it.
OUTPUTS = {
    "softmax": "class probabilities (softmax)",
    "logits": "class logits (probability = their softmax)",
    "sigmoid": "one sigmoid unit, the probability of class 1 (class 0: 1 - p)",
    "binary_logit": "one unit, the logit z of class 1 (probability sigmoid(z); class 0: -z)",
}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What explainers and metrics need to know about a classifier.

    Attributes
    ----------
    input_shape : tuple of int
        (H, W, C) of one input image.
    num_classes : int
        Classes scored (2 for a one-unit sigmoid or binary-logit head).
    feature_layer : str or None
        The feature map the head's global pooling reads (CAM's ``f_k``); without global
        pooling, the last layer with a 4-D output on which the output depends.
    last_conv_layer : str or None
        Grad-CAM-style methods' default layer: the convolution behind ``feature_layer``
        when only pooling separates them (VGG: ``block5_conv3`` before ``block5_pool``),
        else ``feature_layer`` itself.
    classifier_layer : str or None
        The final Dense layer; its pre-activation output is the logit.
    output : str
        One of `OUTPUTS`.
    logits_layer : str or None
        A final softmax/sigmoid activation layer whose input is the logit, for models whose
        logits come from something other than a Dense layer.
    linear_head : bool
        GlobalAveragePooling2D, then only Dropout-like layers, then ``classifier_layer``:
        the head CAM is defined for.
    head_note : str
        Why the head is not linear (for CAM's refusal), empty when it is.
    input_range : (float, float)
        Pixel values the model takes: (0, 1) unless its first layer rescales (a
        ``Rescaling(1/255)`` or an ImageNet ``Normalization`` means (0, 255)).
    preprocessing : str
        ``"caffe"`` when a `VGGPreprocess` layer inside the model maps [0, 1] RGB to
        VGG16's ImageNet input, else ``"none"``.
    class_names : tuple of str
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    feature_layer: Optional[str] = None
    last_conv_layer: Optional[str] = None
    classifier_layer: Optional[str] = None
    output: str = "softmax"
    logits_layer: Optional[str] = None
    linear_head: bool = False
    head_note: str = ""
    input_range: tuple[float, float] = (0.0, 1.0)
    preprocessing: str = "none"
    class_names: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelSpec":
        data = dict(data)
        data["input_shape"] = tuple(data["input_shape"])
        data["class_names"] = tuple(data.get("class_names", ()))
        data["input_range"] = tuple(data.get("input_range", (0.0, 1.0)))
        if "linear_head" not in data:  # written before round 2: both set meant GAP -> Dense
            data["linear_head"] = bool(data.get("feature_layer") and data.get("classifier_layer"))
        return cls(**data)


@keras.saving.register_keras_serializable(package="xai")
class VGGPreprocess(keras.layers.Layer):
    """Maps [0, 1] RGB images to VGG16's ImageNet input (BGR, 0..255, mean subtracted).

    Keeping it inside the model lets every explainer differentiate with respect to the
    [0, 1] image a person sees, whatever the weights expect.
    """

    _MEAN_BGR = (103.939, 116.779, 123.68)

    def call(self, inputs):
        bgr = keras.ops.flip(inputs, axis=-1) * 255.0
        return bgr - keras.ops.convert_to_tensor(self._MEAN_BGR, dtype=inputs.dtype)


def _scaled(filters: int, width: float) -> int:
    return max(1, int(round(filters * width)))


def vgg16_gap(
    input_shape: Sequence[int] = (224, 224, 3),
    num_classes: int = 2,
    weights: Optional[str] = None,
    width: float = 1.0,
    class_names: Sequence[str] = (),
    pool5: bool = True,
    centre_input: bool = False,
    batch_norm: bool = False,
) -> keras.Model:
    """Build VGG16-GAP: VGG16's conv base, GlobalAveragePooling2D, Dense softmax.

    Parameters
    ----------
    input_shape : (H, W, C), default (224, 224, 3)
    num_classes : int, default 2
    weights : None, "imagenet" or a path, default None
        ``None``: random initialisation. ``"imagenet"``: Keras' ImageNet VGG16 weights
        in the conv base (downloads once to ``~/.keras``; needs ``width=1.0`` and 3
        channels). A path: load a model saved with `save_model` (other arguments unused).
    width : float, default 1.0
        Scales every filter count (small CPU models); the topology never changes.
    class_names : sequence of str, optional
    pool5 : bool, default True
        True: the seed's model, VGG16's whole conv base (``block5_pool`` feeds the pooling;
        a 7x7 feature map at 224x224, 2x2 at 64x64). False: the CAM paper's cut, which
        removes ``block5_pool`` so that ``block5_conv3`` feeds the pooling: twice the map
        resolution (14x14 at 224, 4x4 at 64) for the same computation. (The paper also adds
        a 3x3 convolution of 1,024 units before the pooling; here the VGG16 layers are kept
        as they are, so ImageNet weights still fit every layer.)
    centre_input : bool, default False
        Map the [0, 1] images to [-1, 1] inside the model (a ``Rescaling`` layer named
        ``centre``), so explainers still see [0, 1] images. Trained from scratch, a centred
        model leaves the plateau at chance in half the epochs (docs/data.md). Not with
        ``weights="imagenet"``, whose own preprocessing comes first.
    batch_norm : bool, default False
        For training from scratch: each convolution (then linear, ``block1_conv1`` ...)
        is followed by ``BatchNormalization`` (``block1_bn1`` ...) and a ReLU
        (``block1_relu1`` ...). Trained from scratch, it leaves the plateau at chance in 3
        epochs instead of 4-6 (docs/data.md); `fold_batch_norm` turns the trained model into the plain
        architecture, with the same outputs. Not with ``weights="imagenet"``.

    Returns
    -------
    keras.Model
        One flat functional graph with Keras' VGG16 layer names (``block1_conv1`` …
        ``block5_pool``), then ``gap`` and ``predictions``; `model_spec` reads its facts.

    Examples
    --------
    Convolutions start from He initialisation (He et al. 2015) rather than Keras'
    Glorot default: thirteen plain ReLU layers trained from scratch stay stuck at chance
    with Glorot (measured on the offline dataset), and ImageNet weights overwrite it anyway.

    >>> model = vgg16_gap(input_shape=(32, 32, 3), width=0.125)
    >>> model_spec(model).feature_layer
    'block5_pool'
    """
    if weights is not None and weights != "imagenet":
        return load_model(weights)
    try:
        shape = tuple(int(d) for d in input_shape)
    except (TypeError, ValueError):
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ParameterError(
            f"input_shape must be (H, W, C) with positive sizes; got {(shape or input_shape)!r}.")
    input_shape = shape
    if input_shape[0] < 32 or input_shape[1] < 32:
        raise ParameterError(
            f"input_shape must be at least 32x32 (VGG16 pools five times); got {input_shape!r}."
        )
    if not isinstance(num_classes, (int, np.integer)) or num_classes < 2:
        raise ParameterError(f"num_classes must be an integer >= 2; got {num_classes!r}.")
    if not (isinstance(width, (int, float)) and width > 0):
        raise ParameterError(f"width must be a positive number; got {width!r}.")
    if weights == "imagenet" and centre_input:
        raise ParameterError("centre_input=True does not apply with weights='imagenet', which brings "
                             "its own preprocessing (VGG16's Caffe mean subtraction).")
    if weights == "imagenet" and batch_norm:
        raise ParameterError("batch_norm=True is for training from scratch, not with weights='imagenet'.")
    if weights == "imagenet" and (width != 1.0 or input_shape[2] != 3):
        raise ParameterError(
            f"weights='imagenet' needs width=1.0 and 3 channels; got width={width!r}, "
            f"input_shape={input_shape!r}."
        )

    inputs = keras.Input(shape=input_shape, name="image")
    x = VGGPreprocess(name="preprocess")(inputs) if weights == "imagenet" else inputs
    if centre_input:
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="centre")(x)
    for block, filters in enumerate(VGG16_BLOCKS, start=1):
        for conv, f in enumerate(filters, start=1):
            x = keras.layers.Conv2D(
                _scaled(f, width), 3, padding="same", activation=None if batch_norm else "relu",
                kernel_initializer="he_normal", name=f"block{block}_conv{conv}",
            )(x)
            if batch_norm:
                x = keras.layers.BatchNormalization(name=f"block{block}_bn{conv}")(x)
                x = keras.layers.ReLU(name=f"block{block}_relu{conv}")(x)
        if block < len(VGG16_BLOCKS) or pool5:
            x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="vgg16_gap")

    if weights == "imagenet":
        _load_imagenet_conv_base(model, input_shape)
    spec = ModelSpec(
        input_shape=input_shape,
        num_classes=int(num_classes),
        feature_layer="block5_pool" if pool5 else ("block5_relu3" if batch_norm else "block5_conv3"),
        last_conv_layer="block5_relu3" if batch_norm else "block5_conv3",
        classifier_layer="predictions",
        linear_head=True,
        preprocessing="caffe" if weights == "imagenet" else "none",
        class_names=tuple(class_names),
    )
    attach_spec(model, spec)
    return model


def fold_batch_norm(trained: keras.Model, plain: keras.Model) -> keras.Model:
    """Copy a ``batch_norm=True`` VGG16-GAP's weights into `plain`, the same VGG16-GAP
    without it, with each ``BatchNormalization``'s inference transform folded into the
    convolution before it: ``W gamma / sqrt(var + eps)`` and
    ``(b - mean) gamma / sqrt(var + eps) + beta``. The two models give the same outputs (up
    to rounding); returns `plain`."""
    for layer in plain.layers:
        if not layer.weights:
            continue
        weights = [np.asarray(w, np.float64) for w in trained.get_layer(layer.name).get_weights()]
        bn_name = layer.name.replace("_conv", "_bn")
        if isinstance(layer, keras.layers.Conv2D) and bn_name != layer.name:
            norm = trained.get_layer(bn_name)
            gamma, beta, mean, variance = (np.asarray(w, np.float64) for w in norm.get_weights())
            scale = gamma / np.sqrt(variance + norm.epsilon)
            weights = [weights[0] * scale, (weights[1] - mean) * scale + beta]
        layer.set_weights([w.astype(np.float32) for w in weights])
    return plain


def _load_imagenet_conv_base(model: keras.Model, input_shape: tuple) -> None:
    """Copy Keras' ImageNet VGG16 conv weights into `model`, layer by layer, by name."""
    try:
        base = keras.applications.VGG16(
            include_top=False, weights="imagenet", input_shape=input_shape
        )
    except Exception as exc:  # network errors come in many types
        raise ModelError(
            "Could not load Keras' ImageNet VGG16 weights (they are downloaded once to "
            "~/.keras/models). Connect to the internet once, or copy "
            "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5 there, or use weights=None. "
            f"Cause: {exc}"
        ) from exc
    for layer in base.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())


# --------------------------------------------------------------------------------------
# Facts about a model
# --------------------------------------------------------------------------------------

def attach_spec(model: keras.Model, spec: ModelSpec) -> keras.Model:
    # object.__setattr__ keeps Keras from tracking the dataclass as model state.
    object.__setattr__(model, _SPEC_ATTR, spec)
    return model


_PASS_THROUGH = (
    keras.layers.Dropout,
    keras.layers.SpatialDropout2D,
    keras.layers.GaussianDropout,
    keras.layers.GaussianNoise,
    keras.layers.ActivityRegularization,
    keras.layers.Identity,
)
_GLOBAL_POOLING = (keras.layers.GlobalAveragePooling2D, keras.layers.GlobalMaxPooling2D)


def _activation(layer) -> Optional[str]:
    """"softmax" / "sigmoid" for a layer that ends in one, "linear" for a linear Dense /
    Activation, None for anything else."""
    if isinstance(layer, keras.layers.Softmax):
        return "softmax"
    if isinstance(layer, (keras.layers.Dense, keras.layers.Activation)):
        fn = getattr(layer, "activation", None)
        for name in ("softmax", "sigmoid", "linear"):
            if fn is getattr(keras.activations, name):
                return name
    return None


def _is_augmentation(layer) -> bool:
    """Keras' random augmentation layers (RandomFlip, RandomRotation, ...): identity at inference."""
    return type(layer).__name__.startswith("Random") and type(layer).__module__.startswith("keras")


def _input_range(first_layers, consumers) -> tuple[float, float]:
    """The pixel range a model's first layers imply: [0, 255] before ``Rescaling(1/255)``
    (or ``1/127.5, offset -1``) and before a ``Normalization`` with ImageNet-scale means.
    Augmentation layers in front (the tutorials' ``data_augmentation``) are looked through."""
    layers, seen = list(first_layers), set()
    while layers:
        layer = layers.pop(0)
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        if _is_augmentation(layer) or isinstance(layer, _PASS_THROUGH):
            layers.extend(consumers(layer))
            continue
        if isinstance(layer, keras.layers.Rescaling):
            scale = float(np.mean(layer.scale))
            offset = float(np.mean(layer.offset))
            if scale > 0:
                low, high = (0.0, 1.0) if abs(offset) < 1e-6 else (-1.0, 1.0)
                return (float(round((low - offset) / scale, 4)), float(round((high - offset) / scale, 4)))
        if isinstance(layer, keras.layers.Normalization) and layer.built:
            mean = np.asarray(keras.ops.convert_to_numpy(layer.mean))
            if mean.size and float(np.max(mean)) > 2.0:
                return (0.0, 255.0)
    return (0.0, 1.0)


def _probe(model, input_shape, input_range) -> np.ndarray:
    """The model's output on random and extreme images in its range (N, outputs)."""
    low, high = input_range
    rng = np.random.default_rng(0)
    images = np.concatenate([  # plain and extreme images, so a logit rarely stays inside [0, 1]
        rng.uniform(low, high, (4, *input_shape)), np.full((1, *input_shape), low),
        np.full((1, *input_shape), high), rng.choice([low, high], (2, *input_shape))]).astype(np.float32)
    out = np.asarray(keras.ops.convert_to_numpy(model(images, training=False)), np.float64)
    if out.ndim != 2:
        raise ModelError(f"the model's output must be class scores (N, classes); it returned "
                         f"shape {out.shape}.")
    return out


def _output_kind(out: np.ndarray) -> str:
    """Which of `OUTPUTS` a model returned, read from its outputs on `_probe`'s images."""
    in_unit = bool(np.all((out >= 0) & (out <= 1)))
    if out.shape[1] == 1:
        return "sigmoid" if in_unit else "binary_logit"
    return "softmax" if in_unit and np.allclose(out.sum(axis=1), 1.0, atol=1e-3) else "logits"


def _check_output_shape(output_shape, name) -> int:
    if len(output_shape) != 1 or output_shape[0] is None or output_shape[0] < 1:
        raise ModelError(f"the model's output must be class scores (num_classes,); {name!r} "
                         f"outputs {output_shape!r}.")
    return max(2, int(output_shape[0]))


def derive_spec(model: keras.Model, *, feature_layer=None, last_conv_layer=None,
                classifier_layer=None, output=None, input_range=None, input_shape=None,
                class_names=()) -> ModelSpec:
    """Read what methods need from a model's structure (see `ModelSpec`).

    Functional and Sequential models are read from their layer graph. A subclassed model
    has none: its output kind is read from one call, and the CAM family needs ``layer=``
    (a layer object). Arguments given explicitly win over what the structure says.
    """
    if output is not None and output not in OUTPUTS:
        raise ParameterError(f"output must be one of {sorted(OUTPUTS)}; got {output!r}.")
    if input_range is not None:
        input_range = check_range(input_range)
    if _needs_flattening(model):  # a nested base's layers by their own names, as methods see them
        model = flatten_model(model)
    graph = internals.functional_graph(model)
    if graph is None:
        return _opaque_spec(model, output=output, input_range=input_range, input_shape=input_shape,
                            class_names=class_names)
    if len(graph.inputs) != 1 or len(graph.outputs) != 1:
        raise ModelError(
            f"xai explains models with one image input and one class-score output; "
            f"{model.name!r} has {len(graph.inputs)} inputs and {len(graph.outputs)} outputs."
        )
    shape = tuple(graph.inputs[0].shape[1:])
    if len(shape) != 3 or None in shape:
        raise ModelError(f"the model's input must be a fixed-size image (H, W, C); it is {shape!r}.")
    num_classes = _check_output_shape(tuple(graph.outputs[0].shape[1:]), model.name)
    names = {op.name for op in getattr(graph, "operations", graph.layers)}
    for label, value in (("feature_layer", feature_layer), ("last_conv_layer", last_conv_layer),
                         ("classifier_layer", classifier_layer)):
        if value is not None and value not in names:
            raise ModelError(f"{label}={value!r} is not a layer of model {model.name!r}.")

    edges = internals.graph_edges(graph)

    def feeding(layer):
        return edges[id(layer)][1] if id(layer) in edges else []

    def single(layer):
        inbound = feeding(layer)
        return inbound[0] if len(inbound) == 1 else None

    # The output side: optional final activation, then the Dense whose pre-activation is the logit.
    last = internals.producer(graph.outputs[0])
    layer, activation, logits_from = last, None, None
    while layer is not None:
        kind = _activation(layer)
        if isinstance(layer, (keras.layers.Activation, keras.layers.Softmax)) and kind:
            if kind != "linear" and activation is None:
                activation, logits_from = kind, layer
            layer = single(layer)
        elif isinstance(layer, _PASS_THROUGH):
            layer = single(layer)
        else:
            break
    found_classifier = layer if isinstance(layer, keras.layers.Dense) else None
    if found_classifier is not None and activation is None and _activation(found_classifier) != "linear":
        activation = _activation(found_classifier)
    if found_classifier is None and activation is None and _activation(last) is None:
        found_output = _output_kind(_probe(model, shape, input_range or (0.0, 1.0)))
    elif activation == "softmax":
        found_output = "softmax"
    elif activation == "sigmoid":
        if int(graph.outputs[0].shape[-1]) != 1:
            raise ModelError(f"{model.name!r} ends in {int(graph.outputs[0].shape[-1])} sigmoid units "
                             "(a multi-label head); xai explains single-label classifiers: a softmax, "
                             "logits, or one sigmoid unit.")
        found_output = "sigmoid"
    else:
        found_output = "logits" if int(graph.outputs[0].shape[-1]) > 1 else "binary_logit"
    if activation is None or found_classifier is not None:
        logits_from = None

    # The feature side: what the last global pooling the output depends on reads.
    ancestors, stack = set(), [last]
    while stack:
        layer = stack.pop()
        if id(layer) not in ancestors:
            ancestors.add(id(layer))
            stack.extend(feeding(layer))
    upstream = [layer for layer in graph.layers if id(layer) in ancestors]
    poolings = [layer for layer in upstream if isinstance(layer, _GLOBAL_POOLING)]
    found_features, linear, note = None, False, ""
    if poolings:
        pooling = poolings[-1]
        found_features = single(pooling)
        between = single(found_classifier) if found_classifier is not None else None
        while isinstance(between, _PASS_THROUGH):
            between = single(between)
        linear = (between is pooling and isinstance(pooling, keras.layers.GlobalAveragePooling2D)
                  and not pooling.keepdims)
        if not linear:
            note = (f"{type(pooling).__name__} {pooling.name!r} does not feed the final Dense layer "
                    "directly" if found_classifier is not None else
                    f"the output is not a Dense layer on {pooling.name!r}")
            if isinstance(pooling, keras.layers.GlobalMaxPooling2D):
                note = f"the head pools with GlobalMaxPooling2D {pooling.name!r}, not an average"
    else:
        four_d = [layer for layer in upstream if id(layer) in edges and len(edges[id(layer)][2]) == 4] \
            if upstream else []
        found_features = four_d[-1] if four_d else None
        note = "the head has no global average pooling"
    start = resolve_layer(model, feature_layer) if feature_layer else found_features
    found_conv, walker = start, start
    while isinstance(walker, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D) + _PASS_THROUGH):
        walker = single(walker)
        if isinstance(walker, keras.layers.Conv2D):
            found_conv = walker

    def name_of(layer):
        return None if layer is None else layer.name

    first = [layer for layer in upstream if any(isinstance(p, keras.layers.InputLayer) for p in feeding(layer))]

    def consumers(layer):
        return [other for other in upstream if layer in feeding(other)]

    preprocessing = "caffe" if any(isinstance(l, VGGPreprocess) for l in graph.layers) else "none"
    return ModelSpec(
        input_shape=tuple(int(d) for d in shape),
        num_classes=num_classes,
        feature_layer=feature_layer or name_of(found_features),
        last_conv_layer=last_conv_layer or name_of(found_conv),
        classifier_layer=classifier_layer or name_of(found_classifier),
        output=output or found_output,
        logits_layer=name_of(logits_from),
        linear_head=linear or bool(feature_layer and classifier_layer),
        head_note="" if linear or (feature_layer and classifier_layer) else note,
        input_range=input_range or ((0.0, 1.0) if preprocessing == "caffe" else _input_range(first, consumers)),
        preprocessing=preprocessing,
        class_names=tuple(class_names),
    )


def _opaque_spec(model, *, output, input_range, input_shape, class_names) -> ModelSpec:
    """The spec of a model without a layer graph (subclassed): from its build shape and one call."""
    shape = input_shape or internals.built_input_shape(model)
    if shape is not None and input_shape is None:
        shape = shape[1:]
    if shape is None:
        raise ModelError(
            f"model {model.name!r} ({type(model).__name__}) has no layer graph and has not been "
            "called yet, so its input size is unknown; call it once on a batch of images first.")
    shape = tuple(int(d) if d is not None else None for d in shape)
    if len(shape) != 3 or None in shape:
        raise ModelError(f"the model's input must be a fixed-size image (H, W, C); it is {shape!r}.")
    input_range = input_range or (0.0, 1.0)
    out = _probe(model, shape, input_range)
    found = output or _output_kind(out)
    num_classes = _check_output_shape(out.shape[1:], model.name)
    return ModelSpec(
        input_shape=shape, num_classes=num_classes, output=found, input_range=input_range,
        head_note=f"{type(model).__name__} is subclassed: its layer graph cannot be read",
        class_names=tuple(class_names),
    )


def model_spec(model: keras.Model) -> ModelSpec:
    """The model's declared `ModelSpec`, or the one its structure gives."""
    spec = getattr(model, _SPEC_ATTR, None)
    return spec if spec is not None else derive_spec(model)


def weights_digest(model: keras.Model) -> bytes:
    """A 128-bit hash of every weight of `model` (names, shapes and values): what a result
    computed from the model may be remembered under, since weights change in place (a
    training step, the sanity checks' randomisation). About 0.1 s for VGG16's 15 M weights."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    for v in model.weights:
        value = np.ascontiguousarray(keras.ops.convert_to_numpy(v))
        h.update(f"{v.path}{value.shape}{value.dtype.str}".encode())
        h.update(value.tobytes())
    return h.digest()


def _is_nested(model: keras.Model) -> bool:
    return any(isinstance(layer, keras.Model) for layer in model.layers)


def _needs_flattening(model) -> bool:
    return isinstance(model, keras.Sequential) or (
        internals.functional_graph(model) is not None and _is_nested(model))


def flatten_model(model: keras.Model) -> keras.Model:
    """One flat functional graph for a Sequential model or one with nested sub-models.

    The leaf layers are reused (shared weights, same names), so
    ``flatten_model(m).get_layer("block5_conv3")`` reaches into a VGG16 nested inside a
    Sequential, which is the form many tutorials (and the seed's CAM post) build. A
    subclassed model (no graph) is returned as it is; one nested in a graph stays one
    opaque layer.
    """
    if not _needs_flattening(model):
        return model
    graph = internals.functional_graph(model)
    if graph is None:
        raise ModelError(f"model {model.name!r} is not built; call it on a batch of images first "
                         "(or start it with keras.Input).")

    def run(sub, x):
        if isinstance(sub, keras.Sequential):
            for layer in sub.layers:
                x = run(layer, x) if isinstance(layer, keras.Model) else layer(x)
            return x
        if internals.functional_graph(sub) is not None:
            def op_fn(op):
                if isinstance(op, keras.Model):
                    return lambda *args, **kwargs: run(op, args[0])
                return op
            return internals.run_through_graph(sub, x, op_fn)
        return sub(x)

    inputs = keras.Input(shape=graph.inputs[0].shape[1:], name="image")
    outputs = run(model, inputs)
    if isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    flat = keras.Model(inputs, outputs, name=f"{model.name}_flat")
    spec = getattr(model, _SPEC_ATTR, None)
    if spec is not None:
        attach_spec(flat, spec)
    return flat


def prepare_model(model, spec: Optional[ModelSpec] = None) -> keras.Model:
    """Return the model as methods run it, with a `ModelSpec` attached; load it first if a
    path is given. Sequential and nested models become one flat graph (same layers);
    subclassed models are used as they are."""
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if not isinstance(model, keras.Model):
        raise ParameterError(
            f"model must be a keras.Model or a path to a .keras file; got {type(model).__name__}.")
    if getattr(model, _SPEC_ATTR, None) is not None and spec is None and not _needs_flattening(model):
        return model
    flat = flatten_model(model)
    attach_spec(flat, spec or getattr(model, _SPEC_ATTR, None) or derive_spec(flat))
    return flat


def resolve_layer(model: keras.Model, ref, method: str = "xai"):
    """The layer object `ref` names in `model`: a layer object, a name, or a path
    ``"base/block5_conv3"`` into a nested base.

    Raises `ModelError` saying what to pass when there is no such layer.
    """
    if isinstance(ref, keras.Operation):
        return ref
    if not isinstance(ref, str) or not ref:
        raise ParameterError(f"{method}: layer must be a layer name, a path 'base/layer' or a "
                             f"keras layer object; got {ref!r}.")
    parts = ref.split("/")
    for candidate in (parts, parts[-1:]):  # flattened models keep the leaf names only
        layer = model
        try:
            for part in candidate:
                layer = layer.get_layer(part)
            return layer
        except (ValueError, AttributeError):
            continue
    # Keras ops in a functional graph (a residual ``x + y`` is an `Add` op named "add_17")
    # are operations, not layers: get_layer cannot see them.
    for operation in getattr(model, "operations", ()):
        if operation.name == parts[-1]:
            return operation
    names = [layer.name for layer in model.layers]
    shown = names if len(names) <= 12 else names[:4] + ["..."] + names[-8:]
    hint = (" This model is subclassed, so pass the layer object itself (layer=model.some_layer)."
            if internals.functional_graph(model) is None else "")
    raise ModelError(f"{method}: layer {ref!r} is not in model {model.name!r}; its layers are "
                     f"{shown}.{hint}")


def layer_output_shapes(model: keras.Model, layers) -> dict:
    """``id(layer) -> output shape`` of each layer when `model` runs on one image.

    Read from one eager call, so it works for every kind of model; a layer the forward
    pass never calls is missing from the result.
    """
    spec = model_spec(model)
    probe = np.full((1, *spec.input_shape), spec.input_range[0], np.float32)
    with internals.capture(outputs_of=layers) as got:
        model(probe, training=False)
    return {key[1]: tuple(value.shape) for key, value in got.items()}


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def with_precision(model, policy: str = "mixed_bfloat16") -> keras.Model:
    """A copy of `model` that computes in `policy`, with the same (float32) weights.

    ``"mixed_bfloat16"`` uses the bfloat16 units of recent CPUs (AVX-512 BF16, AMX) and
    TPUs, ``"mixed_float16"`` GPU tensor cores. Explainers and metrics read every model
    output as float32, so any method runs on the copy unchanged; how far its maps move
    is measured in docs/performance.md (gradient maps move far more than CAM-family maps
    or deletion/insertion AUCs).
    """
    if policy not in PRECISIONS:
        raise ParameterError(f"policy must be one of {PRECISIONS}; got {policy!r}.")
    model = prepare_model(model)

    def rebuild(layer):
        config = layer.get_config()
        # Keras op nodes of a functional model (keras.ops.relu(x), x + y) are Operations,
        # not Layers: they take no dtype and compute in their inputs' dtype anyway.
        if isinstance(layer, keras.layers.Layer) and not isinstance(layer, keras.layers.InputLayer):
            config["dtype"] = policy
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=rebuild)
    copy.set_weights(model.get_weights())
    return attach_spec(copy, model_spec(model))


def require_layers(spec: ModelSpec, method: str, *fields: str) -> None:
    """Raise a `ModelError` saying which declared layers `method` needs and lacks."""
    missing = [f for f in fields if getattr(spec, f) is None]
    if missing:
        raise ModelError(
            f"{method} needs the model's {', '.join(missing)}, which its structure does not "
            "provide (it needs a GlobalAveragePooling2D feeding the final Dense layer). "
            "Name the layers with xai.models.derive_spec(model, feature_layer=..., "
            "classifier_layer=...) and pass spec=..., or choose another method."
        )


# --------------------------------------------------------------------------------------
# Saving and loading
# --------------------------------------------------------------------------------------

def save_model(model: keras.Model, path) -> Path:
    """Save as ``.keras`` with the `ModelSpec` in a JSON file beside it."""
    path = Path(path)
    if path.suffix != ".keras":
        raise ParameterError(f"model files end in .keras; got {str(path)!r}.")
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written beside, then renamed: a killed or failed save (a full disk) never leaves a
    # half-written model, nor a temporary file, behind.
    sidecar = Path(str(path) + _SIDECAR_SUFFIX)
    tmp, tmp_sidecar = path.with_name(path.stem + ".tmp.keras"), sidecar.with_name(sidecar.name + ".tmp")
    try:
        model.save(tmp)
        tmp_sidecar.write_text(json.dumps(model_spec(model).to_json(), indent=2))
        os.replace(tmp, path)
        os.replace(tmp_sidecar, sidecar)
    except BaseException:
        tmp.unlink(missing_ok=True)
        tmp_sidecar.unlink(missing_ok=True)
        raise
    return path


def load_model(path) -> keras.Model:
    """Load a ``.keras`` model with ``safe_mode=True`` (a model file cannot run code)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file {str(path)!r} does not exist.")
    try:
        model = keras.models.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:
        raise ModelError(f"could not load model {str(path)!r}: {exc}") from exc
    sidecar = Path(str(path) + _SIDECAR_SUFFIX)
    if sidecar.is_file():
        data = json.loads(sidecar.read_text())
        spec = ModelSpec.from_json(data)
        if "output" not in data:  # written before heads other than softmax were told apart
            spec = dataclasses.replace(spec, output=derive_spec(model).output)
        attach_spec(model, spec)
    return model


#: The names of the two members of `model_to_bytes`'s archive.
_BLOB_MODEL, _BLOB_SPEC = "model.keras", "model.keras" + _SIDECAR_SUFFIX


def model_to_bytes(model: keras.Model) -> bytes:
    """The model and its spec as one zip archive (what `save_model` writes as two files).

    For processes that cannot read this machine's disk (Ray workers on other nodes): the
    bytes travel, never a path. `model_from_bytes` reads them back.
    """
    import io
    import tempfile
    import zipfile

    with tempfile.TemporaryDirectory(prefix="xai-model-") as tmp:
        path = save_model(model, Path(tmp) / _BLOB_MODEL)
        buffer = io.BytesIO()
        # Stored, not deflated: a .keras file is a zip already.
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as archive:
            archive.write(path, _BLOB_MODEL)
            archive.write(Path(str(path) + _SIDECAR_SUFFIX), _BLOB_SPEC)
    return buffer.getvalue()


def model_from_bytes(data: bytes) -> keras.Model:
    """The model of `model_to_bytes`, spec attached, loaded with ``safe_mode=True``.

    Raises
    ------
    ModelError
        The bytes are not such an archive.
    """
    import io
    import tempfile
    import zipfile

    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = set(archive.namelist())
    except (zipfile.BadZipFile, TypeError) as exc:
        raise ModelError(f"the model's bytes are not an archive of model_to_bytes ({exc}).") from exc
    if members != {_BLOB_MODEL, _BLOB_SPEC}:
        raise ModelError(f"the model's archive holds {sorted(members)}; expected {[_BLOB_MODEL, _BLOB_SPEC]}.")
    # Keras reads a .keras archive from a path only: a private temporary copy on this node.
    with tempfile.TemporaryDirectory(prefix="xai-model-") as tmp:
        archive.extractall(tmp)
        return load_model(Path(tmp) / _BLOB_MODEL)
