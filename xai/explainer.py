"""The explainer contract: every method, built-in or third-party, is an `Explainer`.

Template method. The base class owns what every method repeats: the common parameters
(``batch_size``, ``jit_compile`` and, for methods that score a class, ``score``), their
validation, input and target checks, the model head, compilation, batching that bounds
memory, numpy output. An author writes public hooks only:

- `Explainer.compute(images, targets)`: maps of one batch from one traced function (vanilla
  gradient, CAM, Grad-CAM). ``targets`` may hold -1, "the predicted class".
- `PerturbationExplainer`: for methods that push many copies of each image through the model
  (SmoothGrad, Integrated Gradients, Occlusion, RISE, Score-CAM). The author says how many
  copies an image costs (`n_copies`), what one chunk of (image, copy) rows adds to a per-image
  total (`contribution`) and how the total becomes a map (`finalize`); the base class chunks
  the copies of several images into full model calls and accumulates.

Everything an author needs is importable from `xai.plugin_api`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar, Mapping, Optional, Sequence

import numpy as np

from xai._lazy import tf
from xai.errors import DataError, NotApplicable, ParameterError, PluginError

SCORES = ("loss", "probability", "logit")
#: Scores whose gradient is the logit's scaled by about 1 - p(target): it fades as the model
#: grows sure. The logit does not saturate.
SATURATING_SCORES = ("loss", "probability")
#: An image saturates a gradient method's score when 1 - p(target) is below this.
SATURATION = 1e-3


@dataclasses.dataclass(frozen=True)
class Param:
    """A declared explainer parameter: its default and what values it allows.

    Parameters
    ----------
    default : object
    types : type or tuple of types, optional
        Allowed types (``bool`` is never accepted where ``int``/``float`` is asked).
    choices : tuple, optional
    low, high : float, optional
        Inclusive bounds for numbers.
    allow_none : bool, default False
    doc : str
    affects_output : bool, default True
        False for parameters that only change speed or memory (the contract suite then
        checks that the output does NOT change with them).
    check : callable, optional
        ``check(owner, value)`` raising `ParameterError` for values the other fields cannot
        describe (e.g. a baseline name or a number).
    """

    default: Any
    types: Any = object
    choices: Optional[tuple] = None
    low: Optional[float] = None
    high: Optional[float] = None
    allow_none: bool = False
    doc: str = ""
    affects_output: bool = True
    check: Optional[Callable[[str, Any], None]] = None

    def allowed(self) -> str:
        if self.choices is not None:
            return "one of " + ", ".join(repr(c) for c in self.choices)
        types = self.types if isinstance(self.types, tuple) else (self.types,)
        text = " or ".join(t.__name__ for t in types)
        if self.low is not None and self.high is not None:
            text += f" in [{self.low}, {self.high}]"
        elif self.low is not None:
            text += f" >= {self.low}"
        elif self.high is not None:
            text += f" <= {self.high}"
        return text + (" or None" if self.allow_none else "")

    def validate(self, owner: str, name: str, value: Any) -> Any:
        """`value` as it will be used (ints widened to float where a float is asked), or
        `ParameterError` naming the parameter, what is allowed and what was passed."""
        if value is None and self.allow_none:
            return value
        problem = False
        if self.choices is not None:
            problem = value not in self.choices
        else:
            types = self.types if isinstance(self.types, tuple) else (self.types,)
            numeric = any(t in (int, float) for t in types)
            if (numeric and isinstance(value, (bool, np.bool_))) or not isinstance(value, types):
                if float in types and isinstance(value, (int, np.integer)) and not isinstance(value, bool):
                    value = float(value)
                else:
                    raise ParameterError(f"{owner}: parameter {name!r} must be {self.allowed()}; "
                                         f"got {value!r} ({type(value).__name__}).")
            if isinstance(value, (int, float, np.number)) and not isinstance(value, bool):
                problem = (not np.isfinite(value) or (self.low is not None and value < self.low)
                           or (self.high is not None and value > self.high))
        if problem:
            raise ParameterError(f"{owner}: parameter {name!r} must be {self.allowed()}; got {value!r}.")
        if self.check is not None:
            self.check(owner, value)
        return value


BATCH_SIZE = Param(32, int, low=1, affects_output=False,
                   doc="Images (or perturbed copies) per model call; bounds memory.")
JIT_COMPILE = Param(False, bool, affects_output=False,
                    doc="Compile with XLA (faster on most hardware; results equal to rounding).")


def check_layer_ref(owner: str, value) -> None:
    """A layer reference is a non-empty name / path, or a keras layer object."""
    is_layer = hasattr(value, "call") and hasattr(value, "name") and not isinstance(value, type)
    if not (is_layer or (isinstance(value, str) and value.strip())):
        raise ParameterError(f"{owner}: parameter 'layer' must be a layer name, a path 'base/layer' "
                             f"into a nested base, or a keras layer object; got {value!r}.")


#: The CAM family's feature layer (None: the model's ``last_conv_layer``).
LAYER = Param(None, allow_none=True, check=check_layer_ref,
              doc="Feature layer: name, 'base/layer' path or layer object (None: the model's).")
#: Parameters the base class declares itself (see `Explainer.__init_subclass__`).
COMMON = ("score", "batch_size", "jit_compile")


class Explainer:
    """Base class of every explanation method.

    Parameters
    ----------
    model : keras.Model or path
        A classifier taking (N, H, W, C) float32 images and returning class scores. Nested
        models are flattened; layers are read from its `ModelSpec`.
    spec : ModelSpec, optional
        Override the model's declared or derived facts (name layers explicitly).
    **params
        The method's parameters (see ``parameters``); kept as given in ``params`` and with
        defaults filled in, validated, in ``resolved``.

    Class attributes an author sets
    -------------------------------
    parameters : dict of str -> Param
        The method's own parameters. The base class adds ``batch_size``, ``jit_compile``
        (unless ``uses_model`` is False) and ``score`` (when ``default_score`` is set).
    default_score : {"loss", "probability", "logit"} or None
        For methods that differentiate or measure a class score: the default of ``score``.
    needs : tuple of str
        `ModelSpec` fields the method requires (e.g. ``"feature_layer"``).
    stochastic : bool
        Whether the output depends on a random seed.
    uses_model : bool
        False for model-independent baselines: no head, nothing compiled; the author
        overrides `explain_batch`.

    Hooks (all optional but one of `compute` / `explain_batch`)
    ----------------------------------------------------------
    setup() :
        Derive what the method needs from ``self.resolved`` and ``self.spec`` before the head
        is built (raise `ParameterError` / `ModelError` here for combinations of values).
    head_layers() -> list :
        Layers (names, paths or layer objects) whose outputs `self.head` must expose
        besides the class scores, under each layer's name.
    compute(images, targets) -> (n, H, W) :
        Traced once (XLA with ``jit_compile``); ``targets`` hold -1 for the predicted class.
    explain_batch(images, targets, offset) -> (n, H, W) :
        One batch; ``offset`` is its first image's index in the whole call (per-image seeds).
    """

    name: ClassVar[str] = ""
    parameters: ClassVar[Mapping[str, Param]] = {}
    default_score: ClassVar[Optional[str]] = None
    needs: ClassVar[Sequence[str]] = ()
    stochastic: ClassVar[bool] = False
    uses_model: ClassVar[bool] = True
    #: True when only the model itself, not its spec, shows whether the method applies (its
    #: `setup` raises `NotApplicable`): `xai compare` then builds it once up front to ask.
    inspects_model: ClassVar[bool] = False
    #: False for a method whose cost at its defaults (thousands of model calls per image)
    #: would dominate a default comparison: `xai compare` runs it when named, or with
    #: ``--methods all``. A plugin is in the default comparison unless it says otherwise.
    in_default_comparison: ClassVar[bool] = True
    #: For a stochastic method: the parameter that sets its samples per image (its cost), which
    #: `explain_with_error` splits into independent replicates (``seed`` must be a parameter too).
    sample_count: ClassVar[Optional[str]] = None
    #: Whether the map is a gradient of ``score`` at the image or its noisy copies, which fades
    #: where a saturating score (loss, probability) saturates: see `saturated`.
    differentiates_score: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" not in cls.__dict__:
            cls.name = ""  # a subclass of a registered method is not that method: registration names it
        own = {k: p for k, p in cls.parameters.items() if k not in COMMON}
        common = {}
        if cls.default_score is not None:
            common["score"] = Param(cls.default_score, choices=SCORES, doc="What is scored or differentiated.")
        common["batch_size"] = BATCH_SIZE
        if cls.uses_model:
            common["jit_compile"] = JIT_COMPILE
        cls.parameters = {**own, **common}

    # -- parameters without a model (run keys, up-front validation) ----------------------
    @classmethod
    def resolve_params(cls, params: Mapping[str, Any]) -> dict:
        """Every parameter with defaults filled in and values validated; raises
        `ParameterError` for unknown names and bad values, without building anything."""
        owner = cls.name or cls.__name__
        unknown = sorted(set(params) - set(cls.parameters))
        if unknown:
            raise ParameterError(f"{owner} got unknown parameter(s) {unknown}; it takes "
                                 f"{sorted(cls.parameters)}.")
        resolved = {name: p.validate(owner, name, params.get(name, p.default))
                    for name, p in cls.parameters.items()}
        if resolved.get("interpolation") == "bicubic" and resolved.get("jit_compile"):
            raise ParameterError(f"{owner}: interpolation='bicubic' cannot be XLA-compiled (TensorFlow "
                                 "has no XLA kernel for ResizeBicubic); use 'bilinear' or jit_compile=False.")
        return resolved

    def __init__(self, model, spec=None, **params):
        from xai.head import ModelHead
        from xai.models import model_spec, prepare_model, require_layers

        self.params = dict(params)
        missing = self.missing_hooks()
        if missing:
            raise PluginError(f"{type(self).__name__} does not implement {' or '.join(missing)}; see "
                              "docs/writing-a-plugin.md.")
        self.resolved = type(self).resolve_params(params)
        self.model = prepare_model(model, spec)
        self.spec = model_spec(self.model)
        reason = type(self).not_applicable(self.spec, self.resolved)
        if reason:
            raise NotApplicable(f"{self.display_name}: {reason}")
        require_layers(self.spec, self.display_name, *self.needs)
        self.setup()
        self.head = None
        if self.uses_model:
            self.head = ModelHead(self.model, extra_layers=self.head_layers())
            if "score" in self.resolved:
                self.head.check_score(self.resolved["score"], self.display_name)
        self._compiled: dict = {}

    @classmethod
    def not_applicable(cls, spec, params: Mapping[str, Any]) -> str:
        """Why the method cannot run on a model with this `ModelSpec` with these resolved
        parameters ("" if it can).

        Checked at construction (raising `NotApplicable`) and by ``xai compare`` before any
        work, which then reports the method as "not applicable" rather than failed.
        """
        return ""

    @classmethod
    def missing_hooks(cls) -> list:
        """The required hooks this class leaves unimplemented (checked at construction)."""
        overridden = lambda name: getattr(cls, name) is not getattr(Explainer, name)  # noqa: E731
        return [] if overridden("compute") or overridden("explain_batch") else ["compute(images, targets)"]

    @property
    def display_name(self) -> str:
        return self.name or type(self).__name__

    # -- hooks -----------------------------------------------------------------------------
    def setup(self) -> None:
        """Derive settings from ``self.resolved`` and ``self.spec`` (before the head is built)."""

    def head_layers(self) -> list:
        """Layers whose outputs ``self.head`` exposes by name (CAM: the feature layer)."""
        return []

    def compute(self, images, targets):
        """(n, H, W) maps of one batch, traced once; targets -1 mean "the predicted class"."""
        raise NotImplementedError(f"{type(self).__name__} must implement compute(images, targets) "
                                  "or explain_batch(images, targets, offset).")

    def copies_per_image(self) -> int:
        """Model rows one image costs in a call (sampling methods: their copies)."""
        return 1

    def explain_batch(self, images, targets, offset: int):
        """Maps of one batch of at most `images_per_call` images (default: `compute`)."""
        return self.compiled("compute", self.compute, [self.image_signature, self.index_signature])(
            images, targets)

    # -- helpers for hooks (traceable) -----------------------------------------------------
    @property
    def image_signature(self):
        from xai.head import image_signature

        return image_signature(self.spec)

    @property
    def index_signature(self):
        from xai.head import index_signature

        return index_signature()

    def compiled(self, key: str, fn, signature=None, *, jit_compile: Optional[bool] = None):
        """`fn` as a `tf.function` (XLA if ``jit_compile``), built once per `key`."""
        from xai.head import compile_fn

        if key not in self._compiled:
            jit = self.resolved.get("jit_compile", False) if jit_compile is None else jit_compile
            self._compiled[key] = compile_fn(fn, signature, jit)
        return self._compiled[key]

    def score_of(self, out: dict, targets):
        """Per-image score ``score`` of `targets` from a head output."""
        from xai.head import class_score

        return class_score(self.resolved["score"], out, targets)

    def scores(self, images, targets):
        """Per-image score ``score`` of `targets` (resolved, no -1) for `images`."""
        return self.score_of(self.head(images), targets)

    def predicted(self, images, targets):
        """`targets` with -1 replaced by the class the model predicts for `images`."""
        from xai.head import resolve_targets

        return resolve_targets(targets, self.head(images)["probabilities"])

    def input_gradients(self, images, targets):
        """d score / d images, (n, H, W, C); targets -1 resolved from the same pass."""
        from xai.head import input_gradients

        return input_gradients(self.head, images, targets, self.resolved["score"])

    def layer_gradients(self, images, targets, layer):
        """(A, d score / dA, resolved targets) for a layer listed in `head_layers`, or lists of
        them for a sequence of layers (one pass)."""
        from xai.head import layer_gradients

        return layer_gradients(self.head, images, targets, self.resolved["score"], layer)

    def upsample(self, maps, method: Optional[str] = None):
        """(n, h, w) -> (n, H, W) at the input size (default: the ``interpolation`` parameter)."""
        from xai.head import upsample

        method = method or self.resolved.get("interpolation", "bilinear")
        return upsample(maps, self.spec.input_shape[:2], method)

    # -- the contract ----------------------------------------------------------------------
    def images_per_call(self) -> int:
        """Images per `explain_batch`: as many as fill ``batch_size`` model rows with their
        copies, at least one."""
        return max(1, self.resolved["batch_size"] // self.copies_per_image())

    def explain(self, images, targets=None) -> np.ndarray:
        """Explain a batch.

        Parameters
        ----------
        images : array-like (N, H, W, C) float32
            Values in the model's input range ([0, 1] for xai models).
        targets : array-like of int (N,), int, or None
            Class to explain per image; None explains the model's predicted class.

        Returns
        -------
        numpy.ndarray (N, H, W) float32
            Raw maps at input resolution (no normalisation).
        """
        x = check_images(images, self.spec)
        t = check_targets(targets, len(x), self.spec.num_classes)
        step = self.images_per_call()
        maps = []
        for start in range(0, len(x), step):
            result = self.explain_batch(tf.convert_to_tensor(x[start:start + step]),
                                        tf.convert_to_tensor(t[start:start + step]), start)
            maps.append(np.asarray(result, dtype=np.float32))
        return np.concatenate(maps, axis=0)

    __call__ = explain

    def explain_with_error(self, images, targets=None, *, tolerance: Optional[float] = None,
                           max_samples: Optional[int] = None):
        """Maps and each map's Monte Carlo error (`xai.monte_carlo.MapsWithError`).

        A stochastic method's map is the mean of independent replicates (four of a quarter
        of the samples each: the cost of `explain`), its error the relative L2 standard error of
        that mean; two independent calls differ by about sqrt(2) times it. With
        ``tolerance`` (a relative L2 error, e.g. 0.05), replicates are added image by image
        until the error is at most the tolerance or ``max_samples`` samples are spent (default
        8 times the method's own count); ``converged`` flags the images that made it.
        Deterministic methods report 0, ``random`` NaN; Integrated Gradients reports its
        completeness gap and doubles its steps in tolerance mode.

        Returns
        -------
        MapsWithError
            ``maps`` (N, H, W), ``errors`` (N,), ``samples`` (N,), ``converged`` (N,),
            ``order_errors`` (N,): the error of each map less its own pixel mean (see
            `xai.monte_carlo.MapsWithError`); ``maps, errors =
            explainer.explain_with_error(images)`` unpacks the first two.
        """
        from xai import monte_carlo

        x = check_images(images, self.spec)
        with monte_carlo.quiet_retracing():
            t = self.resolve_targets(x, check_targets(targets, len(x), self.spec.num_classes))
            return self.estimate_with_error(x, t, tolerance, max_samples)

    def estimate_with_error(self, images, targets, tolerance, max_samples):
        """`explain_with_error` on checked images and resolved targets (a hook: IG overrides it)."""
        from xai import monte_carlo

        if self.stochastic and self.sample_count:
            return monte_carlo.replicated(self, images, targets, tolerance, max_samples)
        monte_carlo.check_tolerance(tolerance, max_samples, 1)
        return monte_carlo.deterministic(self, images, targets)

    def resolve_targets(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """`targets` with -1 replaced by the predicted class, so that every replicate of a map
        explains the same class."""
        if not self.uses_model:  # a model-free baseline explains no class
            return np.maximum(targets, 0)
        if not np.any(targets < 0):
            return targets
        fn = self.compiled("targets", self.predicted, [self.image_signature, self.index_signature])
        step = self.resolved["batch_size"]
        return np.concatenate([np.asarray(fn(tf.convert_to_tensor(images[s:s + step]),
                                             tf.convert_to_tensor(targets[s:s + step])))
                               for s in range(0, len(images), step)]).astype(np.int32)

    def variant(self, **changes) -> "Explainer":
        """This explainer with some parameters changed, on the same model; built once per change."""
        key = tuple(sorted(changes.items()))
        cache = self.__dict__.setdefault("_variants", {})
        if key not in cache:
            cache[key] = type(self)(self.model, spec=self.spec, **{**self.params, **changes})
        return cache[key]

    def saturated(self, probabilities) -> Optional[np.ndarray]:
        """Per image, whether this method's score saturates there (True where 1 - p(target) <
        `SATURATION` for a gradient of the loss or the probability), from the target's
        probabilities; None when the method cannot saturate (no gradient, or the logit)."""
        if not self.differentiates_score or self.resolved.get("score") not in SATURATING_SCORES:
            return None
        return 1.0 - np.asarray(probabilities, np.float64) < SATURATION

    def smallest_replicate(self) -> int:
        """The fewest samples one replicate of `explain_with_error` may have: the sample count
        parameter's lower bound unless the estimator needs more (a hook)."""
        return int(self.parameters[self.sample_count].low or 1)

    def reseed(self, seed: int) -> bool:
        """Draw this explainer's randomness from `seed` from now on, without tracing its
        functions again; True if done (a hook for stochastic methods whose seed lives in
        variables). The default does nothing and returns False."""
        return False

    def replicate(self, index: int, samples: int) -> "Explainer":
        """Replicate `index` of this stochastic explainer: its own seed, `samples` samples.

        One sibling per sample count serves every replicate when the method can `reseed`
        (a new explainer per replicate would trace the model once more each time), so the
        explainer returned is valid until the next replicate is asked for."""
        from xai.monte_carlo import replicate_seed

        seed = replicate_seed(self.resolved["seed"], index)
        replicas = self.__dict__.setdefault("_replicas", {})
        if samples not in replicas:
            replicas[samples] = type(self)(self.model, spec=self.spec, **{**self.params, self.sample_count: samples})
            # Set before anything is traced: a hook may compute otherwise for a replicate
            # (SmoothGrad and SquareGrad take the clean gradient only where totals are pooled
            # and shared).
            replicas[samples].is_replicate = True
        if replicas[samples].reseed(seed):
            return replicas[samples]
        return self.variant(**{self.sample_count: samples, "seed": seed})

    def get_params(self) -> dict:
        """All parameters with defaults filled in (what actually ran)."""
        return dict(self.resolved)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params.items())
        return f"{type(self).__name__}({args})"


class PerturbationExplainer(Explainer):
    """Base of every method that scores many perturbed copies of each image.

    The base class resolves the targets once per batch (the class predicted for the image
    itself, not for its copies), calls `prepare` once per batch, then walks every
    (image, copy) pair of the batch in chunks of ``batch_size`` model rows, image-major, so
    every model call is full and memory is bounded by ``batch_size`` whatever the number of
    copies; each chunk's `contribution` is added to its image's total, and `finalize` turns
    the totals into maps. Hooks:

    n_copies() -> int :
        Copies per image (noise samples, path points, masks, patches, feature maps).
    accumulator_shape() -> tuple :
        Shape of one image's total (default: the map's (H, W)).
    prepare(images, targets) -> dict of (n, ...) tensors :
        Per-batch state (baselines, clean scores, feature maps); default none.
    host_prepare(images, targets) -> dict of (n, ...) arrays :
        Per-batch state computed eagerly on the host, for what cannot be traced (a
        scikit-image segmentation); merged into `prepare`'s. Default none.
    draw(images, rows, counters) -> (R, ...) tensor :
        Optional. Random inputs of each row, computed outside XLA so that a seed gives the
        same numbers with and without ``jit_compile``; ``counters`` number each (image of the
        whole call, copy) pair uniquely, for counter-based generators.
    contribution(images, targets, state, rows, copies, drawn) -> (R, *accumulator_shape) :
        What rows (image ``rows[r]``, copy ``copies[r]``) add to their images' totals.
    finalize(images, targets, state, total) -> (n, H, W) :
        The maps from the totals.
    """

    #: Whether replicates of `explain_with_error` pool their totals (the map of all their
    #: samples) rather than average their maps: sound when totals are sums over copies, as
    #: here; False where each replicate's copies are a design of their own (Sobol, HSIC).
    averages_totals: ClassVar[bool] = True
    #: Whether replicates pool their designs instead: the map is `pooled_maps` of the union of
    #: every replicate's designs and scores (Sobol's and HSIC's estimators are ratios and
    #: kernel statistics: a mean of their small-design maps converges to a biased map).
    pools_designs: ClassVar[bool] = False
    #: Whether `prepare` and `host_prepare` ignore the seed (a clean gradient, clean scores,
    #: a segmentation): the replicates of `explain_with_error` then compute a batch's state
    #: once between them instead of once each.
    seed_free_state: ClassVar[bool] = False

    @classmethod
    def missing_hooks(cls) -> list:
        return [f"{name}(...)" for name in ("n_copies", "contribution")
                if getattr(cls, name) is getattr(PerturbationExplainer, name)]

    def n_copies(self) -> int:
        raise NotImplementedError(f"{type(self).__name__} must implement n_copies().")

    def accumulator_shape(self) -> tuple:
        return tuple(self.spec.input_shape[:2])

    def prepare(self, images, targets) -> dict:
        return {}

    def host_prepare(self, images, targets) -> dict:
        return {}

    draw = None  # an optional hook: see the class docstring

    def contribution(self, images, targets, state, rows, copies, drawn):
        raise NotImplementedError(f"{type(self).__name__} must implement contribution(...).")

    def finalize(self, images, targets, state, total):
        return total

    def copies_per_image(self) -> int:
        return self.n_copies()

    def shared_totals(self) -> Optional[tuple]:
        """A hook: what decides this explainer's per-batch (state, totals) besides the model's
        weights, the images, the targets and their place in the call, for totals that another
        method computes too (SmoothGrad, SquareGrad and VarGrad accumulate the same moments of
        the same noisy gradients). Explainers giving equal keys share one computation: within a
        process, the second finds the first's totals in `SHARED_TOTALS`. Default None: not
        shared."""
        return None

    def _accumulate(self, images, targets, state, total, rows, copies, drawn):
        values = self.contribution(images, targets, state, rows, copies, drawn)
        return tf.tensor_scatter_nd_add(total, rows[:, None], values)

    def explain_batch(self, images, targets, offset: int):
        if bool(tf.reduce_any(targets < 0)):
            targets = self.compiled("targets", self.predicted, [self.image_signature, self.index_signature])(
                images, targets)
        state, total = self.totals_batch(images, targets, offset)
        return self.finalize_batch(images, targets, state, total)

    def batch_state(self, images, targets) -> dict:
        """`prepare`'s and `host_prepare`'s state of one batch (targets resolved); from
        `state_memo` when one is set (`xai.monte_carlo` sets it on replicates of explainers
        with a `seed_free_state`, for the length of one call, so the weights cannot change)."""
        memo = self.__dict__.get("state_memo")
        key = batch_digest(images, targets) if memo is not None else None
        if key is not None and key in memo:
            return memo[key]
        state = self.compiled("prepare", self.prepare, [self.image_signature, self.index_signature])(images, targets)
        state = {**state, **{k: tf.convert_to_tensor(v) for k, v in self.host_prepare(images, targets).items()}}
        if key is not None:
            memo[key] = state
        return state

    def finalize_batch(self, images, targets, state, total):
        from xai.head import batch_signature

        total_sig = tf.TensorSpec((None, *self.accumulator_shape()), tf.float32)
        finalize = self.compiled("finalize", self.finalize,
                                 [self.image_signature, self.index_signature, batch_signature(state), total_sig])
        return finalize(images, targets, state, total)

    def explain_totals(self, images: np.ndarray, targets: np.ndarray) -> np.ndarray:
        """Every image's accumulated total (N, *accumulator_shape) before `finalize`; targets
        resolved. What `explain_with_error` averages over replicates: a mean of totals is the
        total of all their samples, where a mean of maps is not when `finalize` is not linear
        (SmoothGrad's absolute value, LIME's fit)."""
        step = self.images_per_call()
        return np.concatenate([np.asarray(self.totals_batch(tf.convert_to_tensor(images[s:s + step]),
                                                            tf.convert_to_tensor(targets[s:s + step]), s)[1])
                               for s in range(0, len(images), step)])

    def totals_and_maps(self, images: np.ndarray, targets: np.ndarray) -> tuple:
        """(`explain_totals`, the maps of those totals) in one pass: each batch's `prepare`
        state (VarGrad's clean gradient, LIME's clean scores) serves both."""
        step = self.images_per_call()
        totals, maps = [], []
        shared = self.shared_totals()
        if shared is not None:  # the weights once per call: sanity checks change them in place
            from xai.models import weights_digest

            shared = (shared, id(self.model), repr(self.spec), weights_digest(self.model), step)
        for s in range(0, len(images), step):
            x, t = tf.convert_to_tensor(images[s:s + step]), tf.convert_to_tensor(targets[s:s + step])
            digest = None if shared is None else batch_digest(x, t)
            key = None if shared is None else (shared, s, *digest)
            hit = SHARED_TOTALS.get(key)
            state, total = hit if hit is not None else self.totals_batch(x, t, s)
            if key is not None and hit is None:
                SHARED_TOTALS.put(key, (state, total))
            memo = self.__dict__.get("state_memo")
            if hit is not None and memo is not None:  # finalize_totals then prepares nothing
                memo.setdefault(digest, state)
            totals.append(np.asarray(total))
            maps.append(np.asarray(self.finalize_batch(x, t, state, total), np.float32))
        return np.concatenate(totals), np.concatenate(maps)

    def pooled_scale(self, per: int, samples: np.ndarray) -> Optional[np.ndarray]:
        """A hook for `explain_with_error`, which finalises the mean of its replicates' totals
        (each of `per` samples) with a replicate's `finalize`: the factor per image that turns
        that map into the map of all `samples` pooled, where `finalize` is not linear in the
        count (VarGrad's ``n - 1``) and the map is positively homogeneous in it. Default None:
        no factor needed (a mean of sums is the sum of all samples over their number)."""
        return None

    def finalize_totals(self, images: np.ndarray, targets: np.ndarray, totals: np.ndarray) -> np.ndarray:
        """Maps from totals given by `explain_totals` (of this explainer or its replicates)."""
        step = self.images_per_call()
        maps = []
        for s in range(0, len(images), step):
            x, t = tf.convert_to_tensor(images[s:s + step]), tf.convert_to_tensor(targets[s:s + step])
            total = tf.convert_to_tensor(np.asarray(totals[s:s + step], np.float32))
            maps.append(np.asarray(self.finalize_batch(x, t, self.batch_state(x, t), total), np.float32))
        return np.concatenate(maps)

    def totals_batch(self, images, targets, offset: int):
        """(state, totals) of one batch with resolved targets: the chunked loop."""
        from xai.head import batch_signature

        image_sig, index_sig = self.image_signature, self.index_signature
        state = self.batch_state(images, targets)
        n, n_copies, batch_size = int(images.shape[0]), self.n_copies(), self.resolved["batch_size"]
        total_sig = tf.TensorSpec((None, *self.accumulator_shape()), tf.float32)
        total = tf.zeros((n, *self.accumulator_shape()), tf.float32)
        rows_all = np.repeat(np.arange(n, dtype=np.int32), n_copies)
        copies_all = np.tile(np.arange(n_copies, dtype=np.int32), n)
        for start in range(0, len(rows_all), batch_size):
            rows = tf.constant(rows_all[start:start + batch_size])
            copies = tf.constant(copies_all[start:start + batch_size])
            drawn = () if self.draw is None else (self.compiled(
                "draw", self.draw, [image_sig, index_sig, index_sig], jit_compile=False)(
                images, rows, (offset + rows) * n_copies + copies),)
            accumulate = self.compiled(
                "accumulate", lambda x, t, s, tot, r, c, *d: self._accumulate(x, t, s, tot, r, c, *(d or (None,))),
                [image_sig, index_sig, batch_signature(state), total_sig, index_sig, index_sig,
                 *map(batch_signature, drawn)])
            total = accumulate(images, targets, state, total, rows, copies, *drawn)
        return state, total


def content_digest(array) -> tuple:
    """A key for an array's contents (shape, dtype and a 128-bit hash of its bytes)."""
    import hashlib

    a = np.ascontiguousarray(array.numpy() if hasattr(array, "numpy") else array)
    return a.shape, a.dtype.str, hashlib.blake2b(a.tobytes(), digest_size=16).digest()


def batch_digest(images, targets) -> tuple:
    """A batch's key by content: its images' and its targets' `content_digest`."""
    return content_digest(images), content_digest(targets)


class SharedTotals:
    """The last per-batch (state, totals) of explainers with `shared_totals`, up to
    `max_bytes` (oldest dropped first): enough for every replicate of a comparison's
    batch at 64x64 (about 30 MB); larger images simply share less."""

    def __init__(self, max_bytes: int = 256 * 2 ** 20):
        import collections

        self.max_bytes, self._entries, self._bytes = max_bytes, collections.OrderedDict(), 0

    @staticmethod
    def _size(value) -> int:
        state, total = value
        return int(total.shape.num_elements() * 4 + sum(v.shape.num_elements() * v.dtype.size
                                                         for v in state.values()))

    def get(self, key):
        if key is None or key not in self._entries:
            return None
        self._entries.move_to_end(key)
        return self._entries[key]

    def put(self, key, value) -> None:
        size = self._size(value)
        if size > self.max_bytes:
            return
        self._entries[key] = value
        self._bytes += size
        while self._bytes > self.max_bytes:
            _, old = self._entries.popitem(last=False)
            self._bytes -= self._size(old)

    def clear(self) -> None:
        self._entries.clear()
        self._bytes = 0


#: One per process (see `PerturbationExplainer.shared_totals`).
SHARED_TOTALS = SharedTotals()


def check_images(images, spec) -> np.ndarray:
    """Validate a batch against the model: rank 4, size and channels, finite values."""
    if hasattr(images, "numpy") and not isinstance(images, np.ndarray):
        images = images.numpy()
    try:
        x = np.asarray(images, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise DataError(f"images must be a numeric array (N, H, W, C); got {type(images).__name__}.") from exc
    expected = tuple(spec.input_shape)
    if x.ndim == 3 and x.shape == expected:
        raise DataError(f"images must be a batch (N, H, W, C); got one image of shape {x.shape}. "
                        "Add a batch axis: images[None].")
    if x.ndim != 4:
        raise DataError(f"images must have rank 4 (N, H, W, C); got shape {x.shape}.")
    if x.shape[-1] != expected[-1]:
        raise DataError(f"images have {x.shape[-1]} channel(s) but the model takes {expected[-1]}; "
                        f"got shape {x.shape}.")
    if x.shape[1:3] != expected[:2]:
        raise DataError(f"images are {x.shape[1]}x{x.shape[2]} but the model takes "
                        f"{expected[0]}x{expected[1]}; resize them (xai.data.load_image(path, size)).")
    if x.shape[0] == 0:
        raise DataError("images is an empty batch.")
    if not np.all(np.isfinite(x)):
        bad = int(np.sum(~np.isfinite(x).all(axis=(1, 2, 3))))
        raise DataError(f"images contain NaN or infinite values ({bad} image(s)).")
    _warn_if_out_of_range(x, tuple(getattr(spec, "input_range", (0.0, 1.0))))
    return x


def _warn_if_out_of_range(x: np.ndarray, input_range) -> None:
    """Images on another scale than the model's range ([0, 255] fed to a [0, 1] model, or the
    reverse) still produce maps, wrong ones: say so."""
    import warnings

    low, high = input_range
    top = float(x.max())
    if high - low <= 2.5 and top > 2 * high + 1:
        hint = f"images reach {top:g} but the model's input range reads as [{low:g}, {high:g}]"
    elif high - low >= 100 and 0 < top <= 1.0:
        hint = f"images are all within [0, 1] but the model's input range reads as [{low:g}, {high:g}]"
    else:
        return
    warnings.warn(f"{hint}: scale the images, or declare the range with xai.models.derive_spec("
                  "model, input_range=(low, high)) passed as spec= (--input-range on the command line).",
                  UserWarning, stacklevel=3)


def check_targets(targets, n: int, num_classes: int) -> np.ndarray:
    """Targets as int32 (N,), -1 where the predicted class is to be used."""
    if targets is None:
        return np.full((n,), -1, np.int32)
    t = np.asarray(targets)
    if t.ndim == 0:
        t = np.full((n,), t)
    if t.ndim != 1 or len(t) != n:
        raise DataError(f"targets must be one class index per image ({n}); got shape {t.shape}.")
    if not np.issubdtype(t.dtype, np.integer):
        raise DataError(f"targets must be integer class indices; got dtype {t.dtype}.")
    if np.any((t < 0) | (t >= num_classes)):
        raise DataError(f"targets must be in [0, {num_classes - 1}] (the model has {num_classes} "
                        f"classes); got {sorted(set(t[(t < 0) | (t >= num_classes)].tolist()))[:5]}.")
    return t.astype(np.int32)
