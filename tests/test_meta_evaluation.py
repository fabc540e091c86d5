"""MoRF/LeRF, the symmetric relevance gain, Holm correction and the meta-evaluation of metrics."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from xai import evaluation as ev
from xai.cli import main
from xai.errors import ParameterError
from xai.evaluation.meta_evaluation import evaluate_metric
from xai.evaluation.statistics import holm

from test_evaluation import _linear_model


def _region_model(h=8, w=8):
    weights = np.zeros((h, w))
    weights[2:5, 3:6] = 3.0
    return _linear_model(weights, h, w, bias0=20.0), weights


def test_lerf_is_morf_of_the_negated_map():
    model, weights = _region_model()
    image = np.ones((1, 8, 8, 1), np.float32)
    m = np.random.default_rng(1).random((1, 8, 8)).astype(np.float32)  # no ties
    lerf = ev.deletion(model, image, [1], m, steps=16, order="lerf")
    morf_of_negated = ev.deletion(model, image, [1], -m, steps=16, order="morf")
    np.testing.assert_allclose(lerf.curves, morf_of_negated.curves, atol=1e-7)
    assert lerf.protocol["order"] == "lerf" and "ascending" in lerf.protocol["ranking"]
    with pytest.raises(ParameterError, match="order"):
        ev.deletion(model, image, [1], m, steps=16, order="random")


def test_symmetric_relevance_gain_is_lerf_minus_morf_and_zero_without_information():
    model, weights = _region_model()
    image = np.ones((1, 8, 8, 1), np.float32)
    good = weights[None].astype(np.float32) + np.linspace(0, 1e-3, 64, dtype=np.float32).reshape(1, 8, 8)
    kw = dict(steps=16, score="probability")
    gain = ev.symmetric_relevance_gain(model, image, [1], good, **kw)
    by_hand = (ev.deletion(model, image, [1], good, order="lerf", **kw).auc
               - ev.deletion(model, image, [1], good, order="morf", **kw).auc)
    np.testing.assert_allclose(gain.auc, by_hand, atol=1e-12)
    assert gain.auc[0] > 0.5  # the region is all the evidence: LeRF keeps it, MoRF removes it first
    assert ev.symmetric_relevance_gain(model, image, [1], -good, **kw).auc[0] == pytest.approx(-gain.auc[0])
    # A constant map orders pixels the same way both ways (ties by index): no gain at all.
    flat = ev.symmetric_relevance_gain(model, image, [1], np.ones((1, 8, 8), np.float32), **kw)
    assert flat.auc[0] == 0.0
    with pytest.raises(ParameterError, match="both orders"):
        ev.symmetric_relevance_gain(model, image, [1], good, order="lerf")


def test_registry_metrics_share_one_batch_morf_curve(tiny_model, images):
    """`deletion` and `symmetric_relevance_gain` of one batch read one MoRF pass: the values
    equal the standalone functions', and the scorer scores each curve's images once."""
    from xai.evaluation.registry import MetricInputs, get_metric

    targets = np.array([0, 1, 0, 1], np.int32)
    maps = images.mean(-1)
    scorer = ev.ModelScorer(tiny_model)
    inputs = MetricInputs(scorer=scorer, images=images, targets=targets, maps=maps)
    rows_fn, calls = scorer.rows_fn("probability"), []
    scorer._compiled["probability", False] = lambda *a: calls.append(len(a[-1])) or rows_fn(*a)
    deletion = get_metric("deletion").per_batch(inputs)
    gain = get_metric("symmetric_relevance_gain").per_batch(inputs)
    np.testing.assert_allclose(deletion.values, ev.deletion(tiny_model, images, targets, maps).auc, atol=1e-7)
    np.testing.assert_allclose(gain.values, ev.symmetric_relevance_gain(tiny_model, images, targets, maps).auc,
                               atol=1e-7)
    points = len(deletion.curves[0])
    assert sum(calls) == 2 * len(images) * (points - 2)  # MoRF and LeRF inside; their ends are shared


def test_holm_matches_the_step_down_definition():
    p = np.array([0.04, 0.001, 0.02, 0.5])
    # sorted: 0.001*4, 0.02*3, 0.04*2, 0.5*1, then running maximum
    expected = {1: 0.004, 2: 0.06, 0: 0.08, 3: 0.5}
    np.testing.assert_allclose(holm(p), [expected[i] for i in range(4)])
    assert np.isnan(holm([np.nan])[0]) and holm([]).size == 0


def _values(effects, n=40, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.random(n)
    ids = [f"img{i:03d}" for i in range(n)]
    return {m: (ids, base + e + rng.normal(0, noise, n)) for m, e in effects.items()}


def test_a_metric_that_ignores_the_map_fails_the_noise_floor():
    # Values depend on the image only (plus measurement noise), never on the method's map.
    values = _values({"a": 0.0, "b": 0.0, "c": 0.0, "random": 0.0}, noise=0.01)
    verdict = evaluate_metric("blind", values, higher_is_better=True)
    assert verdict.noise_floor == "fails" and not verdict.trusted
    assert verdict.beats_chance == []
    assert "cannot tell the methods from chance" in verdict.sentence and "do not rank" in verdict.sentence


def test_a_metric_that_separates_passes_and_its_ranking_repeats():
    values = _values({"a": 0.3, "b": 0.2, "c": 0.1, "random": 0.0}, noise=0.02)
    verdict = evaluate_metric("good", values, higher_is_better=True)
    assert verdict.noise_floor == "separates" and verdict.trusted
    assert sorted(verdict.beats_chance) == ["a", "b", "c"] and verdict.chance_rank == 4
    assert all(p < 0.05 for p in verdict.p_vs_chance.values())
    assert verdict.halves_agreement == pytest.approx(1.0)
    # Lower is better: the same numbers now put every method below chance.
    flipped = evaluate_metric("good", values, higher_is_better=False)
    assert flipped.noise_floor == "fails" and sorted(flipped.below_chance) == ["a", "b", "c"]
    assert flipped.chance_rank == 1


def test_seed_agreement_and_unchecked_runs():
    values = _values({"a": 0.3, "b": 0.2, "c": 0.1, "random": 0.0}, noise=0.02)
    shuffled = _values({"a": 0.0, "b": 0.2, "c": 0.3, "random": 0.1}, noise=0.02, seed=1)
    verdict = evaluate_metric("stochastic", values, True, replicate=shuffled)
    assert verdict.seeds_agreement < 0.5
    assert "unstable between two seeds" in verdict.sentence
    no_chance = {m: v for m, v in values.items() if m != "random"}
    unchecked = evaluate_metric("x", no_chance, True)
    assert unchecked.noise_floor == "unchecked" and not unchecked.trusted
    assert "include `random` among the methods" in unchecked.sentence and unchecked.untested == []


def test_compare_reports_the_meta_evaluation(model_file, tmp_path):
    result = CliRunner().invoke(main, [
        "compare", "--model", str(model_file), "--n-images", "8", "--batch-size", "4", "--n-examples", "6",
        "--methods", "random,vanilla_gradient,cam,grad_cam", "--metrics", "deletion,symmetric_relevance_gain,mufidelity",
        "--out", str(tmp_path), "--quiet"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    summary = json.loads((run_dir / "results.json").read_text())
    meta = summary["meta_evaluation"]
    assert set(meta) == {"deletion", "symmetric_relevance_gain", "mufidelity"}
    # A stochastic metric runs under seed + 1 too; its replicate is only read for the agreement.
    assert -1 <= meta["mufidelity"]["seeds_agreement"] <= 1
    assert meta["deletion"]["seeds_agreement"] is None
    replicate = [v for v in summary["values"] if v["metric"] == "mufidelity#seed+1"]
    assert len(replicate) == 4 * 8
    assert not any(r["metric"].endswith("#seed+1") for r in summary["summary"])
    assert summary["protocols"]["mufidelity"]["n_subsets"] == 200
    for verdict in meta.values():
        assert verdict["noise_floor"] in ("separates", "fails") and verdict["sentence"]
        assert set(verdict["p_vs_chance"]) == {"vanilla_gradient", "cam", "grad_cam"}
    assert summary["protocols"]["symmetric_relevance_gain"]["order"] == "lerf - morf"
    for row in summary["summary"]:
        if row["metric"] in meta and not meta[row["metric"]]["trusted"]:
            assert row["rank"] is None and row["p_vs_best"] is None
        if row["metric"] == "seconds_per_image":
            assert row["p_vs_best"] is None
    assert len(summary["verdict"]) == 3 and all(summary["verdict"])
    assert set(summary["leaderboard"]["methods"]) == {"random", "vanilla_gradient", "cam", "grad_cam"}
    page = (run_dir / "report.html").read_text()
    assert "Can each metric be believed?" in page and "Holm" in page and "<h2>Verdict</h2>" in page
    assert (run_dir / "figures" / "symmetric_relevance_gain.png").is_file()
    # --n-examples 6 over batches of 4: the gallery spans both batches.
    assert [(run_dir / "figures" / f"gallery-{n}.png").is_file() for n in range(7)] == [True] * 6 + [False]


def test_deletion_with_noisy_linear_imputation_scores_the_imputed_images():
    from xai.evaluation.remove_and_debias import noisy_linear_impute

    model, weights = _region_model()
    image = np.random.default_rng(2).random((2, 8, 8, 1)).astype(np.float32)
    m = np.random.default_rng(3).random((2, 8, 8)).astype(np.float32)
    result = ev.deletion(model, image, [1, 0], m, steps=4, baseline="noisy_linear")
    assert "noisy linear" in result.protocol["baseline"]
    ranks = np.argsort(np.argsort(-m.reshape(2, -1), axis=1, kind="stable"), axis=1, kind="stable")
    k = 2  # 32 of 64 pixels removed
    removed = (ranks < 32).reshape(2, 8, 8)
    by_hand = model.predict(noisy_linear_impute(image, removed, noise=0.01, seed=(0, k)), verbose=0)
    np.testing.assert_allclose(result.curves[:, k], by_hand[[0, 1], [1, 0]], atol=1e-6)
    with pytest.raises(ParameterError, match="insertion starts with no pixel kept"):
        ev.insertion(model, image, [1, 0], m, steps=4, baseline="noisy_linear")


def test_agreement_leaves_chance_out_and_an_unstable_ranking_does_not_rank():
    # a beats b on one half of the images, b beats a on the other; random is last on both.
    n = 40
    ids = [f"img{i:03d}" for i in range(n)]
    even = np.arange(n) % 2 == 0
    a = np.where(even, 0.9, 0.5) + np.linspace(0, 1e-3, n)
    b = np.where(even, 0.5, 0.9) + np.linspace(0, 2e-3, n)
    c = np.full(n, 0.7) + np.linspace(0, 3e-3, n)
    values = {"a": (ids, a), "b": (ids, b), "c": (ids, c), "random": (ids, np.linspace(0.0, 0.1, n))}
    verdict = evaluate_metric("halves", values, higher_is_better=True)
    assert verdict.noise_floor == "separates"  # every method beats random on every image
    assert verdict.halves_agreement == pytest.approx(-1.0)  # a, c, b against b, c, a: random left out
    assert not verdict.reliable and not verdict.trusted and verdict.verdict == "do not rank"
    assert "does not repeat" in verdict.sentence


def test_identical_to_chance_counts_as_a_test_and_methods_without_values_are_named():
    values = _values({"a": 0.3, "b": 0.2, "random": 0.0}, noise=0.02)
    values["same"] = values["random"]  # identical on every image: p = 1, not left out
    values["broken"] = (values["a"][0], np.full(40, np.nan))  # every batch failed
    verdict = evaluate_metric("m", values, higher_is_better=True)
    assert verdict.p_vs_chance["same"] == 1.0
    assert verdict.untested == ["broken"] and "broken" not in verdict.p_vs_chance
    assert sorted(verdict.beats_chance) == ["a", "b"] and verdict.noise_floor == "separates"
    assert "not tested" in verdict.sentence


def test_a_failing_metric_keeps_the_maps_and_the_other_metrics(model_file, tmp_path):
    from xai.evaluation import registry

    @registry.register_metric("always_fails", higher_is_better=True, description="raises", default=False)
    def _fails(inputs):
        raise RuntimeError("out of memory, pretend")

    try:
        result = CliRunner().invoke(main, [
            "compare", "--model", str(model_file), "--n-images", "4", "--batch-size", "4",
            "--methods", "random,cam", "--metrics", "deletion,always_fails",
            "--out", str(tmp_path), "--quiet"], catch_exceptions=False)
    finally:
        registry._METRICS.pop("always_fails")
    assert result.exit_code == 0, result.output
    run_dir = next(p for p in tmp_path.iterdir() if p.is_dir())
    summary = json.loads((run_dir / "results.json").read_text())
    assert summary["failures"] == []
    assert {(f["metric"], f["method"]) for f in summary["metric_failures"]} == {
        ("always_fails", "random"), ("always_fails", "cam")}
    assert "out of memory, pretend" in summary["metric_failures"][0]["error"]
    deletion = [v for v in summary["values"] if v["metric"] == "deletion"]
    assert len(deletion) == 2 * 4 and all(v["value"] is not None for v in deletion)
    assert "Metric failures" in (run_dir / "report.html").read_text()


def test_compare_warns_without_random(model_file, tmp_path):
    result = CliRunner().invoke(main, [
        "compare", "--model", str(model_file), "--n-images", "4", "--batch-size", "4",
        "--methods", "cam", "--metrics", "deletion", "--out", str(tmp_path), "--quiet"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "`random` is not among the methods" in result.output


def test_leaderboard_and_verdict_rank_only_trusted_metrics():
    from xai.report import leaderboard, summary_table, verdict_sentences

    good = _values({"a": 0.3, "b": 0.3, "c": 0.1, "random": 0.0}, noise=0.02)
    blind = _values({"a": 0.0, "b": 0.0, "c": 0.0, "random": 0.0}, noise=0.01, seed=3)
    arrays = {"insertion": {m: (np.asarray(i), v) for m, (i, v) in good.items()},
              "deletion": {m: (np.asarray(i), v) for m, (i, v) in blind.items()}}
    meta = {"insertion": evaluate_metric("insertion", good, True),
            "deletion": evaluate_metric("deletion", blind, False)}
    table = summary_table(arrays, trusted={"insertion"})
    board = leaderboard(table, meta, {"a": 0.5, "b": 0.5, "c": 0.2, "random": 0.001})
    assert board["metrics"] == ["insertion"]
    best, other = board["methods"][:2]
    assert {best, other} == {"a", "b"} and board["methods"][2:] == ["c", "random"]
    cells = board["cells"]
    assert cells[best]["insertion"]["rank"] == 1
    assert cells[other]["insertion"]["tied_best"]  # the same effect: not separable
    assert not cells["c"]["insertion"]["tied_best"]
    first, second, third = verdict_sentences(board, meta)
    assert "1 of 2 metrics can rank" in first and "deletion cannot" in first
    assert second.startswith(f"{best} ranks best") and f"{other} cannot be told apart" in second
    assert "is the cheapest at 0.5 s" in third
    nothing = verdict_sentences(leaderboard(summary_table(arrays, trusted=set()), {"deletion": meta["deletion"]}, {}),
                                {"deletion": meta["deletion"]})
    assert "None of the 1 metrics can rank" in nothing[0] and "No method is named best" in nothing[2]


def test_sanity_readings_against_the_stated_threshold():
    from xai.report import SANITY_THRESHOLD, sanity_readings

    sanity = {"faithful": {"spearman_mean": [0.9, 0.3, SANITY_THRESHOLD], "random_logit_mean": -0.2},
              "blind": {"spearman_mean": [1.0, 0.99, 0.98], "random_logit_mean": 0.97},
              "undefined": {"spearman_mean": [0.5, float("nan")], "random_logit_mean": None},
              "crashed": {"error": "boom"}}
    three = sanity_readings(sanity, n_classes=3)
    assert three["faithful"] == {"cascade": True, "random_logit": True}
    assert three["blind"] == {"cascade": False, "random_logit": False}
    assert three["undefined"] == {"cascade": None, "random_logit": None} and "crashed" not in three
    # Two classes: the random-logit check is degenerate and not read.
    assert sanity_readings(sanity, n_classes=2)["blind"] == {"cascade": False, "random_logit": None}
    # A Monte Carlo method whose two seeds agree no more than the threshold cannot pass or fail.
    noisy = {"noisy": {"spearman_mean": [0.2, 0.1], "random_logit_mean": 0.0, "seed_floor_mean": 0.4},
             "steady": {"spearman_mean": [0.8, 0.1], "random_logit_mean": 0.0, "seed_floor_mean": 0.9}}
    readings = sanity_readings(noisy, n_classes=3)
    assert readings["noisy"] == {"cascade": None, "random_logit": True, "too_noisy": True}
    assert readings["steady"] == {"cascade": True, "random_logit": True}
