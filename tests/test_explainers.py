import keras
import numpy as np
import pytest
import tensorflow as tf

import xai
from xai.plugin_api import Explainer, Param
from xai.testing import check_explainer, explainer_checks, parametrize_with_checks


#: Cheap settings for the sampling methods; every other parameter keeps its default.
FAST_PARAMS = {"smoothgrad": {"n_samples": 4}, "integrated_gradients": {"steps": 8},
               "rise": {"n_masks": 64}, "occlusion": {"patch_size": 16, "stride": 16},
               "square_grad": {"n_samples": 4}, "var_grad": {"n_samples": 4},
               "sobol": {"grid_size": 4, "n_designs": 4}, "hsic": {"grid_size": 4, "n_designs": 16},
               "lime": {"n_samples": 200, "n_segments": 12}, "kernel_shap": {"n_samples": 200, "n_segments": 12}}


def _contract_model():
    keras.utils.set_random_seed(1)
    return xai.vgg16_gap((64, 64, 3), num_classes=3, width=0.125)


@parametrize_with_checks(xai.list_explainers(), _contract_model,
                         params=FAST_PARAMS)
def test_every_registered_explainer_keeps_the_contract(check):
    check()


def test_a_plugin_without_common_parameters_gets_them_and_passes(tiny_model):
    """Round 1: declaring `parameters` without batch_size crashed with KeyError."""
    class Scaled(Explainer):
        """The input's first channel times a factor (a model-free toy)."""

        parameters = {"factor": Param(2.0, float, low=0.0)}

        def compute(self, images, targets):
            return images[..., 0] * self.resolved["factor"]

    assert {"factor", "batch_size", "jit_compile"} == set(Scaled.parameters)
    passed = check_explainer(Scaled, tiny_model)
    assert "parameter factor changes the output" in passed and "rejects an invalid factor" in passed


def test_the_contract_suite_catches_a_parameter_accepted_and_ignored(tiny_model):
    class Ignores(Explainer):
        parameters = {"strength": Param(1.0, float)}

        def compute(self, images, targets):
            return images[..., 0]

    checks = dict(explainer_checks(Ignores, tiny_model))
    checks["output shape, dtype and values"]()
    with pytest.raises(AssertionError, match="accepted and ignored"):
        checks["parameter strength changes the output"]()


@pytest.mark.parametrize("name", xai.list_explainers())
def test_nested_model_gives_the_same_maps(name, tiny_model, nested_model, images):
    params = FAST_PARAMS.get(name, {})
    flat_maps = xai.create_explainer(name, tiny_model, **params).explain(images, [0, 1, 0, 1])
    nested_maps = xai.create_explainer(name, nested_model, **params).explain(images, [0, 1, 0, 1])
    np.testing.assert_allclose(nested_maps, flat_maps, rtol=1e-5, atol=1e-7)


def _tiny_smooth_model():
    """Small GAP model with tanh/softplus so central differences are accurate."""
    keras.utils.set_random_seed(5)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", activation="tanh")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(x))


@pytest.mark.parametrize("score", ["loss", "probability", "logit"])
def test_vanilla_gradient_equals_central_finite_difference(score):
    model = _tiny_smooth_model()
    rng = np.random.default_rng(1)
    x = rng.random((1, 8, 8, 3)).astype(np.float64)
    target = 2
    explainer = xai.create_explainer("vanilla_gradient", model, score=score)
    head = explainer.head

    def f(z):
        out = head(tf.constant(z, tf.float32))
        if score == "logit":
            return float(out["logits"][0, target])
        p = float(out["probabilities"][0, target])
        return -np.log(p) if score == "loss" else p

    grad = np.zeros_like(x)
    eps = 1e-2
    for idx in [(0, 0, 0, 0), (0, 3, 4, 1), (0, 7, 7, 2), (0, 5, 2, 0), (0, 1, 6, 1)]:
        up, down = x.copy(), x.copy()
        up[idx] += eps
        down[idx] -= eps
        grad[idx] = (f(up) - f(down)) / (2 * eps)
    maps = explainer.explain(x.astype(np.float32), [target])
    # sum_abs over channels: compare per-channel |g| through a one-channel-at-a-time reduction.
    full = xai.create_explainer("vanilla_gradient", model, score=score, reduce="max_abs")
    with tf.GradientTape() as tape:
        xt = tf.constant(x, tf.float32)
        tape.watch(xt)
        out = head(xt)
        value = {"logit": out["logits"][0, target],
                 "probability": out["probabilities"][0, target],
                 "loss": -tf.math.log(out["probabilities"][0, target])}[score]
    analytic = tape.gradient(value, xt).numpy()
    for idx in [(0, 0, 0, 0), (0, 3, 4, 1), (0, 7, 7, 2), (0, 5, 2, 0), (0, 1, 6, 1)]:
        assert analytic[idx] == pytest.approx(grad[idx], rel=2e-2, abs=1e-5)
    np.testing.assert_allclose(maps[0], np.abs(analytic[0]).sum(-1), rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(full.explain(x.astype(np.float32), [target])[0],
                               np.abs(analytic[0]).max(-1), rtol=1e-5, atol=1e-9)


def test_vanilla_gradient_reproduces_the_seed_recipe(tiny_model, images):
    """The blog post's GradientTape code, verbatim in spirit, for each image."""
    maps = xai.create_explainer("vanilla_gradient", tiny_model).explain(images, [0, 1, 1, 0])
    for i, label in enumerate([0, 1, 1, 0]):
        expected_output = tf.one_hot([label] * 1, 2)
        with tf.GradientTape() as tape:
            inputs = tf.cast(images[i:i + 1], tf.float32)
            tape.watch(inputs)
            predictions = tiny_model(inputs)
            # Keras 3 needs equal ranks where TF 2.4 broadcast expected_output[0].
            loss = keras.losses.categorical_crossentropy(expected_output, predictions)
        gradients = tape.gradient(loss, inputs)
        grayscale = tf.reduce_sum(tf.abs(gradients), axis=-1)
        np.testing.assert_allclose(maps[i], grayscale[0].numpy(), rtol=1e-5, atol=1e-10)


def test_cam_equals_its_definition_and_mean_plus_bias_is_logit(tiny_model, images):
    targets = np.array([0, 1, 1, 0])
    cam = xai.create_explainer("cam", tiny_model)
    features = keras.Model(tiny_model.inputs, tiny_model.get_layer("block5_pool").output)(images).numpy()
    dense = tiny_model.get_layer("predictions")
    w, b = dense.kernel.numpy(), dense.bias.numpy()
    by_hand = np.stack([sum(w[k, t] * features[i, :, :, k] for k in range(features.shape[-1]))
                        for i, t in enumerate(targets)])
    small = cam.feature_cam(tf.constant(images), tf.constant(targets, tf.int32)).numpy()
    np.testing.assert_allclose(small, by_hand, rtol=1e-5, atol=1e-6)
    logits = features.mean(axis=(1, 2)) @ w + b
    np.testing.assert_allclose(small.mean(axis=(1, 2)) + b[targets], logits[np.arange(4), targets], rtol=1e-5)
    full = cam.explain(images, targets)
    assert full.shape == (4, 64, 64)
    # Bilinear upsampling by an integer factor keeps the mean: still equals the logit.
    np.testing.assert_allclose(full.mean(axis=(1, 2)) + b[targets], logits[np.arange(4), targets], rtol=1e-4)


def test_smoothgrad_noise_zero_equals_vanilla_and_seed_reproduces(tiny_model, images):
    for score in ("logit", "loss"):  # SmoothGrad's default, the seed's (vanilla_gradient's default)
        vanilla = xai.create_explainer("vanilla_gradient", tiny_model, score=score).explain(images, [0, 1, 0, 1])
        sg0 = xai.create_explainer("smoothgrad", tiny_model, noise_level=0.0, n_samples=5,
                                   score=score).explain(images, [0, 1, 0, 1])
        np.testing.assert_allclose(sg0, vanilla, rtol=1e-4, atol=1e-9)
    a = xai.create_explainer("smoothgrad", tiny_model, n_samples=4, seed=7).explain(images, [0, 1, 0, 1])
    b = xai.create_explainer("smoothgrad", tiny_model, n_samples=4, seed=7, batch_size=3).explain(images, [0, 1, 0, 1])
    c = xai.create_explainer("smoothgrad", tiny_model, n_samples=4, seed=8).explain(images, [0, 1, 0, 1])
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-8)  # batch size changes oneDNN rounding only
    assert not np.allclose(a, c)


def test_smoothgrad_is_the_mean_of_noisy_gradients(tiny_model, images):
    """Against an independent loop: regenerate the same counter-based noise per copy."""
    sg = xai.create_explainer("smoothgrad", tiny_model, n_samples=3, seed=2, score="logit")
    head = sg.head
    got = sg.explain(images[:2], [1, 0])
    for i, t in enumerate([1, 0]):
        x = images[i]
        sigma = 0.15 * (x.max() - x.min())
        total = 0
        for j in range(3):
            noise = tf.random.stateless_normal(x.shape, seed=tf.constant([2, i * 3 + j]))
            xn = tf.constant(x[None]) + noise[None] * sigma
            with tf.GradientTape() as tape:
                tape.watch(xn)
                value = head(xn)["logits"][0, t]
            total = total + tape.gradient(value, xn)[0].numpy()
        np.testing.assert_allclose(got[i], np.abs(total / 3).sum(-1), rtol=1e-4, atol=1e-8)


def test_parameters_are_validated_with_teaching_messages(tiny_model):
    with pytest.raises(ValueError, match=r"parameter 'score' must be one of 'loss', 'probability', 'logit'; got 'grad'"):
        xai.create_explainer("vanilla_gradient", tiny_model, score="grad")
    with pytest.raises(ValueError, match=r"'n_samples' must be int >= 1; got 0"):
        xai.create_explainer("smoothgrad", tiny_model, n_samples=0)
    with pytest.raises(TypeError, match="'noise_level' must be float"):
        xai.create_explainer("smoothgrad", tiny_model, noise_level="high")
    with pytest.raises(TypeError, match="unknown parameter"):
        xai.create_explainer("cam", tiny_model, sigma=1)
    explainer = xai.create_explainer("smoothgrad", tiny_model, n_samples=3)
    assert explainer.params == {"n_samples": 3}  # stored exactly as given
    assert explainer.get_params()["noise_level"] == 0.15


def test_display_helpers():
    from xai import display

    grey = display.to_grey(np.array([[0.0, 1.0], [2.0, 4.0]]))
    assert grey.dtype == np.uint8 and grey.min() == 0 and grey.max() == 255
    np.testing.assert_array_equal(display.to_grey(np.full((3, 3), 7.0)), np.zeros((3, 3), np.uint8))
    fig = display.grid_figure([np.zeros((8, 8, 3))] * 2, {"a": [np.eye(8)] * 2, "b": [np.ones((8, 8))] * 2})
    assert len(fig.axes) == 2 * 5


def test_missing_hooks_and_impossible_combinations_are_refused_at_construction(tiny_model):
    from xai.errors import ParameterError, PluginError
    from xai.plugin_api import PerturbationExplainer

    class NoCompute(Explainer):
        pass

    class NoContribution(PerturbationExplainer):
        def n_copies(self):
            return 2

    with pytest.raises(PluginError, match=r"NoCompute does not implement compute\(images, targets\)"):
        NoCompute(tiny_model)
    with pytest.raises(PluginError, match=r"does not implement contribution"):
        NoContribution(tiny_model)
    # Checked without a model, so `xai compare` refuses it before any work.
    with pytest.raises(ParameterError, match="bicubic"):
        xai.registry.get_explainer("grad_cam").resolve_params({"interpolation": "bicubic", "jit_compile": True})
