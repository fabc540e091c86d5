"""Every private Keras attribute xai reads (xai/_keras_internals.py), one test each.

When a Keras upgrade moves one of them, the failure names it here instead of surfacing as
an AttributeError inside a method. pyproject.toml bounds keras to the tested versions.
"""

import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from packaging.specifiers import SpecifierSet

from xai import _keras_internals as internals


def _functional():
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(2, name="dense")(x))


class TinySubclassed(keras.Model):
    def __init__(self):
        super().__init__()
        self.conv = keras.layers.Conv2D(4, 3)
        self.gap = keras.layers.GlobalAveragePooling2D()
        self.dense = keras.layers.Dense(2)

    def call(self, x):
        return self.dense(self.gap(self.conv(x)))


def test_installed_keras_is_in_the_tested_range_and_pyproject_says_so():
    pyproject = (Path(__file__).parents[1] / "pyproject.toml").read_text()
    pinned = re.search(r'"keras([^"]*)"', pyproject)
    assert pinned and SpecifierSet(pinned.group(1)) == SpecifierSet(internals.TESTED_KERAS)
    assert keras.__version__ in SpecifierSet(internals.TESTED_KERAS)


def test_functional_graph_of_each_kind_of_model():
    model = _functional()
    assert internals.functional_graph(model) is model
    sequential = keras.Sequential([keras.layers.Conv2D(2, 3), keras.layers.GlobalAveragePooling2D()])
    assert internals.functional_graph(sequential) is None  # not built yet
    sequential(np.zeros((1, 8, 8, 3), np.float32))  # built by a first call
    assert internals.functional_graph(sequential) is not None
    subclassed = TinySubclassed()
    subclassed(np.zeros((1, 16, 16, 3), np.float32))
    assert internals.functional_graph(subclassed) is None


def test_graph_edges_and_producer():
    model = _functional()
    edges = internals.graph_edges(model)
    layer, feeding, shape = edges[id(model.get_layer("dense"))]
    assert layer is model.get_layer("dense") and feeding == [model.get_layer("gap")]
    assert edges[id(model.get_layer("conv"))][2] == (None, 14, 14, 4)
    assert internals.producer(model.outputs[0]) is model.get_layer("dense")


def test_run_through_graph_replaces_operations():
    model = _functional()
    calls = []

    def op_fn(op):
        calls.append(op.name)
        return op

    x = np.random.default_rng(0).random((2, 16, 16, 3)).astype(np.float32)
    out = internals.run_through_graph(model, tf.constant(x), op_fn)
    np.testing.assert_allclose(out, model(x), rtol=1e-6)
    assert calls == ["conv", "gap", "dense"]


def test_built_input_shape_of_a_model_built_by_a_call():
    model = TinySubclassed()
    assert internals.built_input_shape(model) is None
    model(np.zeros((3, 16, 16, 3), np.float32))
    assert tuple(internals.built_input_shape(model))[1:] == (16, 16, 3)


def test_own_trainable_variables_survive_freezing():
    model = _functional()
    model.trainable = False
    listed = internals.own_trainable_variables(model.get_layer("conv"))
    assert [v.path.split("/")[-1] for _, v in listed] == ["kernel", "bias"]
    assert all(owner is model.get_layer("conv") for owner, _ in listed)


@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_capture_records_the_tensors_the_forward_pass_uses(kind):
    model = _functional() if kind == "functional" else TinySubclassed()
    x = tf.constant(np.random.default_rng(1).random((2, 16, 16, 3)).astype(np.float32))
    model(x)
    conv = model.get_layer("conv") if kind == "functional" else model.conv
    dense = model.get_layer("dense") if kind == "functional" else model.dense

    @tf.function
    def run(images):
        with tf.GradientTape() as tape:
            with internals.capture(outputs_of=[conv], inputs_of=[dense]) as got:
                out = model(images)
            total = tf.reduce_sum(out[:, 1])
        features = got[("output", id(conv))]
        return features, got[("input", id(dense))], tape.gradient(total, features)

    features, pooled, grads = run(x)
    np.testing.assert_allclose(features, conv(x), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(pooled, tf.reduce_mean(features, axis=[1, 2]), rtol=1e-5, atol=1e-6)
    # d out_1 / d A = w[:, 1] / (h * w) at every position: the gradient goes through the model.
    expected = np.broadcast_to(dense.kernel.numpy()[:, 1] / 196, grads.shape)
    np.testing.assert_allclose(grads, expected, rtol=1e-5)
    assert "call" not in conv.__dict__ and "call" not in dense.__dict__  # hooks removed
