"""The Ray backend on a local cluster started here: same results as one process, a dying
worker's shard retried, a clear message without Ray."""

import os
import sqlite3
import sys

import numpy as np
import pytest
import ray
import tensorflow as tf
from click.testing import CliRunner

import xai
from xai.cli import main
from xai.explainer import BATCH_SIZE
from xai.runner import CompareConfig, compare


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024 ** 2)
    yield
    ray.shutdown()


def _values(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return sorted(db.execute("SELECT image_id, method, metric, value FROM vals "
                                 "WHERE metric != 'seconds_per_image'").fetchall())


def _failures(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return db.execute("SELECT method, batch, error FROM batches WHERE status='failed'").fetchall()


def test_ray_backend_equals_local_and_retries_a_dead_workers_shard(trained_default, ray_cluster, tmp_path):
    marker = str(tmp_path / "a-worker-died")

    @xai.register_explainer("dies_once")
    class DiesOnce(xai.Explainer):
        """Kills the process that runs it the first time, anywhere: a worker crash."""

        parameters = {"batch_size": BATCH_SIZE}

        def explain_batch(self, images, targets, offset):
            if not os.path.exists(marker):
                open(marker, "w").close()
                os._exit(1)
            return tf.reduce_mean(images, axis=-1)

    config = dict(methods=["vanilla_gradient", "cam", "smoothgrad", "rise", "dies_once"],
                  method_params={"smoothgrad": {"n_samples": 4}, "rise": {"n_masks": 32}},
                  n_images=12, batch_size=4, metrics=["deletion", "insertion", "pointing_game"])
    try:
        on_ray = compare(CompareConfig(**config, backend="ray", workers=2, out=str(tmp_path / "ray")),
                         quiet=True, write_report=False)
        assert os.path.exists(marker)  # a worker really died, and its shard was run again
        local = compare(CompareConfig(**config, out=str(tmp_path / "local")), quiet=True,
                        write_report=False)
    finally:
        xai.registry.REGISTRY.unregister("dies_once")
    assert on_ray.name == local.name  # the backend is not part of the run's identity
    assert _failures(on_ray) == []
    a, b = _values(on_ray), _values(local)
    assert len(a) == 12 * 5 * 3
    assert [r[:3] for r in a] == [r[:3] for r in b]
    # Workers run TensorFlow on fewer threads: sums may round differently, nothing more.
    np.testing.assert_allclose([r[3] for r in a], [r[3] for r in b], rtol=1e-4, atol=1e-6)

    # The same command again: all work is committed, so none of it runs. A "dies_once" that
    # now always fails would show up as failures if anything were recomputed.
    @xai.register_explainer("dies_once")
    class DiesOnce(xai.Explainer):  # noqa: F811 - same name and qualname: the same run key
        parameters = {"batch_size": BATCH_SIZE}

        def explain_batch(self, images, targets, offset):
            raise RuntimeError("recomputed")

    try:
        again = compare(CompareConfig(**config, backend="ray", workers=2, out=str(tmp_path / "ray")),
                        quiet=True, write_report=False)
    finally:
        xai.registry.REGISTRY.unregister("dies_once")
    assert again == on_ray and _failures(again) == [] and _values(again) == a


def test_ray_backend_without_ray_says_how_to_install(trained_default, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["compare", "--backend", "ray", "--methods", "cam",
                                       "--n-images", "4", "--quiet"])
    assert result.exit_code != 0
    assert "pip install" in result.output and "[ray]" in result.output
    assert "Traceback" not in result.output
