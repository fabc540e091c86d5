"""The run key (canonical identity vs provenance), the results store, the metric registry."""

import dataclasses
import json
import math
import shutil
import sqlite3

import numpy as np
import pytest
from click.testing import CliRunner

import xai
from xai.cli import main
from xai.errors import ConfigError, ParameterError, StoreError
from xai.evaluation import registry as metric_registry
from xai.runner import CompareConfig, compare, resolve_config, run_identity, run_key
from xai.store import ResultsStore


def _key(model_file, **fields):
    config = CompareConfig(model=str(model_file), **fields)
    resolved = resolve_config(config)
    spec = xai.models.model_spec(xai.models.load_model(model_file))
    return run_key(run_identity(resolved, {"digest": "d", "kind": "file", "path": "p"}, spec))


def test_the_key_is_canonical(model_file):
    base = _key(model_file, methods=["smoothgrad", "cam"], metrics=["deletion", "insertion"])
    same = [
        dict(methods=["cam", "smoothgrad"], metrics=["insertion", "deletion"]),  # order
        dict(methods=["cam", "smoothgrad", "cam"], metrics=["deletion", "insertion", "deletion"]),
        dict(methods=["smoothgrad", "cam"], metrics=["deletion", "insertion"],  # explicit defaults
             method_params={"smoothgrad": {"n_samples": 50, "noise_level": 0.15, "batch_size": 32}}),
        dict(methods=["smoothgrad", "cam"], metrics=["deletion", "insertion"], out="elsewhere",
             backend="ray", workers=3),  # where and how it runs
    ]
    for fields in same:
        assert _key(model_file, **fields) == base, fields
    # An int where a float is declared is the same value once resolved.
    assert (_key(model_file, methods=["smoothgrad"], method_params={"smoothgrad": {"noise_level": 1}})
            == _key(model_file, methods=["smoothgrad"], method_params={"smoothgrad": {"noise_level": 1.0}}))
    different = [
        dict(methods=["smoothgrad", "cam"], metrics=["deletion", "insertion"],
             method_params={"smoothgrad": {"n_samples": 10}}),
        dict(methods=["smoothgrad"], metrics=["deletion", "insertion"]),
        dict(methods=["smoothgrad", "cam"], metrics=["deletion"]),
        dict(methods=["smoothgrad", "cam"], metrics=["deletion", "insertion"], seed=1),
        dict(methods=["smoothgrad", "cam"], metrics=["deletion", "insertion"], protocol="xplique"),
    ]
    for fields in different:
        assert _key(model_file, **fields) != base, fields


def test_every_config_field_is_identity_unless_declared_provenance(model_file):
    identity = run_identity(resolve_config(CompareConfig(model=str(model_file))),
                            {"digest": "d", "kind": "file", "path": "/some/where/model.keras"},
                            xai.models.model_spec(xai.models.load_model(model_file)))
    fields = {f.name: f.metadata.get("identity", True) for f in dataclasses.fields(CompareConfig)}
    via_spec = {f.name for f in dataclasses.fields(CompareConfig) if f.metadata.get("via") == "spec"}
    assert {name for name, kept in fields.items() if not kept} - via_spec == {"out", "backend", "address",
                                                                               "workers", "image_source"}
    assert via_spec == {"input_range"}  # reaches the identity as the model's spec (below)
    expected = {name for name, kept in fields.items() if kept} - {"method_params"}
    assert expected <= set(identity)
    assert identity["model"] == {"digest": "d"}  # the file's digest, never its path
    assert "versions" not in identity and "/some/where" not in json.dumps(identity)
    assert str(model_file) not in json.dumps(identity)
    assert "input_range" not in identity  # [0, 1]: earlier runs keep their keys
    spec = dataclasses.replace(xai.models.model_spec(xai.models.load_model(model_file)), input_range=(0.0, 255.0))
    wide = run_identity(resolve_config(CompareConfig(model=str(model_file), input_range=(0, 255))),
                        {"digest": "d", "kind": "file", "path": "/some/where/model.keras"}, spec)
    assert wide["input_range"] == [0.0, 255.0] and run_key(wide) != run_key(identity)


def test_default_comparison_leaves_out_only_the_opt_in_methods_and_all_runs_everything():
    from xai.registry import get_explainer

    everything = xai.list_explainers()
    opt_in = [m for m in everything if not get_explainer(m).in_default_comparison]
    assert {"sobol", "hsic"} <= set(opt_in) and "random" not in opt_in
    assert list(resolve_config(CompareConfig()).methods) == [m for m in everything if m not in opt_in]
    assert list(resolve_config(CompareConfig(methods=["all"])).methods) == everything
    # Named, an opt-in method runs (methods in canonical order, whatever order they are named in).
    assert resolve_config(CompareConfig(methods=["sobol", "random"])).methods == ("random", "sobol")


def test_bad_configuration_is_refused_before_any_work(model_file):
    with pytest.raises(ConfigError, match="no methods given"):
        resolve_config(CompareConfig(methods=[]))
    with pytest.raises(ConfigError, match="no metrics given"):
        resolve_config(CompareConfig(metrics=[]))
    with pytest.raises(ConfigError, match="unknown metric.*choose from deletion, insertion"):
        resolve_config(CompareConfig(metrics=["accuracy"]))
    with pytest.raises(ParameterError, match="'n_samples' must be int >= 1; got -1"):
        resolve_config(CompareConfig(methods=["smoothgrad"], method_params={"smoothgrad": {"n_samples": -1}}))
    with pytest.raises(ParameterError, match="unknown parameter"):
        resolve_config(CompareConfig(methods=["smoothgrad"], method_params={"smoothgrad": {"nope": 1}}))
    with pytest.raises(ConfigError, match="does not include"):
        resolve_config(CompareConfig(methods=["cam"], method_params={"smoothgrad": {"n_samples": 4}}))
    with pytest.raises(ParameterError, match="seed"):
        resolve_config(CompareConfig(seed=-1))
    result = CliRunner().invoke(main, ["compare", "--methods", "", "--quiet"])
    assert result.exit_code == 1 and "no methods given" in result.output and "Traceback" not in result.output


def test_model_path_and_library_versions_are_provenance(model_file, tmp_path, monkeypatch):
    config = dict(methods=["cam", "random"], n_images=4, batch_size=4, metrics=["deletion"],
                  out=str(tmp_path / "runs"))
    first = compare(CompareConfig(model=str(model_file), **config), quiet=True, write_report=False)
    moved = tmp_path / "moved" / "renamed.keras"
    moved.parent.mkdir()
    shutil.copy(model_file, moved)
    monkeypatch.setattr(xai, "__version__", "99.0.0")
    with pytest.warns(RuntimeWarning, match=r"other library versions \(xai .* -> 99.0.0\)"):
        again = compare(CompareConfig(model=str(moved), **config), quiet=True)
    assert again == first  # the same run: resumed, not started anew
    store = ResultsStore(first)
    assert store.extra("provenance")["model"]["path"] == str(model_file.resolve())  # the first run's
    assert store.extra("resumed_with")[0]["xai"] == "99.0.0"
    store.close()
    report = (first / "report.html").read_text()
    assert "resumed with" in report and "99.0.0" in report


def test_store_refuses_another_run_and_a_damaged_file(tmp_path):
    ResultsStore(tmp_path, {"a": 1}, "key-a").close()
    with pytest.raises(StoreError, match="runs never mix"):
        ResultsStore(tmp_path, {"a": 2}, "key-b")
    with pytest.raises(StoreError, match="holds no results.sqlite"):
        ResultsStore(tmp_path / "nothing-here")
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "results.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="cannot use the results store"):
        ResultsStore(damaged, {"a": 1}, "key-a")


def test_store_round_trips_nan_and_retries_failed_batches(tmp_path):
    store = ResultsStore(tmp_path, {"a": 1}, "k")
    images = [("img-0", 1, 1), ("img-1", 0, 0)]
    store.record_failure("m", 0, "RuntimeError: boom", 2, traceback="Traceback ...\nRuntimeError: boom",
                         images=images)
    assert not store.is_done("m", 0) and store.n_images() == 2
    assert store.failures() == [{"method": "m", "batch": 0, "error": "RuntimeError: boom", "n_images": 2,
                                 "traceback": "Traceback ...\nRuntimeError: boom"}]
    store.commit_batch("m", 0, n_images=2, seconds=0.5, images=images,
                       values=[("img-0", "deletion", math.nan), ("img-1", "deletion", 0.25)])
    assert store.is_done("m", 0) and store.failures() == []  # the retry replaced the failure
    ids, values = store.value_arrays()["deletion"]["m"]
    assert ids == ["img-0", "img-1"] and math.isnan(values[0]) and values[1] == 0.25
    assert [v for *_, v in store.iter_values()][1] == 0.25
    store.close()
    with sqlite3.connect(tmp_path / "results.sqlite") as db:
        assert db.execute("SELECT value FROM vals WHERE image_id='img-0'").fetchone() == (None,)


def test_a_metric_is_added_in_one_place_and_reaches_runner_report_and_cli(model_file, tmp_path):
    @metric_registry.register_metric("map_peak", higher_is_better=True, description="largest map value",
                                     default=False)
    def map_peak(inputs):
        return metric_registry.MetricOutput(inputs.maps.reshape(len(inputs.maps), -1).max(axis=1))

    try:
        assert "map_peak" in metric_registry.requestable_names()
        assert "map_peak" not in metric_registry.default_names()
        run = compare(CompareConfig(model=str(model_file), methods=["cam", "random"], n_images=4,
                                    batch_size=2, metrics=["map_peak"], out=str(tmp_path)), quiet=True)
        store = ResultsStore(run)
        ids, peaks = store.value_arrays()["map_peak"]["random"]
        store.close()
        assert len(ids) == 4 and np.all((peaks > 0.9) & (peaks < 1.0))  # uniform noise on 64x64 pixels
        assert "largest map value" in (run / "report.html").read_text()
        assert "map_peak" in CliRunner().invoke(main, ["metrics"]).output
    finally:
        metric_registry._METRICS.pop("map_peak")
