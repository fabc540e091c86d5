"""`xai compare --backend ray`: the same run, sharded across Ray workers.

The driver (the process that runs `xai compare`) reads the dataset, sends each batch of
images (a shard) to a worker, and alone writes what comes back into the run's results
store, so resuming works exactly as on one machine. Each worker loads the model once from
the run's saved ``model.keras`` and runs every method and metric on its shards with the
same code as the local backend (`xai.execution.WorkPlan`), which is why results are equal.
A worker that dies is restarted by Ray and its shard retried; a shard that still fails is
recorded as failed and retried by the next run of the same command. At most
``2 * workers`` shards are in flight, so memory stays bounded on the driver too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator, Optional

from xai.errors import MissingDependencyError
from xai.execution import Job, WorkPlan

INSTALL_HINT = ('--backend ray needs Ray: pip install "xai-saliency-bench[ray]" '
                '(or pip install "ray>=2.9"), then run the same command again.')


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(INSTALL_HINT) from exc
    return ray


class ShardWorker:
    """A Ray actor: one model, every explainer, any number of shards."""

    def __init__(self, model_path: str, plan: WorkPlan, classes: dict, threads: int):
        import tensorflow as tf

        # One worker per CPU share: TensorFlow must not spread over the whole node.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        from xai import evaluation as ev
        from xai.models import load_model, prepare_model

        self.model = prepare_model(load_model(model_path))
        self.plan = plan
        self.explainers, self.setup_errors = plan.create_explainers(self.model, classes)
        self.scorer = ev.ModelScorer(self.model)
        self.warmed: set = set()

    def run(self, batch: dict, methods: list) -> dict:
        """Outcomes of `methods` on one shard, by method (see `WorkPlan.run_method`)."""
        return self.plan.run_methods(methods, self.explainers, self.setup_errors, self.scorer, batch,
                                     self.warmed)


def _resources(ray, workers):
    """(number of workers, CPUs each, GPUs each) for this cluster."""
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    n = workers or max(1, len(nodes))
    cpus = max(1, int(total.get("CPU", 1)) // n)
    gpus = 1 if total.get("GPU", 0) >= n else 0
    return n, cpus, gpus


class RayBackend:
    """Jobs sharded over Ray actors that each load the run's saved model once.

    Parameters
    ----------
    model_path : path of the run's ``model.keras``
    address : None starts a local cluster; "auto" or HOST:PORT joins one
    workers : number of actors (None: one per node)
    """

    def __init__(self, model_path: Path, address: Optional[str] = None, workers: Optional[int] = None):
        self.ray = import_ray()
        self.model_path, self.address, self.workers = str(model_path), address, workers
        self.label = "xai compare (ray)"

    def run(self, plan: WorkPlan, jobs: Iterable[Job]) -> Iterator[tuple[Job, dict]]:
        from xai.registry import get_explainer

        ray = self.ray
        started_here = False
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", configure_logging=True)
            started_here = True
        try:
            n_workers, cpus, gpus = _resources(ray, self.workers)
            self.label = f"xai compare (ray, {n_workers} workers)"
            # Classes travel with the job, so explainers registered in the driver's own code
            # (not installed as a package on the workers) run there too.
            classes = {m: get_explainer(m) for m in plan.methods}
            actor = ray.remote(ShardWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=2,
                                                    max_task_retries=2)
            workers = [actor.remote(self.model_path, plan, classes, cpus) for _ in range(n_workers)]
            in_flight = {}  # ObjectRef -> (job, worker)
            load = {i: 0 for i in range(n_workers)}

            def collect():
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    job, worker = in_flight.pop(ref)
                    load[worker] -= 1
                    try:
                        outcomes = ray.get(ref)
                    except Exception as exc:  # the worker died more often than Ray retries
                        error = f"worker lost: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
                        outcomes = {m: {"ok": False, "error": error, "traceback": str(exc)} for m in job[1]}
                    yield job, outcomes

            for job in jobs:
                while len(in_flight) >= 2 * n_workers:
                    yield from collect()
                worker = min(load, key=load.get)
                load[worker] += 1
                in_flight[workers[worker].run.remote(*job)] = (job, worker)
            while in_flight:
                yield from collect()
            for w in workers:
                ray.kill(w)
        finally:
            if started_here:
                ray.shutdown()
