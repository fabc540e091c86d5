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


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What explainers and metrics need to know about a classifier.

    Attributes
    ----------
    input_shape : tuple of int
        (H, W, C) of one input image. Images are float32 in [0, 1].
    num_classes : int
    feature_layer : str or None
        Layer whose output the global average pooling averages (CAM's ``f_k``).
    last_conv_layer : str or None
        Last convolution before ``feature_layer`` (for Grad-CAM-style methods).
    classifier_layer : str or None
        The Dense layer on top of the pooling; its pre-activation output is the logit.
    preprocessing : str
        ``"none"`` (the model takes [0, 1] images as they are) or ``"caffe"`` (a
        `VGGPreprocess` layer inside the model maps [0, 1] RGB to VGG16's ImageNet input).
    class_names : tuple of str
    """

    input_shape: tuple[int, int, int]
    num_classes: int
    feature_layer: Optional[str] = None
    last_conv_layer: Optional[str] = None
    classifier_layer: Optional[str] = None
    preprocessing: str = "none"
    class_names: tuple[str, ...] = ()

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "ModelSpec":
        data = dict(data)
        data["input_shape"] = tuple(data["input_shape"])
        data["class_names"] = tuple(data.get("class_names", ()))
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
    if weights == "imagenet" and (width != 1.0 or input_shape[2] != 3):
        raise ParameterError(
            f"weights='imagenet' needs width=1.0 and 3 channels; got width={width!r}, "
            f"input_shape={input_shape!r}."
        )

    inputs = keras.Input(shape=input_shape, name="image")
    x = VGGPreprocess(name="preprocess")(inputs) if weights == "imagenet" else inputs
    for block, filters in enumerate(VGG16_BLOCKS, start=1):
        for conv, f in enumerate(filters, start=1):
            x = keras.layers.Conv2D(
                _scaled(f, width), 3, padding="same", activation="relu",
                kernel_initializer="he_normal", name=f"block{block}_conv{conv}",
            )(x)
        x = keras.layers.MaxPooling2D(2, strides=2, name=f"block{block}_pool")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(num_classes, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="vgg16_gap")

    if weights == "imagenet":
        _load_imagenet_conv_base(model, input_shape)
    spec = ModelSpec(
        input_shape=input_shape,
        num_classes=int(num_classes),
        feature_layer="block5_pool",
        last_conv_layer="block5_conv3",
        classifier_layer="predictions",
        preprocessing="caffe" if weights == "imagenet" else "none",
        class_names=tuple(class_names),
    )
    attach_spec(model, spec)
    return model


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


def _producer(tensor):
    return tensor._keras_history[0]


def _graph_inputs(model: keras.Model) -> dict:
    """Map each layer of `model`'s own graph to the layers feeding it.

    Read from the model's nodes, not `layer.input`: after `flatten_model` a layer shared
    with the nested original has a second inbound node, and only this graph's counts.
    """
    feeding = {}
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.operation is not None and not node.is_input:
                feeding[id(node.operation)] = [_producer(t) for t in node.input_tensors]
    return feeding


_PASS_THROUGH = (
    keras.layers.Dropout,
    keras.layers.Activation,
    keras.layers.Softmax,
    keras.layers.ReLU,
    keras.layers.BatchNormalization,
    keras.layers.Flatten,
)


def layer_tensors(model: keras.Model, name: str):
    """(input, output) symbolic tensors of layer `name` in `model`'s own graph."""
    layer = model.get_layer(name)
    for nodes in model._nodes_by_depth.values():
        for node in nodes:
            if node.operation is layer and not node.is_input:
                return node.input_tensors[0], node.outputs[0]
    raise ModelError(f"layer {name!r} is not connected in model {model.name!r}.")


def derive_spec(model: keras.Model, *, feature_layer=None, last_conv_layer=None,
                classifier_layer=None, class_names=()) -> ModelSpec:
    """Read a model's structure: the Dense on the output fed by a GlobalAveragePooling2D.

    Layers named explicitly win over what the structure says. A layer the structure
    does not provide stays ``None``; methods that need it raise `ModelError` naming it.
    """
    if len(model.inputs) != 1 or len(model.outputs) != 1:
        raise ModelError(
            f"xai explains models with one image input and one class-score output; "
            f"{model.name!r} has {len(model.inputs)} inputs and {len(model.outputs)} outputs."
        )
    input_shape = tuple(model.inputs[0].shape[1:])
    output_shape = tuple(model.outputs[0].shape[1:])
    if len(input_shape) != 3 or None in input_shape:
        raise ModelError(
            f"the model's input must be a fixed-size image (H, W, C); it is {input_shape!r}."
        )
    if len(output_shape) != 1 or output_shape[0] is None or output_shape[0] < 2:
        raise ModelError(
            f"the model's output must be class scores (num_classes,), num_classes >= 2; "
            f"it is {output_shape!r}."
        )

    names = {layer.name for layer in model.layers}
    for label, value in (("feature_layer", feature_layer), ("last_conv_layer", last_conv_layer),
                         ("classifier_layer", classifier_layer)):
        if value is not None and value not in names:
            raise ModelError(f"{label}={value!r} is not a layer of model {model.name!r}.")

    feeding = _graph_inputs(model)

    def _single_input_producer(layer):
        inbound = feeding.get(id(layer), [])
        return inbound[0] if len(inbound) == 1 else None

    found_classifier = found_features = found_conv = None
    layer = _producer(model.outputs[0])
    while isinstance(layer, _PASS_THROUGH):
        layer = _single_input_producer(layer)
    if isinstance(layer, keras.layers.Dense):
        found_classifier = layer
        pooled = _single_input_producer(layer)
        while isinstance(pooled, keras.layers.Dropout):
            pooled = _single_input_producer(pooled)
        if isinstance(pooled, keras.layers.GlobalAveragePooling2D):
            found_features = _single_input_producer(pooled)
    start = model.get_layer(feature_layer) if feature_layer else found_features
    walker = start
    while walker is not None and not isinstance(walker, keras.layers.InputLayer):
        if isinstance(walker, keras.layers.Conv2D):
            found_conv = walker
            break
        if not isinstance(walker, (keras.layers.MaxPooling2D, keras.layers.AveragePooling2D)
                          + _PASS_THROUGH):
            break
        walker = _single_input_producer(walker)

    def name_of(layer):
        return None if layer is None else layer.name

    preprocessing = "caffe" if any(isinstance(l, VGGPreprocess) for l in model.layers) else "none"
    return ModelSpec(
        input_shape=tuple(int(d) for d in input_shape),
        num_classes=int(output_shape[0]),
        feature_layer=feature_layer or name_of(found_features),
        last_conv_layer=last_conv_layer or name_of(found_conv),
        classifier_layer=classifier_layer or name_of(found_classifier),
        preprocessing=preprocessing,
        class_names=tuple(class_names),
    )


def model_spec(model: keras.Model) -> ModelSpec:
    """The model's declared `ModelSpec`, or the one its structure gives."""
    spec = getattr(model, _SPEC_ATTR, None)
    return spec if spec is not None else derive_spec(model)


def _is_nested(model: keras.Model) -> bool:
    return any(isinstance(layer, keras.Model) for layer in model.layers)


def flatten_model(model: keras.Model) -> keras.Model:
    """Rebuild a model whose layers include sub-models as one flat functional graph.

    The leaf layers are reused (shared weights, same names), so
    ``flatten_model(m).get_layer("block5_conv3")`` reaches into a VGG16 nested inside a
    Sequential, which is the form many tutorials (and the seed's CAM post) build.
    """
    if not _is_nested(model):
        return model
    if not model.inputs:
        raise ModelError(f"model {model.name!r} is not built; call it on a batch first.")

    def run(sub, x):
        if isinstance(sub, keras.Sequential):
            for layer in sub.layers:
                x = run(layer, x) if isinstance(layer, keras.Model) else layer(x)
            return x
        if isinstance(sub, keras.Model):
            def op_fn(op):
                if isinstance(op, keras.Model):
                    return lambda *args, **kwargs: run(op, args[0])
                return op
            return sub._run_through_graph(x, operation_fn=op_fn)
        return sub(x)

    inputs = keras.Input(shape=model.inputs[0].shape[1:], name="image")
    outputs = run(model, inputs)
    if isinstance(outputs, (list, tuple)):
        outputs = outputs[0]
    flat = keras.Model(inputs, outputs, name=f"{model.name}_flat")
    spec = getattr(model, _SPEC_ATTR, None)
    if spec is not None:
        attach_spec(flat, spec)
    return flat


def prepare_model(model, spec: Optional[ModelSpec] = None) -> keras.Model:
    """Return a flat model with a `ModelSpec` attached; load it first if a path is given."""
    if isinstance(model, (str, os.PathLike)):
        model = load_model(model)
    if not isinstance(model, keras.Model):
        raise ParameterError(
            f"model must be a keras.Model or a path to a .keras file; got {type(model).__name__}.")
    if getattr(model, _SPEC_ATTR, None) is not None and spec is None and not _is_nested(model):
        return model
    flat = flatten_model(model)
    attach_spec(flat, spec or getattr(model, _SPEC_ATTR, None) or derive_spec(flat))
    return flat


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
        if not isinstance(layer, keras.layers.InputLayer):
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
        attach_spec(model, ModelSpec.from_json(json.loads(sidecar.read_text())))
    return model
