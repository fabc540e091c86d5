import keras
import numpy as np
import pytest
from scipy import stats

import xai
from xai import evaluation as ev
from xai.errors import DataError


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
    grads = ev.model_randomisation("vanilla_gradient", tiny_model, images, [0, 1, 0, 1],
                                   layers=["predictions", "block5_conv3", "block1_conv1"])
    noise = ev.model_randomisation("random", tiny_model, images, [0, 1, 0, 1], layers=["predictions", "block1_conv1"])
    # The random baseline ignores the model: its maps do not change at all.
    np.testing.assert_allclose(noise["spearman"], 1.0)
    # Gradients depend on the weights: fully randomised, they decorrelate.
    assert np.nanmean(grads["spearman"][-1]) < 0.9
    assert grads["spearman"].shape == (3, 4)
    # The original model is untouched.
    after = xai.create_explainer("vanilla_gradient", tiny_model).explain(images, [0, 1, 0, 1])
    before = xai.create_explainer("vanilla_gradient", tiny_model).explain(images, [0, 1, 0, 1])
    np.testing.assert_array_equal(after, before)
    logit = ev.random_logit("random", tiny_model, images, [0, 1, 0, 1])
    np.testing.assert_allclose(logit, 1.0)
