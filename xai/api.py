"""`xai.compare` in Python: the CLI's comparison as a function that returns its results.

The keyword arguments are named like the options of ``xai compare`` (``n_images`` for
``--n-images``); `model` may also be a `keras.Model` held in memory. The run is stored and
resumable exactly as from the CLI: calling again with the same arguments recomputes nothing.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Mapping, Optional, Sequence, Union

from xai.errors import ConfigError


class Comparison:
    """The results of one comparison, read from its run directory.

    Attributes
    ----------
    run_dir : Path
        Where the run lives: report.html, results.json, results.csv, the store.
    rows : list of dict
        Tidy per-image values ``{"image_id", "method", "metric", "value"}`` (pandas:
        ``pd.DataFrame(result.rows)``), without the second-seed replicates of stochastic metrics.
    summary : list of dict
        Per metric and method: mean, CI, median, rank (None where the metric may not rank),
        Holm-corrected p against the best.
    meta_evaluation : dict
        Per metric: whether it can rank methods on this run, and why (docs/metrics.md).
    """

    def __init__(self, run_dir):
        self.run_dir = Path(run_dir)
        data = json.loads((self.run_dir / "results.json").read_text())
        self.summary = data["summary"]
        self.meta_evaluation = data.get("meta_evaluation", {})
        self.failures = data.get("failures", [])
        from xai.evaluation.registry import is_replicate

        self.rows = [r for r in data["values"] if not is_replicate(r["metric"])]

    @property
    def report(self) -> Path:
        return self.run_dir / "report.html"

    def __repr__(self) -> str:
        return f"Comparison({str(self.run_dir)!r})"

    def _repr_html_(self) -> str:
        """Which metrics can rank here, and the ranking on each that can (Jupyter)."""
        esc = html.escape
        out = [f"<p><b>xai comparison</b> <code>{esc(self.run_dir.name)}</code>: full report in "
               f"<code>{esc(str(self.report))}</code></p>",
               "<table><tr><th>metric</th><th>verdict</th><th>reading</th></tr>"]
        for metric, verdict in self.meta_evaluation.items():
            out.append(f"<tr><td>{esc(metric)}</td><td>{esc(verdict['verdict'])}</td>"
                       f"<td style='text-align:left'>{esc(verdict['sentence'])}</td></tr>")
        out.append("</table>")
        for metric, verdict in self.meta_evaluation.items():
            if not verdict["trusted"]:
                continue
            out.append(f"<p><b>{esc(metric)}</b> (rank 1 is best; p: Holm-corrected, against the best)</p>"
                       "<table><tr><th>rank</th><th>method</th><th>mean</th><th>95% CI</th><th>p</th></tr>")
            for row in (r for r in self.summary if r["metric"] == metric):
                p = "–" if row["p_vs_best"] is None else f"{row['p_vs_best']:.3g}"
                out.append(f"<tr><td>{row['rank']}</td><td>{esc(row['method'])}</td><td>{_num(row['mean'])}</td>"
                           f"<td>{_num(row['ci_low'])} – {_num(row['ci_high'])}</td><td>{p}</td></tr>")
            out.append("</table>")
        if self.failures:
            out.append(f"<p style='color:#b00'>{len(self.failures)} failed batches: see the report.</p>")
        return "\n".join(out)


def _num(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _methods(methods) -> Optional[list]:
    if methods is None:
        return None
    if isinstance(methods, str):
        return [m.strip() for m in methods.split(",") if m.strip()]
    return list(methods)


def _params(params) -> dict:
    """``{"smoothgrad": {"n_samples": 8}}`` or the CLI's flat ``{"smoothgrad.n_samples": 8}``."""
    out: dict = {}
    for key, value in (params or {}).items():
        if isinstance(value, Mapping):
            out.setdefault(key, {}).update(value)
            continue
        method, dot, name = str(key).rpartition(".")
        if not dot or not method or not name:
            raise ConfigError(f"params key {key!r}: expected METHOD.PARAM (or a dict per method).")
        out.setdefault(method, {})[name] = value
    return out


def compare(model=None, *, methods: Union[str, Sequence[str], None] = None, dataset: str = "offline",
            n_images: int = 64, metrics: Union[str, Sequence[str], None] = None, protocol: str = "debiased",
            seed: int = 0, params: Optional[Mapping] = None, out: str = "xai-runs", backend: str = "local",
            address: Optional[str] = None, workers: Optional[int] = None, quiet: bool = False,
            batch_size: int = 16, n_examples: int = 4, sanity_images: int = 8,
            tolerance: Optional[float] = 0.05, input_range: Optional[Sequence[float]] = None, image_source: str = "driver") -> Comparison:
    """Run (or resume) a comparison and return its results; `xai compare` in Python.

    Parameters
    ----------
    model : str, path, keras.Model or None
        A saved model, a model in memory (its run is keyed by its architecture and weights,
        so the same weights resume the same run), or None for the offline default.
    methods, metrics : list or comma-separated str, optional
        Default: the default comparison (every registered explainer but the opt-in ones;
        ``"all"`` for every one); the default metric set.
    params : dict, optional
        Explainer parameters, ``{"smoothgrad": {"n_samples": 8}}`` or ``{"smoothgrad.n_samples": 8}``.
    backend, address, workers : "local" or "ray"; the Ray cluster ("auto", HOST:PORT, or None
        to start one here); the number of Ray workers (None: one per node). A model in memory
        runs on both backends: Ray workers receive it as bytes (docs/scaling.md).
    image_source : "driver" (default) or "workers"
        With Ray: the driver reads the images and sends them in shards, or each worker reads
        its own shards from `dataset` (a name, or a path every worker node reaches).
    tolerance : float or None, default 0.05
        Monte Carlo tolerance of stochastic maps (docs/methods.md); None: fixed sample counts.
    sanity_images : int, default 8
        Images the sanity checks run on.
    Other arguments as the CLI options of the same names (docs/cli.md).

    Returns
    -------
    Comparison

    Examples
    --------
    >>> result = xai.compare(model, methods="random,cam,grad_cam", n_images=8,  # doctest: +SKIP
    ...                      metrics=["deletion", "symmetric_relevance_gain"])
    >>> result.meta_evaluation["deletion"]["verdict"]  # doctest: +SKIP
    'do not rank'
    """
    from xai.runner import CompareConfig, compare as run_compare

    config = CompareConfig(
        methods=_methods(methods), method_params=_params(params), dataset=str(dataset), model=model,
        n_images=n_images, metrics=_methods(metrics), protocol=protocol, seed=seed, batch_size=batch_size,
        n_examples=n_examples, sanity_images=sanity_images, tolerance=tolerance,
        out=str(out), backend=backend, address=address, workers=workers, image_source=image_source,
        input_range=None if input_range is None else tuple(input_range))
    return Comparison(run_compare(config, quiet=quiet))


class Explanation:
    """One image explained by several methods: the seed's picture (image, grey map, overlay).

    Attributes
    ----------
    image : (H, W, C) array in the model's input range
    maps : dict method -> (H, W) map
    target : the explained class index; predicted : the model's class
    class_names : the model's class names
    """

    def __init__(self, image, maps, target, predicted, class_names, input_range, title=None):
        self.image, self.maps, self.target, self.predicted = image, maps, int(target), int(predicted)
        self.class_names, self.input_range, self.title = class_names, input_range, title

    def figure(self):
        """The seed's figure: the image, then per method its grey map and its overlay."""
        from xai import display

        name = self.class_names[self.predicted] if self.class_names else str(self.predicted)
        return display.explanation_figure(self.image, self.maps, title=self.title or f"predicted: {name}",
                                          input_range=self.input_range)

    def save(self, path, dpi: int = 120) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.figure().savefig(path, dpi=dpi)
        return path

    def _repr_png_(self) -> bytes:
        import io

        buffer = io.BytesIO()
        self.figure().savefig(buffer, format="png", dpi=100)
        return buffer.getvalue()

    def _repr_html_(self) -> str:
        import base64

        data = base64.b64encode(self._repr_png_()).decode()
        return (f'<img alt="the image, then for each of {html.escape(", ".join(self.maps))}: its grey map '
                f'and its overlay" src="data:image/png;base64,{data}">')

    def __repr__(self) -> str:
        return f"Explanation(methods={list(self.maps)}, target={self.target}, predicted={self.predicted})"


def explain_batch(images, methods: Sequence[str], model, *, target: Optional[int] = None,
                  params: Optional[Mapping] = None):
    """(maps by method (N, H, W), predicted classes (N,), spec) of `images` already in the
    model's input range; the work behind `explain` and ``xai explain``."""
    import numpy as np

    import xai
    from xai.head import ModelHead

    known = xai.list_explainers()
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise xai.PluginError(f"unknown method(s) {unknown}; registered: {', '.join(known)}.")
    spec = xai.models.model_spec(model)
    if target is not None and not 0 <= target < spec.num_classes:
        raise xai.ParameterError(f"target must be a class index from 0 to {spec.num_classes - 1} "
                                 f"(the model has {spec.num_classes} outputs); got {target}.")
    options = _params(params)
    targets = None if target is None else np.full(len(images), target)
    maps = {m: xai.create_explainer(m, model, **options.get(m, {})).explain(images, targets) for m in methods}
    predicted = np.argmax(ModelHead(model)(images)["probabilities"], axis=-1)
    return maps, predicted, spec


def explain(image, methods: Union[str, Sequence[str]] = "vanilla_gradient", model=None, *,
            target: Optional[int] = None, params: Optional[Mapping] = None,
            input_range: Optional[Sequence[float]] = None) -> Explanation:
    """Explain one image with one or more methods: the seed's picture in one call.

    Parameters
    ----------
    image : path to an image file, or an (H, W, C) array with values in [0, 1]
        Resized to the model's input size (files) and scaled to its input range.
    methods : str (comma-separated) or list, default "vanilla_gradient"
    model : path, keras.Model or None (the offline default)
    target : class to explain (default: the predicted class)
    params : explainer parameters, as for `compare`

    Returns
    -------
    Explanation, shown as the figure in Jupyter; ``.save("out.png")`` writes it.
    """
    import dataclasses

    import numpy as np

    import xai
    from xai import data
    from xai.runner import resolve_model

    net, _ = resolve_model(model, verbose=0)
    net = xai.models.prepare_model(net)
    if input_range is not None:
        net = xai.models.attach_spec(net, dataclasses.replace(
            xai.models.model_spec(net), input_range=tuple(float(v) for v in input_range)))
    spec = xai.models.model_spec(net)
    if isinstance(image, (str, Path)):
        unit = data.load_images([image], spec.input_shape[:2])
        title = Path(image).name
    else:
        unit = np.asarray(image, np.float32)[None]
        title = None
        if unit.shape[1:] != tuple(spec.input_shape):
            raise xai.DataError(f"image must be {tuple(spec.input_shape)} with values in [0, 1] "
                                f"(the model's input size); got {unit.shape[1:]}.")
    low, high = spec.input_range
    batch = unit * np.float32(high - low) + np.float32(low)
    methods = _methods(methods) or []
    maps, predicted, spec = explain_batch(batch, methods, net, target=target, params=params)
    explained = int(predicted[0]) if target is None else int(target)
    names = spec.class_names or tuple(str(i) for i in range(spec.num_classes))
    return Explanation(batch[0], {m: maps[m][0] for m in methods}, explained, int(predicted[0]), names,
                       spec.input_range, title=None if title is None else f"{title}: {names[int(predicted[0])]}")
