"""The execution layer of a comparison: what each batch goes through, where it runs, and how
its outcome is committed.

- `WorkPlan`: the per-batch work (every method, then every per-batch metric of the metric
  registry), the same code in this process and on Ray workers, with no store access.
- `Backend`: runs jobs (a batch and the methods it still needs) and yields their outcomes;
  `LocalBackend` here, `xai.distributed.RayBackend` on a Ray cluster.
- `ShardSource`: where a worker reads its shard's images itself, when the driver sends only
  which images (``image_source="workers"``) instead of the images.
- `store_outcome`: the only writer, called by the driver as outcomes arrive.
"""

from __future__ import annotations

import dataclasses
import time
import traceback
from pathlib import Path
from typing import Iterable, Iterator, Optional, Protocol, Sequence

import numpy as np

from xai.errors import DataError, PluginError
from xai.monte_carlo import sample_cap

#: A job: one batch and the methods still to run on it. The batch is a dict of numpy arrays
#: and ids (`batches`), or, read by the worker, only ``{"index", "start", "count"}``.
Job = tuple

#: Image sources (``CompareConfig.image_source``): who reads the images.
IMAGE_SOURCES = ("driver", "workers")


def batches(dataset, batch_size: int, has_masks: bool, input_range=(0.0, 1.0), first_index: int = 0):
    """Batches as plain dicts of numpy arrays, images in the model's input range (the
    datasets give [0, 1]); decoding overlaps the model's work. Batch k is the run's batch
    ``first_index + k`` (its images start at ``index * batch_size``)."""
    import tensorflow as tf

    low, high = input_range
    for index, batch in enumerate(dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE), start=first_index):
        labels = batch["label"].numpy()
        images = batch["image"].numpy()
        if (low, high) != (0.0, 1.0):
            images = images * np.float32(high - low) + np.float32(low)
        yield {"index": index, "start": index * batch_size, "ids": [i.decode() for i in batch["id"].numpy()],
               "images": images, "labels": labels, "targets": labels.astype(np.int32),
               "masks": batch["mask"].numpy() if has_masks else None}


@dataclasses.dataclass(frozen=True)
class ShardSource:
    """The run's dataset as a worker reads it itself (``image_source="workers"``): by a name
    (``offline``, ``cats_vs_dogs``) or a path that every worker node can reach, read one
    shard at a time, so the driver sends only which images a shard holds."""

    dataset: str
    image_size: int
    seed: int
    num_classes: int
    input_range: tuple
    has_masks: bool
    #: The run's dataset identity as the planning worker saw it (a folder: the digest of its
    #: listing): a node whose copy of the folder differs fails instead of mixing images.
    identity: object = None

    def check(self) -> None:
        """Raise `DataError` if this node's dataset is not the run's (once per worker)."""
        from xai.data import dataset_identity

        if isinstance(self.identity, dict) and not Path(self.dataset).is_dir():
            raise self._unreachable("no such folder on this node")
        try:
            mine = dataset_identity(self.dataset)[0]
        except OSError as exc:
            raise self._unreachable(exc) from exc
        if isinstance(self.identity, dict) and mine != self.identity:
            raise DataError(f"the dataset folder {self.dataset!r} on {_node()} holds other files than the "
                            f"one the run was planned with ({mine} != {self.identity}); every node must "
                            "see the same folder (a shared filesystem), or use image_source='driver'.")

    def read(self, index: int, start: int, count: int) -> dict:
        """Images `start` to ``start + count - 1`` as batch `index` (`batches`' dict)."""
        from xai.data import load_dataset

        try:
            dataset = load_dataset(self.dataset, n_images=count, image_size=self.image_size, seed=self.seed,
                                   num_classes=self.num_classes, start=start)
        except (DataError, OSError) as exc:
            raise self._unreachable(exc) from exc
        batch = next(batches(dataset, count, self.has_masks, self.input_range), None)
        if batch is None or len(batch["ids"]) != count:
            got = 0 if batch is None else len(batch["ids"])
            raise DataError(f"{_node()} read {got} images of {self.dataset!r} from image {start} on; the run "
                            f"was planned with {count}: the dataset differs between nodes.")
        batch.update(index=index, start=start)
        return batch

    def _unreachable(self, why) -> DataError:
        return DataError(f"{_node()} cannot read the dataset {self.dataset!r} ({why}). With "
                         "image_source='workers' every worker node reads the images itself, so the "
                         "dataset must be reachable there under the same name or path (a shared "
                         "filesystem); or use image_source='driver'.")


def _node() -> str:
    """Which machine and process this is, for messages read on the driver."""
    import os
    import socket

    return f"worker {socket.gethostname()} (pid {os.getpid()})"


def batch_facts(batch: dict) -> dict:
    """A batch without its arrays: what the driver stores beside an outcome."""
    return {k: batch[k] for k in ("index", "start", "count", "ids", "labels", "targets") if k in batch}


@dataclasses.dataclass
class WorkPlan:
    """What every batch goes through; the same code runs in-process and on Ray workers."""

    methods: Sequence[str]
    method_params: dict
    metrics: Sequence[str]  # per-batch metrics of xai.evaluation.registry, in report order
    protocol: str
    n_examples: int
    #: Seed of stochastic metrics; each is computed again under seed + 1 for the
    #: meta-evaluation's seed agreement (stored under `replicate_name`).
    seed: int = 0
    #: Monte Carlo tolerance of stochastic maps (`Explainer.explain_with_error`): sampling
    #: stops per image once its map's relative error is below it, and never spends more
    #: than the method's own sample count. None: every map at its fixed count, no error.
    tolerance: Optional[float] = None
    #: The run's first images, on which the per-method metrics re-run each method: the
    #: batches return their maps of them (``leading_maps``), so that those metrics start from
    #: the maps the run scored rather than compute them again.
    sanity_images: int = 0

    def explain(self, explainer, images, targets):
        """(maps, errors or None, converged or None, order errors or None) of one batch, as
        the plan says."""
        if self.tolerance is None:
            return np.asarray(explainer.explain(images, targets)), None, None, None
        result = explainer.explain_with_error(images, targets, tolerance=self.tolerance,
                                              max_samples=sample_cap(explainer))
        errors = np.asarray(result.errors, np.float64)
        if not np.any(errors != 0) or not np.all(np.isfinite(errors)):  # deterministic, or `random`
            return result.maps, None, None, None
        order = result.order_errors
        if order is not None and not np.any(np.isfinite(order)):  # Integrated Gradients' gap
            order = None
        return result.maps, errors, result.converged, order

    #: Where a batch sent without images is read (``image_source="workers"``); None: every
    #: batch comes with its images.
    source: Optional[ShardSource] = None

    def images_of(self, batch: dict) -> dict:
        """`batch` with its images: as sent, or read from `source`."""
        if "images" in batch:
            return batch
        if self.source is None:
            raise DataError("a batch came without images and the run has no image source to read them.")
        return self.source.read(batch["index"], batch["start"], batch["count"])

    def run_per_method(self, metric: str, method: str, explainer_class, model, pool: dict,
                       params: dict) -> dict:
        """A metric that re-runs the explainer (the sanity checks) on the `pool` of images:
        its result, or `failure`'s dict. `explainer_class` may be the explainer the batches
        ran (built on `model` with `params`), which spares tracing the method again."""
        import time

        from xai.evaluation.registry import get_metric

        clock = time.perf_counter()
        try:
            maps = pool.get("maps", {}).get(method)
            pool = self.images_of(pool)
            result = get_metric(metric).per_method(explainer_class, model, np.asarray(pool["images"]),
                                                   np.asarray(pool["targets"], np.int32), params=params,
                                                   seed=self.seed, tolerance=self.tolerance, maps=maps)
        except Exception as exc:
            return failure(exc)
        if isinstance(result, dict):  # where a run's time goes (provenance: read by nothing else)
            result = {**result, "seconds": round(time.perf_counter() - clock, 2)}
        return result

    def create_explainers(self, model, classes: Optional[dict] = None) -> tuple[dict, dict]:
        """(explainers, setup errors) by method; a method that cannot be built is an error
        for each of its batches, and the others go on."""
        from xai.registry import get_explainer

        explainers, errors = {}, {}
        for m in self.methods:
            try:
                cls = classes[m] if classes and m in classes else get_explainer(m)
                explainers[m] = cls(model, **self.method_params.get(m, {}))
            except Exception as exc:  # the run goes on with the others
                errors[m] = failure(exc)
        return explainers, errors

    def run_methods(self, methods: Sequence[str], explainers: dict, setup_errors: dict, scorer,
                    batch: dict, warmed: set) -> dict:
        """{method: outcome} for one batch. Each explainer is first traced on one image (once
        per process, remembered in `warmed`) so that tracing stays out of the timings."""
        for m in methods:
            if m in explainers and m not in warmed:
                warmed.add(m)
                try:
                    self.explain(explainers[m], batch["images"][:1], batch["targets"][:1])
                except Exception:  # noqa: BLE001 - the real call records the failure
                    pass
        return {m: self.run_method(m, explainers, setup_errors, scorer, batch) for m in methods}

    def run_method(self, method: str, explainers: dict, setup_errors: dict, scorer, batch: dict) -> dict:
        """One (method, batch): {"ok": True, ...results} or {"ok": False, "error", "traceback"}."""
        if method in setup_errors:
            return {"ok": False, **setup_errors[method]}
        try:
            return {"ok": True, **self._explain_and_score(explainers[method], method, scorer, batch)}
        except Exception as exc:
            return {"ok": False, **failure(exc)}

    def _explain_and_score(self, explainer, method: str, scorer, batch: dict) -> dict:
        from xai.evaluation.registry import MetricInputs, get_metric, replicate_name

        images, targets, ids, masks = batch["images"], batch["targets"], batch["ids"], batch["masks"]
        start = time.perf_counter()
        maps, errors, converged, order_errors = self.explain(explainer, images, targets)
        seconds = time.perf_counter() - start
        if maps.shape != images.shape[:3]:
            raise PluginError(f"{method} returned maps of shape {maps.shape}; expected {images.shape[:3]}.")
        if not np.all(np.isfinite(maps)):
            raise PluginError(f"{method} returned NaN or infinite values.")
        values = [(i, "seconds_per_image", seconds / len(images)) for i in ids]
        saturated = explainer.saturated(scorer.scores(images, targets, "probability")) \
            if getattr(explainer, "differentiates_score", False) else None
        if saturated is not None:
            values += [(i, "score_saturated", float(s)) for i, s in zip(ids, saturated)]
        if errors is not None:
            values += [(i, "map_error", float(e)) for i, e in zip(ids, errors)]
            values += [(i, "map_converged", float(c)) for i, c in zip(ids, converged)]
        if order_errors is not None:
            values += [(i, "map_order_error", float(e)) for i, e in zip(ids, order_errors)]
        curves, protocols = [], {}
        inputs = MetricInputs(scorer=scorer, images=images, targets=targets, maps=maps, masks=masks,
                              protocol=self.protocol, explainer=explainer, seed=self.seed)
        metric_errors = {}
        for name in self.metrics:
            metric = get_metric(name)
            try:
                result = metric.per_batch(inputs)
                again = (metric.per_batch(dataclasses.replace(inputs, seed=self.seed + 1))
                         if metric.stochastic else None)
            except Exception as exc:  # one metric failing keeps the maps and the other metrics
                metric_errors[name] = failure(exc)["error"]
                values += [(i, name, float("nan")) for i in ids]
                continue
            values += [(i, name, float(v)) for i, v in zip(ids, result.values)]
            if again is not None:
                values += [(i, replicate_name(name), float(v)) for i, v in zip(ids, again.values)]
            if result.curves is not None:
                x, ys = result.curves
                curves += [(i, name, x, y) for i, y in zip(ids, ys)]
            if result.protocol is not None:
                protocols[name] = result.protocol
        # The run's first n_examples images, whichever batches they fall in (the gallery).
        first = batch.get("start", batch["index"] * len(images))
        examples = [(ids[j], images[j], maps[j], None if masks is None else masks[j])
                    for j in range(max(0, min(self.n_examples - first, len(images))))]
        return {"seconds": seconds, "values": values, "curves": curves, "examples": examples,
                "protocols": protocols, "metric_errors": metric_errors,
                "leading_maps": (first, maps[:max(0, min(self.sanity_images - first, len(images)))])}


def failure(exc: BaseException) -> dict:
    """{"error": one line naming the exception and where it was raised, "traceback": all of it}."""
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    loc = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    return {"error": (text[0] if text else type(exc).__name__) + loc,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))}


class Backend(Protocol):
    """Where a comparison's work runs."""

    #: What the progress bar calls it.
    label: str

    def run(self, plan: WorkPlan, jobs: Iterable[Job]) -> Iterator[tuple[Job, dict]]:
        """Run each job ``(batch, methods)``; yield ``((batch_facts, methods), {method:
        outcome})`` as each ends, in any order. Never touches the store."""
        ...

    def run_per_method(self, plan: WorkPlan, tasks: Iterable[tuple]) -> Iterator[tuple[tuple, dict]]:
        """Run each ``(metric, method, params, pool)`` (`WorkPlan.run_per_method`); yield
        ``(task, result)`` as each ends."""
        ...

    def close(self) -> None:
        """Release what the backend started (also on leaving ``with backend:``)."""
        ...

    def record(self) -> dict:
        """What the run's record keeps of this invocation (workers, nodes, lost workers)."""
        ...


class LocalBackend:
    """Every job in this process, one after the other."""

    label = "xai compare"

    def __init__(self, model):
        self.model = model
        self.explainers: dict = {}  # built by `run`, traced once: the sanity checks reuse them

    def run(self, plan: WorkPlan, jobs: Iterable[Job]) -> Iterator[tuple[Job, dict]]:
        from xai import evaluation as ev

        explainers, setup_errors = plan.create_explainers(self.model)
        self.explainers = explainers
        scorer, warmed = ev.ModelScorer(self.model), set()
        for batch, methods in jobs:
            batch = plan.images_of(batch)
            yield (batch_facts(batch), methods), plan.run_methods(methods, explainers, setup_errors, scorer,
                                                                  batch, warmed)

    def run_per_method(self, plan: WorkPlan, tasks: Iterable[tuple]) -> Iterator[tuple[tuple, dict]]:
        from xai.registry import get_explainer

        for task in tasks:
            metric, method, params, pool = task
            method_or_explainer = self.explainers.get(method) or get_explainer(method)
            yield task, plan.run_per_method(metric, method, method_or_explainer, self.model, pool, params)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        pass

    def record(self) -> dict:
        return {}


def store_outcome(store, method: str, batch: dict, outcome: dict) -> None:
    """Commit one (method, batch) outcome with the batch's images; only the driver calls this.
    A batch whose images a worker could not read has no ids: its failure counts its images."""
    n_images = len(batch["ids"]) if "ids" in batch else batch["count"]
    images = list(zip(batch["ids"], batch["labels"], batch["targets"])) if "ids" in batch else []
    if not outcome["ok"]:
        store.record_failure(method, batch["index"], outcome["error"], n_images,
                             traceback=outcome.get("traceback"), images=images)
        return
    store.commit_batch(method, batch["index"], n_images=n_images, seconds=outcome["seconds"],
                       values=outcome["values"], curves=outcome["curves"], examples=outcome["examples"],
                       images=images, extras={
                           **{f"protocol_{metric}": protocol for metric, protocol in outcome["protocols"].items()},
                           # The last error of each (metric, method); its values are NaN (missing).
                           **{f"metric_error::{metric}::{method}": error
                              for metric, error in outcome.get("metric_errors", {}).items()}})
