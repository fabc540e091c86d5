"""Sparseness and complexity: Xplique 2.0.2's values, hand-computed cases, edge cases."""

from pathlib import Path

import numpy as np
import pytest

from xai.errors import DataError
from xai.evaluation import map_complexity as cx
from xai.evaluation.registry import MetricInputs, get_metric

FIXTURE = Path(__file__).parent / "fixtures" / "xplique_complexity.npz"
ZERO = 4  # index of the all-zero map in the fixture's maps3


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return {key: data[key] for key in data.files}


@pytest.mark.parametrize("rank", ["3", "4"])
def test_matches_xplique(reference, rank):
    """benchmarks/xplique_metric_reference.py: Xplique's per-image values, to float32 rounding.
    The all-zero map is the one deliberate difference (next test)."""
    maps = reference["maps" + rank]
    keep = np.ones(len(maps), bool)
    if rank == "3":
        keep[ZERO] = False
    for name, fn in (("sparseness", cx.sparseness), ("complexity", cx.complexity)):
        np.testing.assert_allclose(fn(maps)[keep], reference[name + rank][keep], rtol=0, atol=1e-5)
    assert str(reference["xplique_version"]) == "2.0.2"


def test_all_zero_map_scores_as_a_uniform_map(reference):
    """Finite, and the worst on both metrics (a map with no mass singles out no pixel), where
    Xplique's eps gives -(n + 1) / n and 0."""
    maps = reference["maps3"][[ZERO]]
    n = maps[0].size
    assert cx.sparseness(maps).tolist() == [0.0]
    assert cx.complexity(maps).tolist() == [pytest.approx(np.log(n))]
    assert reference["sparseness3"][ZERO] == pytest.approx(-(n + 1) / n)
    assert reference["complexity3"][ZERO] == pytest.approx(0.0, abs=1e-6)
    zeros4 = np.zeros((2, 3, 5, 4))
    np.testing.assert_array_equal(cx.sparseness(zeros4), [0.0, 0.0])
    np.testing.assert_allclose(cx.complexity(zeros4), np.log(15))


@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_k_equal_pixels_by_hand(k):
    """k equal pixels of n: Gini 1 - k/n (the formula's sum of ranks), entropy log k."""
    n = 16
    maps = np.zeros((1, 4, 4))
    maps.reshape(-1)[np.random.default_rng(k).choice(n, k, replace=False)] = -3.0
    assert cx.sparseness(maps)[0] == pytest.approx(1 - k / n, abs=1e-7)
    assert cx.complexity(maps)[0] == pytest.approx(np.log(k), abs=1e-6)


def test_two_levels_by_hand():
    """Values 1 and 3 on two of four pixels: x = (0, 0, 1/4, 3/4), so
    G = 2 (3/4 + 4 * 3/4) / 4 - 5/4 = 5/8 and H = -(1/4 log 1/4 + 3/4 log 3/4)."""
    maps = np.array([[[0.0, 1.0], [-3.0, 0.0]]])
    assert cx.sparseness(maps)[0] == pytest.approx(5 / 8, abs=1e-7)
    assert cx.complexity(maps)[0] == pytest.approx(-(0.25 * np.log(0.25) + 0.75 * np.log(0.75)), abs=1e-7)


def test_scale_and_sign_free():
    maps = np.random.default_rng(0).normal(size=(3, 8, 8))
    for fn in (cx.sparseness, cx.complexity):
        np.testing.assert_allclose(fn(-7.0 * maps), fn(maps), atol=1e-7)
        np.testing.assert_allclose(fn(maps.astype(np.float32)), fn(maps), atol=1e-5)


def test_4d_maps_are_the_channel_mean_of_the_absolute_value():
    maps = np.random.default_rng(1).normal(size=(3, 6, 6, 3))
    for fn in (cx.sparseness, cx.complexity):
        np.testing.assert_allclose(fn(maps), fn(np.abs(maps).mean(axis=-1)), atol=1e-12)
        assert not np.allclose(fn(maps), fn(np.abs(maps.mean(axis=-1))), atol=1e-3)  # |.| first


def test_uniform_is_least_sparse_and_most_complex():
    rng = np.random.default_rng(2)
    maps = np.concatenate([np.ones((1, 8, 8)), rng.random((5, 8, 8))])
    assert cx.sparseness(maps).argmin() == 0 and cx.sparseness(maps)[0] == pytest.approx(0, abs=1e-7)
    assert cx.complexity(maps).argmax() == 0 and cx.complexity(maps)[0] == pytest.approx(np.log(64), abs=1e-6)


@pytest.mark.parametrize("bad, match", [(np.zeros((4, 4)), "shape"), (np.zeros((1, 2, 2, 2, 2)), "shape"),
                                        (np.full((1, 2, 2), np.nan), "NaN")])
def test_bad_maps_raise(bad, match):
    for fn in (cx.sparseness, cx.complexity):
        with pytest.raises(DataError, match=match):
            fn(bad)


def test_registered():
    sparse, complex_ = get_metric("sparseness"), get_metric("complexity")
    assert sparse.higher_is_better and not complex_.higher_is_better
    assert not sparse.default and not complex_.default and not sparse.stochastic
    maps = np.random.default_rng(3).random((2, 4, 4))
    inputs = MetricInputs(scorer=None, images=np.zeros((2, 4, 4, 3)), targets=np.zeros(2, np.int32),
                          maps=maps)
    np.testing.assert_array_equal(sparse.per_batch(inputs).values, cx.sparseness(maps))
    np.testing.assert_array_equal(complex_.per_batch(inputs).values, cx.complexity(maps))

