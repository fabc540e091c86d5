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

    explainers, setup_errors = {}, {}
    for m in methods:
        try:
            explainers[m] = xai.create_explainer(m, model, **config.method_params.get(m, {}))
        except Exception as exc:  # the run goes on with the others
            setup_errors[m] = f"{type(exc).__name__}: {exc}"
    scorer = ev.ModelScorer(model)

    n_batches = -(-config.n_images // config.batch_size)
    bar = _progress(n_batches * len(methods), quiet, "xai compare")
    warmed = set()
    sanity_pool = {"images": [], "targets": []}
    for batch_index, batch in enumerate(dataset.batch(config.batch_size)):
        images = batch["image"].numpy()
        labels = batch["label"].numpy()
        ids = [i.decode() for i in batch["id"].numpy()]
        masks = batch["mask"].numpy() if has_masks else None
        targets = labels.astype(np.int32)
        store.add_images(batch_index, ids, labels, targets)
        if len(sanity_pool["images"]) < config.sanity_images:
            take = config.sanity_images - len(sanity_pool["images"])
            sanity_pool["images"].extend(images[:take])
            sanity_pool["targets"].extend(targets[:take])
        for method in methods:
            bar.set_postfix_str(method)
            if store.is_done(method, batch_index):
                bar.update()
                continue
            if method in setup_errors:
                store.record_failure(method, batch_index, setup_errors[method], len(images))
                bar.update()
                continue
            try:
                explainer = explainers[method]
                if method not in warmed:  # keep tracing out of the timings
                    explainer.explain(images[:1], targets[:1])
                    warmed.add(method)
                start = time.perf_counter()
                maps = explainer.explain(images, targets)
                seconds = time.perf_counter() - start
                maps = np.asarray(maps)
                if maps.shape != images.shape[:3]:
                    raise PluginError(f"{method} returned maps of shape {maps.shape}; "
                                      f"expected {images.shape[:3]}.")
                if not np.all(np.isfinite(maps)):
                    raise PluginError(f"{method} returned NaN or infinite values.")
                values, curves = [], []
                per_image = seconds / len(images)
                values += [(i, "seconds_per_image", per_image) for i in ids]
                for metric in metrics:
                    if metric in ("deletion", "insertion"):
                        result = ev.causal_curves(metric, scorer, images, targets, maps,
                                                  protocol=config.protocol)
                        values += [(i, metric, a) for i, a in zip(ids, result.auc)]
                        curves += [(i, metric, result.x, c) for i, c in zip(ids, result.curves)]
                        store.set_extra(f"protocol_{metric}", result.protocol)
                    elif metric == "pointing_game":
                        values += [(i, metric, v) for i, v in zip(ids, ev.pointing_game(maps, masks))]
                    elif metric == "relevance_mass":
                        values += [(i, metric, v) for i, v in zip(ids, ev.relevance_mass(maps, masks))]
                examples = []
                if batch_index == 0:
                    k = min(config.n_examples, len(images))
                    examples = [(ids[j], images[j], maps[j], None if masks is None else masks[j])
                                for j in range(k)]
                store.commit_batch(method, batch_index, n_images=len(images), seconds=seconds,
                                   values=values, curves=curves, examples=examples)
            except Exception as exc:
                store.record_failure(method, batch_index, _one_line(exc), len(images))
            bar.update()
    bar.close()

    if "sanity" in metrics and sanity_pool["images"]:
        _run_sanity(store, model, methods, explainers, config, sanity_pool, quiet)
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


def _run_sanity(store, model, methods, explainers, config, pool, quiet):
    images = np.stack(pool["images"])
    targets = np.asarray(pool["targets"], np.int32)
    names = {layer.name for layer in model.layers}
    layers = [n for n in SANITY_CHECKPOINTS if n in names]
    results = store.extra("sanity", {})
    for method in methods:
        if method in results or method not in explainers:
            continue
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
