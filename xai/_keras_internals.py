"""Every private Keras attribute and behaviour xai relies on, in one module.

Keras has no public API for a functional graph's edges, for the shape a model was built
on by a first call, or for a layer's own trainable variables after ``trainable = False``.
xai reads them here and nowhere else; `tests/test_keras_internals.py` exercises each one,
so a Keras upgrade that moves them fails that test by name instead of failing a method
deep inside a run. pyproject.toml bounds keras to the versions this was tested on
(`TESTED_KERAS`).
"""

from __future__ import annotations

import contextlib
import threading
from typing import Iterable, Iterator, Optional


#: The keras versions this module was verified against (pyproject.toml says the same).
TESTED_KERAS = ">=3.10,<3.16"  # 3.10.0, 3.13.2 and 3.15.1 run the tests


# -- the functional graph ----------------------------------------------------------------

def functional_graph(model) -> Optional[object]:
    """The functional graph of a functional model or a built Sequential (its
    ``_functional``), or None for a subclassed model or an unbuilt Sequential."""
    graph = getattr(model, "_functional", None) or model
    if not hasattr(graph, "_nodes_by_depth") or not getattr(graph, "inputs", None):
        return None
    return graph


def graph_edges(graph) -> dict:
    """``id(layer) -> (layer, [layers feeding it], output shape)`` in `graph`'s own nodes.

    Read from the graph's nodes, not `layer.input`: after `xai.models.flatten_model` a
    layer shared with the nested original has a second inbound node, and only this
    graph's counts.
    """
    edges = {}
    for nodes in graph._nodes_by_depth.values():
        for node in nodes:
            if node.operation is not None and not node.is_input:
                edges[id(node.operation)] = (
                    node.operation,
                    [producer(t) for t in node.input_tensors],
                    tuple(node.outputs[0].shape),
                )
    return edges


def producer(tensor):
    """The layer (or operation) whose output a symbolic tensor is."""
    return tensor._keras_history[0]


def run_through_graph(model, inputs, operation_fn):
    """Call a functional model's graph on `inputs`, each operation replaced by
    ``operation_fn(operation)`` (how `flatten_model` rebuilds nested sub-models)."""
    return model._run_through_graph(inputs, operation_fn=operation_fn)


# -- models built by a first call ----------------------------------------------------------

def built_input_shape(model) -> Optional[tuple]:
    """The input shape a model (subclassed included) was built on by its first call, or None."""
    shapes = getattr(model, "_build_shapes_dict", None) or {}
    if len(shapes) != 1:
        return None
    shape = next(iter(shapes.values()))
    return tuple(shape) if isinstance(shape, (tuple, list)) else None


# -- variables -----------------------------------------------------------------------------

def own_trainable_variables(layer) -> list:
    """(owner, variable) for each variable `layer` or its sublayers created trainable.

    ``_trainable_variables`` keeps listing a variable after ``layer.trainable = False``,
    so a frozen (transfer-learned) base still counts as part of the model.
    """
    return [(owner, variable)
            for owner in layer._flatten_layers(include_self=True, recursive=True)
            for variable in owner._trainable_variables]


# -- reading a layer's tensors during a forward pass ---------------------------------------

#: Held while hooks are installed: two threads running one model must not see (or remove)
#: each other's hooks. Inside a `tf.function` the block only runs while tracing.
_HOOKS = threading.RLock()


@contextlib.contextmanager
def capture(outputs_of: Iterable = (), inputs_of: Iterable = ()) -> Iterator[dict]:
    """Record layers' outputs (and first inputs) while the model runs inside the block.

    Yields a dict filled as the layers are called: ``("output", id(layer)) -> tensor`` and
    ``("input", id(layer)) -> tensor``. Works for any model, subclassed ones included,
    because `keras.layers.Layer.__call__` dispatches to the instance's ``call``, which
    is replaced for the duration of the block (inside a `tf.function` that is while it is
    traced). The tensors are the ones the forward pass itself uses, so a gradient with
    respect to them is the gradient through the model, not through a second copy.
    """
    recorded: dict = {}
    wanted: dict = {}
    for layer in outputs_of:
        wanted.setdefault(id(layer), [layer, False, False])[1] = True
    for layer in inputs_of:
        wanted.setdefault(id(layer), [layer, False, False])[2] = True
    patched = []
    with _HOOKS:
        try:
            for layer, want_output, want_input in wanted.values():
                original = layer.call

                def call(*args, __layer=layer, __original=original, __out=want_output, __in=want_input,
                         **kwargs):
                    result = __original(*args, **kwargs)
                    if __in:
                        recorded[("input", id(__layer))] = args[0] if args else next(iter(kwargs.values()))
                    if __out:
                        recorded[("output", id(__layer))] = result
                    return result

                patched.append((layer, "call" in layer.__dict__, original))
                object.__setattr__(layer, "call", call)
            yield recorded
        finally:
            for layer, had_own, original in reversed(patched):
                if had_own:
                    object.__setattr__(layer, "call", original)
                else:
                    del layer.__dict__["call"]

