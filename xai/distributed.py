"""`xai compare --backend ray`: the same run, sharded across Ray workers on any cluster.

Nothing a worker does reads the driver's disk:

- the model travels as bytes (`xai.models.model_to_bytes`: the ``.keras`` archive and its
  spec), put into Ray's object store once per run and loaded once by each worker;
- the images travel in shards sent by the driver (``image_source="driver"``), or each worker
  reads its own shard from a source it can reach (``image_source="workers"``: ``offline``,
  tfds ``cats_vs_dogs`` by split slicing, or a folder at the same path on every node), and
  the driver sends only which images a shard holds;
- the per-method metrics (the sanity checks) run on workers too.

So the driver only plans, stores and reports: it alone writes the results store, exactly as
on one machine, and resuming works the same. Each worker runs every method and metric with
the same code as the local backend (`xai.execution.WorkPlan`), which is why results are
equal. A call whose worker is lost (its process or its node died) is sent to another worker,
up to `RayBackend.attempts` times, and a replacement worker is started; a shard that still
fails is recorded as failed and retried by the next run of the same command. At most two
calls per ready worker are in flight, so memory stays bounded on the driver too.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from typing import Callable, Iterable, Iterator, Optional

from xai.errors import MissingDependencyError, XAIError
from xai.execution import Job, WorkPlan, batch_facts, failure

INSTALL_HINT = ('--backend ray needs Ray: pip install "xai-saliency-bench[ray]" '
                '(or pip install "ray>=2.9"), then run the same command again.')


def import_ray():
    try:
        import ray
    except ImportError as exc:
        raise MissingDependencyError(INSTALL_HINT) from exc
    return ray


class ClusterError(XAIError):
    """The Ray cluster cannot run the work (no worker could start)."""


def where() -> dict:
    """Where this process runs: node, host, process, and the xai it imported."""
    import os
    import socket

    import ray

    import xai

    return {"node_id": ray.get_runtime_context().get_node_id(), "host": socket.gethostname(),
            "pid": os.getpid(), "xai": xai.__file__}


class ShardWorker:
    """A Ray actor: one model (from bytes), every explainer, any number of shards.

    It never raises from its constructor: a model that cannot be loaded here makes every
    call fail with the reason, and the run goes on and reports it.
    """

    def __init__(self, model_bytes: bytes, plan: WorkPlan, classes: dict, threads: int):
        import tensorflow as tf

        # One worker per CPU share: TensorFlow must not spread over the whole node.
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        self.plan, self.classes, self.warmed = plan, classes, set()
        self.source_error = None
        try:
            from xai import evaluation as ev
            from xai.models import model_from_bytes, prepare_model

            self.model = prepare_model(model_from_bytes(model_bytes))
            self.explainers, self.setup_errors = plan.create_explainers(self.model, classes)
            self.scorer = ev.ModelScorer(self.model)
            self.error = None
        except Exception as exc:  # reported with every call this worker gets
            self.error = failure(exc)
            self.error["error"] = f"the worker on {where()['host']} could not load the model: {self.error['error']}"
        if plan.source is not None:
            try:
                plan.source.check()
            except Exception as exc:  # this node cannot read the images: each shard says so
                self.source_error = failure(exc)

    def where(self) -> dict:
        """Where this worker runs (also: it has started)."""
        return where()

    def run(self, batch: dict, methods: list) -> tuple[dict, dict]:
        """(the batch's facts, outcomes of `methods` on it by method; `WorkPlan.run_method`)."""
        error = self.error or self.source_error
        if error is None:
            try:
                batch = self.plan.images_of(batch)
            except Exception as exc:
                error = failure(exc)
        if error is not None:
            return batch_facts(batch), {m: {"ok": False, **error} for m in methods}
        return batch_facts(batch), self.plan.run_methods(methods, self.explainers, self.setup_errors,
                                                         self.scorer, batch, self.warmed)

    def run_per_method(self, metric: str, method: str, params: dict, pool: dict) -> dict:
        error = self.error or (self.source_error if "images" not in pool else None)
        if error is not None:
            return error
        built = self.explainers.get(method) if self.explainers else None
        return self.plan.run_per_method(metric, method, built or self.classes[method], self.model, pool, params)


def describe_dataset(dataset: str, n_images: int, num_classes: int) -> tuple:
    """(DatasetFacts, identity, path) of a dataset as a worker node sees it."""
    from xai.data import dataset_facts, dataset_identity

    facts = dataset_facts(dataset, n_images=n_images, num_classes=num_classes)
    return (facts, *dataset_identity(dataset))


def _resources(ray, workers):
    """(number of workers, CPUs each, GPUs each) for this cluster."""
    total = ray.cluster_resources()
    nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) > 0]
    n = workers or max(1, len(nodes))
    cpus = max(1, int(total.get("CPU", 1)) // n)
    gpus = 1 if total.get("GPU", 0) >= n else 0
    return n, cpus, gpus


@dataclasses.dataclass(eq=False)
class _Worker:
    actor: object
    started: object  # the ObjectRef of its first where(): ready once it resolves
    ready: bool = False
    dead: bool = False
    load: int = 0
    where: Optional[dict] = None


class RayBackend:
    """Jobs sharded over Ray actors that each load the run's model, from bytes, once.

    Parameters
    ----------
    model : keras.Model
        The driver's model (prepared, spec attached): shipped through the object store.
    address : None starts a local cluster; "auto" or HOST:PORT joins one
    workers : number of actors (None: one per node with CPUs)

    Use as a context manager (or call `close`): it connects to the cluster on first use and
    ends its actors, and the cluster if it started one, when closed.
    """

    #: How often a call is sent to a worker before its shard is recorded as failed.
    attempts = 3
    #: How long to wait for a first worker to start (the cluster may be scaling up).
    start_timeout = 600.0

    def __init__(self, model, address: Optional[str] = None, workers: Optional[int] = None):
        self.ray = import_ray()
        self.model, self.address, self.requested_workers = model, address, workers
        self.label = "xai compare (ray)"
        self.started_here = False
        self.model_ref = None
        self.pool: list[_Worker] = []
        self.plan: Optional[WorkPlan] = None
        #: What happened to workers (lost, replaced), for the run's record.
        self.events: list[str] = []

    # -- lifecycle -----------------------------------------------------------------
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _connect(self):
        ray = self.ray
        if not ray.is_initialized():
            ray.init(address=self.address, include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", configure_logging=True)
            self.started_here = True
        return ray

    def close(self) -> None:
        for w in self.pool:
            self.ray.kill(w.actor)
        self.pool = []
        if self.started_here:
            self.ray.shutdown()
            self.started_here = False

    def describe_dataset(self, dataset: str, n_images: int, num_classes: int) -> tuple:
        """`describe_dataset` run on a worker node: the driver plans with what workers see."""
        ray = self._connect()
        task = ray.remote(describe_dataset).options(num_cpus=1, max_retries=2)
        try:
            return ray.get(task.remote(dataset, n_images, num_classes))
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, XAIError):  # the user's: one line, as on the driver
                raise type(cause)(f"on a Ray worker node: {cause}") from None
            raise

    def _start(self, plan: WorkPlan) -> None:
        """Start the actors for `plan` (once: every call of a run shares the plan)."""
        from xai.models import model_to_bytes
        from xai.registry import get_explainer

        if self.plan is not None:
            return
        ray = self._connect()
        self.plan = plan
        self.n_workers, self.cpus, self.gpus = _resources(ray, self.requested_workers)
        self.label = f"xai compare (ray, {self.n_workers} workers)"
        # Once per run, whatever the number of workers: the model as bytes, never a path.
        self.model_ref = ray.put(model_to_bytes(self.model))
        # Classes travel with the plan, so explainers registered in the driver's own code
        # (not installed as a package on the workers) run there too.
        self.classes = {m: get_explainer(m) for m in plan.methods}
        self.replacements_left = 2 * self.n_workers
        for _ in range(self.n_workers):
            self._add_worker()

    def _add_worker(self) -> None:
        ray = self.ray
        # No restarts by Ray: a restarted actor waits for its node's resources, which a lost
        # node never gives back; a replacement goes wherever the cluster has room.
        actor = ray.remote(ShardWorker).options(num_cpus=self.cpus, num_gpus=self.gpus, max_restarts=0,
                                                max_task_retries=0).remote(
            self.model_ref, self.plan, self.classes, self.cpus)
        self.pool.append(_Worker(actor, actor.where.remote()))

    def _lose(self, worker: _Worker, exc: BaseException) -> None:
        if worker.dead:
            return
        worker.dead, worker.ready = True, False
        self.ray.kill(worker.actor)
        host = (worker.where or {}).get("host", "a node")
        node = (worker.where or {}).get("node_id", "?")[:8]
        self.events.append(f"worker on {host} (node {node}) lost: {type(exc).__name__}: "
                           f"{str(exc).splitlines()[0][:200] if str(exc) else ''}")
        if self.replacements_left > 0:
            self.replacements_left -= 1
            self._add_worker()

    # -- work ----------------------------------------------------------------------
    def run(self, plan: WorkPlan, jobs: Iterable[Job]) -> Iterator[tuple[Job, dict]]:
        def lost(job, error):  # as ShardWorker.run answers
            batch, methods = job
            return batch_facts(batch), {m: {"ok": False, "error": error, "traceback": error} for m in methods}

        calls = ((job, "run", job) for job in jobs)
        for (_, methods), (facts, outcomes) in self._map(plan, calls, lost):
            yield (facts, methods), outcomes

    def run_per_method(self, plan: WorkPlan, tasks: Iterable[tuple]) -> Iterator[tuple[tuple, dict]]:
        def lost(task, error):
            return {"error": error, "traceback": error}

        shared = {}  # one copy of the pool of images in the object store, whatever the tasks

        def calls():
            self._connect()
            for task in tasks:
                metric, method, params, pool = task
                # Images, or the maps the batches scored (every method's: MBs at 224x224).
                if ("images" in pool or "maps" in pool) and id(pool) not in shared:
                    shared[id(pool)] = (pool, self.ray.put(pool))
                yield task, "run_per_method", (metric, method, params, shared[id(pool)][1] if id(pool) in shared
                                               else pool)

        yield from self._map(plan, calls(), lost)

    def _map(self, plan: WorkPlan, calls: Iterator[tuple], lost: Callable) -> Iterator[tuple]:
        """Run each call ``(tag, actor method, args)`` on the least loaded ready worker; yield
        ``(tag, result)`` as each ends. A call whose worker is lost goes to another, up to
        `attempts` times; then its result is ``lost(tag, error)``."""
        ray = self.ray
        calls = iter(calls)
        first = next(calls, None)
        if first is None:  # nothing to do (a rerun of a finished run): no worker is started
            return
        self._start(plan)
        waiting = collections.deque([(*first, 1)])  # calls to send: (tag, name, args, attempt)
        in_flight = {}  # ObjectRef -> (call, worker)
        exhausted = False
        while True:
            ready = [w for w in self.pool if w.ready]
            while ready and len(in_flight) < 2 * len(ready):
                if waiting:
                    call = waiting.popleft()
                else:
                    nxt = None if exhausted else next(calls, None)
                    if nxt is None:
                        exhausted = True
                        break
                    call = (*nxt, 1)
                worker = min(ready, key=lambda w: w.load)
                tag, name, args, _ = call
                worker.load += 1
                in_flight[getattr(worker.actor, name).remote(*args)] = (call, worker)
            if not in_flight and not waiting and exhausted:
                return
            starting = {w.started: w for w in self.pool if not w.ready and not w.dead}
            if not in_flight and not starting:  # every worker lost, no replacement left
                error = "no Ray worker left: " + "; ".join(self.events[-3:])
                for tag, *_ in list(waiting) + [(c[0],) for c in calls]:
                    yield tag, lost(tag, error)
                return
            done, _ = ray.wait(list(in_flight) + list(starting), num_returns=1,
                               timeout=None if in_flight else self.start_timeout)
            if not done:
                raise ClusterError(
                    f"no Ray worker started within {self.start_timeout:.0f} s: the cluster has "
                    f"{ray.cluster_resources().get('CPU', 0):g} CPUs and each of the {self.n_workers} "
                    f"workers asks for {self.cpus} (and {self.gpus} GPU); ask for fewer --workers or add "
                    "nodes. Everything finished so far is kept.")
            ref = done[0]
            if ref in starting:
                worker = starting[ref]
                try:
                    worker.where, worker.ready = ray.get(ref), True
                except ray.exceptions.RayError as exc:  # died before it started (its node was lost)
                    self._lose(worker, exc)
                continue
            call, worker = in_flight.pop(ref)
            worker.load -= 1
            tag, name, args, attempt = call
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker, its node or the result was lost
                if isinstance(exc, ray.exceptions.RayActorError):
                    self._lose(worker, exc)
                if attempt < self.attempts:
                    waiting.append((tag, name, args, attempt + 1))
                    continue
                text = str(exc).splitlines()[0][:300] if str(exc) else ""
                result = lost(tag, f"worker lost {attempt} times: {type(exc).__name__}: {text}")
            yield tag, result

    def record(self) -> dict:
        """What the run's record keeps of this backend: workers, where, what was lost."""
        return {"workers": getattr(self, "n_workers", None), "cpus_per_worker": getattr(self, "cpus", None),
                "nodes": sorted({w.where["node_id"] for w in self.pool if w.where}),
                "xai": sorted({w.where["xai"] for w in self.pool if w.where}),
                "events": list(self.events), "at": time.time()}
