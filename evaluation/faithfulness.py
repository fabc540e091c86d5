"""Deletion and insertion (Petsiuk, Das & Saenko, "RISE", BMVC 2018).

One mechanism, two modes. Pixels are ranked by the map (most important first, all
channels of a pixel together, ties broken by pixel index). At step k the first ``n_k``
ranked pixels are switched: deletion replaces them by a baseline, insertion starts from
the baseline and puts the original pixels back. The model's score of the target class
after each step draws a curve; its area (trapezoid rule, x in [0, 1]) is the metric.

Every perturbed image is built on the device from one argsort per image (a rank mask
per step) and pushed through the model in batches of ``batch_size`` rows that mix images
and steps: no per-step Python loop, no numpy copy per step.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Union

import numpy as np
import tensorflow as tf

from xai.baselines import baseline_images, blur, inpaint
from xai.evaluation.registry import MetricInputs, MetricOutput, register_metric
from xai.errors import DataError, ParameterError
from xai.explainer import check_images, check_targets, content_digest
from xai.head import ModelHead
from xai.models import model_spec, prepare_model

PRESETS = {
    # Petsiuk et al.: 224 pixels per step (224 steps at 224x224), zeros for deletion, a
    # blurred copy (Gaussian, kernel 11, sigma 5) to insert into, softmax probability.
    "rise": {"pixels_per_step": 224, "steps": None, "deletion_baseline": "zero",
             "insertion_baseline": "blur", "score": "probability", "x_axis": "fraction"},
    # Xplique 2.0 Deletion/Insertion defaults: 10 steps, baseline 0 for both modes, the
    # model's output as is, steps treated as equally spaced.
    "xplique": {"pixels_per_step": None, "steps": 10, "deletion_baseline": "zero",
                "insertion_baseline": "zero", "score": "output", "x_axis": "step"},
    # `xai compare`'s default: RISE with a debiased deletion. Deleted pixels are inpainted
    # from the kept ones, so the hole's outline and colour tell the model nothing (ROAD's
    # point, Rong et al. 2022): on the offline default a black silhouette of the object keeps
    # 0.94 of its probability, an inpainted one 0.53 (docs/data.md). 10 steps, as ROAD's and
    # Xplique's curves: half of RISE's 19 at 64x64, the same verdicts (docs/data.md).
    # Insertion is the RISE paper's.
    "debiased": {"pixels_per_step": None, "steps": 10, "deletion_baseline": "inpaint",
                 "insertion_baseline": "blur", "score": "probability", "x_axis": "fraction"},
}
SCORES = ("probability", "output", "logit")
BASELINES = ("zero", "mean", "blur")


@dataclasses.dataclass
class CurveResult:
    """Per-image AUCs (N,), curves (N, P) at positions x (P,), and the protocol."""

    auc: np.ndarray
    curves: np.ndarray
    x: np.ndarray
    protocol: dict


class ModelScorer:
    """Scores the target class of many images fast; build once per model and reuse.

    Parameters
    ----------
    model : keras.Model or path
    jit_compile : bool, default False
    """

    def __init__(self, model, jit_compile: bool = False):
        self.model = prepare_model(model)
        self.spec = model_spec(self.model)
        self.head = ModelHead(self.model)
        self.jit_compile = jit_compile
        self._compiled: dict = {}

    def scores(self, images, targets, score: str = "probability", batch_size: int = 256) -> np.ndarray:
        """The target-class score of each image (N,) float64, `batch_size` images per call;
        for metrics whose perturbed images are built on the host (ROAD, MuFidelity)."""
        self.head.check_score(score, "this metric")
        key = {"probability": "probabilities", "output": "output", "logit": "logits"}[score]
        if ("images", key) not in self._compiled:
            image_sig = tf.TensorSpec((None, *self.spec.input_shape), tf.float32)

            def score_images(x, t):
                values = self.head(x)[key]
                return tf.reduce_sum(values * tf.one_hot(t, self.spec.num_classes, dtype=values.dtype), -1)

            self._compiled["images", key] = tf.function(score_images, jit_compile=self.jit_compile,
                                              reduce_retracing=True,
                                              input_signature=[image_sig, tf.TensorSpec((None,), tf.int32)])
        x = np.asarray(images, np.float32)
        t = np.asarray(targets, np.int32)
        out = [self._compiled["images", key](tf.constant(x[s:s + batch_size]), tf.constant(t[s:s + batch_size]))
               for s in range(0, len(x), batch_size)]
        return tf.concat(out, 0).numpy().astype(np.float64) if out else np.zeros(0)

    def _remembered(self, name: str, key, size: int, compute):
        """`compute()`, remembered under `key` among the last `size` of its kind `name`."""
        memo = self.__dict__.setdefault(name, {})
        if key not in memo:
            if len(memo) >= size:
                memo.pop(next(iter(memo)))
            memo[key] = compute()
        return memo[key]

    def unperturbed_scores(self, images, targets, score: str) -> np.ndarray:
        """`scores`, remembered for the last few (images, targets, score): every deletion
        and insertion curve of a batch starts or ends on the images themselves or on their
        baseline, for every method."""
        x, t = np.ascontiguousarray(images, np.float32), np.ascontiguousarray(targets, np.int32)
        # 8: a batch needs three (images, zero and blurred baselines).
        return self._remembered("_unperturbed", (content_digest(x), t.tobytes(), score), 8,
                                lambda: self.scores(x, t, score))

    def baseline(self, images: np.ndarray, baseline) -> tuple[np.ndarray, str]:
        """`make_baseline`, remembered for the last few (images, named or constant baseline):
        every method's insertion curves of a batch start from the same blurred images."""
        if callable(baseline):
            return make_baseline(images, baseline)
        key = (content_digest(np.ascontiguousarray(images, np.float32)), repr(baseline))
        return self._remembered("_baselines", key, 4, lambda: make_baseline(images, baseline))

    def rows_fn(self, score: str, inpainted: bool = False):
        """Compiled (start, end, ranks, targets, rows, counts) -> scores, one per score kind;
        `inpainted`: switched pixels are inpainted from the rest of `start` (`end` unread)."""
        self.head.check_score(score, "deletion/insertion")
        if (score, inpainted) not in self._compiled:
            key = {"probability": "probabilities", "output": "output", "logit": "logits"}[score]
            image_sig = tf.TensorSpec((None, *self.spec.input_shape), tf.float32)
            rows_sig = tf.TensorSpec((None,), tf.int32)

            def score_rows(start, end, ranks, targets, rows, counts):
                # Row r is image rows[r] with its counts[r] top-ranked pixels taken from `end`.
                mask = tf.gather(ranks, rows) < counts[:, None]  # (R, H*W)
                shape = tf.shape(start)
                mask = tf.reshape(mask, (-1, shape[1], shape[2], 1))
                x = tf.gather(start, rows)
                x = inpaint(x, mask) if inpainted else tf.where(mask, tf.gather(end, rows), x)
                values = self.head(x)[key]
                onehot = tf.one_hot(tf.gather(targets, rows), self.spec.num_classes,
                                    dtype=values.dtype)
                return tf.reduce_sum(values * onehot, axis=-1)

            self._compiled[score, inpainted] = tf.function(
                score_rows, jit_compile=self.jit_compile, reduce_retracing=True,
                input_signature=[image_sig, image_sig, tf.TensorSpec((None, None), tf.int32),
                                 rows_sig, rows_sig, rows_sig])
        return self._compiled[score, inpainted]


ORDERS = ("morf", "lerf")


def checked_inputs(model, images, targets, maps, metric: str = "") -> tuple:
    """(ModelScorer, images (N, H, W, C) float32, targets (N,) int32, maps (N, H, W) float32),
    or a one-line `DataError` naming `metric`: the checks every map metric starts with."""
    where = f"{metric}: " if metric else ""
    scorer = model if isinstance(model, ModelScorer) else ModelScorer(model)
    x = check_images(images, scorer.spec)
    if targets is None:
        raise DataError(f"{where}targets are required: the class whose score the metric follows.")
    t = check_targets(targets, len(x), scorer.spec.num_classes)
    m = np.asarray(maps, dtype=np.float32)
    if m.shape != x.shape[:3]:
        raise DataError(f"{where}maps must be (N, H, W) = {x.shape[:3]}; got {m.shape}.")
    if not np.all(np.isfinite(m)):
        raise DataError(f"{where}maps contain NaN or infinite values.")
    return scorer, x, t, m


def _ranks(maps: np.ndarray, order: str = "morf") -> tf.Tensor:
    """Rank of each pixel, 0 = switched first: the most relevant first ("morf") or the least
    relevant first ("lerf"); ties keep pixel order (stable sort) in both."""
    flat = tf.reshape(tf.convert_to_tensor(maps, tf.float32), (len(maps), -1))
    order = tf.argsort(-flat if order == "morf" else flat, axis=-1, stable=True)
    return tf.argsort(order, axis=-1, stable=True)  # inverse permutation


def gaussian_blur(images, kernel_size: int = 11, sigma: float = 5.0) -> np.ndarray:
    """RISE's insertion substrate: a per-channel Gaussian blur with zero padding.

    RISE builds its kernel by Gaussian-filtering an 11x11 delta (tails reflected back in);
    this is the sampled Gaussian normalised to 1, which differs by under 1% per weight.
    """
    return blur(images, kernel_size, sigma).numpy()


def make_baseline(images: np.ndarray, baseline) -> tuple[np.ndarray, str]:
    """The substrate images and a description of it for the protocol."""
    if callable(baseline):
        out = np.asarray(baseline(images), np.float32)
        if out.shape != images.shape:
            raise DataError(f"baseline callable returned shape {out.shape}; expected {images.shape}.")
        return out, f"callable {getattr(baseline, '__name__', repr(baseline))}"
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        description = f"constant {float(baseline)!r}"
    elif isinstance(baseline, str) and baseline in BASELINES:
        description = {"zero": "zero", "mean": "per-image channel mean",
                       "blur": "gaussian blur (kernel 11, sigma 5, zero padding)"}[baseline]
    else:
        raise ParameterError(f"baseline must be one of {(*BASELINES, 'inpaint', 'noisy_linear')}, a number or a "
                             f"callable; got {baseline!r}.")
    return baseline_images(tf.convert_to_tensor(images, tf.float32), baseline).numpy(), description


def step_counts(n_pixels: int, steps: Optional[int], pixels_per_step: Optional[int]) -> np.ndarray:
    """Pixels switched at each point of the curve, both ends included."""
    if (steps is None) == (pixels_per_step is None):
        raise ParameterError("give exactly one of steps or pixels_per_step.")
    if steps is not None:
        if not isinstance(steps, (int, np.integer)) or isinstance(steps, bool) or steps < 1:
            raise ParameterError(f"steps must be an integer >= 1; got {steps!r}.")
        # Truncating linspace, as Xplique does, so the "xplique" preset switches the same pixels.
        return np.linspace(0, n_pixels, int(steps) + 1).astype(np.int32)
    if not isinstance(pixels_per_step, (int, np.integer)) or pixels_per_step < 1:
        raise ParameterError(f"pixels_per_step must be an integer >= 1; got {pixels_per_step!r}.")
    n_steps = -(-n_pixels // int(pixels_per_step))
    return np.minimum(np.arange(n_steps + 1) * int(pixels_per_step), n_pixels).astype(np.int32)


def _resolve(mode: str, protocol: str, overrides: dict) -> dict:
    if protocol not in PRESETS:
        raise ParameterError(f"protocol must be one of {sorted(PRESETS)}; got {protocol!r}.")
    preset = PRESETS[protocol]
    settings = {"steps": preset["steps"], "pixels_per_step": preset["pixels_per_step"],
                "baseline": preset[f"{mode}_baseline"], "score": preset["score"],
                "x_axis": preset["x_axis"], "batch_size": 256, "order": "morf"}
    given = {k: v for k, v in overrides.items() if v is not None}
    if "steps" in given and "pixels_per_step" not in given:
        settings["pixels_per_step"] = None
    if "pixels_per_step" in given and "steps" not in given:
        settings["steps"] = None
    settings.update(given)
    if settings["score"] not in SCORES:
        raise ParameterError(f"score must be one of {SCORES}; got {settings['score']!r}.")
    if settings["order"] not in ORDERS:
        raise ParameterError(f"order must be one of {ORDERS}; got {settings['order']!r}.")
    if settings["x_axis"] not in ("fraction", "step"):
        raise ParameterError(f"x_axis must be 'fraction' or 'step'; got {settings['x_axis']!r}.")
    if not isinstance(settings["batch_size"], int) or settings["batch_size"] < 1:
        raise ParameterError(f"batch_size must be an integer >= 1; got {settings['batch_size']!r}.")
    return settings


def causal_curves(mode: str, model, images, targets, maps, *, protocol: str = "rise",
                  steps: Optional[int] = None, pixels_per_step: Optional[int] = None,
                  baseline: Union[str, float, Callable, None] = None, score: Optional[str] = None,
                  x_axis: Optional[str] = None, batch_size: Optional[int] = None,
                  order: Optional[str] = None) -> CurveResult:
    """Deletion (``mode="deletion"``) or insertion curves; see `deletion`, `insertion`."""
    if mode not in ("deletion", "insertion"):
        raise ParameterError(f"mode must be 'deletion' or 'insertion'; got {mode!r}.")
    settings = _resolve(mode, protocol, dict(steps=steps, pixels_per_step=pixels_per_step,
                                             baseline=baseline, score=score, x_axis=x_axis,
                                             batch_size=batch_size, order=order))
    scorer, x, t, m = checked_inputs(model, images, targets, maps)
    inpainted = isinstance(settings["baseline"], str) and settings["baseline"] == "inpaint"
    if inpainted and mode != "deletion":
        raise ParameterError("the inpaint baseline fills removed pixels from kept ones: use it with deletion "
                             "(either order); insertion starts with no pixel kept.")
    score_rows = scorer.rows_fn(settings["score"], inpainted)

    n_pixels = x.shape[1] * x.shape[2]
    counts = step_counts(n_pixels, settings["steps"], settings["pixels_per_step"])
    points = len(counts)
    ranks = _ranks(m, settings["order"])
    if isinstance(settings["baseline"], str) and settings["baseline"] == "noisy_linear":
        if mode != "deletion":
            raise ParameterError("the noisy_linear imputation fills removed pixels from kept ones: use it "
                                 "with deletion (either order) or road; insertion starts with no pixel kept.")
        curves, substrate_text = _imputed_curves(scorer, x, t, ranks.numpy(), counts, settings["score"],
                                                 settings["batch_size"])
    else:
        # Inpainted, the last point has nothing to inpaint from: its image is 0.
        substrate, substrate_text = ((np.zeros_like(x), "inpainted from the kept pixels (push-pull pyramid, "
                                      "xai.baselines.inpaint); with none kept, 0") if inpainted
                                     else scorer.baseline(x, settings["baseline"]))
        start, end = (x, substrate) if mode == "deletion" else (substrate, x)
        start_t, end_t = tf.convert_to_tensor(start), tf.convert_to_tensor(end)
        targets_t = tf.convert_to_tensor(t)
        # The two ends of every curve are the start and end images themselves, whatever the
        # map: scored once per batch of images (`ModelScorer.unperturbed_scores`), not per
        # curve and method; only the points in between go through the rank masks.
        inner = counts[1:-1]
        rows = np.repeat(np.arange(len(x), dtype=np.int32), len(inner))
        row_counts = np.tile(inner, len(x)).astype(np.int32)
        scores = []
        for s in range(0, len(rows), settings["batch_size"]):
            e = s + settings["batch_size"]
            scores.append(score_rows(start_t, end_t, ranks, targets_t, tf.constant(rows[s:e]),
                                     tf.constant(row_counts[s:e])))
        curves = np.empty((len(x), points), np.float64)
        if len(inner):
            curves[:, 1:-1] = tf.concat(scores, axis=0).numpy().reshape(len(x), len(inner))
        curves[:, 0] = scorer.unperturbed_scores(start, t, settings["score"])
        curves[:, -1] = scorer.unperturbed_scores(end, t, settings["score"])

    if settings["x_axis"] == "fraction":
        xs = counts / n_pixels
    else:
        xs = np.arange(points) / (points - 1)
    auc = np.trapezoid(curves, xs, axis=1)
    protocol_record = {
        "metric": mode, "preset": protocol, "score": settings["score"],
        "baseline": substrate_text, "steps": points - 1,
        "pixels_per_step": settings["pixels_per_step"], "x_axis": settings["x_axis"],
        "order": settings["order"],
        "ranking": ("descending" if settings["order"] == "morf" else "ascending")
        + " map value, all channels of a pixel together, ties by pixel index",
        "auc": "trapezoid rule over x in [0, 1], per image",
    }
    return CurveResult(auc=auc, curves=curves, x=xs, protocol=protocol_record)


def _imputed_curves(scorer: ModelScorer, x: np.ndarray, targets: np.ndarray, ranks: np.ndarray,
                    counts: np.ndarray, score: str, batch_size: int) -> tuple[np.ndarray, str]:
    """Deletion curves whose removed pixels are filled by ROAD's noisy linear imputation: the
    filling depends on which pixels are removed, so each point's images are built on the host."""
    from xai.evaluation.remove_and_debias import noisy_linear_impute

    low, high = scorer.spec.input_range
    noise = 0.01 * (high - low)  # ROAD's 0.01 for images in [0, 1], in the model's units
    curves = np.empty((len(x), len(counts)))
    for k, count in enumerate(counts):
        removed = (ranks < count).reshape(x.shape[:3])
        curves[:, k] = scorer.scores(noisy_linear_impute(x, removed, noise=noise, seed=(0, k)), targets,
                                     score, batch_size)
    return curves, f"noisy linear imputation (ROAD), noise std {noise:g}, seed 0"


def deletion(model, images, targets, maps, **kwargs) -> CurveResult:
    """Deletion curve and AUC per image (lower is better).

    Parameters
    ----------
    model : keras.Model, path, or ModelScorer (build one to reuse across calls)
    images : (N, H, W, C) float32
    targets : (N,) int
    maps : (N, H, W) float
    protocol : {"rise", "debiased", "xplique"}, default "rise"
        Preset; explicit keywords override it. ``"debiased"`` (`xai compare`'s default) is
        RISE's protocol in 10 steps with deleted pixels inpainted (`baseline="inpaint"`).
    steps : int, optional
        Number of steps (points = steps + 1). Exclusive with `pixels_per_step`.
    pixels_per_step : int, optional
    baseline : {"zero", "mean", "blur", "inpaint", "noisy_linear"}, number or callable, optional
        What deleted pixels become. ``"inpaint"`` fills them from the kept pixels
        (`xai.baselines.inpaint`, a push-pull pyramid close to ROAD's linear imputation),
        built on the device inside the scoring call: deletion only, about a third of a
        forward pass per perturbed image on the default model. ``"noisy_linear"`` is ROAD's imputation (Rong et al.
        2022; see `xai.evaluation.remove_and_debias`): each removed pixel is interpolated from its
        neighbours plus noise, so the hole's shape does not leak the class. Deletion only;
        one sparse solve per image and point on the host.
    score : {"probability", "output", "logit"}, optional
    x_axis : {"fraction", "step"}, optional
        x of point k: pixels switched / all pixels, or k / steps (Xplique).
    batch_size : int, default 256
        Perturbed images per model call.
    order : {"morf", "lerf"}, default "morf"
        Switch the most relevant pixels first (MoRF, the RISE metric) or the least relevant
        first (LeRF; for deletion, higher AUC is then better).

    Returns
    -------
    CurveResult

    Examples
    --------
    >>> import numpy as np, xai
    >>> model = xai.vgg16_gap((32, 32, 3), width=0.125)
    >>> x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    >>> result = deletion(model, x, [0, 1], x.mean(-1), steps=8)
    >>> result.curves.shape, result.auc.shape
    ((2, 9), (2,))
    """
    return causal_curves("deletion", model, images, targets, maps, **kwargs)


def insertion(model, images, targets, maps, **kwargs) -> CurveResult:
    """Insertion curve and AUC per image (higher is better); parameters as `deletion`,
    with `baseline` the image pixels are inserted into (RISE: a blurred copy)."""
    return causal_curves("insertion", model, images, targets, maps, **kwargs)


def symmetric_relevance_gain(model, images, targets, maps, *, protocol: str = "rise",
                             **kwargs) -> CurveResult:
    """LeRF deletion AUC minus MoRF deletion AUC per image (higher is better).

    Blücher, Vielhaben & Strodthoff, "Decoupling pixel flipping and occlusion strategy for
    consistent XAI benchmarks", TMLR 2024. Both orders use one protocol (baseline, steps,
    score), so what the baseline alone does to the model (a black image that is confidently
    one class) cancels: a map earns a gain only by telling relevant pixels from irrelevant
    ones. A map unrelated to the model scores about 0, a good one scores > 0.

    Parameters as `deletion` (but `order`). Returns a `CurveResult` whose `auc` is the gain
    and whose `curves` are LeRF minus MoRF at each step.

    Examples
    --------
    >>> import numpy as np, xai
    >>> model = xai.vgg16_gap((32, 32, 3), width=0.125)
    >>> x = np.random.default_rng(0).random((2, 32, 32, 3), np.float32)
    >>> gain = symmetric_relevance_gain(model, x, [0, 1], x.mean(-1), steps=8)
    >>> gain.auc.shape
    (2,)
    """
    if "order" in kwargs:
        raise ParameterError("symmetric_relevance_gain uses both orders; do not pass order.")
    scorer = model if isinstance(model, ModelScorer) else ModelScorer(model)
    morf = causal_curves("deletion", scorer, images, targets, maps, protocol=protocol, order="morf", **kwargs)
    lerf = causal_curves("deletion", scorer, images, targets, maps, protocol=protocol, order="lerf", **kwargs)
    return relevance_gain(morf, lerf)


def relevance_gain(morf: CurveResult, lerf: CurveResult) -> CurveResult:
    """LeRF minus MoRF of two deletion results of one protocol: `symmetric_relevance_gain`."""
    record = {**morf.protocol, "metric": "symmetric_relevance_gain", "order": "lerf - morf",
              "ranking": "both orders of the map value, ties by pixel index",
              "auc": "deletion AUC with least relevant first minus most relevant first, per image"}
    return CurveResult(auc=lerf.auc - morf.auc, curves=lerf.curves - morf.curves, x=morf.x,
                       protocol=record)


def _as_output(result: CurveResult) -> MetricOutput:
    return MetricOutput(result.auc, curves=(result.x, result.curves), protocol=result.protocol)


def _batch_curves(inputs: MetricInputs, mode: str, order: str = "morf") -> CurveResult:
    """The batch's curves of one mode and order, computed once however many metrics read them."""
    return inputs.memo(("causal_curves", mode, order, inputs.protocol),
                       lambda: causal_curves(mode, inputs.scorer, inputs.images, inputs.targets, inputs.maps,
                                             protocol=inputs.protocol, order=order))


def _curve_metric(mode: str):
    return lambda inputs: _as_output(_batch_curves(inputs, mode))


def _relevance_gain_metric(inputs: MetricInputs) -> MetricOutput:
    # The MoRF half is the `deletion` metric's own curves: computed once per batch.
    return _as_output(relevance_gain(_batch_curves(inputs, "deletion", "morf"),
                                     _batch_curves(inputs, "deletion", "lerf")))


register_metric("deletion", higher_is_better=False, uses_protocol=True, order=10,
                description="area under the deletion curve (RISE); lower = more faithful")(
    _curve_metric("deletion"))
register_metric("insertion", higher_is_better=True, uses_protocol=True, order=20,
                description="area under the insertion curve (RISE); higher = more faithful")(
    _curve_metric("insertion"))
register_metric("symmetric_relevance_gain", higher_is_better=True, uses_protocol=True, order=22,
                description="LeRF minus MoRF deletion AUC (Blücher et al. 2024); higher = more faithful, "
                            "0 = chance")(_relevance_gain_metric)
