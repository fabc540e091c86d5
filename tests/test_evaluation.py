import keras
import numpy as np
import pytest
from scipy import stats

import xai
from xai import evaluation as ev
from xai.errors import DataError, ModelError, ParameterError
from xai.evaluation import sanity
from xai.registry import get_explainer


def _linear_model(weights, h=2, w=2, bias0=0.0):
    """logit_1 = sum(weights * first channel), logit_0 = bias0, softmax output."""
    inputs = keras.Input((h, w, 1))
    x = keras.layers.Flatten()(inputs)
    dense = keras.layers.Dense(2, activation="softmax", name="predictions")
    model = keras.Model(inputs, dense(x))
    dense.set_weights([np.stack([np.zeros(h * w), np.ravel(weights)], axis=1).astype(np.float32),
                       np.array([bias0, 0.0], np.float32)])
    return model


def _sigmoid(z):
    return 1 / (1 + np.exp(-z))


def test_deletion_hand_computed_case():
    model = _linear_model([[1.0, 2.0], [3.0, 4.0]])
    image = np.array([[[[1.0], [1.0]], [[1.0], [1.0]]]], np.float32)
    saliency = np.array([[[0.1, 0.4], [0.3, 0.2]]], np.float32)  # order: (0,1), (1,0), (1,1), (0,0)
    result = ev.deletion(model, image, [1], saliency, steps=4, score="probability")
    logits = [10, 10 - 2, 10 - 2 - 3, 10 - 2 - 3 - 4, 0]
    expected = _sigmoid(np.array(logits, np.float64))
    np.testing.assert_allclose(result.curves[0], expected, atol=1e-6)
    np.testing.assert_allclose(result.x, [0, 0.25, 0.5, 0.75, 1.0])
    auc = sum((expected[i] + expected[i + 1]) / 2 * 0.25 for i in range(4))
    assert result.auc[0] == pytest.approx(auc, abs=1e-6)


def test_insertion_hand_computed_case_with_constant_baseline():
    model = _linear_model([[1.0, 2.0], [3.0, 4.0]])
    image = np.array([[[[1.0], [1.0]], [[1.0], [1.0]]]], np.float32)
    saliency = np.array([[[0.1, 0.4], [0.3, 0.2]]], np.float32)
    result = ev.insertion(model, image, [1], saliency, steps=2, baseline=0.5, score="logit")
    # start all 0.5 (logit 5), then insert (0,1),(1,0) -> 5 + 0.5*2 + 0.5*3, then all.
    np.testing.assert_allclose(result.curves[0], [5.0, 7.5, 10.0], atol=1e-5)
    assert result.auc[0] == pytest.approx((5 + 7.5) / 4 + (7.5 + 10) / 4, abs=1e-5)


def test_ties_are_broken_by_pixel_index():
    model = _linear_model([[1.0, 2.0], [3.0, 4.0]])
    image = np.ones((1, 2, 2, 1), np.float32)
    flat = ev.deletion(model, image, [1], np.zeros((1, 2, 2), np.float32), steps=4, score="logit")
    np.testing.assert_allclose(flat.curves[0], [10, 9, 7, 4, 0], atol=1e-5)


def test_xplique_preset_matches_xplique_definition_by_hand():
    """Xplique: linspace step counts truncated, baseline 0, model output, mean of trapezoids
    over equally spaced steps; checked on a 3x3 case where 9/10 pixels per step truncate."""
    rng = np.random.default_rng(0)
    weights = rng.normal(size=(3, 3))
    model = _linear_model(weights, 3, 3)
    image = rng.random((2, 3, 3, 1)).astype(np.float32)
    saliency = rng.random((2, 3, 3)).astype(np.float32)
    targets = np.array([1, 0])
    result = ev.deletion(model, image, targets, saliency, protocol="xplique")
    counts = np.linspace(0, 9, 11).astype(np.int32)
    expected_curves = []
    for i in range(2):
        order = np.argsort(-saliency[i].ravel(), kind="stable")
        curve = []
        for n in counts:
            x = image[i, ..., 0].ravel().copy()
            x[order[:n]] = 0.0
            p1 = _sigmoid((weights.ravel() * x).sum())
            curve.append(p1 if targets[i] == 1 else 1 - p1)
        expected_curves.append(curve)
    expected_curves = np.array(expected_curves)
    np.testing.assert_allclose(result.curves, expected_curves, atol=1e-6)
    mean_curve = expected_curves.mean(axis=0)
    xplique_auc = np.mean(mean_curve[:-1] + mean_curve[1:]) * 0.5
    assert result.auc.mean() == pytest.approx(xplique_auc, abs=1e-6)
    assert result.protocol["steps"] == 10 and result.protocol["baseline"] == "zero"


def test_rise_preset_steps_and_blur():
    counts = ev.step_counts(224 * 224, None, 224)
    assert len(counts) == 225 and counts[-1] == 224 * 224 and counts[1] == 224
    image = np.zeros((1, 21, 21, 1), np.float32)
    image[0, 10, 10, 0] = 1.0
    blurred = ev.gaussian_blur(image)
    r = np.arange(11) - 5
    g = np.exp(-(r ** 2) / 50.0)
    kernel = np.outer(g, g) / np.outer(g, g).sum()
    np.testing.assert_allclose(blurred[0, 5:16, 5:16, 0], kernel, atol=1e-7)


def test_good_map_beats_random_beats_reversed():
    """A model that relies on a known region: a map ranking exactly that region deletes
    the evidence first (deletion near 0); random sits between good and reversed."""
    h = w = 8
    weights = np.zeros((h, w))
    weights[2:5, 3:6] = 3.0
    model = _linear_model(weights, h, w, bias0=20.0)  # without the region, class 1 is hopeless
    image = np.ones((1, h, w, 1), np.float32)
    good = weights[None].astype(np.float32) + np.linspace(0, 1e-3, h * w).reshape(1, h, w)
    reversed_map = -good
    rand = np.random.default_rng(0).random((1, h, w)).astype(np.float32)
    kw = dict(steps=64, score="probability")
    d_good = ev.deletion(model, image, [1], good, **kw).auc[0]
    d_rand = ev.deletion(model, image, [1], rand, **kw).auc[0]
    d_rev = ev.deletion(model, image, [1], reversed_map, **kw).auc[0]
    assert d_good < 0.1
    assert d_good < d_rand < d_rev


def test_batching_does_not_change_curves(tiny_model, images):
    maps = xai.create_explainer("vanilla_gradient", tiny_model).explain(images, [0, 1, 0, 1])
    a = ev.deletion(tiny_model, images, [0, 1, 0, 1], maps, steps=16, batch_size=7)
    b = ev.deletion(tiny_model, images, [0, 1, 0, 1], maps, steps=16, batch_size=500)
    np.testing.assert_allclose(a.curves, b.curves, rtol=1e-4, atol=1e-6)


def test_metric_input_errors(tiny_model, images):
    with pytest.raises(DataError, match="maps must be"):
        ev.deletion(tiny_model, images, [0, 1, 0, 1], np.zeros((4, 8, 8)))
    with pytest.raises(DataError, match="targets"):
        ev.insertion(tiny_model, images, [0, 5, 0, 1], np.zeros((4, 64, 64)))
    with pytest.raises(ValueError, match="protocol"):
        ev.deletion(tiny_model, images, [0, 1, 0, 1], np.zeros((4, 64, 64)), protocol="quantus")
    with pytest.raises(ValueError, match="exactly one"):
        ev.step_counts(100, 10, 5)


def test_pointing_game_and_relevance_mass_by_hand():
    maps = np.zeros((3, 10, 10))
    masks = np.zeros((3, 10, 10))
    masks[:, 4:6, 4:6] = 1
    maps[0, 5, 5] = 1.0   # on the object
    maps[1, 0, 0] = 1.0   # far away
    maps[2, 7, 5] = 1.0   # 2 px below the object
    np.testing.assert_array_equal(ev.pointing_game(maps, masks, tolerance=0), [1, 0, 0])
    np.testing.assert_array_equal(ev.pointing_game(maps, masks, tolerance=2), [1, 0, 1])
    m = np.zeros((1, 4, 4))
    m[0, 0, 0], m[0, 1, 1], m[0, 3, 3] = 1.0, 3.0, -5.0
    g = np.zeros((1, 4, 4))
    g[0, 1, 1] = 1
    np.testing.assert_allclose(ev.relevance_mass(m, g), [0.75])
    assert np.isnan(ev.pointing_game(maps[:1], np.zeros((1, 10, 10)))[0])


def test_pointing_game_scores_a_tied_maximum_by_the_share_of_its_pixels_on_the_object():
    """A 2x2 map blown up bilinearly is flat over each corner block: the tie is the block,
    not its top-left pixel (which argmax would pick, wherever the object is)."""
    import tensorflow as tf

    grid = np.array([[[0.0, 0.0], [0.0, 1.0]]], np.float32)[..., None]
    maps = tf.image.resize(grid, (16, 16), method="bilinear")[..., 0].numpy()
    masks = np.zeros((1, 16, 16))
    masks[0, 12:, 12:] = 1  # the bottom-right corner: inside the flat block of the maximum
    peak = maps[0] == maps[0].max()
    assert peak.sum() == 16 and peak[12:, 12:].all()  # the flat block is 4x4 at the corner
    np.testing.assert_allclose(ev.pointing_game(maps, masks, tolerance=0), [1.0])
    masks[0, 12:, 12:14] = 0  # half of the block
    np.testing.assert_allclose(ev.pointing_game(maps, masks, tolerance=0), [0.5])
    # A constant map points nowhere in particular: chance, the object's share of the image.
    np.testing.assert_allclose(ev.pointing_game(np.ones((1, 16, 16)), masks, tolerance=0), [8 / 256])


def test_statistics():
    rng = np.random.default_rng(0)
    values = rng.normal(1.0, 0.5, 200)
    s = ev.summarise(values)
    assert s["ci_low"] < s["mean"] < s["ci_high"]
    assert s["mean"] == pytest.approx(values.mean())
    a, b = rng.normal(0, 1, 40), rng.normal(0.5, 1, 40)
    t = ev.paired_test(a, b)
    assert t["p_value"] == pytest.approx(stats.wilcoxon(a, b).pvalue) and t["n"] == 40
    assert ev.rank_methods({"x": 0.2, "y": 0.5, "z": np.nan}, higher_is_better=True) == {"y": 1, "x": 2, "z": 3}
    rows = ev.tidy([{"image_id": "b", "method": "m", "metric": "d", "value": 1}])
    assert list(rows[0]) == ["image_id", "method", "metric", "value"]


def test_sanity_checks_expose_a_model_independent_method(tiny_model, images):
    weights_before = [w.copy() for w in tiny_model.get_weights()]
    before = xai.create_explainer("vanilla_gradient", tiny_model).explain(images, [0, 1, 0, 1])
    grads = ev.model_randomisation("vanilla_gradient", tiny_model, images, [0, 1, 0, 1],
                                   layers=["predictions", "block5_conv3", "block1_conv1"])
    noise = ev.model_randomisation("random", tiny_model, images, [0, 1, 0, 1], layers=["predictions", "block1_conv1"])
    # The random baseline ignores the model: its maps do not change at all.
    np.testing.assert_allclose(noise["spearman"], 1.0)
    # Gradients depend on the weights: fully randomised, they decorrelate.
    assert np.nanmean(grads["spearman"][-1]) < 0.9
    assert grads["spearman"].shape == (3, 4)
    # The original model is untouched: same weights, same maps as before the checks ran.
    for w_before, w_after in zip(weights_before, tiny_model.get_weights()):
        np.testing.assert_array_equal(w_after, w_before)
    after = xai.create_explainer("vanilla_gradient", tiny_model).explain(images, [0, 1, 0, 1])
    np.testing.assert_array_equal(after, before)
    logit = ev.random_logit("random", tiny_model, images, [0, 1, 0, 1])
    np.testing.assert_allclose(logit, 1.0)


def test_sanity_draws_monte_carlo_maps_of_the_randomised_model_from_another_seed(tiny_model, images):
    """Shared masks would correlate RISE's maps whatever the weights: the randomised copy's
    maps come from an independent seed, and `seed_floor` is exactly what that seed gives on
    the unchanged model. Deterministic methods have no floor."""
    targets = [0, 1, 0, 1]
    params = {"n_masks": 64, "mask_resolution": 4}
    out = ev.model_randomisation("rise", tiny_model, images, targets, params=params, layers=["predictions"])
    original = xai.create_explainer("rise", tiny_model, **params).explain(images, targets)
    other_seed = sanity._independent_seed(get_explainer("rise"), params)["seed"]
    assert other_seed != 0
    again = xai.create_explainer("rise", tiny_model, **params, seed=other_seed).explain(images, targets)
    np.testing.assert_allclose(out["seed_floor"], sanity.spearman_per_image(original, again), atol=1e-6)
    assert np.all(out["seed_floor"] < 0.999)  # independent masks: not the same map
    assert ev.model_randomisation("vanilla_gradient", tiny_model, images, targets,
                                  layers=["predictions"])["seed_floor"] is None
    # The metric reports the floor's mean, and the original maps serve both checks.
    result = xai.evaluation.registry.get_metric("sanity").per_method(
        get_explainer("rise"), tiny_model, images, np.array(targets, np.int32), params=params, tolerance=None)
    assert result["seed_floor_mean"] == pytest.approx(float(np.nanmean(out["seed_floor"])), abs=1e-6)


def test_sanity_randomises_the_built_explainer_in_place_and_always_restores_it(tiny_model, images):
    """The cascade runs under the explainer already built (no second trace); whatever happens,
    even a method failing half-way, the model's every variable ends as it was."""
    targets = [0, 1, 0, 1]
    saved = [w.copy() for w in tiny_model.get_weights()]
    explainer = xai.create_explainer("vanilla_gradient", tiny_model)
    by_instance = ev.model_randomisation(explainer, tiny_model, images, targets, layers=["predictions", "block1_conv1"])
    by_name = ev.model_randomisation("vanilla_gradient", tiny_model, images, targets,
                                     layers=["predictions", "block1_conv1"])
    np.testing.assert_allclose(by_instance["spearman"], by_name["spearman"], atol=1e-6)
    calls = []
    original_explain = explainer.explain

    def fails_on_the_second_model(x, t):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("boom")
        return original_explain(x, t)

    explainer.explain = fails_on_the_second_model
    with pytest.raises(RuntimeError, match="boom"):
        ev.model_randomisation(explainer, tiny_model, images, targets, layers=["predictions", "block1_conv1"])
    for before, after in zip(saved, tiny_model.get_weights()):
        np.testing.assert_array_equal(after, before)
    checkpoints = ev.model_randomisation("cam", tiny_model, images, targets, max_checkpoints=3)["layers"]
    assert checkpoints == sanity.sanity_checkpoints(tiny_model, max_checkpoints=3)


def test_compare_hands_the_sanity_checks_the_maps_its_batches_scored(tiny_model, images):
    """A batch returns its maps of the run's first `sanity_images` images (by position in
    the run), and the sanity metric compares randomised maps with those, not new ones."""
    from xai.evaluation.registry import get_metric
    from xai.execution import WorkPlan

    targets = np.array([0, 1, 0, 1], np.int32)
    plan = WorkPlan(methods=["vanilla_gradient"], method_params={}, metrics=[], protocol="rise",
                    n_examples=0, sanity_images=5)
    explainer = xai.create_explainer("vanilla_gradient", tiny_model)
    batch = {"images": images, "targets": targets, "ids": ["a", "b", "c", "d"], "masks": None, "index": 1, "start": 4}
    first, maps = plan._explain_and_score(explainer, "vanilla_gradient", ev.ModelScorer(tiny_model), batch)["leading_maps"]
    assert first == 4 and maps.shape == (1, *images.shape[1:3])
    expected = explainer.explain(images[:1], targets[:1])[0]  # one image alone: float32 batching noise
    np.testing.assert_allclose(maps[0], expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    given = np.random.default_rng(0).random(images.shape[:3]).astype(np.float32)
    result = get_metric("sanity").per_method(explainer, tiny_model, images, targets, maps=given)
    expected = ev.model_randomisation(explainer, tiny_model, images, targets, original=given,
                                      max_checkpoints=sanity.COMPARE_CHECKPOINTS)
    np.testing.assert_allclose(result["spearman_mean"], np.nanmean(expected["spearman"], axis=1), atol=1e-9)


# --- Sanity checks: re-initialisation and checkpoints ----------------------------------------

def _as_if_trained(model, seed=0):
    """Give every variable, statistics included, values no initializer would draw."""
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        values = rng.uniform(0.5, 1.5, variable.shape).astype(np.float32)  # > 0: a valid variance
        variable.assign(values)


def _constant_initialiser_model():
    """Each trainable variable has its own constant initializer, so a redraw is a known answer."""
    c = keras.initializers.Constant
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", kernel_initializer=c(0.25), bias_initializer=c(-1.0),
                            name="conv")(inputs)
    x = keras.layers.BatchNormalization(gamma_initializer=c(2.0), beta_initializer=c(3.0), name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", depthwise_initializer=c(0.5),
                                     bias_initializer=c(0.75), name="depthwise")(x)
    x = keras.layers.SeparableConv2D(4, 3, padding="same", depthwise_initializer=c(4.0),
                                     pointwise_initializer=c(5.0), bias_initializer=c(6.0),
                                     name="separable")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, kernel_initializer="zeros", bias_initializer="ones",
                                 name="predictions")(x)
    return keras.Model(inputs, outputs)


EXPECTED_REDRAW = {
    "conv": {"kernel": 0.25, "bias": -1.0},
    "bn": {"gamma": 2.0, "beta": 3.0},
    "depthwise": {"kernel": 0.5, "bias": 0.75},
    "separable": {"depthwise_kernel": 4.0, "pointwise_kernel": 5.0, "bias": 6.0},
    "predictions": {"kernel": 0.0, "bias": 1.0},
}


def test_reinitialise_redraws_each_trainable_variable_from_its_own_initializer():
    model = _constant_initialiser_model()
    _as_if_trained(model)
    stats_before = {v.path: v.numpy().copy() for v in model.get_layer("bn").non_trainable_weights}
    for name, expected in EXPECTED_REDRAW.items():
        layer = model.get_layer(name)
        sanity._reinitialise(layer, seed=0)
        redrawn = {v.path.rsplit("/", 1)[-1]: v.numpy() for v in layer.trainable_weights}
        assert sorted(redrawn) == sorted(expected)
        for variable, value in expected.items():
            np.testing.assert_array_equal(redrawn[variable], value, err_msg=f"{name}/{variable}")
    # BatchNormalization's statistics are not parameters: untouched, the variance still positive.
    assert len(stats_before) == 2
    for variable in model.get_layer("bn").non_trainable_weights:
        np.testing.assert_array_equal(variable.numpy(), stats_before[variable.path])
    assert np.all(model.get_layer("bn").moving_variance.numpy() > 0)


def test_reinitialise_is_seeded_and_covers_frozen_layers():
    def dense():
        inputs = keras.Input((5,))
        layer = keras.layers.Dense(16, kernel_initializer=keras.initializers.RandomUniform(-0.1, 0.1))
        keras.Model(inputs, layer(inputs))
        layer.kernel.assign(np.full((5, 16), 3.0, np.float32))
        return layer

    a, b, c, frozen = dense(), dense(), dense(), dense()
    frozen.trainable = False  # a frozen (transfer-learned) layer is still part of the model
    for layer, seed in ((a, 1), (b, 1), (c, 2), (frozen, 1)):
        sanity._reinitialise(layer, seed)
    assert np.all(np.abs(a.kernel.numpy()) <= 0.1)  # drawn from its own RandomUniform(-0.1, 0.1)
    np.testing.assert_array_equal(a.kernel.numpy(), b.kernel.numpy())
    np.testing.assert_array_equal(a.kernel.numpy(), frozen.kernel.numpy())
    assert not np.array_equal(a.kernel.numpy(), c.kernel.numpy())


def test_reinitialise_without_an_initializer_permutes_the_values():
    class Scale(keras.layers.Layer):
        def build(self, input_shape):
            self.factors = self.add_weight(shape=(32,), initializer="ones", name="factors")

        def call(self, x):
            return x * self.factors

    layer = Scale()
    layer.build((None, 32))
    trained = np.arange(32, dtype=np.float32)
    layer.factors.assign(trained)
    sanity._reinitialise(layer, seed=0)
    values = layer.factors.numpy()
    assert not np.array_equal(values, trained)
    np.testing.assert_array_equal(np.sort(values), trained)  # same scale, learned order gone


def _recording_method(snapshots):
    """A stand-in explainer that records the weights of the model it explains, each call."""
    class Recorder:
        def __init__(self, model):
            self.model = model

        def explain(self, images, targets):
            snapshots.append({layer.name: [w.copy() for w in layer.get_weights()]
                              for layer in self.model.layers})
            return np.asarray(images, np.float32).mean(axis=-1)

    return Recorder


def _small_bn_classifier():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="conv1")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = keras.layers.ReLU()(x)
    x = keras.layers.MaxPooling2D(name="pool1")(x)
    x = keras.layers.Conv2D(8, 3, padding="same", name="conv2")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = keras.layers.Dense(2, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


def test_model_randomisation_cascade_is_cumulative_and_keeps_statistics():
    model = _small_bn_classifier()
    _as_if_trained(model)
    images = np.random.default_rng(0).random((2, 16, 16, 3), dtype=np.float32)
    snapshots = []
    result = ev.model_randomisation(_recording_method(snapshots), model, images, [0, 1])
    order = sanity.weighted_layers_top_down(model)
    assert order == ["predictions", "bn2", "conv2", "bn1", "conv1"]
    assert result["layers"] == sanity.sanity_checkpoints(model) == ["predictions", "bn2", "bn1", "conv1"]
    original, randomised = snapshots[0], snapshots[1:]
    assert len(randomised) == len(result["layers"]) == result["spearman"].shape[0]
    for checkpoint, weights in zip(result["layers"], randomised):
        depth = order.index(checkpoint)
        for position, name in enumerate(order):
            layer = model.get_layer(name)
            n_params = len(layer.trainable_weights)
            for i, (now, then) in enumerate(zip(weights[name], original[name])):
                if i >= n_params:  # BatchNormalization's moving mean and variance: never touched
                    np.testing.assert_array_equal(now, then)
                elif position <= depth:  # at or above the checkpoint: every parameter redrawn
                    assert not np.array_equal(now, then), (checkpoint, name, i)
                else:  # below it: untouched
                    np.testing.assert_array_equal(now, then)
            if isinstance(layer, keras.layers.BatchNormalization):
                assert np.all(weights[name][-1] > 0)  # the moving variance stays a variance
    # An explicit list still works, in any order; rows come back top down.
    explicit = ev.model_randomisation(_recording_method([]), model, images, [0, 1],
                                      layers=["conv2", "predictions"])
    assert explicit["layers"] == ["predictions", "conv2"]
    with pytest.raises(ParameterError, match="gap"):
        ev.model_randomisation(_recording_method([]), model, images, [0, 1], layers=["gap"])


VGG16_CHECKPOINTS = ["predictions", "block5_conv3", "block4_conv3", "block3_conv3", "block2_conv2",
                     "block1_conv2", "block1_conv1"]


def test_sanity_checkpoints_on_vgg16_gap(tiny_model, nested_model):
    assert sanity.sanity_checkpoints(tiny_model) == VGG16_CHECKPOINTS
    assert sanity.sanity_checkpoints(xai.vgg16_gap((32, 32, 3), width=0.125)) == VGG16_CHECKPOINTS
    assert sanity.sanity_checkpoints(xai.models.prepare_model(nested_model)) == VGG16_CHECKPOINTS
    # Thinned: the classifier and the full cascade stay, the stages between are evenly spaced.
    thinned = sanity.sanity_checkpoints(tiny_model, max_checkpoints=3)
    assert thinned == ["predictions", "block3_conv3", "block1_conv1"]
    assert sanity.sanity_checkpoints(tiny_model, max_checkpoints=20) == VGG16_CHECKPOINTS
    for bad in (1, 2.5, True):
        with pytest.raises(ParameterError, match="max_checkpoints"):
            sanity.sanity_checkpoints(tiny_model, max_checkpoints=bad)


def test_sanity_checkpoints_on_a_plain_sequential():
    model = keras.Sequential([
        keras.Input((16, 16, 3)),
        keras.layers.Conv2D(4, 3, padding="same", name="c1"),
        keras.layers.Conv2D(4, 3, padding="same", name="c2"),
        keras.layers.MaxPooling2D(),
        keras.layers.Conv2D(4, 3, padding="same", name="c3"),
        keras.layers.Flatten(),
        keras.layers.Dense(8, name="hidden"),
        keras.layers.Dense(2, name="out"),
    ])
    assert sanity.sanity_checkpoints(model) == ["out", "c3", "c2", "c1"]
    with pytest.raises(ModelError, match="keras.Input"):
        sanity.sanity_checkpoints(keras.Sequential([keras.layers.Dense(2)]))


@pytest.mark.parametrize("name, size, n_stages", [
    ("ResNet50", 64, 5), ("MobileNetV2", 64, 5), ("DenseNet121", 64, 5),
    ("EfficientNetB0", 64, 5),  # squeeze-and-excitation branches (1x1) must not split stages
])
def test_sanity_checkpoints_on_keras_applications(name, size, n_stages):
    model = getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=2)
    checkpoints = sanity.sanity_checkpoints(model)
    order = sanity.weighted_layers_top_down(model)
    assert checkpoints[0] == model.layers[-1].name == "predictions"  # the classifier first
    assert checkpoints[-1] == order[-1]  # the full cascade last
    positions = [order.index(c) for c in checkpoints]
    assert positions == sorted(set(positions))  # distinct, top down in graph order
    assert len(checkpoints) == n_stages + 2
    sizes = [model.get_layer(c).output.shape[1] for c in checkpoints[1:-1]]
    assert sizes == sorted(set(sizes))  # one checkpoint per resolution, coarsest first
    if name == "ResNet50":
        assert checkpoints == ["predictions", "conv5_block3_3_bn", "conv4_block6_3_bn", "conv3_block4_3_bn",
                               "conv2_block3_3_bn", "conv1_bn", "conv1_conv"]


def test_sanity_skips_the_cascade_of_a_method_too_noisy_to_read(tiny_model, images, monkeypatch):
    """When two seeds' maps of the unchanged model agree no more than the threshold, no
    cascade reading could say anything: the cascade is not run (NaN rows, no re-run of the
    method), and the floor is the same as when it is run."""
    targets = [0, 1, 0, 1]
    params = {"n_masks": 8, "mask_resolution": 4}  # 8 masks: maps far from their own seed's
    full = ev.model_randomisation("rise", tiny_model, images, targets, params=params,
                                  layers=["predictions", "block1_conv1"])
    floor = float(np.nanmean(full["seed_floor"]))
    calls = []
    counted = sanity.maps_at
    monkeypatch.setattr(sanity, "maps_at", lambda *a, **k: calls.append(1) or counted(*a, **k))
    explainer = xai.create_explainer("rise", tiny_model, **params)
    skipped = ev.model_randomisation(explainer, tiny_model, images, targets, layers=["predictions", "block1_conv1"],
                                     min_seed_floor=floor + 0.01)
    assert np.isnan(skipped["spearman"]).all() and skipped["spearman"].shape == (2, 4)
    assert len(calls) == 2  # the original maps and the other seed's: no checkpoint re-run
    np.testing.assert_allclose(skipped["seed_floor"], full["seed_floor"], atol=1e-6)
    kept = ev.model_randomisation("rise", tiny_model, images, targets, params=params,
                                  layers=["predictions", "block1_conv1"], min_seed_floor=floor - 0.01)
    np.testing.assert_allclose(kept["spearman"], full["spearman"], atol=1e-6)
    assert len(calls) == 2 + 2 + 2  # and this time both checkpoints
    # The metric skips at the report's threshold, and the report reads such a method as too noisy.
    from xai.report import sanity_readings
    metric = xai.evaluation.registry.get_metric("sanity").per_method
    calls.clear()
    result = metric(get_explainer("rise"), tiny_model, images, np.array(targets, np.int32),
                    params=params, tolerance=None)
    assert result["seed_floor_mean"] == pytest.approx(floor, abs=1e-6)
    if floor <= sanity.SANITY_THRESHOLD:
        assert result["spearman_mean"] == [None] * len(result["layers"]) and len(calls) == 2
    else:  # the same masks give the same floor: this branch would mean the test lost its point
        pytest.fail(f"8 masks should not agree across seeds above the threshold; floor {floor:.2f}")
    reading = sanity_readings({"rise": result}, 2)["rise"]
    assert reading == {"cascade": None, "random_logit": None, "too_noisy": True}


def test_scorer_remembers_a_batchs_baseline_for_every_method(tiny_model, images):
    """Every method's insertion curves of a batch start from the same blurred images: blurred
    once per batch, and what a curve reads is make_baseline's value."""
    from xai.evaluation.faithfulness import make_baseline
    scorer = ev.ModelScorer(tiny_model)
    first, text = scorer.baseline(images[:2], "blur")
    again, _ = scorer.baseline(images[:2].copy(), "blur")
    assert again is first and "blur" in text
    np.testing.assert_array_equal(first, make_baseline(images[:2], "blur")[0])
    other, _ = scorer.baseline(images[2:], "blur")
    np.testing.assert_array_equal(other, make_baseline(images[2:], "blur")[0])
    assert scorer.baseline(images[:2], 0.5)[0].max() == 0.5  # keyed by the baseline too
    curves = ev.insertion(scorer, images[:2], [0, 1], images[:2].mean(-1), steps=4)
    np.testing.assert_allclose(curves.auc, ev.insertion(tiny_model, images[:2], [0, 1], images[:2].mean(-1),
                                                        steps=4).auc, atol=1e-7)
