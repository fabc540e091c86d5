"""Gradient * Input, SquareGrad, VarGrad, Guided Backprop and DeconvNet against their
definitions computed here by hand, against Xplique (tests/fixtures/gradients_peers.npz,
written by benchmarks/gradients_peer_reference.py), and on every form of model."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import xai
from xai.errors import NotApplicable
from xai.plugins.deconvnet import DeconvNet
from xai.plugins.gradient_input import GradientInput
from xai.plugins.guided_backprop import GuidedBackprop
from xai.plugins.smoothgrad import SmoothGrad
from xai.plugins.square_grad import SquareGrad
from xai.plugins.var_grad import VarGrad
from xai.testing import check_explainer

PEERS = Path(__file__).parent / "fixtures" / "gradients_peers.npz"
TARGETS = np.array([0, 1, 1, 0], np.int32)


@pytest.fixture(scope="module")
def small():
    """A three-convolution ReLU network: quick to trace, for the tests by hand."""
    keras.utils.set_random_seed(11)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions")(x))


@pytest.fixture(scope="module")
def x32():
    return np.random.default_rng(12).random((4, 32, 32, 3), dtype=np.float32)


def _logit_gradients(model, x, targets, classifier="predictions"):
    """d logit / d x, the logit read from the final Dense layer's input by hand."""
    dense = model.get_layer(classifier)
    features = keras.Model(model.inputs[0], dense.input)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.matmul(features(x), dense.kernel) + dense.bias
        total = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
    return tape.gradient(total, x).numpy().astype(np.float64)


def _close(ours, expected, tolerance=1e-5):
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(ours, expected, rtol=0, atol=tolerance * scale)


# -- Gradient * Input ---------------------------------------------------------------------

def test_gradient_input_is_the_logit_gradient_times_the_input(small, x32):
    product = _logit_gradients(small, x32, TARGETS) * x32
    for reduce, by_hand in (("sum", product.sum(-1)), ("max_abs", np.abs(product).max(-1))):
        _close(GradientInput(small, reduce=reduce).explain(x32, TARGETS), by_hand)


def _linear_model():
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 3))
    outputs = keras.layers.Dense(3, activation="softmax", name="predictions")(keras.layers.Flatten()(inputs))
    return keras.Model(inputs, outputs)


def test_gradient_input_on_a_linear_model_sums_to_the_logit_minus_its_bias():
    model = _linear_model()
    x = np.random.default_rng(3).random((3, 8, 8, 3), dtype=np.float32)
    targets = np.array([0, 2, 1], np.int32)
    dense = model.get_layer("predictions")
    kernel, bias = dense.kernel.numpy(), dense.bias.numpy()
    logits = x.reshape(3, -1) @ kernel + bias
    maps = GradientInput(model).explain(x, targets)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), logits[np.arange(3), targets] - bias[targets], rtol=1e-5)
    by_hand = (x * kernel[:, targets].T.reshape(3, 8, 8, 3)).sum(-1)
    _close(maps, by_hand)


# -- SquareGrad and VarGrad ---------------------------------------------------------------

def _noisy_gradients(model, explainer, x, targets, n):
    """The explainer's noisy copies of `x` (SmoothGrad's draw) and their logit gradients."""
    rows = np.repeat(np.arange(len(x), dtype=np.int32), n)
    counters = rows * n + np.tile(np.arange(n, dtype=np.int32), len(x))
    noisy = explainer.draw(tf.constant(x), tf.constant(rows), tf.constant(counters)).numpy()
    return noisy, _logit_gradients(model, noisy, targets[rows]).reshape(len(x), n, *x.shape[1:])


def test_square_grad_and_var_grad_are_statistics_of_smoothgrads_noisy_gradients(small, x32):
    """One set of noisy copies, drawn by SmoothGrad's machinery, gives SmoothGrad (the mean),
    SquareGrad (the mean square) and VarGrad (the unbiased variance) of the same gradients:
    a seed gives the same copies to all three. batch_size=5 splits images across calls."""
    n, x, targets = 6, x32[:2], TARGETS[:2]
    params = dict(n_samples=n, seed=4, score="logit", batch_size=5)
    smooth, square, var = (cls(small, **params) for cls in (SmoothGrad, SquareGrad, VarGrad))
    noisy, gradients = _noisy_gradients(small, square, x, targets, n)
    _, again = _noisy_gradients(small, smooth, x, targets, n)
    np.testing.assert_array_equal(gradients, again)
    sigma = 0.15 * (x.max(axis=(1, 2, 3)) - x.min(axis=(1, 2, 3)))
    assert np.allclose(((noisy.reshape(2, n, -1) - x.reshape(2, 1, -1)) / sigma[:, None, None]).std(), 1, atol=0.05)
    _close(smooth.explain(x, targets), np.abs(gradients.mean(1)).sum(-1), 1e-5)
    _close(square.explain(x, targets), (gradients ** 2).mean(1).sum(-1), 1e-5)
    _close(var.explain(x, targets), gradients.var(1, ddof=1).sum(-1), 1e-5)


def _quadratic_model():
    """logit_c = sum W_c * x**2 + b_c: d logit_c / dx = 2 W_c x, linear in x."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3))
    squares = keras.layers.Multiply()([inputs, inputs])
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(keras.layers.Flatten()(squares))
    return keras.Model(inputs, outputs)


def test_var_grad_keeps_its_digits_when_the_noise_hardly_moves_the_gradient():
    """Quadratic model at noise_level 1e-3: the variance is ~1e-5 of the squared gradient.
    Sums of the raw gradients' squares in float32 lose it; VarGrad accumulates differences
    from the clean image's gradient and keeps it."""
    model, n = _quadratic_model(), 8
    x = np.random.default_rng(13).uniform(0.5, 1.0, (2, 8, 8, 3)).astype(np.float32)
    targets = np.array([0, 1], np.int32)
    var = VarGrad(model, n_samples=n, noise_level=1e-3)
    _, gradients = _noisy_gradients(model, var, x, targets, n)
    by_hand = gradients.var(1, ddof=1).sum(-1)
    assert by_hand.max() < 1e-4 * (gradients ** 2).mean(1).sum(-1).max()
    _close(var.explain(x, targets), by_hand, 1e-3)
    g = gradients.astype(np.float32)
    naive = (((g ** 2).sum(1) - g.sum(1) ** 2 / n) / (n - 1)).sum(-1)
    assert np.abs(naive - by_hand).max() > 0.05 * by_hand.max()


def test_square_grad_and_var_grad_known_answers():
    """Linear model: constant gradient W, so VarGrad = 0 and SquareGrad = sum_c W**2.
    Quadratic model: gradient 2 W (x + sigma e), so VarGrad -> 4 sigma^2 sum_c W**2 and
    SquareGrad -> 4 sum_c W**2 (x**2 + sigma**2), within Monte Carlo error at 400 samples."""
    x = np.random.default_rng(6).random((2, 8, 8, 3), dtype=np.float32)
    x[:, 0, 0, 0], x[:, 0, 1, 0] = 0.0, 1.0  # sigma = noise_level
    targets = np.array([1, 0], np.int32)
    linear = _linear_model()
    w = linear.get_layer("predictions").kernel.numpy()[:, targets].T.reshape(2, 8, 8, 3)
    assert np.abs(VarGrad(linear, n_samples=8).explain(x, targets)).max() < 1e-9 * (w ** 2).sum(-1).max()
    _close(SquareGrad(linear, n_samples=8).explain(x, targets), (w ** 2).sum(-1), 1e-6)

    quadratic, sigma, n = _quadratic_model(), 0.3, 400
    w = quadratic.get_layer("predictions").kernel.numpy()[:, targets].T.reshape(2, 8, 8, 3)
    params = dict(n_samples=n, noise_level=sigma, batch_size=400)
    var = VarGrad(quadratic, **params).explain(x, targets)
    expected = 4 * sigma ** 2 * (w ** 2).sum(-1)
    assert abs(np.median(var / expected) - 1) < 0.02
    assert np.all(np.abs(var / expected - 1) < 0.35)  # over 5 standard errors per pixel
    square = SquareGrad(quadratic, **params).explain(x, targets)
    expected = 4 * (w ** 2 * (x ** 2 + sigma ** 2)).sum(-1)
    assert abs(np.median(square / expected) - 1) < 0.03


# -- Guided Backprop and DeconvNet ----------------------------------------------------------

def _relu_rule(rule, max_value=None):
    """A ReLU (ReLU6 with max_value=6) with the guided or the deconvnet backward pass,
    written from the papers' formulas; rule "xplique" is Xplique's guided ReLU6, which
    also passes gradient above 6."""

    @tf.custom_gradient
    def activation(x):
        y = tf.nn.relu(x) if max_value is None else tf.nn.relu6(x)

        def backward(g):
            if rule == "deconvnet":
                return tf.nn.relu(g)
            passes = x > 0 if max_value is None or rule == "xplique" else (x > 0) & (x < max_value)
            return tf.nn.relu(g) * tf.cast(passes, g.dtype)

        return y, backward

    return activation


def _rule_gradients(model, x, targets, rule):
    """The model layer by layer, each convolution's ReLU replaced by `_relu_rule`; d logit / d x."""
    relu = _relu_rule(rule)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = x
        for layer in model.layers[1:]:
            if isinstance(layer, keras.layers.Conv2D):
                h = relu(tf.nn.bias_add(tf.nn.conv2d(h, layer.kernel, 1, layer.padding.upper()), layer.bias))
            elif isinstance(layer, keras.layers.Dense):
                h = tf.matmul(h, layer.kernel) + layer.bias  # the logit
            else:
                h = layer(h)
        total = tf.reduce_sum(tf.gather(h, targets, axis=1, batch_dims=1))
    return tape.gradient(total, x).numpy()


@pytest.mark.parametrize("cls, rule", [(GuidedBackprop, "guided"), (DeconvNet, "deconvnet")])
def test_guided_backprop_and_deconvnet_equal_their_backward_rules_by_hand(small, x32, cls, rule):
    gradients = _rule_gradients(small, x32, TARGETS, rule)
    _close(cls(small, reduce="sum").explain(x32, TARGETS), gradients.sum(-1), 1e-6)
    if cls is GuidedBackprop:  # the same custom gradient under XLA
        _close(cls(small, jit_compile=True).explain(x32, TARGETS), np.abs(gradients).sum(-1), 1e-5)
    plain = _logit_gradients(small, x32, TARGETS)
    assert np.abs(gradients - plain).max() > 0.1 * np.abs(plain).max()  # the rule matters here


def test_the_users_model_is_left_unchanged(small, x32):
    layers = small.layers
    activations = [getattr(layer, "activation", None) for layer in layers]
    variables = [id(v) for v in small.weights]
    before = small(x32).numpy()
    plain = _logit_gradients(small, x32, TARGETS)
    for cls in (GuidedBackprop, DeconvNet):
        explainer = cls(small)
        explainer.explain(x32, TARGETS)
        assert not set(map(id, explainer.relu_model.weights)) & set(variables)
    assert small.layers == layers
    assert all(getattr(layer, "activation", None) is a for layer, a in zip(layers, activations))
    assert not any("call" in vars(layer) for layer in layers)
    assert [id(v) for v in small.weights] == variables
    np.testing.assert_array_equal(small(x32).numpy(), before)
    np.testing.assert_array_equal(_logit_gradients(small, x32, TARGETS), plain)


def test_the_copy_follows_the_models_weights_when_they_change_in_place(x32):
    """The sanity checks randomise weights in place under a built explainer: a copy frozen at
    construction would explain the trained model forever (Spearman 1.0 at every step)."""
    keras.utils.set_random_seed(4)
    model = xai.vgg16_gap((32, 32, 3), num_classes=3, width=0.125)
    for cls in (GuidedBackprop, DeconvNet):
        explainer = cls(model)
        before = explainer.explain(x32, TARGETS)
        saved = model.get_weights()
        kernel = model.get_layer("block4_conv1").kernel
        kernel.assign(np.random.default_rng(0).normal(0, 0.1, kernel.shape).astype(np.float32))
        after = explainer.explain(x32, TARGETS)
        np.testing.assert_allclose(after, cls(model).explain(x32, TARGETS), rtol=1e-5, atol=1e-7 * np.abs(after).max())
        assert not np.allclose(after, before)
        model.set_weights(saved)


def test_a_nested_base_gives_the_maps_of_the_same_flat_layers(tiny_model, nested_model, images):
    np.testing.assert_array_equal(GuidedBackprop(nested_model).explain(images, TARGETS),
                                  GuidedBackprop(tiny_model).explain(images, TARGETS))


def _every_relu_site():
    """A ReLU in each form a functional graph holds: a Conv2D's activation, an Activation
    layer, keras.ops.relu, a ReLU(6) layer (c4 scaled so that some inputs pass 6) and
    keras.activations.relu(max_value=6) on a symbolic tensor."""
    keras.utils.set_random_seed(7)
    conv = lambda n, name, **kw: keras.layers.Conv2D(n, 3, padding="same", name=name, **kw)  # noqa: E731
    inputs = keras.Input((16, 16, 3))
    a = conv(4, "c1", activation="relu")(inputs)
    b = keras.layers.Activation("relu")(conv(4, "c2")(inputs))
    c = keras.ops.relu(conv(4, "c3")(inputs))
    d = keras.layers.ReLU(6.0)(conv(6, "c4")(keras.layers.Concatenate()([a, b, c])))
    e = keras.activations.relu(conv(6, "c5")(d), max_value=6.0)
    outputs = keras.layers.Dense(3, activation="softmax", name="fc")(keras.layers.GlobalAveragePooling2D()(e))
    model = keras.Model(inputs, outputs)
    kernel, bias = model.get_layer("c4").get_weights()
    model.get_layer("c4").set_weights([kernel * 40, bias])
    return model


def _every_relu_site_by_hand(model, x, targets, rule):
    relu, relu6 = _relu_rule(rule), _relu_rule(rule, max_value=6.0)

    def conv(name, h):
        layer = model.get_layer(name)
        return tf.nn.bias_add(tf.nn.conv2d(h, layer.kernel, 1, "SAME"), layer.bias)

    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        h = tf.concat([relu(conv("c1", x)), relu(conv("c2", x)), relu(conv("c3", x))], axis=-1)
        saturating = relu6(conv("c4", h))
        h = relu6(conv("c5", saturating))
        fc = model.get_layer("fc")
        logits = tf.matmul(tf.reduce_mean(h, axis=[1, 2]), fc.kernel) + fc.bias
        total = tf.reduce_sum(tf.gather(logits, targets, axis=1, batch_dims=1))
    return tape.gradient(total, x).numpy(), saturating.numpy()


@pytest.mark.parametrize("cls, rule", [(GuidedBackprop, "guided"), (DeconvNet, "deconvnet")])
def test_every_form_of_relu_in_a_graph_is_rewritten(cls, rule):
    model = _every_relu_site()
    x = np.random.default_rng(8).random((3, 16, 16, 3), dtype=np.float32)
    targets = np.array([0, 1, 2], np.int32)
    gradients, features = _every_relu_site_by_hand(model, x, targets, rule)
    assert (features >= 6).mean() > 0.05  # the ReLU6 saturates somewhere
    maps = cls(model, reduce="sum", score="logit").explain(x, targets)
    _close(maps, gradients.sum(-1), 1e-5)
    if rule == "guided":  # where it saturates, Xplique's guided ReLU6 still passes gradient
        xplique = _every_relu_site_by_hand(model, x, targets, "xplique")[0].sum(-1)
        assert np.abs(maps - xplique).max() > 0.01 * np.abs(maps).max()


class SubclassedNet(keras.Model):
    """A subclassed classifier written the tutorials' way; ``functional_relu`` applies its
    last ReLU as a function (which cannot be rewritten)."""

    def __init__(self, functional_relu=False, **kwargs):
        super().__init__(**kwargs)
        self.functional_relu = functional_relu
        self.conv1 = keras.layers.Conv2D(4, 3, activation="relu", name="s_conv1")
        self.conv2 = keras.layers.Conv2D(6, 3, name="s_conv2")
        self.relu = keras.layers.ReLU(name="s_relu")
        self.gap = keras.layers.GlobalAveragePooling2D(name="s_gap")
        self.fc = keras.layers.Dense(3, activation="softmax", name="s_fc")

    def call(self, x):
        h = self.conv2(self.conv1(x))
        return self.fc(self.gap(tf.nn.relu(h) if self.functional_relu else self.relu(h)))

    def get_config(self):
        return {**super().get_config(), "functional_relu": self.functional_relu}


class StackNet(keras.Model):
    """A subclassed model built from layer objects: no config to copy it from."""

    def __init__(self, stack, **kwargs):
        super().__init__(**kwargs)
        self.stack = stack

    def call(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def test_subclassed_models_are_copied_or_refused_clearly():
    keras.utils.set_random_seed(9)
    x = np.random.default_rng(9).random((2, 16, 16, 3), dtype=np.float32)
    model = SubclassedNet()
    before = model(x).numpy()
    inputs = keras.Input((16, 16, 3))
    same_layers = keras.Model(inputs, model.fc(model.gap(model.relu(model.conv2(model.conv1(inputs))))))
    for cls in (GuidedBackprop, DeconvNet):
        _close(cls(model, score="probability").explain(x, [0, 2]),
               cls(same_layers, score="probability").explain(x, [0, 2]), 1e-6)
    np.testing.assert_array_equal(model(x).numpy(), before)
    assert model.conv1.activation is keras.activations.relu and "call" not in vars(model.relu)

    hidden = SubclassedNet(functional_relu=True)
    hidden(x)
    with pytest.raises(NotApplicable, match="applied as functions"):
        GuidedBackprop(hidden)
    inputs = keras.Input((16, 16, 3))
    lambda_relu = keras.layers.Lambda(tf.nn.relu)(keras.layers.Conv2D(4, 3, activation="relu")(inputs))
    with pytest.raises(NotApplicable, match="applied as functions"):
        DeconvNet(keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(lambda_relu))))
    stack = StackNet([keras.layers.Conv2D(4, 3, activation="relu"), keras.layers.GlobalAveragePooling2D(),
                    keras.layers.Dense(3)])
    stack(x)
    with pytest.raises(NotApplicable, match="cannot be copied"):
        DeconvNet(stack)
    with pytest.raises(NotApplicable, match="no ReLU"):
        GuidedBackprop(_linear_model())


@pytest.fixture
def eagerly():
    """Run tf.functions eagerly: a keras.applications network's tracing costs seconds."""
    tf.config.run_functions_eagerly(True)
    yield
    tf.config.run_functions_eagerly(False)


def test_keras_applications_relu6_network(eagerly):
    """MobileNetV2: ReLU(6) layers after batch normalisation, and a model left unchanged."""
    keras.utils.set_random_seed(10)
    model = keras.applications.MobileNetV2(weights=None, alpha=0.35, input_shape=(32, 32, 3), classes=3)
    x = np.random.default_rng(10).random((2, 32, 32, 3), dtype=np.float32)
    before = model(x).numpy()
    explainer = GuidedBackprop(model, reduce="sum")
    maps = explainer.explain(x, [0, 1])
    relus = [layer for layer in explainer.relu_model.layers if isinstance(layer, keras.layers.ReLU)]
    assert len(relus) == 35 and all("call" in vars(layer) for layer in relus)
    assert not any("call" in vars(layer) for layer in model.layers)
    np.testing.assert_array_equal(model(x).numpy(), before)
    assert maps.shape == (2, 32, 32) and np.all(np.isfinite(maps)) and np.abs(maps).max() > 0


# -- against Xplique ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def peers(tiny_model):
    peers = dict(np.load(PEERS))
    # The fixture was computed on conftest's tiny_model, rebuilt with the same seed.
    np.testing.assert_allclose(tiny_model(peers["images"]).numpy(), peers["probabilities"], rtol=1e-5)
    return peers


@pytest.mark.parametrize("name, cls", [("gradient_input", GradientInput), ("guided_backprop", GuidedBackprop),
                                       ("deconvnet", DeconvNet)])
@pytest.mark.parametrize("score", ["probability", "logit"])
def test_equal_to_xplique(tiny_model, peers, name, cls, score):
    """Xplique differentiates the model's output times the one-hot target (the probability
    of a softmax model; the logit on a copy ending at the logits) and averages channels."""
    ours = cls(tiny_model, score=score, reduce="sum").explain(peers["images"], peers["targets"]) / 3
    peer = peers[f"{name}_{score}"]
    assert np.abs(ours - peer).max() <= 1e-4 * np.abs(peer).max()


@pytest.mark.parametrize("name, cls", [("square_grad", SquareGrad), ("var_grad", VarGrad)])
def test_statistically_equal_to_xplique(tiny_model, peers, name, cls):
    """Xplique's noise cannot be reproduced: its two runs of n samples differ by Monte
    Carlo error only; ours at n / 2 samples is as close to their mean as that error allows
    (measured: within 1.3% over three seeds; a sigma of 0.15 instead of 0.2 moves the mean by
    2.6% (SquareGrad) and 4% (VarGrad), the probability instead of the logit by 87%)."""
    n = int(peers["statistic_samples"]) // 2
    ours = cls(tiny_model, n_samples=n, noise_level=float(peers["noise"])).explain(
        peers["images"], peers["targets"]) / 3
    a, b = peers[f"{name}_a"], peers[f"{name}_b"]
    distance = lambda u, v: np.linalg.norm(u - v) / np.linalg.norm(v)  # noqa: E731
    assert distance(ours, (a + b) / 2) < 1.4 * distance(a, b)
    assert abs(ours.mean() / ((a + b) / 2).mean() - 1) < 0.02


# -- the contract ---------------------------------------------------------------------------

@pytest.mark.parametrize("cls, params", [(GradientInput, {}), (GuidedBackprop, {}), (DeconvNet, {}),
                                         (SquareGrad, {"n_samples": 3}), (VarGrad, {"n_samples": 3})])
def test_contract(cls, params):
    keras.utils.set_random_seed(14)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    model = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x)))
    passed = check_explainer(cls, model, params=params)
    assert "parameter reduce changes the output" in passed and "parameter score changes the output" in passed
