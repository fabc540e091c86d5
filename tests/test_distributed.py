"""The Ray backend on a real multi-node cluster (a head without CPUs and two worker nodes,
all on this machine): the model travels as bytes, never as a path; results equal the local
backend's; a worker process or a whole node lost mid-run loses nothing; images read by the
workers themselves; a clear message without Ray."""

import os
import shutil
import sqlite3
import sys
import threading
import time

import numpy as np
import pytest
import tensorflow as tf
from click.testing import CliRunner
from PIL import Image

import xai
from xai.cli import main
from xai.explainer import BATCH_SIZE
from xai.runner import CompareConfig, compare

ray = pytest.importorskip("ray")
from ray.cluster_utils import Cluster  # noqa: E402

#: Small settings: every test here shares two 1-CPU worker nodes.
CONFIG = dict(methods=["vanilla_gradient", "cam", "rise"], method_params={"rise": {"n_masks": 16}},
              n_images=8, batch_size=2, metrics=["deletion", "insertion", "pointing_game", "sanity"],
              sanity_images=4)


@pytest.fixture(scope="module")
def cluster():
    """A head node with no CPUs (nothing runs beside the driver) and two 1-CPU worker nodes."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 0, "object_store_memory": 80 * 1024 ** 2, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=80 * 1024 ** 2)
    cluster.wait_for_nodes()
    yield cluster
    if ray.is_initialized():
        ray.shutdown()
    cluster.shutdown()


@pytest.fixture(scope="module")
def local_run(model_file, tmp_path_factory):
    """The reference: the same comparison on the local backend."""
    return compare(CompareConfig(**CONFIG, model=str(model_file), out=str(tmp_path_factory.mktemp("local"))),
                   quiet=True, write_report=False)


def _values(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return sorted(db.execute("SELECT image_id, method, metric, value FROM vals "
                                 "WHERE metric != 'seconds_per_image'").fetchall())


def _batches(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return sorted(db.execute("SELECT method, batch, status, seconds FROM batches").fetchall())


def _failures(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return db.execute("SELECT method, batch, error FROM batches WHERE status='failed'").fetchall()


def _extra(run_dir, name):
    import json

    with sqlite3.connect(run_dir / "results.sqlite") as db:
        row = db.execute("SELECT value FROM extras WHERE name=?", (name,)).fetchone()
    return None if row is None else json.loads(row[0])


def _assert_same_results(run_dir, local, same_key=True):
    if same_key:  # neither the backend nor the image source is part of the identity
        assert run_dir.name == local.name
    assert _failures(run_dir) == []
    a, b = _values(run_dir), _values(local)
    # images x methods x (deletion, insertion, pointing game), RISE's map errors (tolerance
    # mode: error, converged, pixel-order error) and whether vanilla_gradient's loss saturates
    assert len(a) == 8 * 3 * 3 + 8 * 3 + 8
    assert [r[:3] for r in a] == [r[:3] for r in b]
    np.testing.assert_allclose([np.nan if r[3] is None else r[3] for r in a],
                               [np.nan if r[3] is None else r[3] for r in b], rtol=1e-5, atol=1e-5)
    sanity, expected = _extra(run_dir, "sanity"), _extra(local, "sanity")
    assert sorted(sanity) == sorted(expected) == ["cam", "rise", "vanilla_gradient"]
    for method in expected:
        # seed_floor_mean too: RISE's 16 masks may be too noisy for its cascade to run at all.
        for field in ("spearman_mean", "seed_floor_mean"):
            np.testing.assert_allclose(np.array(sanity[method][field], float),
                                       np.array(expected[method][field], float), atol=1e-5)
    assert expected["rise"]["seed_floor_mean"] is not None


def test_workers_read_nothing_from_the_drivers_disk(cluster, local_run, model_file, tmp_path, monkeypatch):
    """A model in memory whose file is deleted once the driver has loaded it (and the run's
    copy deleted before any worker starts), the images read by the workers: results equal the
    local backend's, sanity checks included."""
    from xai.distributed import RayBackend

    mine = tmp_path / "model.keras"
    shutil.copy(model_file, mine)
    shutil.copy(str(model_file) + ".xai.json", str(mine) + ".xai.json")
    start = RayBackend._start
    deleted = []

    def start_without_files(self, plan):
        for path in tmp_path.glob("ray/*/model.keras*"):
            path.unlink()
            deleted.append(path.name)
        return start(self, plan)

    monkeypatch.setattr(RayBackend, "_start", start_without_files)
    model = xai.models.load_model(mine)
    for path in tmp_path.glob("model.keras*"):
        path.unlink()
        deleted.append(path.name)
    result = xai.compare(model=model, methods=CONFIG["methods"], params=CONFIG["method_params"],
                         n_images=8, batch_size=2, metrics=CONFIG["metrics"], sanity_images=4, out=str(tmp_path / "ray"),
                         backend="ray", address=cluster.address, workers=2, image_source="workers",
                         quiet=True)
    assert sorted(deleted) == ["model.keras", "model.keras", "model.keras.xai.json", "model.keras.xai.json"]
    _assert_same_results(result.run_dir, local_run, same_key=False)  # in memory: keyed by its weights
    (execution,) = _extra(result.run_dir, "executions")
    assert execution["image_source"] == "workers" and execution["backend"] == "ray"
    assert len(execution["nodes"]) == 2  # both worker nodes worked
    # The workers imported this checkout's xai, not another installation.
    assert execution["xai"] == [xai.__file__]


def test_a_node_lost_mid_run_loses_nothing(cluster, local_run, model_file, tmp_path):
    """A worker node removed while shards are in flight: its shards are retried on the other
    node, results equal the local backend's, and the same command again recomputes nothing."""
    config = CompareConfig(**CONFIG, model=str(model_file), out=str(tmp_path), backend="ray",
                           address=cluster.address, workers=2)
    victim = cluster.list_all_nodes()[-1]
    killed = {}

    def kill_when_work_is_committed():
        deadline = time.time() + 300
        while time.time() < deadline:
            stores = list(tmp_path.glob("*/results.sqlite"))
            if stores:
                try:
                    with sqlite3.connect(f"file:{stores[0]}?mode=ro", uri=True) as db:
                        done = db.execute("SELECT COUNT(*) FROM batches WHERE status='done'").fetchone()[0]
                except sqlite3.OperationalError:
                    done = 0
                if done >= 1:
                    killed["committed"] = done
                    cluster.remove_node(victim)
                    killed["at"] = time.time()
                    return
            time.sleep(0.2)

    thread = threading.Thread(target=kill_when_work_is_committed, daemon=True)
    thread.start()
    try:
        run_dir = compare(config, quiet=True, write_report=False)
        thread.join(timeout=5)
        assert "at" in killed, "the node was never removed"
        assert killed["committed"] < 4 * 3  # it happened mid-run: 4 batches x 3 methods in all
        (execution,) = _extra(run_dir, "executions")
        assert any("lost" in event for event in execution["events"]), execution
        _assert_same_results(run_dir, local_run)

        before = _batches(run_dir)
        again = compare(config, quiet=True, write_report=False)
        # Timings are measured afresh for each batch run: equal rows mean none ran again.
        assert again == run_dir and _batches(again) == before and _values(again) == _values(run_dir)
    finally:
        if "at" in killed:  # the next tests have two worker nodes again
            cluster.add_node(num_cpus=1, object_store_memory=80 * 1024 ** 2)
            cluster.wait_for_nodes()


def test_a_dead_worker_process_is_replaced_and_its_shard_retried(cluster, model_file, tmp_path):
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

    config = dict(methods=["vanilla_gradient", "dies_once"], model=str(model_file), n_images=6,
                  batch_size=3, metrics=["deletion"])
    try:
        on_ray = compare(CompareConfig(**config, backend="ray", address=cluster.address, workers=2,
                                       out=str(tmp_path / "ray")), quiet=True, write_report=False)
        assert os.path.exists(marker)  # a worker really died, and its shard was run again
        local = compare(CompareConfig(**config, out=str(tmp_path / "local")), quiet=True, write_report=False)
    finally:
        xai.registry.REGISTRY.unregister("dies_once")
    assert on_ray.name == local.name
    assert _failures(on_ray) == []
    a, b = _values(on_ray), _values(local)
    assert [r[:3] for r in a] == [r[:3] for r in b] and len(a) == 6 * 2 + 6  # + vanilla_gradient's saturation
    np.testing.assert_allclose([r[3] for r in a], [r[3] for r in b], rtol=1e-5, atol=1e-5)
    (execution,) = _extra(on_ray, "executions")
    assert any("lost" in event for event in execution["events"])


def test_images_a_worker_cannot_reach_fail_their_shards_clearly(cluster, model_file, tmp_path, monkeypatch):
    """A folder the planning worker saw, gone when the shards are read: every shard fails
    with a message naming the folder and what to do, and the run ends and reports it."""
    from xai.distributed import RayBackend

    folder = tmp_path / "images"
    for label in ("a", "b"):
        (folder / label).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 40 * i + 100, np.uint8)).save(folder / label / f"{i}.png")
    start = RayBackend._start

    def start_after_the_folder_is_gone(self, plan):
        shutil.rmtree(folder)
        return start(self, plan)

    monkeypatch.setattr(RayBackend, "_start", start_after_the_folder_is_gone)
    run_dir = compare(CompareConfig(methods=["vanilla_gradient"], model=str(model_file), dataset=str(folder),
                                    n_images=4, batch_size=2, metrics=["deletion"], backend="ray",
                                    address=cluster.address, workers=2, image_source="workers",
                                    out=str(tmp_path / "runs")), quiet=True, write_report=True)
    failures = _failures(run_dir)
    assert len(failures) == 2
    for _, _, error in failures:
        assert str(folder) in error and "image_source='driver'" in error and "cannot read" in error
    assert (run_dir / "report.html").is_file()


def test_image_source_workers_needs_ray(model_file, tmp_path):
    with pytest.raises(xai.errors.ConfigError, match="backend='ray'"):
        compare(CompareConfig(model=str(model_file), image_source="workers", out=str(tmp_path)), quiet=True)
    with pytest.raises(xai.errors.ConfigError, match="image_source must be one of"):
        compare(CompareConfig(model=str(model_file), image_source="nodes", out=str(tmp_path)), quiet=True)


def test_ray_backend_without_ray_says_how_to_install(model_file, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["compare", "--backend", "ray", "--methods", "cam", "--model",
                                       str(model_file), "--n-images", "4", "--quiet"])
    assert result.exit_code != 0
    assert "pip install" in result.output and "[ray]" in result.output
    assert "Traceback" not in result.output
