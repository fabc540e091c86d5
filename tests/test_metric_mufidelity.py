"""MuFidelity: known answers, Xplique's values, seeding, batching, the prediction cache."""

from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from xai.errors import DataError, ParameterError
from xai.evaluation import faithfulness_correlation as mf
from xai.evaluation.faithfulness import ModelScorer
from xai.evaluation.registry import MetricInputs, get_metric

FIXTURES = Path(__file__).parent / "fixtures"
SIZE, CLASSES = 8, 3


def _linear_model(seed=0):
    """Logits head: logit_c = sum(W[:, c] * x) + b_c, linear in every pixel."""
    rng = np.random.default_rng(seed)
    model = keras.Sequential([keras.Input((SIZE, SIZE, 2)), keras.layers.Flatten(),
                              keras.layers.Dense(CLASSES, name="logits")])
    kernel = rng.normal(size=(SIZE * SIZE * 2, CLASSES)).astype(np.float32)
    model.get_layer("logits").set_weights([kernel, np.array([0.1, -0.2, 0.3], np.float32)])
    return model, kernel


def _constant_model():
    model = keras.Sequential([keras.Input((SIZE, SIZE, 2)), keras.layers.Flatten(),
                              keras.layers.Dense(CLASSES, activation="softmax", kernel_initializer="zeros",
                                                 name="predictions")])
    model.get_layer("predictions").set_weights([np.zeros((SIZE * SIZE * 2, CLASSES), np.float32),
                                                np.array([1.0, 2.0, 3.0], np.float32)])
    return model


@pytest.fixture(scope="module")
def linear():
    model, kernel = _linear_model()
    return ModelScorer(model), kernel


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    images = rng.random((5, SIZE, SIZE, 2), dtype=np.float32)
    return images, np.array([0, 1, 2, 1, 0], np.int32), rng.normal(size=(5, SIZE, SIZE))


def _exact_map(kernel, images, targets, baseline=0.0):
    """Each pixel's share of the logit change when it goes to the baseline."""
    w = kernel.T[targets].reshape(len(images), SIZE, SIZE, 2)
    return (w * (images - baseline)).sum(-1)


@pytest.mark.parametrize("baseline", ["zero", 0.5])
def test_exact_map_of_a_linear_model_correlates_perfectly(linear, batch, baseline):
    scorer, kernel = linear
    images, targets, _ = batch
    exact = _exact_map(kernel, images, targets, 0.0 if baseline == "zero" else baseline)
    pearson = mf.mufidelity(scorer, images, targets, exact, protocol="bhatt", score="output",
                            baseline=baseline, n_subsets=64, grid_size=4)
    np.testing.assert_allclose(pearson, 1.0, atol=1e-5)
    anti = mf.mufidelity(scorer, images, targets, -exact, protocol="bhatt", score="output",
                         baseline=baseline, n_subsets=64, grid_size=4)
    np.testing.assert_allclose(anti, -1.0, atol=1e-5)
    spearman = mf.mufidelity(scorer, images, targets, exact, baseline=baseline, n_subsets=64, grid_size=4)
    assert np.all(spearman > 0.999)


def test_constant_predictions_score_zero(batch):
    images, targets, maps = batch
    scorer = ModelScorer(_constant_model())
    for protocol in ("xplique", "bhatt"):
        values = mf.mufidelity(scorer, images, targets, maps, protocol=protocol, n_subsets=20, grid_size=4)
        assert values.tolist() == [0.0] * len(images)


def test_a_constant_map_under_fixed_size_subsets_scores_zero(linear, batch):
    scorer, _ = linear
    images, targets, _ = batch
    values = mf.mufidelity(scorer, images, targets, np.ones((5, SIZE, SIZE)), protocol="bhatt",
                           n_subsets=20, grid_size=4)
    assert values.tolist() == [0.0] * len(images)


def test_values_do_not_depend_on_batching(linear, batch):
    scorer, _ = linear
    images, targets, maps = batch
    kwargs = dict(n_subsets=50, grid_size=4, seed=7)
    together = mf.mufidelity(scorer, images[:4], targets[:4], maps[:4], batch_size=256, **kwargs)
    alone = np.concatenate([mf.mufidelity(ModelScorer(scorer.model), images[i:i + 1], targets[i:i + 1],
                                          maps[i:i + 1], batch_size=7, **kwargs) for i in range(4)])
    np.testing.assert_allclose(together, alone, atol=1e-6)


def test_seeded(linear, batch):
    scorer, _ = linear
    images, targets, maps = batch
    first = mf.mufidelity(scorer, images, targets, maps, n_subsets=40, grid_size=4, seed=1)
    again = mf.mufidelity(ModelScorer(scorer.model), images, targets, maps, n_subsets=40, grid_size=4, seed=1)
    other = mf.mufidelity(scorer, images, targets, maps, n_subsets=40, grid_size=4, seed=2)
    np.testing.assert_array_equal(first, again)
    assert not np.allclose(first, other)


@pytest.mark.parametrize("change", [dict(grid_size=2), dict(subset_fraction=0.5), dict(baseline=0.5),
                                   dict(protocol="bhatt"), dict(score="probability"), dict(n_subsets=41)])
def test_each_parameter_changes_the_values(linear, batch, change):
    scorer, _ = linear
    images, targets, maps = batch
    settings = dict(n_subsets=40, grid_size=4, subset_fraction=0.2, seed=0)
    reference = mf.mufidelity(scorer, images, targets, maps, **settings)
    assert not np.allclose(reference, mf.mufidelity(scorer, images, targets, maps, **{**settings, **change}))


def test_cache_skips_forward_passes_and_changes_nothing(batch):
    images, targets, maps = batch
    model, _ = _linear_model()
    scorer = ModelScorer(model)
    calls = []
    original = scorer.scores
    scorer.scores = lambda *a, **k: calls.append(len(a[0])) or original(*a, **k)
    kwargs = dict(n_subsets=30, grid_size=4, batch_size=64)
    first = mf.mufidelity(scorer, images, targets, maps, **kwargs)
    assert sum(calls) == len(images) * (1 + 30)
    calls.clear()
    second = mf.mufidelity(scorer, images, targets, -maps, **kwargs)  # another method, same batch
    assert calls == []
    np.testing.assert_array_equal(second, -first)
    fresh = mf.mufidelity(ModelScorer(model), images, targets, -maps, **kwargs)
    np.testing.assert_array_equal(second, fresh)
    mf.mufidelity(scorer, images, targets, maps, seed=1, **kwargs)  # other masks: a miss
    assert sum(calls) == len(images) * 31
    for seed in range(2, 2 + mf.CACHE_ENTRIES):  # more settings than the cache holds: it stays bounded
        mf.mufidelity(scorer, images, targets, maps, seed=seed, **kwargs)
    assert len(getattr(scorer, mf.CACHE_ATTRIBUTE)) == mf.CACHE_ENTRIES


def test_matches_xplique_reference():
    """Xplique 2.0.2's MuFidelity (benchmarks/xplique_mufidelity_reference.py), 1000 subsets.

    The masks differ (Xplique draws them from TensorFlow's generator), so each value differs
    from ours by the Monte Carlo error of two Spearman correlations over 1000 subsets:
    sd ~ 1.06 (1 - rho^2) / sqrt(1000) each (Fieller, Hartley & Pearson 1957).
    """
    ref = np.load(FIXTURES / "xplique_mufidelity.npz")
    model = keras.saving.load_model(FIXTURES / "mufidelity_model.keras")
    np.testing.assert_allclose(model.predict(ref["images"], verbose=0), ref["outputs"], atol=1e-6)
    ours = mf.mufidelity(model, ref["images"], ref["targets"], ref["maps"], n_subsets=int(ref["nb_samples"]),
                         grid_size=int(ref["grid_size"]), subset_fraction=float(ref["subset_percent"]),
                         baseline=float(ref["baseline_mode"]), seed=12345)
    rho = ref["values"]
    se = np.sqrt(2) * 1.06 * (1 - rho ** 2) / np.sqrt(int(ref["nb_samples"]))
    diff = ours - rho
    assert np.all(np.abs(diff) <= 5 * se + 1e-3), (ours, rho)
    assert abs(diff.mean()) <= 5 * np.sqrt(np.sum(se ** 2)) / len(se)
    assert np.all(np.sign(ours[:6]) == np.sign(rho[:6]))  # the informative maps keep their sign


@pytest.mark.parametrize("grid_size,size", [(9, 16), (9, 224), (4, 6), (7, 33), (14, 41), (2, 41)])
def test_cells_are_tf_image_resize_nearest(grid_size, size):
    """Xplique upsamples its grid with tf.image.resize(method="nearest")."""
    grid = np.arange(grid_size, dtype=np.float32).reshape(1, grid_size, 1, 1)
    resized = tf.image.resize(grid, (size, 1), method="nearest").numpy().ravel().astype(int)
    np.testing.assert_array_equal(mf.cell_index(size, grid_size), resized)


def test_subsets():
    bernoulli = mf.subset_cells(4000, 9, 0.2, seed=0, subsets="bernoulli")
    assert abs((~bernoulli).mean() - 0.2) < 0.005 and len(set((~bernoulli).sum(1))) > 5
    fixed = mf.subset_cells(100, 9, 0.2, seed=0, subsets="fixed")
    assert set((~fixed).sum(1)) == {16}
    np.testing.assert_array_equal(fixed, mf.subset_cells(100, 9, 0.2, seed=0, subsets="fixed"))
    cells = mf.pixel_cells(16, 12, 9)
    assert cells.shape == (16, 12) and set(cells.ravel()) == set(range(81))


def test_correlation_rows_matches_scipy():
    from scipy import stats

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3, 30)), rng.normal(size=(3, 30))
    a[1, :10] = a[1, 0]  # ties
    for i in range(3):
        assert mf.correlation_rows(a, b)[i] == pytest.approx(stats.pearsonr(a[i], b[i])[0], abs=1e-12)
        assert mf.correlation_rows(a, b, rank=True)[i] == pytest.approx(stats.spearmanr(a[i], b[i])[0],
                                                                        abs=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_subsets=1), "n_subsets"), (dict(n_subsets=2.5), "n_subsets"),
    (dict(subset_fraction=0), "subset_fraction"), (dict(subset_fraction=1.0), "subset_fraction"),
    (dict(grid_size=0), "grid_size"), (dict(grid_size=SIZE + 1), "grid_size"),
    (dict(protocol="paper"), "protocol"), (dict(score="loss"), "score"),
    (dict(baseline="purple"), "baseline"), (dict(batch_size=0), "batch_size"), (dict(seed=None), "seed"),
])
def test_bad_settings(linear, batch, kwargs, match):
    scorer, _ = linear
    images, targets, maps = batch
    with pytest.raises(ParameterError, match=match):
        mf.mufidelity(scorer, images, targets, maps, **kwargs)


def test_bad_data(linear, batch):
    scorer, _ = linear
    images, targets, maps = batch
    with pytest.raises(DataError, match="maps must be"):
        mf.mufidelity(scorer, images, targets, maps[:, :4])
    with pytest.raises(DataError, match="NaN"):
        mf.mufidelity(scorer, images, targets, np.where(maps > 1, np.nan, maps))
    with pytest.raises(DataError, match="targets are required"):
        mf.mufidelity(scorer, images, None, maps)
    with pytest.raises(DataError, match="targets"):
        mf.mufidelity(scorer, images, [0, 1], maps)
    with pytest.raises(DataError):
        mf.mufidelity(scorer, images[..., :1], targets, maps)


def test_registered(linear, batch):
    scorer, _ = linear
    images, targets, maps = batch
    metric = get_metric("mufidelity")
    assert metric.higher_is_better and metric.stochastic and not metric.default
    out = metric.per_batch(MetricInputs(scorer=scorer, images=images, targets=targets, maps=maps, seed=3))
    np.testing.assert_array_equal(out.values, mf.mufidelity(scorer, images, targets, maps, seed=3,
                                                            grid_size=SIZE))  # 9 > 8 pixels
    settings = {"n_subsets", "grid_size", "subset_fraction", "baseline", "correlation", "score"}
    assert settings <= set(out.protocol)
    assert out.protocol["correlation"] == "spearman" and out.protocol["score"] == "output"

