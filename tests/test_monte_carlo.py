"""A map's Monte Carlo error (`Explainer.explain_with_error`): what it is, that it is honest,
and tolerance mode."""

import keras
import numpy as np
import pytest

import xai
from xai.errors import ParameterError


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(5)
    return xai.vgg16_gap((32, 32, 3), num_classes=2, width=0.125)


@pytest.fixture(scope="module")
def batch():
    rng = np.random.default_rng(3)
    return rng.random((8, 32, 32, 3), dtype=np.float32), rng.integers(0, 2, 8).astype(np.int32)


def _norms(maps):
    return np.linalg.norm(maps.reshape(len(maps), -1), axis=1)


def test_the_map_pools_four_replicates_and_the_error_is_their_standard_error(model, batch):
    images, targets = batch
    explainer = xai.create_explainer("smoothgrad", model, n_samples=16, score="logit")
    result = explainer.explain_with_error(images, targets)
    totals, replicates = [], []
    for j in range(4):  # a replicate is valid until the next one is asked for (it is reseeded)
        twin = explainer.replicate(j, 4)
        totals.append(twin.explain_totals(images, targets))
        replicates.append(twin.finalize_totals(images, targets, totals[-1]))
    # The map of all 16 samples: the replicates' gradient sums pooled, then the absolute
    # value (a mean of four 4-sample maps would be another, biased, estimator).
    pooled = twin.finalize_totals(images, targets, np.mean(totals, axis=0))
    np.testing.assert_allclose(result.maps, pooled, rtol=1e-5, atol=1e-6 * np.abs(pooled).max())
    replicates = np.stack(replicates).astype(np.float64)
    spread = np.sum((replicates - replicates.mean(axis=0)) ** 2, axis=(0, 2, 3))
    np.testing.assert_allclose(result.errors, np.sqrt(spread / 12) / _norms(pooled), rtol=1e-5)
    # The pixel-order error: the same, for each map less its own pixel mean.
    centre = lambda a: a - a.mean(axis=(-2, -1), keepdims=True)  # noqa: E731
    spread = np.sum((centre(replicates) - centre(replicates).mean(axis=0)) ** 2, axis=(0, 2, 3))
    np.testing.assert_allclose(result.order_errors, np.sqrt(spread / 12) / _norms(centre(pooled)), rtol=1e-5)
    assert result.samples.tolist() == [16] * 8 and result.converged.all()
    # The replicates really are independent draws: no two are equal.
    assert all(np.abs(replicates[a] - replicates[b]).max() > 0 for a in range(4) for b in range(a))
    maps, errors = result  # unpacks as (maps, errors)
    assert maps is result.maps and errors is result.errors


def test_var_grad_pools_its_replicates_into_the_unbiased_variance_of_all_samples(model, batch):
    """Four replicates of 4 noisy gradients: the map is the n - 1 variance of the 16 pooled,
    not the replicates' mean totals divided by 4 - 1 (a third too large)."""
    images, targets = batch
    explainer = xai.create_explainer("var_grad", model, n_samples=16)
    result = explainer.explain_with_error(images, targets)
    totals = sum(explainer.replicate(j, 4).explain_totals(images, targets).astype(np.float64) for j in range(4))
    first, second = totals[:, 0], totals[:, 1]  # sums of g - c and (g - c)**2 over the 16
    by_hand = ((second - first ** 2 / 16) / 15).sum(axis=-1)
    np.testing.assert_allclose(result.maps, by_hand, rtol=1e-4, atol=1e-6 * by_hand.max())
    assert result.samples.tolist() == [16] * 8


def union_of_sobol_designs(designs, cells):
    """Replicates' Sobol designs (each A, B, C_1 ... C_d of its own N) as one design of their
    summed N, in the same block order."""
    blocks = [(d[:len(d) // (cells + 2)], d[len(d) // (cells + 2):2 * len(d) // (cells + 2)],
               d[2 * len(d) // (cells + 2):].reshape(cells, -1, cells)) for d in designs]
    a, b = (np.concatenate([block[i] for block in blocks]) for i in (0, 1))
    c = np.concatenate([block[2] for block in blocks], axis=1).reshape(-1, cells)
    return np.concatenate([a, b, c])


@pytest.mark.parametrize("method, count", [("sobol", 32), ("hsic", 400)])
def test_sobol_and_hsic_replicates_pool_their_designs_into_one_estimate(model, batch, method, count):
    """Four replicates of a quarter of the designs: the map is the method's own estimator on
    the union of their designs (the map of a plain call given those designs), not the mean of
    four small-design maps, which converges to another map (Jansen's ratio and HSIC's kernel
    statistic are not linear in the designs)."""
    images, targets = batch[0][:3], batch[1][:3]
    explainer = xai.create_explainer(method, model, n_designs=count, grid_size=2)
    result = explainer.explain_with_error(images, targets)
    designs, maps = [], []
    for j in range(4):
        twin = explainer.replicate(j, count // 4)
        designs.append(np.array(twin.designs))
        maps.append(twin.explain(images, targets))
    plain = xai.create_explainer(method, model, n_designs=count, grid_size=2)
    plain.designs = union_of_sobol_designs(designs, 4) if method == "sobol" else np.concatenate(designs)
    union = plain.explain(images, targets)
    np.testing.assert_allclose(result.maps, union, rtol=1e-4, atol=1e-5 * np.abs(union).max())
    assert np.abs(result.maps - np.mean(maps, axis=0)).max() > 1e-3 * np.abs(union).max()
    assert result.samples.tolist() == [count] * 3
    # The error is still the replicates' standard error, relative to the pooled map.
    maps = np.stack(maps).astype(np.float64)
    spread = np.sum((maps - maps.mean(axis=0)) ** 2, axis=(0, 2, 3))
    np.testing.assert_allclose(result.errors, np.sqrt(spread / 12) / _norms(union), rtol=1e-3)


def test_tolerance_mode_pools_each_images_own_replicates(model, batch):
    """In tolerance mode images get different replicates: each image's map is the estimator
    on the designs of its own replicates, whichever were drawn for the others."""
    from xai.monte_carlo import pooled_design_maps

    images, targets = batch[0][:3], batch[1][:3]
    explainer = xai.create_explainer("hsic", model, n_designs=400, grid_size=2)
    # Images 0 and 2 share replicates 0, 1 and 3 (one group, at different rows of replicate
    # 3); image 1 has 0, 1 and 2.
    members = {0: [0, 1, 2], 1: [0, 1, 2], 2: [1], 3: [0, 2]}
    replicates = []
    for j, which in members.items():
        twin = explainer.replicate(j, 100)
        which = np.array(which)
        replicates.append((which, np.array(twin.designs), twin.explain_totals(images[which], targets[which])))
    maps = pooled_design_maps(explainer, 3, replicates)
    for image in range(3):
        mine = [replicates[j][1] for j, which in members.items() if image in which]
        plain = xai.create_explainer("hsic", model, n_designs=100 * len(mine), grid_size=2)
        plain.designs = np.concatenate(mine)
        np.testing.assert_allclose(maps[image], plain.explain(images[image:image + 1], targets[image:image + 1])[0],
                                   rtol=1e-4, atol=1e-6)
    # And the loop that draws them: images still above the tolerance get more replicates,
    # and their pooled map is estimated from more designs.
    result = explainer.explain_with_error(batch[0], batch[1], tolerance=0.05, max_samples=1600)
    assert result.samples.max() > 400, result.samples


def test_rise_replicates_pool_to_the_mean_of_their_maps(model, batch):
    images, targets = batch
    explainer = xai.create_explainer("rise", model, n_masks=64)
    result = explainer.explain_with_error(images, targets)
    mean = np.mean([explainer.replicate(j, 16).explain(images, targets) for j in range(4)], axis=0)
    np.testing.assert_allclose(result.maps, mean, rtol=1e-5, atol=1e-6 * np.abs(mean).max())
    # A RISE map is mostly its mean: the L2 error hides the noise in the order of its pixels.
    assert np.all(result.order_errors > 3 * result.errors)


def test_smoothgrad_square_grad_and_var_grad_compute_their_shared_noisy_gradients_once(batch, monkeypatch):
    """A comparison runs SmoothGrad, SquareGrad, then VarGrad (sorted names) on the same
    images with the same noise: the second and third find the first's totals (they compute
    none of their own) and their maps are the ones each computes alone; once the weights
    change in place, nothing stale is reused."""
    from xai.explainer import SHARED_TOTALS, content_digest
    from xai.plugins.smoothgrad import SmoothGrad

    keras.utils.set_random_seed(8)
    model = xai.vgg16_gap((32, 32, 3), num_classes=2, width=0.125)  # its weights change below
    images, targets = batch
    smooth, square, var = (xai.create_explainer(name, model, n_samples=8)
                           for name in ("smoothgrad", "square_grad", "var_grad"))
    calls, prepared = [], []
    original = SmoothGrad.totals_batch  # SquareGrad's and VarGrad's too
    monkeypatch.setattr(SmoothGrad, "totals_batch", lambda self, *a: calls.append(type(self).__name__)
                        or original(self, *a))
    original_state = SmoothGrad.batch_state

    def counting_state(self, x, t):  # a batch state not in the memo is prepared: a clean gradient
        memo = self.__dict__.get("state_memo")
        if memo is None or (content_digest(x), content_digest(t)) not in memo:
            prepared.append(type(self).__name__)
        return original_state(self, x, t)

    monkeypatch.setattr(SmoothGrad, "batch_state", counting_state)

    def maps(explainer, clear):
        if clear:
            SHARED_TOTALS.clear()
        return explainer.explain_with_error(images, targets, tolerance=1e-9, max_samples=16).maps

    SHARED_TOTALS.clear()
    maps(smooth, clear=False)
    assert set(calls) == {"SmoothGrad"}
    calls.clear()
    prepared.clear()
    shared = [maps(square, clear=False), maps(var, clear=False)]
    assert calls == [] and prepared == []  # not even the clean gradient
    alone = [maps(square, clear=True), maps(var, clear=True)]
    assert calls
    for a, b in zip(shared, alone):
        np.testing.assert_array_equal(a, b)
    # SmoothGrad's map from the shared (centred) totals is the plain mean of the gradients.
    np.testing.assert_allclose(maps(smooth, clear=False), maps(smooth, clear=True), rtol=1e-6)

    maps(smooth, clear=False)
    layer = model.get_layer("block5_conv3")
    layer.kernel.assign(layer.kernel.numpy() * 1.5)
    calls.clear()
    changed = maps(var, clear=False)
    assert calls and np.abs(changed - alone[1]).max() > 1e-3 * np.abs(alone[1]).max()
    np.testing.assert_array_equal(changed, maps(var, clear=True))


@pytest.mark.parametrize("name", ["smoothgrad", "square_grad"])
def test_smoothgrad_and_square_grad_take_the_clean_gradient_only_as_a_replicate(model, batch, name):
    """A plain `explain` sums raw gradients or squares (its floor: n_samples gradients, no
    clean one); the replicates of tolerance mode centre on the clean gradient, as VarGrad
    does, to share."""
    from xai._lazy import tf

    images, targets = batch
    x, t = tf.constant(images), tf.constant(targets)
    square = xai.create_explainer(name, model, n_samples=8)
    assert not np.any(square.batch_state(x, t)["clean"].numpy()) and square.shared_totals() is None
    replica = square.replicate(0, 4)
    assert np.any(replica.batch_state(x, t)["clean"].numpy()) and replica.shared_totals() is not None
    # Centring changes how the sums are kept, not the map: a replicate's map is the plain
    # method's with the same seed and count.
    from xai.monte_carlo import replicate_seed

    plain = xai.create_explainer(name, model, n_samples=4, seed=replicate_seed(0, 0))
    expected = plain.explain(images, targets)
    np.testing.assert_allclose(replica.explain(images, targets), expected, rtol=1e-4,
                               atol=1e-5 * np.abs(expected).max())
    var = xai.create_explainer("var_grad", model, n_samples=8)
    assert np.any(var.batch_state(x, t)["clean"].numpy())


def test_replicates_prepare_a_batch_once_when_the_state_ignores_the_seed(model, batch, monkeypatch):
    """LIME's segmentation (host_prepare) does not depend on the seed: tolerance mode's
    replicates share it instead of segmenting the images once each."""
    from xai.plugins._coalitions import CoalitionExplainer

    images, targets = batch
    explainer = xai.create_explainer("lime", model, n_samples=64, segmentation="grid", n_segments=16,
                                     batch_size=512)
    calls = []
    original = CoalitionExplainer.host_prepare
    monkeypatch.setattr(CoalitionExplainer, "host_prepare",
                        lambda self, x, t: calls.append(len(x)) or original(self, x, t))
    shared = explainer.explain_with_error(images, targets).maps
    assert sum(calls) == len(images)  # four replicates and the pooled map: one segmentation
    monkeypatch.setattr(CoalitionExplainer, "seed_free_state", False)
    calls.clear()
    np.testing.assert_array_equal(shared, explainer.explain_with_error(images, targets).maps)
    assert sum(calls) == 5 * len(images)


@pytest.mark.parametrize("name, params", [
    ("smoothgrad", {"n_samples": 16, "score": "logit"}),
    ("rise", {"n_masks": 64}),
    ("kernel_shap", {"n_samples": 96, "n_segments": 6, "segmentation": "grid"}),
])
def test_two_independent_calls_differ_by_what_their_errors_say(model, batch, name, params):
    images, targets = batch
    first = xai.create_explainer(name, model, **params, seed=0).explain_with_error(images, targets)
    second = xai.create_explainer(name, model, **params, seed=1).explain_with_error(images, targets)
    # Independent estimates of the same map: E|a - b|^2 = se_a^2 + se_b^2 (sqrt(2) x one error).
    expected = np.hypot(first.errors * _norms(first.maps), second.errors * _norms(second.maps))
    ratio = _norms(first.maps - second.maps) / expected
    assert 0.7 < np.median(ratio) < 1.4, ratio
    assert np.all((ratio > 0.25) & (ratio < 3)), ratio


def test_tolerance_mode_samples_until_the_error_is_small_or_the_cap_is_spent(model, batch):
    images, targets = batch
    explainer = xai.create_explainer("smoothgrad", model, n_samples=16, score="logit")
    plain = explainer.explain_with_error(images, targets)
    tolerance = 0.8 * plain.errors.min()  # so that every image needs more than 16 samples
    tight = explainer.explain_with_error(images, targets, tolerance=tolerance, max_samples=400)
    assert tight.converged.all() and np.all(tight.errors <= tolerance)
    assert np.all(tight.samples > 16) and np.all(tight.samples <= 400)
    capped = explainer.explain_with_error(images, targets, tolerance=1e-4, max_samples=24)
    assert not capped.converged.any() and tight.samples.dtype.kind == "i"
    # Four replicates of 4 (the fewest SmoothGrad pools), then rounds of two up to the cap.
    assert capped.samples.tolist() == [24] * 8
    loose = explainer.explain_with_error(images, targets, tolerance=10.0)
    assert loose.converged.all() and loose.samples.tolist() == [16] * 8


def test_integrated_gradients_reports_its_completeness_gap_and_doubles_its_steps(model, batch):
    images, targets = batch
    explainer = xai.create_explainer("integrated_gradients", model, steps=4, score="probability")
    result = explainer.explain_with_error(images, targets)
    probabilities = lambda x: np.asarray(model(x))[np.arange(len(x)), targets]  # noqa: E731
    difference = probabilities(images) - probabilities(np.zeros_like(images))
    gap = np.abs(result.maps.sum(axis=(1, 2)) - difference) / np.abs(difference)
    np.testing.assert_allclose(result.errors, gap, rtol=1e-3, atol=1e-6)
    assert np.isnan(result.order_errors).all()  # a gap, not replicates: no order error
    assert result.samples.tolist() == [4] * 8
    # A reduced map cannot show the gap: a signed sibling measures it.
    unsigned = xai.create_explainer("integrated_gradients", model, steps=4, score="probability", reduce="sum_abs")
    np.testing.assert_allclose(unsigned.explain_with_error(images, targets).errors, result.errors, rtol=1e-5)
    tolerance = float(np.median(gap)) / 2
    doubled = explainer.explain_with_error(images, targets, tolerance=tolerance, max_samples=64)
    assert set(doubled.samples.tolist()) <= {4, 8, 16, 32, 64} and doubled.samples.max() > 4
    assert np.all(doubled.errors[doubled.converged] <= tolerance)
    assert np.all(doubled.samples[~doubled.converged] == 64)


def test_doubling_the_steps_adds_midpoints_to_the_gradients_already_summed(model, batch, monkeypatch):
    """Tolerance mode reaches 16 steps from 4 by adding the midpoint sums of 4 and 8 steps:
    16 gradients per image in all (not 4 + 8 + 16), and the map a direct 16-step run gives,
    for the right Riemann and the trapezoid rules."""
    from xai.explainer import PerturbationExplainer

    images, targets = batch
    rows = []
    original = PerturbationExplainer.explain_totals
    monkeypatch.setattr(PerturbationExplainer, "explain_totals",
                        lambda self, x, t: rows.append(len(x) * self.n_copies()) or original(self, x, t))
    for rule, extra in (("riemann", 0), ("trapezoid", 1)):  # the trapezoid's first sum has both ends
        explainer = xai.create_explainer("integrated_gradients", model, steps=16, rule=rule)
        rows.clear()
        result = explainer.explain_with_error(images, targets, tolerance=1e-12, max_samples=16)
        doubled = result.samples == 16  # an image whose gap is exactly 0 stops at 4 steps
        assert doubled.sum() >= 6 and set(result.samples[~doubled].tolist()) <= {4}
        assert sum(rows) == np.sum(result.samples + extra)
        direct = explainer.explain(images[doubled], targets[doubled])
        np.testing.assert_allclose(result.maps[doubled], direct, rtol=1e-4, atol=1e-5 * np.abs(direct).max())


def test_the_midpoint_rule_is_exact_where_the_path_gradient_is_linear():
    """logit = sum W x**2 + b: along the path from black the gradient is linear in alpha, so
    the midpoint rule's map sums to logit(x) - logit(0) at any steps; the right Riemann sum
    is off by 1 / steps of it."""
    keras.utils.set_random_seed(2)
    inputs = keras.Input((8, 8, 3))
    squares = keras.layers.Multiply()([inputs, inputs])
    logits = keras.layers.Dense(2, name="predictions")(keras.layers.Flatten()(squares))
    quadratic = keras.Model(inputs, logits)
    x = np.random.default_rng(4).random((3, 8, 8, 3), dtype=np.float32)
    t = np.array([0, 1, 0], np.int32)
    w = quadratic.get_layer("predictions").kernel.numpy()[:, t].T.reshape(3, 8, 8, 3)
    exact = (w * x ** 2).sum(axis=(1, 2, 3))
    midpoint = xai.create_explainer("integrated_gradients", quadratic, steps=3, rule="midpoint").explain(x, t)
    np.testing.assert_allclose(midpoint.sum(axis=(1, 2)), exact, rtol=1e-5)
    riemann = xai.create_explainer("integrated_gradients", quadratic, steps=3).explain(x, t)
    np.testing.assert_allclose(riemann.sum(axis=(1, 2)), exact * (1 + 1 / 3), rtol=1e-5)


def test_deterministic_methods_report_zero_and_random_nan(model, batch):
    images, _ = batch
    cam = xai.create_explainer("cam", model).explain_with_error(images)  # targets: the predicted class
    np.testing.assert_array_equal(cam.maps, xai.create_explainer("cam", model).explain(images))
    assert np.all(cam.errors == 0) and np.all(cam.order_errors == 0) and cam.converged.all()
    chance = xai.create_explainer("random", model).explain_with_error(images)
    assert np.isnan(chance.errors).all() and np.isnan(chance.order_errors).all()


@pytest.mark.parametrize("kwargs, message", [({"tolerance": 0}, "tolerance"), ({"tolerance": "small"}, "tolerance"),
                                             ({"tolerance": 0.1, "max_samples": 0}, "max_samples")])
def test_bad_tolerance_settings_are_refused(model, batch, kwargs, message):
    with pytest.raises(ParameterError, match=message):
        xai.create_explainer("rise", model, n_masks=8).explain_with_error(batch[0], **kwargs)


def test_compare_stores_and_reports_each_stochastic_maps_error(model_file, tmp_path):
    import sqlite3

    from xai.runner import CompareConfig, compare

    config = CompareConfig(methods=["smoothgrad", "rise", "integrated_gradients", "cam", "random"],
                           method_params={"smoothgrad": {"n_samples": 8, "score": "logit"}, "rise": {"n_masks": 32},
                                          "integrated_gradients": {"steps": 8}},
                           model=str(model_file), n_images=6, batch_size=3, metrics=["deletion"], tolerance=0.05,
                           sanity_images=0, out=str(tmp_path))
    run_dir = compare(config, quiet=True)
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        rows = db.execute("SELECT method, metric, value FROM vals WHERE metric LIKE 'map_%'").fetchall()
    errors = {(m, k): [] for m, k, _ in rows}
    for method, metric, value in rows:
        errors[method, metric].append(value)
    # Deterministic methods and `random` have no Monte Carlo error to show.
    assert {m for m, _ in errors} == {"smoothgrad", "rise", "integrated_gradients"}
    assert all(len(v) == 6 for v in errors.values())
    for method in ("smoothgrad", "rise", "integrated_gradients"):
        reached = np.array(errors[method, "map_converged"]) == 1
        assert np.all(np.array(errors[method, "map_error"])[reached] <= 0.05)
    for report in ("report.html", "report.md"):
        assert "Are the maps themselves converged?" in (run_dir / report).read_text(), report


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_cli_refuses_a_bad_tolerance_before_any_work(value):
    from click.testing import CliRunner

    from xai.cli import main

    result = CliRunner().invoke(main, ["compare", "--tolerance", value])
    assert result.exit_code == 2 and "--tolerance" in result.output and "Traceback" not in result.output


@pytest.fixture(scope="module")
def sure_model_file(tmp_path_factory):
    """A classifier that is sure of class 0 on every image (p > 1 - 1e-6): saturated."""
    keras.utils.set_random_seed(2)
    model = xai.vgg16_gap((32, 32, 3), num_classes=2, width=0.125)
    kernel, _ = model.get_layer("predictions").get_weights()
    model.get_layer("predictions").set_weights([kernel * 0.01, np.array([15.0, 0.0], np.float32)])
    path = tmp_path_factory.mktemp("sure") / "sure.keras"
    xai.models.save_model(model, path)
    return path


def test_saturation_is_flagged_for_gradients_of_the_loss_and_probability_only(model):
    probabilities = np.array([0.99995, 0.6])
    assert xai.create_explainer("vanilla_gradient", model).saturated(probabilities).tolist() == [True, False]
    assert xai.create_explainer("smoothgrad", model, score="probability").saturated(probabilities)[0]
    assert xai.create_explainer("vanilla_gradient", model, score="logit").saturated(probabilities) is None
    assert xai.create_explainer("cam", model).saturated(probabilities) is None
    assert xai.create_explainer("rise", model).saturated(probabilities) is None


def test_a_saturated_score_is_reported_by_compare_and_explain(sure_model_file, tmp_path):
    import sqlite3

    import tensorflow as tf
    from click.testing import CliRunner

    from xai.cli import main
    from xai.runner import CompareConfig, compare

    run_dir = compare(CompareConfig(methods=["vanilla_gradient", "cam"], model=str(sure_model_file), n_images=8,
                                    batch_size=4, metrics=["deletion"], sanity_images=0, out=str(tmp_path)),
                      quiet=True)
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        flags = db.execute("SELECT v.method, v.value, i.target FROM vals v JOIN images i USING (image_id) "
                           "WHERE v.metric='score_saturated'").fetchall()
    # The loss saturates where the target is the class the model is sure of, not where it is
    # the other class (p ~ 0: the loss's gradient is the logit's); CAM differentiates nothing.
    assert {method for method, _, _ in flags} == {"vanilla_gradient"} and len(flags) == 8
    assert all(value == float(target == 0) for _, value, target in flags), flags
    sure = sum(target == 0 for _, _, target in flags)
    assert 0 < sure < 8
    assert f'vanilla_gradient differentiates score="loss", which saturates on {sure} of 8 images' in (
        run_dir / "report.md").read_text()
    image = tmp_path / "image.png"
    image.write_bytes(tf.io.encode_png(np.full((32, 32, 3), 128, np.uint8)).numpy())
    result = CliRunner().invoke(main, ["explain", str(image), "--model", str(sure_model_file), "--method",
                                       "vanilla_gradient", "--method", "cam", "--out", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    assert "note: vanilla_gradient differentiates score='loss', which saturates on image.png" in result.output
    assert "note: cam" not in result.output


def test_the_python_entry_point_defaults_to_the_runners_tolerance():
    import inspect

    from xai.runner import DEFAULT_TOLERANCE, CompareConfig

    assert inspect.signature(xai.compare).parameters["tolerance"].default == DEFAULT_TOLERANCE
    assert CompareConfig().tolerance == DEFAULT_TOLERANCE
