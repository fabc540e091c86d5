"""Comparison runs: every method on every image, scored by every metric, stored, resumable.

A run's directory is named by its key, a hash of the run's canonical identity: what
defines its numbers (each method's class and resolved parameters, the sorted metrics, the
model file's digest, the data and every other configuration field) and nothing else.
Paths, library versions and the backend are provenance: kept in the store and shown in the
report, never in the key, so the same command resumes the same run after a library patch
upgrade (with a warning) or on another backend. Work is committed per (method, batch); a
method that raises or returns a wrong shape is recorded as failed for that batch, with its
traceback, and the run goes on with the others.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

import xai
from xai.errors import ConfigError, DataError, ModelError, NotApplicable, ParameterError, StoreError
from xai.execution import IMAGE_SOURCES, LocalBackend, ShardSource, WorkPlan, batches, store_outcome

#: Version of the identity's layout: bump it when the same run would get another key
#: (3: the protocol's settings, not only its name).
KEY_VERSION = 3


def _provenance(default=None, **kwargs):
    """A configuration field that says where or how a run runs, not what it computes."""
    return dataclasses.field(default=default, metadata={"identity": False}, **kwargs)


#: `CompareConfig.tolerance` by default: see docs/performance.md for how it was chosen.
DEFAULT_TOLERANCE = 0.05


@dataclasses.dataclass
class CompareConfig:
    """What `compare` runs. Defaults are the offline default (the README's main job).

    Fields marked as provenance (where the run is written, which backend runs it) are not
    part of the run's identity; every other field is, so a new field joins the key unless
    it is explicitly declared provenance.
    """

    methods: Optional[Sequence[str]] = None  # None: the default comparison; ["all"]: every registered one
    method_params: dict = dataclasses.field(default_factory=dict)
    dataset: str = "offline"
    model: Optional[str] = None  # a path, a keras.Model, or None: the cached offline default model
    n_images: int = 64
    metrics: Optional[Sequence[str]] = None  # None: the registry's default set
    protocol: str = "debiased"  # deletion/insertion preset (evaluation.faithfulness.PRESETS)
    seed: int = 0
    # Monte Carlo tolerance of stochastic maps (relative L2 error; None: fixed sample counts).
    tolerance: Optional[float] = DEFAULT_TOLERANCE
    batch_size: int = 16
    n_examples: int = 4
    sanity_images: int = 8
    # None: read from the model (see docs/models.md). Not a key field of its own: the
    # range the model is fed joins the run's identity through the model's spec.
    input_range: Optional[tuple] = dataclasses.field(default=None, metadata={"identity": False, "via": "spec"})
    out: str = _provenance("xai-runs")
    backend: str = _provenance("local")  # "local" or "ray"
    address: Optional[str] = _provenance(None)  # Ray: None starts a local cluster, "auto" or HOST:PORT joins one
    workers: Optional[int] = _provenance(None)  # Ray: None = one per node
    # Ray: "driver" reads the images and ships them in shards; "workers" read their own shards
    # from the dataset (a name, or a path every node reaches). The same images either way.
    image_source: str = _provenance("driver")


BACKENDS = ("local", "ray")
#: ``methods=["all"]`` (``--methods all``): every registered explainer.
ALL_METHODS = "all"


def default_methods() -> list:
    """What `compare` runs when no methods are named: every registered explainer in the
    default comparison (`Explainer.in_default_comparison`)."""
    from xai.registry import get_explainer, list_explainers

    return [m for m in list_explainers() if get_explainer(m).in_default_comparison]


@dataclasses.dataclass(frozen=True)
class ResolvedConfig:
    """A validated configuration: methods and metrics in canonical order, parameters with
    every default filled in."""

    config: CompareConfig
    methods: tuple
    method_params: dict  # method -> resolved parameters
    metrics: tuple


def resolve_config(config: CompareConfig) -> ResolvedConfig:
    """Check everything a user can get wrong before any work; raise an `XAIError` if not."""
    if config.input_range is not None:
        from xai.baselines import check_range

        check_range(config.input_range)
    from xai import evaluation as ev
    from xai.evaluation import registry as metric_registry
    from xai.registry import get_explainer, list_explainers

    known = list_explainers()
    if config.methods is not None and not list(config.methods):
        raise ConfigError(f"no methods given; choose from {', '.join(known)}.")
    if not config.methods:
        methods = default_methods()
    elif list(config.methods) == [ALL_METHODS]:
        methods = known
    else:
        methods = list(dict.fromkeys(config.methods))
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise ConfigError(f"unknown method(s) {unknown}; registered: {', '.join(known)}.")
    stray = sorted(set(config.method_params) - set(methods))
    if stray:
        raise ConfigError(f"parameters given for {stray}, which this run does not include "
                          f"(methods: {', '.join(methods)}).")
    resolved = {m: get_explainer(m).resolve_params(config.method_params.get(m, {})) for m in methods}
    metrics = metric_registry.check_names(
        metric_registry.default_names() if config.metrics is None else config.metrics)
    if config.protocol not in ev.PRESETS:
        raise ConfigError(f"protocol must be one of {sorted(ev.PRESETS)}; got {config.protocol!r}.")
    if config.backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}; got {config.backend!r}.")
    tolerance = config.tolerance
    if tolerance is not None and (isinstance(tolerance, bool) or not isinstance(tolerance, (int, float))
                                  or not 0 < tolerance < float("inf")):
        raise ConfigError(f"tolerance must be a positive relative error (e.g. 0.05) or None; got {tolerance!r}.")
    if config.image_source not in IMAGE_SOURCES:
        raise ConfigError(f"image_source must be one of {IMAGE_SOURCES}; got {config.image_source!r}.")
    if config.image_source == "workers" and config.backend != "ray":
        raise ConfigError("image_source='workers' has Ray workers read their own images; it needs "
                          f"backend='ray' (got backend={config.backend!r}).")
    if config.workers is not None and (not isinstance(config.workers, int) or config.workers < 1):
        raise ParameterError(f"workers must be an integer >= 1; got {config.workers!r}.")
    for name in ("n_images", "batch_size"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise ParameterError(f"{name} must be an integer >= 1; got {value!r}.")
    for name in ("seed", "n_examples", "sanity_images"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise ParameterError(f"{name} must be an integer >= 0; got {value!r}.")
    return ResolvedConfig(config, tuple(sorted(methods)), resolved, tuple(metrics))


def file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def model_digest(model) -> str:
    """A model in memory, by content: its architecture and every weight's bytes (its
    optimizer state and the object's identity do not count)."""
    try:
        architecture = json.dumps(json.loads(model.to_json()), sort_keys=True)
    except (NotImplementedError, TypeError, ValueError):  # a subclassed model without get_config
        architecture = f"{type(model).__module__}.{type(model).__qualname__}"
    h = hashlib.sha256(architecture.encode())
    for weight in model.weights:
        h.update(f"{weight.path}:{tuple(weight.shape)}:{weight.dtype}\n".encode())
        h.update(np.ascontiguousarray(np.asarray(weight)).tobytes())
    return h.hexdigest()[:16]


def resolve_model(model_arg, verbose: int = 1):
    """(model, {"kind", "path", "digest"}) for a path, a `keras.Model` or the offline default."""
    import keras

    from xai.models import load_model

    if isinstance(model_arg, keras.Model):
        return model_arg, {"kind": "in-memory", "path": f"<in memory: {model_arg.name}>",
                           "digest": model_digest(model_arg)}
    if model_arg is None:
        from xai.train import DefaultModelConfig, default_model, default_model_path

        model = default_model(verbose=verbose)
        path = default_model_path(DefaultModelConfig())
        return model, {"kind": "offline-default", "path": str(path), "digest": file_digest(path)}
    path = Path(model_arg)
    if not path.is_file():
        raise ModelError(f"model file {model_arg!r} does not exist.")
    return load_model(path), {"kind": "file", "path": str(path.resolve()), "digest": file_digest(path)}


def run_identity(resolved: ResolvedConfig, model_info: dict, spec, dataset_identity=None) -> dict:
    """The canonical identity of a run: every field that changes its numbers, in a canonical
    form (resolved parameters, sorted names, content digests), and nothing else.
    `dataset_identity`: as `xai.data.dataset_identity` saw it where the images are read
    (default: here)."""
    from xai.data import dataset_identity as identity_of
    from xai.registry import plugin_info

    config = resolved.config
    identity = {"key_version": KEY_VERSION}
    for field in dataclasses.fields(CompareConfig):
        if field.metadata.get("identity", True):
            identity[field.name] = getattr(config, field.name)
    identity["methods"] = {m: {"class": plugin_info(m).qualname, "params": resolved.method_params[m]}
                           for m in resolved.methods}
    del identity["method_params"]
    identity["metrics"] = list(resolved.metrics)
    # The preset's settings, so that a preset redefined (as "debiased" may be) starts a new run.
    from xai.evaluation.faithfulness import PRESETS

    identity["protocol_settings"] = dict(PRESETS[config.protocol])
    identity["model"] = {"digest": model_info["digest"]}
    identity["dataset"] = identity_of(config.dataset)[0] if dataset_identity is None else dataset_identity
    identity["input_shape"] = list(spec.input_shape)
    if tuple(spec.input_range) != (0.0, 1.0):  # only then: earlier runs keep their keys
        identity["input_range"] = list(spec.input_range)
    identity["class_names"] = list(spec.class_names)
    return identity


def run_provenance(resolved: ResolvedConfig, model_info: dict, dataset_path: Optional[str] = None) -> dict:
    """Where and with what a run ran: shown in the report, never part of its key."""
    import keras
    import tensorflow as tf

    from xai.data import dataset_identity
    from xai.registry import plugin_info

    plugins = {m: {"distribution": plugin_info(m).distribution, "version": plugin_info(m).version}
               for m in resolved.methods}
    return {"model": {"kind": model_info["kind"], "path": model_info["path"]},
            "dataset": dataset_path or dataset_identity(resolved.config.dataset)[1] or resolved.config.dataset,
            "methods": plugins,
            "versions": {"xai": xai.__version__, "tensorflow": tf.__version__,
                         "keras": keras.__version__, "numpy": np.__version__}}


def run_key(identity: dict) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]


def merged(identity: dict, provenance: dict) -> dict:
    """Identity and provenance in one nested dict (what the report shows of a run)."""
    out = dict(identity)
    for key, value in provenance.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def _check_provenance(store, provenance: dict) -> None:
    """Keep the first provenance; warn when a run is resumed with other library versions."""
    first = store.extra("provenance")
    if first is None:
        store.set_extra("provenance", provenance)
        return
    changed = {lib: (old, provenance["versions"].get(lib))
               for lib, old in first.get("versions", {}).items() if provenance["versions"].get(lib) != old}
    if changed:
        text = ", ".join(f"{lib} {old} -> {new}" for lib, (old, new) in sorted(changed.items()))
        warnings.warn(f"resuming run {store.key} with other library versions ({text}); batches "
                      "computed before and after may differ in rounding.", RuntimeWarning, stacklevel=3)
        store.set_extra("resumed_with", store.extra("resumed_with", []) + [provenance["versions"]])


def _progress(total: int, quiet: bool, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, disable=quiet or not sys.stderr.isatty(), leave=False)


@contextlib.contextmanager
def run_lock(run_dir: Path, name: str = "compare.lock"):
    """Hold an exclusive lock on `run_dir` (``fcntl.flock`` on ``RUN_DIR/compare.lock``).

    A second process on the same run directory says once which process holds it, waits, and
    then resumes: the batches the first committed are skipped, none is computed twice. The
    operating system releases the lock when its holder exits, however it exits.
    """
    try:
        import fcntl
    except ImportError:  # not POSIX: no coordination (see docs/cli.md)
        yield
        return
    from xai.store import store_error

    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        handle = open(run_dir / name, "a+")
    except OSError as exc:
        raise store_error(run_dir / name, exc) from exc
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            other = handle.read().strip() or "?"
            print(f"another xai compare (pid {other}) is working on {run_dir}; waiting for it to finish, "
                  "then resuming.", file=sys.stderr, flush=True)
            fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()  # releases the lock


def check_classes(dataset, spec, name: str) -> None:
    """Refuse a dataset (or `DatasetFacts`) with more classes than the model has outputs
    (before any work)."""
    n = len(dataset.class_names)
    if n > spec.num_classes:
        shown = ", ".join(list(dataset.class_names)[:8]) + (", ..." if n > 8 else "")
        raise DataError(f"the dataset {name!r} has {n} classes ({shown}) but the model has "
                        f"{spec.num_classes} outputs; use a model with at least {n} outputs, or a "
                        f"folder with at most {spec.num_classes} class folders.")


def compare(config: CompareConfig = CompareConfig(), *, quiet: bool = False,
            write_report: bool = True) -> Path:
    """Run (or resume) a comparison; returns the run directory.

    Everything a user can get wrong (configuration, model, dataset: missing, unreadable or
    damaged images, more classes than the model has outputs) is refused with an `XAIError`
    before the first batch. Only one process works on a run directory at a time (`run_lock`).
    With ``image_source="workers"`` the images are read by the Ray workers: the dataset is
    then checked on a worker node, and an image a worker cannot read fails its shard, with
    the reason, while the run goes on.
    """
    from xai.models import attach_spec, model_spec, prepare_model

    resolved = resolve_config(config)
    model, model_info = resolve_model(config.model, verbose=0 if quiet else 1)
    model = prepare_model(model)
    if config.input_range is not None:
        model = attach_spec(model, dataclasses.replace(model_spec(model), input_range=tuple(
            float(v) for v in config.input_range)))
    if config.backend == "ray":
        from xai.distributed import RayBackend

        # The model in memory travels to the workers (as bytes): no worker reads a path.
        backend = RayBackend(model, address=config.address, workers=config.workers)
    else:
        backend = LocalBackend(model)
    with backend:
        return _compare(resolved, model, model_info, backend, quiet=quiet, write_report=write_report)


def _compare(resolved: ResolvedConfig, model, model_info: dict, backend, *, quiet: bool,
             write_report: bool) -> Path:
    """`compare` once the model and the backend are chosen: plan, run on `backend`, store."""
    from xai import data as xdata
    from xai.evaluation import registry as metric_registry
    from xai import _keras_internals as internals
    from xai.models import model_spec
    from xai.store import ResultsStore

    config = resolved.config
    spec = model_spec(model)
    if config.image_source == "workers":
        # Planned from what a worker node sees: the driver may not reach the images at all.
        facts, dataset_id, dataset_path = backend.describe_dataset(config.dataset, config.n_images,
                                                                   spec.num_classes)
        dataset, class_names, has_masks = None, list(facts.class_names), facts.has_masks
    else:
        dataset = xdata.load_dataset(config.dataset, n_images=config.n_images,
                                     image_size=spec.input_shape[0], seed=config.seed,
                                     num_classes=spec.num_classes)
        facts, (dataset_id, dataset_path) = None, xdata.dataset_identity(config.dataset)
        class_names, has_masks = list(dataset.class_names), "mask" in dataset.element_spec
    check_classes(facts or dataset, spec, config.dataset)
    if not quiet:
        print(describe_input(spec), file=sys.stderr)
    identity = run_identity(resolved, model_info, spec, dataset_id)
    key = run_key(identity)
    run_dir = Path(config.out) / key
    with run_lock(run_dir):
        store = ResultsStore(run_dir, identity, key)
        try:
            _check_provenance(store, run_provenance(resolved, model_info, dataset_path))
            if not (run_dir / "model.keras").is_file():
                _save_run_model(model, run_dir / "model.keras")  # what every number was computed with

            metrics = [metric_registry.get_metric(m) for m in resolved.metrics]
            has_graph = internals.functional_graph(model) is not None
            skipped = {m.name: "the dataset has no ground-truth masks" for m in metrics
                       if m.needs_masks and not has_masks}
            skipped.update({m.name: "the model is subclassed: its layers cannot be read in order"
                            for m in metrics if m.needs_layer_graph and not has_graph})
            usable = [m for m in metrics if m.name not in skipped]
            store.set_extra("skipped_metrics", skipped)
            store.set_extra("class_names", class_names)

            # A method not defined for this architecture (CAM without a GAP -> Dense head) is
            # reported as such, not run batch after batch to fail.
            from xai.registry import get_explainer

            not_applicable = {m: reason for m in resolved.methods
                              if (reason := get_explainer(m).not_applicable(spec, resolved.method_params[m]))}
            for m in resolved.methods:
                cls = get_explainer(m)
                if m not in not_applicable and cls.inspects_model:
                    try:
                        cls(model, **resolved.method_params[m])
                    except NotApplicable as exc:
                        not_applicable[m] = str(exc)
                    except Exception:  # noqa: BLE001 - any other error is the run's to record, per batch
                        pass
            store.set_extra("not_applicable", not_applicable)
            methods = [m for m in resolved.methods if m not in not_applicable]
            from xai.evaluation.meta_evaluation import CHANCE

            if CHANCE not in methods and any(m.per_batch is not None for m in usable):
                warnings.warn(f"`{CHANCE}` is not among the methods: no metric can be checked against chance, "
                              "so the report ranks methods on none (add it with --methods ...,random).",
                              UserWarning, stacklevel=3)
            for method, reason in not_applicable.items():
                if not quiet:
                    print(f"{method}: not applicable to this model ({reason})", file=sys.stderr)
            source = None if facts is None else ShardSource(
                config.dataset, spec.input_shape[0], config.seed, spec.num_classes,
                tuple(float(v) for v in spec.input_range), has_masks, dataset_id)
            plan = WorkPlan(methods=methods, method_params=resolved.method_params,
                            metrics=[m.name for m in usable if m.per_batch is not None],
                            protocol=config.protocol, n_examples=config.n_examples, seed=config.seed,
                            tolerance=config.tolerance, source=source, sanity_images=config.sanity_images)

            n_batches = -(-(config.n_images if facts is None else facts.n_images) // config.batch_size)
            bar = _progress(n_batches * len(methods), quiet, backend.label)
            if facts is None:
                # The first images are kept for the per-method metrics as the batches pass by.
                sanity_pool = {"images": [], "targets": []}
                shards = batches(dataset, config.batch_size, has_masks, spec.input_range)
            else:
                # Which images each shard holds, nothing more: the workers read them.
                sanity_pool = {"index": 0, "start": 0, "count": min(config.sanity_images, facts.n_images)}
                shards = ({"index": i, "start": i * config.batch_size,
                           "count": min(config.batch_size, facts.n_images - i * config.batch_size)}
                          for i in range(n_batches))

            def jobs():
                # Reads the store (what is done) but never writes it: the loop below commits.
                for batch in shards:
                    take = config.sanity_images - len(sanity_pool.get("images", ()))
                    if "images" in batch and take > 0:
                        sanity_pool["images"].extend(batch["images"][:take])
                        sanity_pool["targets"].extend(batch["targets"][:take])
                    todo = [m for m in methods if not store.is_done(m, batch["index"])]
                    bar.update(len(methods) - len(todo))
                    if todo:
                        yield batch, todo

            phases, clock = {"explanations": 0.0}, time.perf_counter()
            leading: dict = {}  # method -> {position of a batch's first image: its maps there}
            for (batch, todo), outcomes in backend.run(plan, jobs()):
                for method in todo:
                    store_outcome(store, method, batch, outcomes[method])
                    phases["explanations"] += outcomes[method].get("seconds", 0.0)
                    first, maps = outcomes[method].get("leading_maps", (0, ()))
                    if len(maps):
                        leading.setdefault(method, {})[first] = maps
                bar.update(len(todo))
            bar.close()
            phases["batches"], clock = time.perf_counter() - clock, time.perf_counter()

            if sanity_pool.get("images") or sanity_pool.get("count"):
                if "images" in sanity_pool:
                    sanity_pool = {"images": np.stack(sanity_pool["images"]),
                                   "targets": np.asarray(sanity_pool["targets"], np.int32)}
                # The maps this invocation computed of those images (all of them, or the
                # per-method metrics compute them again: a resumed run's batches return none).
                size = len(sanity_pool["images"]) if "images" in sanity_pool else sanity_pool["count"]
                joined = {m: np.concatenate([parts[k] for k in sorted(parts)]) for m, parts in leading.items()}
                sanity_pool["maps"] = {m: maps for m, maps in joined.items() if len(maps) == size}
                _run_per_method(backend, plan, store, [m for m in usable if m.per_method is not None],
                                methods, config.method_params, sanity_pool)
            phases["per_method_metrics"] = time.perf_counter() - clock
            # How this invocation ran (a run may be resumed elsewhere): provenance, never identity.
            # Its phases' wall-clock seconds say where a run's time went (the batches include
            # the explanations, stored per batch, and the per-batch metrics).
            store.set_extra("executions", store.extra("executions", []) + [{
                "backend": config.backend, "image_source": config.image_source, "address": config.address,
                "seconds": {k: round(v, 2) for k, v in phases.items()}, **backend.record()}])
            if not quiet:
                costliest = sorted(((r.get("seconds", 0), m) for metric in usable if metric.per_method
                                    for m, r in store.extra(metric.name, {}).items() if isinstance(r, dict)),
                                   reverse=True)[:3]
                top = ", ".join(f"{m} {sec:.0f}" for sec, m in costliest)
                print(f"time: batches {phases['batches']:.0f} s (explanations {phases['explanations']:.0f} s, "
                      f"the rest per-batch metrics), per-method metrics (sanity) "
                      f"{phases['per_method_metrics']:.0f} s" + (f" ({top} s)" if top else ""), file=sys.stderr)
            if write_report:
                from xai.report import write_report as _write

                _write(run_dir)
        finally:
            store.close()
    return run_dir


def describe_input(spec) -> str:
    """One line saying what the model is fed: size, pixel range and output kind."""
    low, high = spec.input_range
    return (f"Feeding the model {spec.input_shape[0]}x{spec.input_shape[1]} images with pixel "
            f"values in [{low:g}, {high:g}] (its input range; see docs/models.md); it outputs "
            f"{spec.output} over {spec.num_classes} classes.")


def _save_run_model(model, path: Path) -> None:
    from xai.models import save_model
    from xai.store import FULL_DISK_ERRNOS, full_disk_message

    try:
        save_model(model, path)
    except OSError as exc:
        if exc.errno in FULL_DISK_ERRNOS:
            raise StoreError(full_disk_message(path, exc)) from exc
        raise


def _run_per_method(backend, plan: WorkPlan, store, metrics, methods, method_params: dict, pool) -> None:
    """Metrics that re-run the explainer (the sanity checks), once per method on the `pool`
    of images, on the backend's workers; each result is stored as it arrives."""
    results = {metric.name: store.extra(metric.name, {}) for metric in metrics}
    tasks = [(metric.name, method, method_params.get(method, {}), pool) for metric in metrics
             for method in methods
             # done already, or the method never ran
             if method not in results[metric.name] and store.any_done(method)]
    for (metric, method, _, _), result in backend.run_per_method(plan, tasks):
        results[metric][method] = result
        store.set_extra(metric, results[metric])
