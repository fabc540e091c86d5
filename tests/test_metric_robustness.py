"""Average stability and max sensitivity: known answers with fake explainers, Xplique's
AverageStability statistically, batching, seeds, errors, and real explainers."""

import types
from pathlib import Path

import keras
import numpy as np
import pytest

import xai
from xai.errors import DataError, ParameterError
from xai.evaluation import robustness as rb
from xai.evaluation.registry import MetricInputs, get_metric
from xai.registry import get_explainer

FIXTURE = Path(__file__).parent / "fixtures" / "xplique_stability.npz"
SPEC = types.SimpleNamespace(input_range=(0.0, 1.0))


class Fake:
    """An explainer made of a function of the images; records the size of every call."""

    def __init__(self, fn):
        self.fn, self.calls, self.seen = fn, [], []
        self.spec = SPEC

    def explain(self, images, targets):
        images = np.asarray(images)
        self.calls.append(len(images))
        self.seen.append(images.copy())
        return self.fn(images)


def identity():
    return Fake(lambda x: x[..., 0])


def images(n=3, size=16, channels=1, seed=0):
    return np.random.default_rng(seed).random((n, size, size, channels), dtype=np.float32)


def both(explainer, x, t=0, **kwargs):
    return (rb.average_stability(explainer, x, t, **kwargs), rb.max_sensitivity(explainer, x, t, **kwargs))


def test_identity_explainer_moves_as_the_noise():
    """Map = image: the L2 distance is the noise's norm, about r sqrt(d / 3) for d values
    uniform in [0, r); the L1 distance is its sum, d r / 2 on average."""
    r, d = 0.1, 16 * 16
    l2 = rb.average_stability(identity(), images(), 0, radius=r, n_samples=200)
    np.testing.assert_allclose(l2, r * np.sqrt(d / 3), rtol=0.01)
    l1 = rb.average_stability(identity(), images(), 0, radius=r, n_samples=200, distance="l1")
    np.testing.assert_allclose(l1, d * r / 2, rtol=0.01)
    big = rb.average_stability(identity(), images(), 0, radius=2.5 * r, n_samples=200)
    np.testing.assert_allclose(big, 2.5 * l2, rtol=1e-5)  # the same draws, scaled


def test_noise_is_one_sided_and_not_clipped():
    """Xplique's sampling: x + u with u uniform in [0, radius), past the top of the range."""
    fake = identity()
    x = np.ones((2, 4, 4, 1), np.float32)
    rb.average_stability(fake, x, 0, radius=0.3, n_samples=50)
    copies = np.concatenate(fake.seen).reshape(2, 51, 4, 4, 1)[:, 1:]
    assert copies.min() >= 1.0 and copies.max() < 1.3 and copies.max() > 1.29


def test_relative_divides_by_the_norm_of_the_map():
    x = np.full((1, 8, 8, 1), 0.5, np.float32)
    absolute, relative = (rb.average_stability(identity(), x, 0, relative=rel) for rel in (False, True))
    np.testing.assert_allclose(relative, absolute / (0.5 * 8), rtol=1e-12)
    scaled = Fake(lambda x: 1000.0 * x[..., 0])
    np.testing.assert_allclose(rb.average_stability(scaled, x, 0, relative=True), relative, rtol=1e-6)


def test_constant_explainer_scores_zero():
    constant = Fake(lambda x: np.full(x.shape[:3], 2.0))
    for relative in (False, True):
        for values in both(constant, images(), relative=relative):
            np.testing.assert_array_equal(values, 0.0)
    zero = Fake(lambda x: np.zeros(x.shape[:3]))  # relative: 0 / eps, not NaN
    for values in both(zero, images(), relative=True):
        np.testing.assert_array_equal(values, 0.0)


def test_max_is_at_least_the_average_and_equal_for_one_sample():
    x = images(4)
    average, maximum = both(identity(), x, n_samples=10)
    assert np.all(maximum >= average) and np.all(maximum > average)
    distances = rb.sensitivities(identity(), x, 0, n_samples=10)
    np.testing.assert_array_equal(average, distances.mean(axis=1))
    np.testing.assert_array_equal(maximum, distances.max(axis=1))
    np.testing.assert_array_equal(*both(identity(), x, n_samples=1))


def test_an_image_scores_the_same_alone_and_in_any_batch():
    square = Fake(lambda x: (x ** 2).sum(axis=-1))
    x = images(8, size=6, channels=3)
    together = both(square, x, n_samples=5)
    alone = [both(square, x[[i]], n_samples=5) for i in range(8)]
    reordered = both(square, x[::-1], n_samples=5)
    for k in range(2):
        np.testing.assert_array_equal(together[k], [a[k][0] for a in alone])
        np.testing.assert_array_equal(together[k], reordered[k][::-1])
        for batch_size in (1, 7, 12, 100):
            np.testing.assert_array_equal(together[k], both(square, x, n_samples=5, batch_size=batch_size)[k])


def test_calls_are_batched_and_bounded():
    fake = identity()
    rb.average_stability(fake, images(10, size=4), 0, n_samples=4, batch_size=16)
    assert fake.calls == [15, 15, 15, 5]  # 3 images and their 4 copies each, per call
    fake = identity()
    rb.average_stability(fake, images(3, size=4), 0, n_samples=20, batch_size=8)
    assert fake.calls == [21, 21, 21]  # at least one image with all its copies


def test_seed_changes_values_and_reproduces_them():
    x = images()
    first, again, other = (rb.average_stability(identity(), x, 0, seed=s, n_samples=5) for s in (0, 0, 1))
    np.testing.assert_array_equal(first, again)
    assert np.all(first != other)


def test_targets_are_passed_for_every_copy():
    seen = []
    fake = identity()
    fake.explain = lambda x, t: (seen.append(np.asarray(t)), np.asarray(x)[..., 0])[1]
    rb.average_stability(fake, images(2), [3, 5], n_samples=2)
    np.testing.assert_array_equal(np.concatenate(seen), [3, 3, 3, 5, 5, 5])


@pytest.mark.parametrize("kwargs, match", [
    ({"radius": 0}, "radius.*> 0"), ({"radius": -0.1}, "radius"), ({"radius": float("nan")}, "radius"),
    ({"radius": "0.1"}, "radius.*float"), ({"n_samples": 0}, "n_samples.*>= 1"),
    ({"n_samples": 2.5}, "n_samples.*int"), ({"n_samples": True}, "n_samples"),
    ({"distance": "cosine"}, "distance.*'l1', 'l2'"), ({"seed": -1}, "seed.*>= 0"),
    ({"relative": 1}, "relative.*bool"), ({"batch_size": 0}, "batch_size.*>= 1"),
])
def test_bad_parameters_raise(kwargs, match):
    for fn in (rb.average_stability, rb.max_sensitivity):
        with pytest.raises(ParameterError, match=match):
            fn(identity(), images(1), 0, **kwargs)


def test_bad_data_raise():
    with pytest.raises(ParameterError, match="targets are required"):
        rb.average_stability(identity(), images(1), None)
    with pytest.raises(DataError, match="one class index per image"):
        rb.average_stability(identity(), images(2), [0, 1, 0])
    with pytest.raises(DataError, match=r"\(N, H, W, C\)"):
        rb.average_stability(identity(), images(1)[0], 0)


def test_matches_xplique_average_stability_statistically():
    """benchmarks/xplique_metric_reference.py ran Xplique's AverageStability with 2000 samples
    for map = mean over channels of image ** 2. The noise differs (theirs is TensorFlow's), so
    each image's value must agree within 4 standard errors of the difference of two means.
    The squares make the value depend on the noise's direction: symmetric noise fails."""
    with np.load(FIXTURE) as data:
        ref = {key: data[key] for key in data.files}
    square = Fake(lambda x: np.mean(np.asarray(x, np.float64) ** 2, axis=-1))
    n = int(ref["n_samples"])
    for distance in ("l2", "l1"):
        d = rb.sensitivities(square, ref["images"], ref["targets"], radius=float(ref["radius"]), n_samples=n,
                             distance=distance, batch_size=4096)
        error = np.sqrt(2) * d.std(axis=1) / np.sqrt(n)
        assert np.all(np.abs(d.mean(axis=1) - ref[distance]) < 4 * error), (d.mean(axis=1), ref[distance])
    x = ref["images"][:3].astype(np.float64)
    u = np.random.default_rng(0).uniform(-0.1, 0.1, (n, *x.shape[1:]))
    moved = [((xi + u) ** 2).mean(-1) - (xi ** 2).mean(-1) for xi in x]
    symmetric = [np.sqrt((m ** 2).sum(axis=(1, 2))).mean() for m in moved]
    assert np.all(np.abs(np.array(symmetric) - ref["l2"][:3]) > 0.1)


@pytest.fixture(scope="module")
def small_model():
    keras.utils.set_random_seed(0)
    return xai.vgg16_gap((32, 32, 3), width=0.125)


def test_real_explainers_gradient_is_stabler_than_random(small_model):
    x = images(3, size=32, channels=3)
    t = np.array([0, 1, 0], np.int32)
    gradient = get_explainer("vanilla_gradient")(small_model)
    random = get_explainer("random")(small_model)
    values = {}
    for name, explainer in (("gradient", gradient), ("random", random)):
        average, maximum = both(explainer, x, t, n_samples=4, relative=True)
        assert average.shape == (3,) and np.all(np.isfinite(average)) and np.all(maximum >= average)
        values[name] = average
    # Independent uniform maps: ||a - b|| / ||a|| is about sqrt(1/6) / sqrt(1/3) = 0.71 for each copy.
    np.testing.assert_allclose(values["random"], np.sqrt(0.5), atol=0.03)
    assert np.all(values["random"] > values["gradient"])


def test_registered_adapters(small_model):
    explainer = get_explainer("vanilla_gradient")(small_model)
    x, t = images(2, size=32, channels=3), np.array([0, 1], np.int32)
    inputs = MetricInputs(scorer=None, images=x, targets=t, maps=explainer.explain(x, t), explainer=explainer,
                          seed=3)
    for name, fn in (("average_stability", rb.average_stability), ("max_sensitivity", rb.max_sensitivity)):
        metric = get_metric(name)
        assert not metric.higher_is_better and metric.stochastic and not metric.default
        out = metric.per_batch(inputs)
        np.testing.assert_allclose(out.values, fn(explainer, x, t, radius=0.1, n_samples=20, seed=3,
                                                  relative=True), rtol=1e-6)
        assert out.protocol["relative"] is True and out.protocol["radius"] == pytest.approx(0.1)
        assert out.protocol["n_samples"] == 20 and out.protocol["seed"] == 3


def test_registered_radius_scales_with_the_input_range():
    fake = identity()
    fake.spec = types.SimpleNamespace(input_range=(0.0, 255.0))
    x = 255 * images(1)
    out = get_metric("average_stability").per_batch(
        MetricInputs(scorer=None, images=x, targets=np.zeros(1, np.int32), maps=x[..., 0], explainer=fake))
    assert out.protocol["radius"] == pytest.approx(25.5)
    np.testing.assert_allclose(out.values, rb.average_stability(identity(), x, 0, radius=25.5, relative=True))

