"""ROAD (Rong et al. 2022): noisy linear imputation, the removal orders, the curves, the registry."""

import numpy as np
import pytest

from xai.errors import DataError, ParameterError
from xai.evaluation.faithfulness import ModelScorer
from xai.evaluation.registry import MetricInputs, get_metric
from xai.evaluation.remove_and_debias import DEFAULT_FRACTIONS, noisy_linear_impute, removed_pixels, road

NEIGHBOURS = [(dy, dx, 1 / 6 if dy == 0 or dx == 0 else 1 / 12)
              for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def _mask(shape, share, seed=0):
    return np.random.default_rng(seed).random(shape) < share


# ---- imputation ---------------------------------------------------------------------------

def test_constant_image_is_imputed_as_the_constant():
    x = np.full((2, 12, 10, 3), 0.7)
    removed = _mask((2, 12, 10), 0.6)
    out = noisy_linear_impute(x, removed, noise=0)
    np.testing.assert_allclose(out, 0.7, atol=1e-12)


def test_linear_image_is_reproduced_inside_the_image():
    # Symmetric weights reproduce any affine function at pixels with all 8 neighbours.
    yy, xx = np.mgrid[:16, :20].astype(np.float64)
    x = np.stack([xx, 2 * yy - 0.5 * xx + 3], -1)[None]
    removed = np.zeros((1, 16, 20), bool)
    removed[0, 3:12, 4:15] = True
    out = noisy_linear_impute(x, removed, noise=0)
    np.testing.assert_allclose(out, x, atol=1e-9)


def test_imputed_pixels_satisfy_the_defining_equation():
    rng = np.random.default_rng(3)
    x = rng.random((2, 9, 11, 3))
    removed = _mask((2, 9, 11), 0.5, seed=4)
    removed[1, 0, :] = True  # a border row: fewer valid neighbours, weights renormalised
    out = noisy_linear_impute(x, removed, noise=0)
    h, w = removed.shape[1:]
    for n, i, j in zip(*np.nonzero(removed)):
        valid = [(i + dy, j + dx, wt) for dy, dx, wt in NEIGHBOURS if 0 <= i + dy < h and 0 <= j + dx < w]
        mean = sum(wt * out[n, a, b] for a, b, wt in valid) / sum(wt for _, _, wt in valid)
        np.testing.assert_allclose(out[n, i, j], mean, atol=1e-6)


def test_kept_pixels_are_unchanged_and_imputed_values_stay_within_the_kept_range():
    x = np.random.default_rng(0).random((1, 64, 64, 3), np.float32)
    removed = _mask((1, 64, 64), 0.9)
    out = noisy_linear_impute(x, removed, noise=0)  # 64x64, 90% removed: ~3700 unknowns
    assert out.dtype == np.float32 and out.shape == x.shape
    np.testing.assert_array_equal(out[~removed], x[~removed])
    assert np.all(np.isfinite(out))
    # Weighted means of weighted means: the discrete maximum principle, per channel.
    kept = x[~removed]
    assert np.all(out[removed] >= kept.min(0) - 1e-6) and np.all(out[removed] <= kept.max(0) + 1e-6)
    with_noise = noisy_linear_impute(x, removed, noise=0.05)
    np.testing.assert_array_equal(with_noise[~removed], x[~removed])


def test_noise_has_the_requested_std_on_removed_pixels_only():
    x = np.random.default_rng(1).random((1, 64, 64, 3))
    removed = _mask((1, 64, 64), 0.8)
    delta = noisy_linear_impute(x, removed, noise=0.05, seed=7) - noisy_linear_impute(x, removed, noise=0)
    assert np.all(delta[~removed] == 0)
    assert delta[removed].std() == pytest.approx(0.05, rel=0.05)
    assert abs(delta[removed].mean()) < 0.005


def test_noise_is_seeded_and_independent_of_the_other_images():
    rng = np.random.default_rng(2)
    a, b, c = rng.random((3, 1, 16, 16, 3))
    removed = _mask((2, 16, 16), 0.5)
    first = noisy_linear_impute(np.concatenate([a, b]), removed, seed=5)
    second = noisy_linear_impute(np.concatenate([a, c]), removed[[0, 0]], seed=5)
    np.testing.assert_array_equal(first[0], second[0])
    other_seed = noisy_linear_impute(np.concatenate([a, b]), removed, seed=6)
    assert not np.array_equal(first[0], other_seed[0])


def test_all_removed_gives_zeros_and_none_removed_gives_the_image():
    x = np.random.default_rng(0).random((2, 8, 8, 1))
    removed = np.zeros((2, 8, 8), bool)
    removed[0] = True
    out = noisy_linear_impute(x, removed, noise=0)
    np.testing.assert_array_equal(out[0], 0)
    np.testing.assert_array_equal(out[1], x[1])


# ---- which pixels are removed ----------------------------------------------------------------

def test_morf_and_lerf_remove_complementary_sets_in_map_order():
    maps = np.random.default_rng(0).random((3, 64, 64))
    for f in (0.1, 0.3, 0.5):
        morf = removed_pixels(maps, f, "morf")
        lerf = removed_pixels(maps, 1 - f, "lerf")
        np.testing.assert_array_equal(morf, ~lerf)
        assert morf.sum(axis=(1, 2)).tolist() == [round(f * 64 * 64)] * 3
        for m, r in zip(maps, morf):
            assert m[r].min() > m[~r].max()


def test_ties_are_broken_by_pixel_index():
    removed = removed_pixels(np.zeros((1, 4, 5)), 0.35, "morf")
    assert np.flatnonzero(removed[0]).tolist() == list(range(7))
    # In both orders, as deletion's LeRF: the first tied pixels go first.
    removed = removed_pixels(np.zeros((1, 4, 5)), 0.35, "lerf")
    assert np.flatnonzero(removed[0]).tolist() == list(range(7))


# ---- the curves on a model -------------------------------------------------------------------

def _probabilities(model, x, targets):
    return model(x, training=False).numpy()[np.arange(len(x)), targets]


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_curve_is_the_model_score_of_the_imputed_image(tiny_model, images, order):
    x, targets = images[:2], np.array([0, 1])
    maps = x.mean(-1)
    fractions = (0.2, 0.5, 0.8)
    result = road(tiny_model, x, targets, maps, fractions=fractions, order=order, seed=3)
    expected = np.stack([
        _probabilities(tiny_model, noisy_linear_impute(x, removed_pixels(maps, f, order), 0.01, seed=(3, k)),
                       targets) for k, f in enumerate(fractions)], 1)
    np.testing.assert_allclose(result.curves, expected, atol=1e-5)
    np.testing.assert_allclose(result.auc, expected.mean(1))
    assert result.x.tolist() == list(fractions)
    assert result.protocol["order"] == order and result.protocol["pixels_removed"] == [819, 2048, 3277]


def test_zero_imputation_and_a_scorer(tiny_model, images):
    x, targets = images[:2], np.array([1, 0])
    maps = np.random.default_rng(0).random((2, 64, 64))
    scorer = ModelScorer(tiny_model)
    result = road(scorer, x, targets, maps, fractions=(0.5,), imputation="zero", batch_size=1)
    zeroed = x * ~removed_pixels(maps, 0.5)[..., None]
    np.testing.assert_allclose(result.curves[:, 0], _probabilities(tiny_model, zeroed, targets), atol=1e-5)
    assert result.protocol["imputation"] == "zero"


def test_same_seed_same_curves(tiny_model, images):
    args = (tiny_model, images[:2], [0, 1], images[:2].mean(-1))
    first = road(*args, fractions=(0.5,), noise=0.5, seed=1)
    np.testing.assert_array_equal(first.curves, road(*args, fractions=(0.5,), noise=0.5, seed=1).curves)
    assert not np.array_equal(first.curves, road(*args, fractions=(0.5,), noise=0.5, seed=2).curves)


# ---- bad input -------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    ({"fractions": (0.0, 0.5)}, ParameterError, r"fractions must be .* in \(0, 1\)"),
    ({"fractions": (0.5, 1.0)}, ParameterError, "fractions"),
    ({"fractions": ()}, ParameterError, "non-empty"),
    ({"fractions": "half"}, ParameterError, "fractions"),
    ({"order": "random"}, ParameterError, r"order must be one of \('morf', 'lerf'\)"),
    ({"imputation": "mean"}, ParameterError, "imputation must be one of"),
    ({"noise": -0.1}, ParameterError, "noise must be a finite number >= 0"),
    ({"noise": float("nan")}, ParameterError, "noise"),
    ({"score": "accuracy"}, ParameterError, "score must be one of"),
    ({"seed": 1.5}, ParameterError, "seed must be an integer"),
    ({"seed": -1}, ParameterError, "seed must be an integer >= 0"),
    ({"batch_size": 0}, ParameterError, "batch_size must be an integer >= 1"),
    ({"maps": np.zeros((2, 32, 32))}, DataError, r"maps must be \(N, H, W\) = \(2, 64, 64\)"),
    ({"maps": np.full((2, 64, 64), np.nan)}, DataError, "maps contain NaN"),
    ({"targets": None}, DataError, "targets are required"),
    ({"targets": [0, 5]}, DataError, "targets must be in"),
    ({"images": np.zeros((2, 32, 32, 3), np.float32)}, DataError, "images are 32x32"),
])
def test_bad_input_raises_a_clear_error(tiny_model, images, kwargs, error, message):
    args = {"images": images[:2], "targets": [0, 1], "maps": images[:2].mean(-1)}
    args.update({k: kwargs.pop(k) for k in list(kwargs) if k in args})
    with pytest.raises(error, match=message):
        road(tiny_model, args["images"], args["targets"], args["maps"], **kwargs)


def test_imputation_rejects_bad_masks():
    x = np.zeros((1, 4, 4, 3))
    with pytest.raises(DataError, match=r"removed must be \(N, H, W\)"):
        noisy_linear_impute(x, np.zeros((1, 4, 5), bool))
    with pytest.raises(DataError, match="boolean"):
        noisy_linear_impute(x, np.zeros((1, 4, 4)))
    with pytest.raises(ParameterError, match="noise"):
        noisy_linear_impute(x, np.zeros((1, 4, 4), bool), noise=-1)


# ---- registry --------------------------------------------------------------------------------

def test_registered_with_direction_and_seed(tiny_model, images):
    morf, lerf = get_metric("road_morf"), get_metric("road_lerf")
    assert (morf.higher_is_better, lerf.higher_is_better) == (False, True)
    assert morf.stochastic and lerf.stochastic and not morf.default and not lerf.default
    inputs = dict(scorer=ModelScorer(tiny_model), images=images[:2], targets=np.array([0, 1], np.int32),
                  maps=images[:2].mean(-1))
    out = lerf.per_batch(MetricInputs(**inputs, seed=0))
    assert out.values.shape == (2,) and out.curves[1].shape == (2, len(DEFAULT_FRACTIONS))
    assert out.protocol["metric"] == "road_lerf" and out.protocol["seed"] == 0
    assert out.protocol["auc"] == "mean of the curve over the fractions, per image"
    reseeded = lerf.per_batch(MetricInputs(**inputs, seed=1))
    assert reseeded.protocol["seed"] == 1 and not np.array_equal(out.curves[1], reseeded.curves[1])



# ---- the in-graph inpainting of the "debiased" deletion protocol ------------------------------

def test_inpaint_keeps_kept_pixels_and_constants_and_zeroes_an_empty_image():
    from xai.baselines import inpaint
    x = np.random.default_rng(0).random((2, 13, 10, 3), np.float32)  # odd sides: padded before pooling
    removed = _mask((2, 13, 10), 0.7)
    out = inpaint(x, removed).numpy()
    np.testing.assert_array_equal(out[~removed], x[~removed])
    # A constant image stays that constant whatever is removed (every level is a weighted mean).
    np.testing.assert_allclose(inpaint(np.full_like(x, 0.3), removed).numpy(), 0.3, atol=1e-6)
    np.testing.assert_array_equal(inpaint(x, np.ones((2, 13, 10), bool)).numpy(), 0)
    kept = x[~removed]
    assert np.all(out[removed] >= kept.min(0) - 1e-6) and np.all(out[removed] <= kept.max(0) + 1e-6)


def test_inpaint_by_hand_on_an_odd_size():
    # 3x3, kept: 0 at the top-left corner, 1 at the bottom-right. Level 1 (the image padded to
    # 4x4, summed 2x2): [[0, -], [-, 1]]; level 2: their mean 0.5, which fills level 1's empty
    # cells; the centre pixel is level 1 upsampled bilinearly at (0.25, 0.25) of its grid:
    # 0.75^2 * 0 + 2 * 0.75 * 0.25 * 0.5 + 0.25^2 * 1 = 0.25. (Padding that counted the corner
    # cell four times would give 0.3625.)
    from xai.baselines import inpaint
    x = np.zeros((1, 3, 3, 1), np.float32)
    x[0, 2, 2] = 1
    removed = np.ones((1, 3, 3), bool)
    removed[0, 0, 0] = removed[0, 2, 2] = False
    out = inpaint(x, removed).numpy()[0, :, :, 0]
    assert out[1, 1] == pytest.approx(0.25)
    assert out[0, 0] == 0 and out[2, 2] == 1 and out[0, 1] == pytest.approx(out[1, 0])


def test_inpaint_approximates_roads_linear_imputation_of_an_object():
    # The offline data's objects: whole regions removed, as a good map's top pixels are.
    from xai.baselines import inpaint
    from xai.data import offline
    items = list(offline(8, image_size=64, split="test").as_numpy_iterator())
    x = np.stack([i["image"] for i in items]).astype(np.float32)
    removed = np.stack([i["mask"] for i in items]) > 0.5
    exact = noisy_linear_impute(x, removed, noise=0)
    filled = inpaint(x, removed).numpy()
    error = np.linalg.norm((filled - exact)[removed]) / np.linalg.norm(exact[removed])
    # Measured 0.057 on the main job's 64 images; a black fill is ~1.0 and the image mean ~0.3.
    assert error < 0.1
    mean_fill = np.broadcast_to(x.mean((1, 2), keepdims=True), x.shape)
    assert error < 0.5 * np.linalg.norm((mean_fill - exact)[removed]) / np.linalg.norm(exact[removed])


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_debiased_deletion_scores_the_inpainted_images(tiny_model, images, order):
    from xai.baselines import inpaint
    from xai.evaluation import deletion
    from xai.evaluation.faithfulness import _ranks
    x, targets = images[:3], np.array([0, 1, 1])
    maps = np.random.default_rng(1).random((3, 64, 64)).astype(np.float32)
    result = deletion(tiny_model, x, targets, maps, protocol="debiased", steps=4, order=order)
    ranks = _ranks(maps, order).numpy().reshape(3, 64, 64)
    expected = np.stack([_probabilities(tiny_model, inpaint(x, ranks < n).numpy(), targets)
                         for n in (0, 1024, 2048, 3072, 4096)], 1)
    np.testing.assert_allclose(result.curves, expected, atol=1e-5)
    assert "inpainted" in result.protocol["baseline"] and result.protocol["preset"] == "debiased"
    # Insertion keeps RISE's blurred substrate; an inpainted insertion has nothing to fill from.
    from xai.evaluation import insertion
    assert "blur" in insertion(tiny_model, x, targets, maps, protocol="debiased", steps=2).protocol["baseline"]
    with pytest.raises(ParameterError, match="inpaint"):
        insertion(tiny_model, x, targets, maps, baseline="inpaint", steps=2)
