"""Comparison runs: every method on every image, scored by every metric, stored, resumable.

The run directory is named by a hash of the full configuration, so the same command
resumes the same run and a changed configuration starts a new one. Work is committed
per (method, batch); a method that raises or returns a wrong shape is recorded as failed
for that batch and the run goes on with the others.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import time
import traceback
from pathlib import Path
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from tqdm.auto import tqdm

import xai
from xai import data as xdata
from xai import evaluation as ev
from xai.errors import DataError, PluginError
from xai.models import load_model, model_spec, prepare_model, save_model
from xai.registry import list_explainers, plugin_info
from xai.store import ResultsStore

METRICS = ("deletion", "insertion", "pointing_game", "relevance_mass", "sanity")
NEEDS_MASKS = ("pointing_game", "relevance_mass")
#: Layers randomised (cumulatively, top down) in the sanity check, where the model has them.
SANITY_CHECKPOINTS = ("predictions", "block5_conv3", "block4_conv3", "block3_conv3",
                      "block2_conv2", "block1_conv1")


@dataclasses.dataclass
class CompareConfig:
    """What `compare` runs. Defaults are the offline default (the README's main job)."""

    methods: Optional[Sequence[str]] = None  # None: every registered explainer
    method_params: dict = dataclasses.field(default_factory=dict)
    dataset: str = "offline"
    model: Optional[str] = None  # None: the cached offline default model
    n_images: int = 64
    metrics: Sequence[str] = METRICS
    protocol: str = "rise"
    seed: int = 0
    batch_size: int = 16
    n_examples: int = 4
    sanity_images: int = 8
    out: str = "xai-runs"
    # Where the work runs; not part of the run's key: any backend resumes any other's run.
    backend: str = "local"  # "local" or "ray"
    address: Optional[str] = None  # Ray: None starts a local cluster, "auto" or HOST:PORT joins one
    workers: Optional[int] = None  # Ray: None = one per node


BACKENDS = ("local", "ray")


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _validate(config: CompareConfig) -> list[str]:
    methods = list(config.methods) if config.methods else list_explainers()
    known = list_explainers()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise PluginError(f"unknown method(s) {unknown}; registered: {', '.join(known)}.")
    bad = [m for m in config.metrics if m not in METRICS]
    if bad:
        raise ValueError(f"unknown metric(s) {bad}; choose from {', '.join(METRICS)}.")
    if config.protocol not in ev.PRESETS:
        raise ValueError(f"protocol must be one of {sorted(ev.PRESETS)}; got {config.protocol!r}.")
    if config.backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {config.backend!r}.")
    if config.workers is not None and (not isinstance(config.workers, int) or config.workers < 1):
        raise ValueError(f"workers must be an integer >= 1; got {config.workers!r}.")
    for name, value in (("n_images", config.n_images), ("batch_size", config.batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {value!r}.")
    return methods


def resolve_model(model_arg: Optional[str], verbose: int = 1):
    """(model, description) for a path or the offline default."""
    if model_arg is None:
        from xai.train import DefaultModelConfig, default_model, default_model_path

        model = default_model(verbose=verbose)
        path = default_model_path(DefaultModelConfig())
        return model, {"kind": "offline-default", "path": str(path), "digest": _file_digest(path)}
    path = Path(model_arg)
    if not path.is_file():
        raise DataError(f"model file {model_arg!r} does not exist.")
    return load_model(path), {"kind": "file", "path": str(path.resolve()), "digest": _file_digest(path)}


def build_run_config(config: CompareConfig, methods: list[str], model_info: dict, spec) -> dict:
    plugins = {}
    for m in methods:
        info = plugin_info(m)
        plugins[m] = {"params": config.method_params.get(m, {}), "class": info.qualname,
                      "distribution": info.distribution, "version": info.version}
    return {
        "methods": plugins, "dataset": config.dataset, "n_images": config.n_images,
        "model": model_info, "input_shape": list(spec.input_shape),
        "class_names": list(spec.class_names), "metrics": list(config.metrics),
        "protocol": config.protocol, "seed": config.seed, "batch_size": config.batch_size,
        "n_examples": config.n_examples, "sanity_images": config.sanity_images,
        "versions": {"xai": xai.__version__, "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__},
    }


def run_key(run_config: dict) -> str:
    return hashlib.sha256(json.dumps(run_config, sort_keys=True).encode()).hexdigest()[:12]


def _progress(total: int, quiet: bool, desc: str):
    return tqdm(total=total, desc=desc, disable=quiet or not sys.stderr.isatty(), leave=False)


def _batches(dataset, config: CompareConfig, has_masks: bool, store: ResultsStore):
    """Batches as plain dicts of numpy arrays; decoding overlaps the model's work."""
    for index, batch in enumerate(dataset.batch(config.batch_size).prefetch(tf.data.AUTOTUNE)):
        ids = [i.decode() for i in batch["id"].numpy()]
        labels = batch["label"].numpy()
        targets = labels.astype(np.int32)
        store.add_images(index, ids, labels, targets)
        yield {"index": index, "ids": ids, "images": batch["image"].numpy(), "targets": targets,
               "masks": batch["mask"].numpy() if has_masks else None}


@dataclasses.dataclass
class WorkPlan:
    """What every batch goes through; the same code runs in-process and on Ray workers."""

    methods: Sequence[str]
    method_params: dict
    metrics: Sequence[str]
    protocol: str
    n_examples: int

    def create_explainers(self, model, classes: Optional[dict] = None) -> tuple[dict, dict]:
        """(explainers, setup errors) by method; a method that cannot be built is an error."""
        explainers, errors = {}, {}
        for m in self.methods:
            try:
                params = self.method_params.get(m, {})
                explainers[m] = (classes[m](model, **params) if classes and m in classes
                                 else xai.create_explainer(m, model, **params))
            except Exception as exc:  # the run goes on with the others
                errors[m] = f"{type(exc).__name__}: {exc}"
        return explainers, errors

    def run_method(self, method, explainers, setup_errors, scorer, batch) -> dict:
        """One (method, batch): {"ok": True, ...results} or {"ok": False, "error": ...}."""
        if method in setup_errors:
            return {"ok": False, "error": setup_errors[method]}
        try:
            return {"ok": True, **self._explain_and_score(explainers[method], method, scorer, batch)}
        except Exception as exc:
            return {"ok": False, "error": _one_line(exc)}

    def _explain_and_score(self, explainer, method, scorer, batch) -> dict:
        images, targets, ids, masks = batch["images"], batch["targets"], batch["ids"], batch["masks"]
        if not getattr(explainer, "_xai_warmed", False):  # keep tracing out of the timings
            explainer.explain(images[:1], targets[:1])
            explainer._xai_warmed = True
        start = time.perf_counter()
        maps = np.asarray(explainer.explain(images, targets))
        seconds = time.perf_counter() - start
        if maps.shape != images.shape[:3]:
            raise PluginError(f"{method} returned maps of shape {maps.shape}; expected {images.shape[:3]}.")
        if not np.all(np.isfinite(maps)):
            raise PluginError(f"{method} returned NaN or infinite values.")
        values = [(i, "seconds_per_image", seconds / len(images)) for i in ids]
        curves, protocols = [], {}
        for metric in self.metrics:
            if metric in ("deletion", "insertion"):
                result = ev.causal_curves(metric, scorer, images, targets, maps, protocol=self.protocol)
                values += [(i, metric, float(a)) for i, a in zip(ids, result.auc)]
                curves += [(i, metric, result.x, c) for i, c in zip(ids, result.curves)]
                protocols[metric] = result.protocol
            elif metric == "pointing_game":
                values += [(i, metric, float(v)) for i, v in zip(ids, ev.pointing_game(maps, masks))]
            elif metric == "relevance_mass":
                values += [(i, metric, float(v)) for i, v in zip(ids, ev.relevance_mass(maps, masks))]
        examples = []
        if batch["index"] == 0:
            examples = [(ids[j], images[j], maps[j], None if masks is None else masks[j])
                        for j in range(min(self.n_examples, len(images)))]
        return {"seconds": seconds, "values": values, "curves": curves, "examples": examples,
                "protocols": protocols}


def store_outcome(store: ResultsStore, method: str, batch: dict, outcome: dict) -> None:
    """Commit one (method, batch) outcome; only the driver process ever calls this."""
    n_images = len(batch["ids"])
    if not outcome["ok"]:
        store.record_failure(method, batch["index"], outcome["error"], n_images)
        return
    for metric, protocol in outcome["protocols"].items():
        store.set_extra(f"protocol_{metric}", protocol)
    store.commit_batch(method, batch["index"], n_images=n_images, seconds=outcome["seconds"],
                       values=outcome["values"], curves=outcome["curves"], examples=outcome["examples"])


def compare(config: CompareConfig = CompareConfig(), *, quiet: bool = False,
            write_report: bool = True) -> Path:
    """Run (or resume) a comparison; returns the run directory."""
    methods = _validate(config)
    model, model_info = resolve_model(config.model, verbose=0 if quiet else 1)
    model = prepare_model(model)
    spec = model_spec(model)
    run_config = build_run_config(config, methods, model_info, spec)
    key = run_key(run_config)
    run_dir = Path(config.out) / key
    store = ResultsStore(run_dir, run_config, key)
    if not (run_dir / "model.keras").is_file():
        save_model(model, run_dir / "model.keras")  # what every number was computed with

    dataset = xdata.load_dataset(config.dataset, n_images=config.n_images,
                                 image_size=spec.input_shape[0], seed=config.seed,
                                 num_classes=spec.num_classes)
    has_masks = "mask" in dataset.element_spec
    metrics = [m for m in config.metrics if has_masks or m not in NEEDS_MASKS]
    skipped = [m for m in config.metrics if m not in metrics]
    store.set_extra("skipped_metrics", {m: "the dataset has no ground-truth masks" for m in skipped})
    store.set_extra("class_names", list(dataset.class_names))

    batches = _batches(dataset, config, has_masks, store)
    sanity_pool = {"images": [], "targets": []}

    def pooled(batches):
        # The first images are kept for the sanity checks, whichever backend runs.
        for batch in batches:
            take = config.sanity_images - len(sanity_pool["images"])
            if take > 0:
                sanity_pool["images"].extend(batch["images"][:take])
                sanity_pool["targets"].extend(batch["targets"][:take])
            yield batch

    n_batches = -(-config.n_images // config.batch_size)
    plan = WorkPlan(methods=methods, method_params=config.method_params, metrics=metrics,
                    protocol=config.protocol, n_examples=config.n_examples)
    if config.backend == "ray":
        from xai.distributed import run_on_ray

        run_on_ray(plan, pooled(batches), n_batches, store, run_dir / "model.keras", config, quiet)
    else:
        explainers, setup_errors = plan.create_explainers(model)
        scorer = ev.ModelScorer(model)
        bar = _progress(n_batches * len(methods), quiet, "xai compare")
        for batch in pooled(batches):
            for method in methods:
                bar.set_postfix_str(method)
                if not store.is_done(method, batch["index"]):
                    outcome = plan.run_method(method, explainers, setup_errors, scorer, batch)
                    store_outcome(store, method, batch, outcome)
                bar.update()
        bar.close()

    if "sanity" in metrics and sanity_pool["images"]:
        _run_sanity(store, model, methods, config, sanity_pool)
    if write_report:
        from xai.report import write_report as _write

        _write(run_dir)
    store.close()
    return run_dir


def _one_line(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip().splitlines()
    where = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    loc = f" (at {Path(where[0].filename).name}:{where[0].lineno})" if where else ""
    return (text[0] if text else type(exc).__name__) + loc


def _run_sanity(store, model, methods, config, pool):
    images = np.stack(pool["images"])
    targets = np.asarray(pool["targets"], np.int32)
    names = {layer.name for layer in model.layers}
    layers = [n for n in SANITY_CHECKPOINTS if n in names]
    results = store.extra("sanity", {})
    for method in methods:
        if method in results or not store.any_done(method):
            continue  # done already, or the method never ran
        params = config.method_params.get(method, {})
        try:
            randomised = ev.model_randomisation(method, model, images, targets, params=params,
                                                layers=layers or None, seed=config.seed)
            logit = ev.random_logit(method, model, images, targets, params=params, seed=config.seed)
            results[method] = {
                "layers": randomised["layers"],
                "spearman_mean": [float(np.nanmean(r)) if np.isfinite(r).any() else None
                                  for r in randomised["spearman"]],
                "random_logit_mean": float(np.nanmean(logit)) if np.isfinite(logit).any() else None,
                "n_images": int(len(images)),
            }
        except Exception as exc:
            results[method] = {"error": _one_line(exc)}
        store.set_extra("sanity", results)
