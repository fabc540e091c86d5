"""Guided Backpropagation (Springenberg et al. 2015): ReLUs send back only positive gradient."""

from __future__ import annotations

import dataclasses

import numpy as np

from xai._lazy import keras, tf
from xai.plugin_api import SIGNED_REDUCTIONS, Explainer, NotApplicable, Param, reduce_channels

#: Name scope of every rewritten ReLU's forward ops: a ReLU op outside it was not rewritten.
SCOPE = "xai_relu_rule"
#: TensorFlow op types of the ReLU family (`keras.ops.relu`, `relu6`, a `ReLU` layer).
RELU_OP_TYPES = ("Relu", "Relu6")
#: Keras classes of ReLU operations in a functional graph: the `ReLU` layer, the op that
#: `keras.activations.relu(x)` leaves on a symbolic tensor, `keras.ops.relu` / `relu6`.
RELU_CLASSES = ("ReLU", "Relu", "Relu6")


class GuidedBackprop(Explainer):
    """The input gradient of a class score with every ReLU's backward pass guided.

    Springenberg et al., "Striving for Simplicity: The All Convolutional Net", ICLR
    workshop 2015. At each ReLU the gradient sent back is its ordinary one (zero where
    the forward input was negative) with the negative entries of the incoming gradient
    also set to zero: ``R_in = [x > 0] * max(R_out, 0)``.

    The user's model is never changed. `setup` builds a private copy once (the same
    layers from their configs, with the user's weights copied in) whose ReLUs have the
    guided backward pass, and the score (default the logit) is differentiated on that
    copy through the same head as every gradient method. Every member of the ReLU family
    is guided wherever it appears: ``activation="relu"`` (or ``"relu6"``) inside a
    layer, ``Activation`` and ``ReLU`` layers (keras.applications' ReLU6 included) and
    ``keras.ops.relu`` in a functional graph. At a ReLU6 the ordinary gradient is also
    zero above 6 (Xplique passes it there); with ``negative_slope`` its slope applies.
    The copy is checked when it is built: a ReLU that could not be rewritten (applied as
    a function inside a subclassed model's or a custom layer's ``call``) makes the method
    `NotApplicable` rather than silently return the plain gradient, as does a model with
    no ReLU at all (the plain gradient is `vanilla_gradient`). A subclassed model is
    copied through its ``get_config``; one without a usable config is not applicable.

    Parameters
    ----------
    score : {"logit", "probability", "loss"}, default "logit"
        Xplique differentiates the model's output: ``"probability"`` on a softmax model.
    reduce : {"sum", "sum_abs", "max_abs"}, default "sum_abs"
        Channel reduction: ``"sum_abs"`` as `vanilla_gradient`; ``"sum"`` is signed
        (Xplique's default ``reducer="mean"`` is ``"sum"`` divided by the channel count).
    batch_size : int, default 32
    jit_compile : bool, default False

    Examples
    --------
    >>> import numpy as np, xai
    >>> model = xai.models.vgg16_gap(input_shape=(32, 32, 3), width=0.125)
    >>> maps = GuidedBackprop(model).explain(np.zeros((2, 32, 32, 3), np.float32), [0, 1])
    >>> maps.shape, maps.dtype
    ((2, 32, 32), dtype('float32'))
    """

    differentiates_score = True

    default_score = "logit"
    parameters = {
        "reduce": Param("sum_abs", choices=SIGNED_REDUCTIONS, doc="Channel reduction of the gradient."),
    }

    def relu_backward(self, upstream, backward):
        """What a ReLU sends back given the gradient `upstream` reaching its output;
        ``backward(g)`` is the ReLU's ordinary backward pass applied to ``g``."""
        return backward(tf.nn.relu(upstream))

    inspects_model = True

    def setup(self):
        from xai.head import ModelHead

        self.relu_model = relu_rule_copy(self.model, self.spec, self.relu_backward, self.display_name)
        self.relu_head = ModelHead(self.relu_model)

    def explain_batch(self, images, targets, offset: int):
        # Explain the model as it is now: its weights may have changed in place since the
        # copy was made (fine-tuning; the sanity checks' cascading randomisation assigns them).
        for mine, theirs in zip(self.relu_model.weights, self.model.weights):
            mine.assign(theirs)
        return super().explain_batch(images, targets, offset)

    def input_gradients(self, images, targets):
        """d score / d images through the copy whose ReLUs follow `relu_backward`."""
        from xai.head import input_gradients

        return input_gradients(self.relu_head, images, targets, self.resolved["score"])

    def compute(self, images, targets):
        gradients = self.input_gradients(images, targets)
        return reduce_channels(gradients, self.resolved["reduce"])


def relu_rule_copy(model, spec, rule, method: str):
    """A private copy of `model` (same outputs) whose ReLUs send back
    ``rule(upstream, backward)``; raises `NotApplicable` where that cannot be done."""
    from xai._keras_internals import functional_graph
    from xai.models import attach_spec

    copy = _copy(model, spec, method)
    originals, copies = _layers(model), _layers(copy)
    rewritten = sum(_rewrite(op, rule) for op in copies)
    # Keras' own layers and ops call their activation through what _rewrite replaced; code
    # written elsewhere (a subclassed model, a custom layer, a Lambda) may call tf.nn.relu.
    opaque = functional_graph(copy) is None or any(
        isinstance(op, keras.layers.Lambda) or not type(op).__module__.startswith("keras.") for op in copies)
    left = _unrewritten_relus(copy, spec) if opaque else []
    if left:
        raise NotApplicable(f"{method}: ReLU(s) {left[:3]} are applied as functions inside a layer's "
                            "or a subclassed model's call(), where they cannot be replaced; use "
                            "keras.layers.ReLU / activation='relu' layers, or a functional model.")
    if not rewritten:
        raise NotApplicable(f"{method}: the model has no ReLU activation, so the method would be the "
                            "plain input gradient (vanilla_gradient).")
    # Layers rebuilt from a config get new automatic names in a subclassed copy.
    names = {a.name: b.name for a, b in zip(originals, copies)}
    renamed = {field: names.get(getattr(spec, field), getattr(spec, field))
               for field in ("feature_layer", "last_conv_layer", "classifier_layer", "logits_layer")}
    return attach_spec(copy, dataclasses.replace(spec, **renamed))


def _copy(model, spec, method: str):
    """The same layers rebuilt from their configs, holding copies of `model`'s weights."""
    from xai._keras_internals import functional_graph

    graph = functional_graph(model) is not None
    probe = np.random.default_rng(0).uniform(*spec.input_range, (2, *spec.input_shape)).astype(np.float32)
    try:
        if graph:
            copy = keras.models.clone_model(model)
        else:
            copy = type(model).from_config(model.get_config())
            copy(probe[:1], training=False)
        copy.set_weights(model.get_weights())
    except Exception as exc:  # noqa: BLE001 - any failure to rebuild means the same thing
        raise NotApplicable(f"{method} rewrites the model's ReLUs in a copy of the model, and "
                            f"{model.name!r} ({type(model).__name__}) cannot be copied from its "
                            f"config: {type(exc).__name__}: {str(exc).strip()[:300]}") from exc
    # A graph's clone is the same computation by construction; a subclassed model's
    # constructor may not rebuild what its call() uses.
    if not graph and not np.allclose(keras.ops.convert_to_numpy(copy(probe, training=False)),
                                     keras.ops.convert_to_numpy(model(probe, training=False)),
                                     rtol=1e-4, atol=1e-6):
        raise NotApplicable(f"{method} rewrites the model's ReLUs in a copy of the model, and the copy "
                            f"of {model.name!r} rebuilt from its config computes something else.")
    return copy


def _layers(model) -> list:
    """Every operation of `model`'s graph (every tracked layer of a subclassed model),
    those of nested models included, in a stable order."""
    own = list(getattr(model, "operations", None) or model.layers)
    return [op for layer in own
            for op in ([layer, *_layers(layer)] if isinstance(layer, keras.Model) else [layer])]


def _rewrite(op, rule) -> int:
    """Give `op` (a layer of the private copy) the ReLU rule; 1 if it is a ReLU, else 0."""
    activation = getattr(op, "activation", None)
    if activation is not None and activation in _relu_functions():
        op.activation = _with_rule(activation, rule)
        return 1
    if isinstance(op, keras.layers.ReLU) or (type(op).__name__ in RELU_CLASSES
                                             and type(op).__module__.startswith("keras.")):
        guided = _with_rule(op.call, rule)
        # This layer belongs to the copy alone; a ReLU layer has no hook for its gradient.
        object.__setattr__(op, "call", lambda inputs, *args, **kwargs: guided(inputs))
        return 1
    return 0


def _relu_functions() -> tuple:
    return (keras.activations.relu, keras.activations.relu6, keras.ops.relu, keras.ops.relu6,
            tf.nn.relu, tf.nn.relu6)


def _with_rule(forward, rule):
    """`forward` (an elementwise ReLU) whose gradient is ``rule(upstream, backward)``."""

    @tf.custom_gradient
    def activation(x):
        with tf.name_scope(SCOPE):
            y = forward(x)

        def backward(upstream):
            # The ReLU's own backward pass, from a tape of its own: custom_gradient pauses
            # the tapes while it runs the forward pass eagerly.
            def ordinary(g):
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    with tf.name_scope(SCOPE):
                        again = forward(x)
                return tape.gradient(again, x, output_gradients=g)

            return rule(upstream, ordinary)

        return y, backward

    return activation


def _unrewritten_relus(model, spec) -> list:
    """Names of the ReLU ops left outside `SCOPE` in one trace of `model`'s forward pass."""
    signature = tf.TensorSpec((1, *spec.input_shape), tf.float32)
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(signature).graph
    return sorted({op.name for op in graph.get_operations()
                   if op.type in RELU_OP_TYPES and SCOPE not in op.name})
