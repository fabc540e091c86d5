"""FEM and Layer-CAM against their definitions computed here by hand, against Xplique 2.0.2's
FEM and tf-keras-vis 0.8.7's Layercam (tests/fixtures/cams_peers.npz, written by
benchmarks/cams_peer_reference.py), on nested bases, keras.applications and the contract suite."""

import hashlib
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from xai.errors import ModelError, NotApplicable, ParameterError
from xai.plugins.fem import FEM
from xai.plugins.layer_cam import LayerCAM
from xai.testing import check_explainer

FIXTURE = Path(__file__).parent / "fixtures" / "cams_peers.npz"
TARGETS = np.array([0, 1, 1, 0], np.int32)


@pytest.fixture(scope="module")
def peers(tiny_model):
    with np.load(FIXTURE) as data:
        reference = {key: data[key] for key in data.files}
    digest = hashlib.sha256()
    for weight in tiny_model.get_weights():
        digest.update(np.ascontiguousarray(weight, np.float32).tobytes())
    assert digest.hexdigest() == str(reference["tiny_digest"]), (
        "tiny_model's weights changed: rerun benchmarks/cams_peer_reference.py")
    assert (str(reference["xplique_version"]), str(reference["tf_keras_vis_version"])) == ("2.0.2", "0.8.7")
    return reference


def _activations(model, layer, images):
    return keras.Model(model.inputs[0], model.get_layer(layer).output)(images).numpy()


def _resize(maps, size, method="bilinear"):
    return tf.image.resize(np.asarray(maps, np.float32)[..., None], size, method=method)[..., 0].numpy()


def _zoom_linear(maps, size):
    """scipy.ndimage.zoom(order=1), tf-keras-vis' upsampling: linear with the corner pixels
    aligned (output i samples input i * (h - 1) / (H - 1))."""
    n, h, w = maps.shape
    rows = np.linspace(0, h - 1, size[0])
    cols = np.linspace(0, w - 1, size[1])
    by_rows = np.stack([[np.interp(rows, np.arange(h), m[:, j]) for j in range(w)] for m in maps], 0)
    return np.stack([[np.interp(cols, np.arange(w), r) for r in m.T] for m in by_rows], 0)


def _close(got, expected, tolerance=1e-4):
    """Within `tolerance` of the expected map's maximum, the peers' comparison convention."""
    scale = np.abs(expected).max()
    assert scale > 0
    error = np.abs(got - expected).max() / scale
    assert error <= tolerance, error
    return error


def _fem_by_hand(activations, k):
    mean = activations.mean(axis=(1, 2), keepdims=True)
    passes = activations > mean + k * activations.std(axis=(1, 2), keepdims=True)
    return (passes * mean).sum(-1)


# -- FEM ------------------------------------------------------------------------------------

@pytest.mark.parametrize("layer, k", [("block5_conv3", 2.0), ("block4_conv3", 1.0)])
def test_fem_equals_its_definition(tiny_model, images, layer, k):
    explainer = FEM(tiny_model, layer=layer if layer != "block5_conv3" else None, k=k)
    assert explainer.layer.name == layer
    activations = _activations(tiny_model, layer, images)
    small = _fem_by_hand(activations, k)
    kept = activations > activations.mean((1, 2), keepdims=True) + k * activations.std((1, 2), keepdims=True)
    assert 0 < kept.mean() < 0.5 and small.max() > 0  # the threshold keeps a few positions per channel
    np.testing.assert_allclose(explainer.feature_map(tf.constant(images)).numpy(), small, rtol=1e-5)
    got = explainer.explain(images, TARGETS)
    np.testing.assert_allclose(got, _resize(small, (64, 64)), rtol=1e-5, atol=1e-6 * small.max())
    # Class-agnostic: the target does not enter.
    np.testing.assert_array_equal(explainer.explain(images, 1 - TARGETS), got)


@pytest.mark.parametrize("layer", ["block5_conv3", "block4_conv3"])
def test_fem_matches_xplique_with_its_bicubic_upsampling(tiny_model, peers, layer):
    k = {"block5_conv3": 2.0, "block4_conv3": 1.0}[layer]
    got = FEM(tiny_model, layer=layer, k=k, interpolation="bicubic").explain(peers["images"])
    _close(got, peers[f"fem_{layer}"])


def test_fem_threshold_is_strict_where_xplique_counts_a_constant_channel(peers):
    """Channel 0 of the fixture's model is the constant 0.75: std 0, so Xplique's ``>=``
    marks every position and adds 0.75 everywhere; the authors' ``>`` marks none."""
    model = keras.Sequential([
        keras.Input((8, 8, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(2, activation="softmax", name="predictions")])
    model.set_weights([peers[f"tie_w{i}"] for i in range(4)])
    x = peers["tie_images"]
    activations = _activations(model, "conv", x)
    np.testing.assert_allclose(activations[..., 0], 0.75)
    got = FEM(model, k=1.0, interpolation="bicubic").explain(x)
    np.testing.assert_allclose(got, _fem_by_hand(activations, 1.0), rtol=1e-5, atol=1e-6)
    _close(got, peers["fem_tie"] - 0.75)


def test_fem_warns_when_its_grid_is_too_small_for_k(tiny_model, images):
    """On 2x2 no value exceeds its mean by more than sqrt(3) < 2 standard deviations."""
    with pytest.warns(UserWarning, match=r"2x2 grid.*every map is zero"):
        explainer = FEM(tiny_model, layer="block5_pool")
    assert not explainer.explain(images[:1]).any()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FEM(tiny_model, layer="block5_pool", k=1.5).explain(images[:1]).any()


# -- Layer-CAM ------------------------------------------------------------------------------

def _layer_cam_before_max_pool(a, kernel, targets):
    """Layer-CAM at a convolution followed by a 2x2 max-pool, global mean pooling and the
    Dense layer ``kernel``: d logit_c / dA_k is w[k, c] / (pooled positions) at each pool
    window's maximum and 0 elsewhere, so the map is sum_k ReLU(w[k, c]) A_k / (pooled
    positions) over the window maxima."""
    n, h, w, k = a.shape
    windows = a.reshape(n, h // 2, 2, w // 2, 2, k).max(axis=(2, 4))
    at_max = (a == np.repeat(np.repeat(windows, 2, axis=1), 2, axis=2)) & (a > 0)
    weights = np.maximum(kernel[:, targets].T, 0) / ((h // 2) * (w // 2))  # (n, K)
    return np.einsum("nhwk,nk->nhw", a * at_max, weights)


def test_layer_cam_at_block5_conv3_equals_its_closed_form(tiny_model, images):
    kernel = tiny_model.get_layer("predictions").kernel.numpy()
    by_hand = _layer_cam_before_max_pool(_activations(tiny_model, "block5_conv3", images), kernel, TARGETS)
    explainer = LayerCAM(tiny_model)
    assert explainer.layer.name == "block5_conv3"
    small = explainer.feature_map(tf.constant(images), tf.constant(TARGETS)).numpy()
    np.testing.assert_allclose(small, by_hand, rtol=1e-5, atol=1e-7 * by_hand.max())
    got = explainer.explain(images, TARGETS)
    np.testing.assert_allclose(got, _resize(by_hand, (64, 64)), rtol=1e-5, atol=1e-6 * by_hand.max())


@pytest.mark.parametrize("layer", ["block5_conv3", "block4_conv3"])
def test_layer_cam_matches_tf_keras_vis(tiny_model, peers, layer):
    """tf-keras-vis' Layercam with ReplaceToLinear (the logit), normalize_cam=False: the
    same map at the feature grid; upsampled, it is ours zoomed with aligned corners, and
    normalised, that min-max scaled."""
    x, targets = peers["images"], peers["targets"]
    explainer = LayerCAM(tiny_model, layer=layer)
    small = np.maximum(explainer.feature_map(tf.constant(x), tf.constant(targets)).numpy(), 0)
    errors = [_close(small, peers[f"layercam_grid_{layer}"])]
    zoomed = _zoom_linear(small, (64, 64))
    errors.append(_close(zoomed, peers[f"layercam_{layer}"]))
    low, high = zoomed.min(axis=(1, 2), keepdims=True), zoomed.max(axis=(1, 2), keepdims=True)
    errors.append(_close((zoomed - low) / (high - low), peers[f"layercam_normalized_{layer}"]))
    # Our upsampling is the authors' half-pixel bilinear, so full maps differ from tf-keras-vis'.
    np.testing.assert_allclose(explainer.explain(x, targets), _resize(small, (64, 64)), rtol=1e-5,
                               atol=1e-6 * small.max())
    assert max(errors) < 1e-5


def _layer_cam_by_hand(model, layers, images, targets):
    """Each layer's ReLU(sum_k ReLU(g_k) A_k) from an independent tape, at its own grid."""
    dense = model.get_layer("predictions")
    graph = keras.Model(model.inputs[0], [model.get_layer(name).output for name in layers] + [dense.input])
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        *activations, pooled = graph(x)
        logits = tf.matmul(pooled, dense.kernel) + dense.bias
        total = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
    gradients = tape.gradient(total, activations)
    return [np.maximum((np.maximum(g.numpy(), 0) * a.numpy()).sum(-1), 0)
            for a, g in zip(activations, gradients)]


def test_layer_cam_fuses_layers_by_eq_9_then_the_maximum(tiny_model, images):
    layers = ["block3_conv3", "block5_conv3"]
    maps = _layer_cam_by_hand(tiny_model, layers, images, TARGETS)
    scaled = [np.tanh(2 * m / m.max(axis=(1, 2), keepdims=True)) for m in maps]
    by_hand = np.maximum(*[_resize(s, (64, 64)) for s in scaled])
    got = LayerCAM(tiny_model, layer=layers).explain(images, TARGETS)
    np.testing.assert_allclose(got, by_hand, rtol=1e-5, atol=1e-6)
    assert got.max() <= np.tanh(2) + 1e-6
    # A one-layer list is that layer's raw map.
    single = LayerCAM(tiny_model, layer=["block3_conv3"]).explain(images, TARGETS)
    np.testing.assert_allclose(single, _resize(maps[0], (64, 64)), rtol=1e-5, atol=1e-6 * maps[0].max())


def test_layer_errors_are_clear(tiny_model):
    with pytest.raises(ParameterError, match="at least one layer"):
        LayerCAM(tiny_model, layer=[])
    with pytest.raises(ParameterError, match="'layer' must be a layer name"):
        LayerCAM(tiny_model, layer=["block5_conv3", 3])
    with pytest.raises(ParameterError, match="more than once"):
        LayerCAM(tiny_model, layer=["block5_conv3", "vgg16/block5_conv3"])
    for cls in (FEM, LayerCAM):
        with pytest.raises(ModelError, match="feature map"):
            cls(tiny_model, layer="gap")
        with pytest.raises(ModelError, match="'nope' is not in model"):
            cls(tiny_model, layer="nope")


# -- every kind of model ----------------------------------------------------------------------

def test_nested_base_gives_the_same_maps(tiny_model, nested_model, images):
    """The nested model's declared layer, and paths 'vgg16/...' into its base."""
    for cls, nested_params, flat_params in [
            (FEM, {}, {}),
            (LayerCAM, {"layer": ["vgg16/block4_conv3", "vgg16/block5_conv3"]},
             {"layer": ["block4_conv3", tiny_model.get_layer("block5_conv3")]})]:
        nested = cls(nested_model, **nested_params).explain(images, TARGETS)
        np.testing.assert_allclose(nested, cls(tiny_model, **flat_params).explain(images, TARGETS),
                                   rtol=1e-5, atol=1e-7)


def test_keras_applications_base_with_its_declared_layer():
    """keras.applications VGG16 (weights=None, 32x32) nested in a Sequential: its declared
    last_conv_layer block5_conv3 (2x2), then max-pool, global pooling and Dense."""
    keras.utils.set_random_seed(4)
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    model = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax", name="predictions")])
    x = np.random.default_rng(5).random((2, 32, 32, 3), dtype=np.float32)
    targets = np.array([2, 0], np.int32)
    a = _activations(base, "block5_conv3", x)
    fem = FEM(model, k=1.0)  # 2x2: no value exceeds its mean by sqrt(3) standard deviations or more
    assert fem.layer.name == "block5_conv3"
    _close(fem.explain(x), _resize(_fem_by_hand(a, 1.0), (32, 32)), 1e-5)
    by_hand = _layer_cam_before_max_pool(a, model.get_layer("predictions").kernel.numpy(), targets)
    layer_cam = LayerCAM(model)
    assert layer_cam.layer.name == "block5_conv3"
    _close(layer_cam.explain(x, targets), _resize(by_hand, (32, 32)), 1e-5)


class StackModel(keras.Model):
    def __init__(self, stack, **kwargs):
        super().__init__(**kwargs)
        self.stack = stack

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def test_not_applicable_without_a_feature_layer_unless_one_is_passed():
    keras.utils.set_random_seed(6)
    conv = keras.layers.Conv2D(4, 3, activation="relu", name="c1")
    model = StackModel([conv, keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(2)])
    x = np.random.default_rng(6).random((2, 16, 16, 3), dtype=np.float32)
    model(x)
    for cls in (FEM, LayerCAM):
        with pytest.raises(NotApplicable, match="pass its layer"):
            cls(model)
        assert cls(model, layer=conv, **({"k": 1.0} if cls is FEM else {})).explain(x).shape == (2, 16, 16)


@pytest.mark.filterwarnings("ignore:FEM.*every map is zero")  # the suite tries k=4 on a 4x4 grid
@pytest.mark.parametrize("cls, params", [(FEM, {}), (LayerCAM, {}),
                                         (LayerCAM, {"layer": ["block4_conv3", "block5_conv3"]})])
def test_contract(cls, params, tiny_model):
    passed = check_explainer(cls, tiny_model, params=params)
    assert "parameter interpolation changes the output" in passed
