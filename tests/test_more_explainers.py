"""Grad-CAM, Grad-CAM++, Integrated Gradients, Occlusion, RISE and Score-CAM against
their definitions, computed here independently of the plugins' batching."""

import keras
import numpy as np
import pytest
import tensorflow as tf

import xai
from xai.errors import ModelError, ParameterError

TARGETS = np.array([0, 1, 1, 0], np.int32)


def _layer_model(model, layer):
    """(layer output, classifier input) from one graph, so gradients connect them."""
    return keras.Model(model.inputs[0], [model.get_layer(layer).output,
                                         model.get_layer("predictions").input])


def _logit(model, x, targets):
    dense = model.get_layer("predictions")
    features = keras.Model(model.inputs[0], dense.input)(x)
    return (tf.matmul(features, dense.kernel) + dense.bias).numpy()[np.arange(len(targets)), targets]


def test_grad_cam_at_block5_conv3_is_relu_of_weighted_maps_over_hw(tiny_model, images):
    """Each 2x2 max-pool passes its whole gradient to one position, so with the logit
    alpha_k = w[k, c] / (h * w) and Grad-CAM = ReLU(sum_k w[k, c] A_k) / (h * w)."""
    explainer = xai.create_explainer("grad_cam", tiny_model)
    assert explainer.layer.name == "block5_conv3"
    activations = _layer_model(tiny_model, "block5_conv3")(images)[0].numpy()
    w = tiny_model.get_layer("predictions").kernel.numpy()
    h, wd = activations.shape[1:3]
    by_hand = np.maximum(np.einsum("nhwk,kn->nhw", activations, w[:, TARGETS]), 0) / (h * wd)
    small = tf.nn.relu(explainer.feature_map(tf.constant(images), tf.constant(TARGETS))).numpy()
    np.testing.assert_allclose(small, by_hand, rtol=1e-5, atol=1e-7 * np.abs(by_hand).max())
    full = explainer.explain(images, TARGETS)
    upsampled = tf.image.resize(by_hand[..., None], (64, 64), method="bilinear")[..., 0].numpy()
    np.testing.assert_allclose(full, upsampled, rtol=1e-5, atol=1e-7 * np.abs(by_hand).max())


def test_grad_cam_plus_plus_equals_the_closed_form(tiny_model, images):
    layer_model = _layer_model(tiny_model, "block5_conv3")
    dense = tiny_model.get_layer("predictions")
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        activations, pooled = layer_model(x)
        logits = tf.matmul(pooled, dense.kernel) + dense.bias
        total = tf.reduce_sum(tf.gather(logits, TARGETS, axis=1, batch_dims=1))
    a = activations.numpy()
    g = tape.gradient(total, activations).numpy()
    denominator = 2 * g ** 2 + (a * g ** 3).sum(axis=(1, 2), keepdims=True)
    alpha = np.where(denominator != 0, g ** 2 / np.where(denominator != 0, denominator, 1), 0)
    weights = (alpha * np.maximum(g, 0)).sum(axis=(1, 2))
    by_hand = np.maximum(np.einsum("nhwk,nk->nhw", a, weights), 0)
    explainer = xai.create_explainer("grad_cam_plus_plus", tiny_model)
    small = tf.nn.relu(explainer.feature_map(x, tf.constant(TARGETS))).numpy()
    np.testing.assert_allclose(small, by_hand, rtol=1e-4, atol=1e-6 * np.abs(by_hand).max())
    assert np.abs(by_hand).max() > 0


def _smooth_model():
    """A small model with biases and smooth activations: no kinks on the IG path."""
    keras.utils.set_random_seed(3)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(6, 3, padding="same", activation="tanh", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    return keras.Model(inputs, keras.layers.Dense(3, activation="softmax", name="predictions")(x))


@pytest.mark.parametrize("rule", ["riemann", "trapezoid"])
def test_integrated_gradients_completeness(rule):
    model = _smooth_model()
    x = np.random.default_rng(4).random((3, 8, 8, 3), dtype=np.float32)
    targets = np.array([0, 2, 1], np.int32)
    expected = _logit(model, x, targets) - _logit(model, np.zeros_like(x), targets)
    errors = []
    for steps in (8, 64, 512):
        maps = xai.create_explainer("integrated_gradients", model, steps=steps, rule=rule,
                                    batch_size=128).explain(x, targets)
        errors.append(np.abs(maps.sum(axis=(1, 2)) - expected).max())
    scale = np.abs(expected).max()
    assert errors[-1] < 2e-3 * scale, (errors, expected)  # completeness at enough steps
    assert errors[-1] < errors[0]  # and the quadrature error shrinks with steps


def test_integrated_gradients_completeness_on_the_vgg_model(tiny_model, images):
    maps = xai.create_explainer("integrated_gradients", tiny_model, steps=32).explain(images, TARGETS)
    expected = _logit(tiny_model, images, TARGETS) - _logit(tiny_model, np.zeros_like(images), TARGETS)
    np.testing.assert_allclose(maps.sum(axis=(1, 2)), expected, rtol=1e-3, atol=1e-5)


def test_integrated_gradients_one_step_is_gradient_times_input(tiny_model, images):
    """Right Riemann sum with one step from black: (x - 0) * grad F(x)."""
    x = tf.constant(images)
    dense = tiny_model.get_layer("predictions")
    with tf.GradientTape() as tape:
        tape.watch(x)
        logits = tf.matmul(keras.Model(tiny_model.inputs[0], dense.input)(x), dense.kernel) + dense.bias
        total = tf.reduce_sum(tf.gather(logits, TARGETS, axis=1, batch_dims=1))
    by_hand = (images * tape.gradient(total, x).numpy()).sum(-1)
    got = xai.create_explainer("integrated_gradients", tiny_model, steps=1).explain(images, TARGETS)
    np.testing.assert_allclose(got, by_hand, rtol=1e-4, atol=1e-6 * np.abs(by_hand).max())
    white = xai.create_explainer("integrated_gradients", tiny_model, steps=1, baseline="white")
    assert not np.allclose(white.explain(images, TARGETS), got)


def test_occlusion_equals_its_definition(tiny_model, images):
    """Non-overlapping 16-pixel patches: each pixel holds its own patch's score drop."""
    explainer = xai.create_explainer("occlusion", tiny_model, patch_size=16, stride=16, baseline=0.5,
                                     batch_size=7)
    assert explainer.n_positions == 16
    got = explainer.explain(images, TARGETS)
    clean = tiny_model(images).numpy()[np.arange(4), TARGETS]
    for i in (0, 3):
        for y in (0, 32):
            for x in (16, 48):
                copy = images[i].copy()
                copy[y:y + 16, x:x + 16] = 0.5
                drop = clean[i] - tiny_model(copy[None]).numpy()[0, TARGETS[i]]
                np.testing.assert_allclose(got[i, y:y + 16, x:x + 16], drop, rtol=1e-4, atol=1e-7)


def test_occlusion_overlapping_patches_average_and_reach_the_border(tiny_model):
    from xai.plugins.occlusion import patch_starts

    np.testing.assert_array_equal(patch_starts(64, 24, 16), [0, 16, 32, 40])
    explainer = xai.create_explainer("occlusion", tiny_model)  # 1/8 of the side, half-patch stride
    assert (explainer.patch_size, explainer.stride) == (8, 4)
    coverage = explainer._coverage.numpy()
    assert coverage.min() >= 1 and coverage.max() == 4
    with pytest.raises(ValueError, match="patch_size"):
        xai.create_explainer("occlusion", tiny_model, patch_size=65)


def test_rise_equals_its_definition_and_masks_are_the_papers(tiny_model, images):
    explainer = xai.create_explainer("rise", tiny_model, n_masks=40, seed=3, batch_size=16)
    got = explainer.explain(images[:2], TARGETS[:2])
    masks = explainer.masks(tf.range(40)).numpy()
    assert masks.shape == (40, 64, 64) and masks.min() >= 0 and masks.max() <= 1
    for i in range(2):
        scores = tiny_model(images[i][None] * masks[..., None]).numpy()[:, TARGETS[i]]
        by_hand = (scores[:, None, None] * masks).sum(0) / (40 * 0.5)
        np.testing.assert_allclose(got[i], by_hand, rtol=1e-4, atol=1e-7)
    many = xai.create_explainer("rise", tiny_model, n_masks=2000, keep_probability=0.3)
    kept = many.masks(tf.range(2000)).numpy().mean()
    assert kept == pytest.approx(0.3, abs=0.02)  # bilinear upsampling preserves the keep rate


def test_rise_antithetic_pairs_are_complements_and_cancel_what_the_image_does_not_decide():
    """Mask 2j + 1 is 1 - mask 2j; a model whose score ignores the image (constant c) then
    gets exactly the uniform map c, where independent masks leave their noise in it."""
    inputs = keras.Input((16, 16, 3))
    dense = keras.layers.Dense(2, activation="softmax", name="predictions")
    model = keras.Model(inputs, dense(keras.layers.GlobalAveragePooling2D()(inputs)))
    dense.set_weights([np.zeros((3, 2), np.float32), np.array([0.4, -0.3], np.float32)])
    c = float(np.exp(0.4) / (np.exp(0.4) + np.exp(-0.3)))
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    paired = xai.create_explainer("rise", model, n_masks=32, mask_resolution=4)
    assert paired.resolved["antithetic"] is True
    masks = paired.masks(tf.range(32)).numpy()
    np.testing.assert_allclose(masks[1::2], 1 - masks[0::2], atol=1e-6)
    np.testing.assert_allclose(paired.explain(x, [0, 0]), c, rtol=1e-5)
    plain = xai.create_explainer("rise", model, n_masks=32, mask_resolution=4, antithetic=False).explain(x, [0, 0])
    assert np.std(plain) > 0.05 * c  # the masks' own noise
    assert xai.create_explainer("rise", model, keep_probability=0.3, mask_resolution=4).resolved["antithetic"] is False
    with pytest.raises(ParameterError, match="keep_probability is 0.5"):
        xai.create_explainer("rise", model, keep_probability=0.3, antithetic=True)


def test_score_cam_equals_its_definition_with_max_maps(tiny_model, images):
    explainer = xai.create_explainer("score_cam", tiny_model, max_maps=5, batch_size=4)
    got = explainer.explain(images[:2], TARGETS[:2])
    activations = _layer_model(tiny_model, "block5_conv3")(images[:2])[0].numpy()
    for i in range(2):
        a = activations[i]
        keep = np.argsort(-a.var(axis=(0, 1)), kind="stable")[:5]
        cam = np.zeros(a.shape[:2])
        for k in keep:
            mask = tf.image.resize(a[..., k][..., None], (64, 64), method="bilinear")[..., 0].numpy()
            span = mask.max() - mask.min()
            mask = (mask - mask.min()) / span if span > 0 else np.zeros_like(mask)
            score = tiny_model(images[i][None] * mask[None, ..., None]).numpy()[0, TARGETS[i]]
            cam += score * a[..., k]
        expected = tf.image.resize(np.maximum(cam, 0)[..., None], (64, 64), method="bilinear")[..., 0]
        np.testing.assert_allclose(got[i], expected.numpy(), rtol=1e-4, atol=1e-6 * np.abs(cam).max())
    assert xai.create_explainer("score_cam", tiny_model).n_maps == 64  # all block5_conv3 maps


def test_cam_family_layer_errors_name_the_layer(tiny_model):
    with pytest.raises(ModelError, match="'nope' is not in model"):
        xai.create_explainer("grad_cam", tiny_model, layer="nope")
    with pytest.raises(ModelError, match="feature map"):
        xai.create_explainer("score_cam", tiny_model, layer="gap")
    # Any convolution can be named; the map keeps the input size.
    maps = xai.create_explainer("grad_cam", tiny_model, layer="block3_conv3").explain(
        np.zeros((1, 64, 64, 3), np.float32), [0])
    assert maps.shape == (1, 64, 64)


@pytest.mark.parametrize("name", ["integrated_gradients", "occlusion"])
def test_baselines_are_validated(name, tiny_model):
    with pytest.raises(ValueError, match="'baseline' must be one of"):
        xai.create_explainer(name, tiny_model, baseline="purple")


def test_with_precision_runs_every_kind_of_method_and_stays_close(tiny_model, images):
    from xai.models import model_spec, with_precision

    bf16 = with_precision(tiny_model, "mixed_bfloat16")
    assert bf16.get_layer("block5_conv3").compute_dtype == "bfloat16"
    assert model_spec(bf16) == model_spec(tiny_model)
    for a, b in zip(tiny_model.get_weights(), bf16.get_weights()):
        np.testing.assert_array_equal(a, b)  # weights stay float32, unchanged
    for name, params in [("cam", {}), ("grad_cam", {}), ("rise", {"n_masks": 16})]:
        ref = xai.create_explainer(name, tiny_model, **params).explain(images, TARGETS)
        low = xai.create_explainer(name, bf16, **params).explain(images, TARGETS)
        assert low.dtype == np.float32
        # bfloat16 keeps 8 bits of mantissa: CAM-family and RISE maps move by a few percent.
        assert np.abs(low - ref).max() <= 0.1 * np.abs(ref).max()
    with pytest.raises(ValueError, match="policy"):
        with_precision(tiny_model, "float8")


def test_with_precision_copies_functional_models_with_keras_op_nodes():
    from xai.models import with_precision

    # keras.ops calls and `+` on symbolic tensors are Operations, not Layers: they take no dtype.
    inputs = keras.Input((8, 8, 3))
    first = keras.layers.Conv2D(4, 3, padding="same")(inputs)
    second = keras.layers.Conv2D(4, 3, padding="same")(keras.ops.relu(first)) + first
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(second))
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).random((2, 8, 8, 3), dtype=np.float32)
    bf16 = with_precision(model)
    assert {layer.compute_dtype for layer in bf16.layers[1:]} == {"bfloat16"}
    np.testing.assert_allclose(np.asarray(bf16(x), np.float32), model(x), atol=0.02)


def test_bicubic_upsampling_under_xla_is_refused_with_a_reason(tiny_model):
    with pytest.raises(ValueError, match="no XLA kernel"):
        xai.create_explainer("grad_cam", tiny_model, interpolation="bicubic", jit_compile=True)


def test_smoothgrad_noise_is_the_same_with_xla(tiny_model, images):
    """The noise is drawn outside XLA: same seed, same maps up to float rounding."""
    plain = xai.create_explainer("smoothgrad", tiny_model, n_samples=4).explain(images, TARGETS)
    jit = xai.create_explainer("smoothgrad", tiny_model, n_samples=4, jit_compile=True).explain(images, TARGETS)
    assert np.abs(jit - plain).max() <= 1e-2 * np.abs(plain).max()
