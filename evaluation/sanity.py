"""Sanity checks for saliency maps (Adebayo et al., NeurIPS 2018).

A map that barely changes when the model's weights are replaced by random ones explains
the input, not the model. Unlike the other metrics these checks must run the explainer
again (on a randomised copy of the model), so they take the explainer, not maps.
"""

from __future__ import annotations

from typing import Optional, Sequence

import keras
import numpy as np
from scipy import stats

from xai import _keras_internals as internals
from xai.evaluation.registry import register_metric
from xai.errors import ModelError, ParameterError
from xai.explainer import Explainer, check_targets
from xai.models import flatten_model, model_spec, prepare_model
from xai.monte_carlo import maps_at, replicate_seed
from xai.registry import get_explainer


def spearman_per_image(a, b) -> np.ndarray:
    """Spearman rank correlation between paired maps, one value per image (NaN if constant)."""
    a = np.asarray(a, np.float64).reshape(len(a), -1)
    b = np.asarray(b, np.float64).reshape(len(b), -1)
    out = np.full(len(a), np.nan)
    for i in range(len(a)):
        if np.ptp(a[i]) > 0 and np.ptp(b[i]) > 0:
            out[i] = stats.spearmanr(a[i], b[i]).statistic
    return out


def _explainer_class(method) -> type:
    return get_explainer(method) if isinstance(method, str) else method


def _built(method, model, params: Optional[dict]) -> Explainer:
    """`method` itself if it is an explainer already built on `model`, else one built now."""
    if isinstance(method, Explainer):
        return method
    return _explainer_class(method)(prepare_model(model), **dict(params or {}))


def _graph(model: keras.Model) -> keras.Model:
    """The functional graph behind `model` (a built Sequential keeps one)."""
    graph = internals.functional_graph(model)
    if graph is None:
        raise ModelError(
            f"sanity checkpoints are read from the layer graph of a functional or Sequential "
            f"model; {model.name!r} ({type(model).__name__}) has none. Pass layers= explicitly."
        )
    return graph


def _parameters(layer: keras.layers.Layer) -> list:
    """(owner, variable) for each variable `layer` or its sublayers created as trainable.

    A frozen (e.g. transfer-learned) base is still part of the model Adebayo et al.
    randomise. Statistics (BatchNormalization's moving mean and variance, a Normalization
    layer's mean) are created non-trainable and never appear.
    """
    return internals.own_trainable_variables(layer)


def _graph_order(model: keras.Model) -> list:
    """(layer, output shape) for each layer with parameters, in graph (topological) order."""
    graph = _graph(model)
    edges = internals.graph_edges(graph)
    return [(layer, edges[id(layer)][2]) for layer in graph.layers
            if id(layer) in edges and _parameters(layer)]


def weighted_layers_top_down(model: keras.Model) -> list[str]:
    """Names of the layers with parameters (trainable variables), classifier first.

    The order is the model graph's topological order, reversed: each layer comes before
    every layer that feeds it.
    """
    return [layer.name for layer, _ in reversed(_graph_order(flatten_model(model)))]


def sanity_checkpoints(model: keras.Model, max_checkpoints: Optional[int] = None) -> list[str]:
    """The layers after which cascading randomisation re-runs the method, read from the model.

    Top down, in the order of the model's graph (``layers`` below means layers with
    parameters, i.e. trainable variables):

    1. the top layer (the last in graph order), the classifier producing the class scores;
    2. then, for each spatial-resolution stage, the stage's last layer. A stage is a run of
       consecutive layers at the same resolution, so it ends where the feature map is
       resized: by a pooling layer, a strided or a "valid" convolution. A layer's
       resolution is the spatial size (every axis between batch and channels) of the
       largest output at or above it in the graph, read from the output shapes in the
       model's graph: on the trunk of a classifier, whose feature maps only shrink, that is
       the layer's own output size, and a side branch that pools to 1x1 and is multiplied
       back (squeeze-and-excitation) belongs to the stage of the trunk around it rather
       than splitting it. Layers without spatial axes above every feature map (a Dense
       classifier after global pooling) form the top stage;
    3. last, the first layer of the model, so the cascade ends with every parameter random.

    At a stage's last layer the cascade has randomised every coarser stage completely and
    has just entered this one (the first and the last checkpoints bracket the cascade:
    only the classifier random, everything random). This is coarser than Adebayo et al.,
    who re-ran after every Inception v3 module; it costs one re-run per resolution,
    whatever the depth. On VGG16 every block is a stage:
    ``predictions``, ``block5_conv3`` ... ``block2_conv2``, then ``block1_conv2`` (block 1,
    at full resolution) and ``block1_conv1`` (the whole model).

    Parameters
    ----------
    model : keras.Model
        A functional or Sequential model built on ``keras.Input``; nested sub-models are
        flattened first, as `xai.models.prepare_model` does.
    max_checkpoints : int, optional
        At most this many checkpoints (>= 2): the classifier and the first layer stay, the
        stage ends between them are thinned to evenly spaced ones. Default: all.

    Returns
    -------
    list of str
        Layer names, top down, distinct.

    Raises
    ------
    ModelError
        If the model has no layer graph (a subclassed model), no parameters, or outputs of
        unknown spatial size.
    ParameterError
        If `max_checkpoints` is not an integer >= 2.

    Examples
    --------
    >>> from xai.models import vgg16_gap
    >>> sanity_checkpoints(vgg16_gap((32, 32, 3), width=0.125))
    ['predictions', 'block5_conv3', 'block4_conv3', 'block3_conv3', 'block2_conv2',
     'block1_conv2', 'block1_conv1']
    >>> sanity_checkpoints(vgg16_gap((32, 32, 3), width=0.125), max_checkpoints=3)
    ['predictions', 'block3_conv3', 'block1_conv1']
    """
    if max_checkpoints is not None and (isinstance(max_checkpoints, bool)
                                        or not isinstance(max_checkpoints, (int, np.integer))
                                        or max_checkpoints < 2):
        raise ParameterError(
            f"max_checkpoints must be None or an integer >= 2 (the classifier and the first "
            f"layer always stay); got {max_checkpoints!r}."
        )
    model = flatten_model(model)
    top_down = list(reversed(_graph_order(model)))
    if not top_down:
        raise ModelError(f"model {model.name!r} has no trainable variables to randomise.")
    names, stage, trunk = [], None, ()
    for layer, shape in top_down:
        spatial = shape[1:-1]
        if None in spatial:
            raise ModelError(
                f"sanity checkpoints read spatial sizes from output shapes, and layer "
                f"{layer.name!r} outputs {shape}; build the model on a fixed-size keras.Input "
                f"or pass layers= explicitly."
            )
        if _area(spatial) > _area(trunk):
            trunk = spatial
        if trunk != stage:
            names.append(layer.name)
            stage = trunk
    if top_down[-1][0].name not in names:
        names.append(top_down[-1][0].name)
    if max_checkpoints is not None and len(names) > max_checkpoints:
        keep = np.round(np.linspace(0, len(names) - 1, int(max_checkpoints))).astype(int)
        names = [names[i] for i in keep]
    return names


def _area(spatial: tuple) -> int:
    """Spatial size of an output (0 for one without spatial axes, such as a Dense's)."""
    return int(np.prod(spatial)) if spatial else 0


def _seed(*entropy: int) -> int:
    """A Keras seed (int < 2**31) derived from integers; distinct inputs, independent seeds."""
    return int(np.random.SeedSequence([int(e) for e in entropy]).generate_state(1)[0] % 2**31)


def _initialiser_for(layer: keras.layers.Layer, variable):
    """The initializer `layer` created `variable` with, or None.

    The generic rule is the attribute ``f"{name}_initializer"`` for the variable named
    ``name`` (kernel, bias, gamma, beta, embeddings ...). Keras breaks it twice:
    DepthwiseConv2D names its variable ``kernel`` but draws it from
    ``depthwise_initializer``, and ``*_kernel`` variables (SeparableConv2D's
    ``depthwise_kernel``/``pointwise_kernel``, a recurrent cell's ``recurrent_kernel``)
    come from ``depthwise_/pointwise_/recurrent_initializer``.
    """
    name = variable.path.rsplit("/", 1)[-1]
    candidates = [f"{name}_initializer"]
    if name.endswith("_kernel"):
        candidates.append(f"{name[:-len('_kernel')]}_initializer")
    if name == "kernel":
        candidates.append("depthwise_initializer")
    for attribute in candidates:
        init = getattr(layer, attribute, None)
        if init is not None:
            return init
    return None


def _reinitialise(layer: keras.layers.Layer, seed: int) -> None:
    """Redraw each trainable variable of `layer` (and its sublayers) from its initializer.

    Only variables created trainable change (`_parameters`): BatchNormalization's gamma and
    beta are redrawn from ``gamma_initializer``/``beta_initializer`` while its moving mean
    and variance, statistics rather than parameters, keep their values (redrawing them as a
    kernel could make the variance negative). Each variable gets its own seed derived from
    `seed` and its position, so the result is deterministic and independent of which other
    layers are randomised.

    Fallback: a variable with no initializer on its layer (a custom layer that does not
    keep one under ``f"{name}_initializer"``) is replaced by a seeded random permutation
    of its own values, which keeps its scale and distribution and destroys what was
    learned. An initializer that is a plain function, not a `keras.initializers.Initializer`,
    is called as is (Keras cannot seed it).
    """
    for i, (owner, variable) in enumerate(_parameters(layer)):
        variable_seed = _seed(seed, i)
        init = _initialiser_for(owner, variable)
        if init is None:
            values = keras.ops.convert_to_numpy(variable.value)
            rng = np.random.default_rng(variable_seed)
            fresh = rng.permutation(values.reshape(-1)).reshape(values.shape)
        elif isinstance(init, keras.initializers.Initializer):
            config = init.get_config()
            if "seed" in config:
                config["seed"] = variable_seed
            fresh = init.__class__.from_config(config)(variable.shape, dtype=variable.dtype)
        else:
            fresh = init(variable.shape, dtype=variable.dtype)
        variable.assign(fresh)


def model_randomisation(method, model, images, targets, *, params: Optional[dict] = None,
                        layers: Optional[Sequence[str]] = None, seed: int = 0,
                        tolerance: Optional[float] = None, original: Optional[np.ndarray] = None,
                        max_checkpoints: Optional[int] = None, min_seed_floor: Optional[float] = None) -> dict:
    """Cascading model-parameter randomisation, classifier first (Adebayo et al. 2018).

    After randomising each layer in `layers` (cumulatively, top down: every layer above
    it stays random), the method is re-run and each image's map is compared with its
    original map by Spearman rank correlation. A faithful method's correlation falls towards
    0; one that stays high ignores the weights. Each layer's trainable variables are redrawn
    from the layer's own initializers (`_reinitialise`) in place, under the explainer already
    built (no second trace of the method), and every variable is restored before this returns,
    also when the method fails: the model ends as it was passed in.

    A stochastic method samples the randomised model's maps from another seed than the
    original's: maps drawn with the same masks or noise share their sampling noise, which
    correlates them whatever the weights (RISE on the offline default with its classifier
    random: 0.49 with the same masks, 0.05 with independent ones). What two seeds give on the
    unchanged model, ``seed_floor``, is the most a cascade correlation can be: a method whose
    maps do not agree with themselves cannot show that they depend on the weights.

    Parameters
    ----------
    method : str, Explainer subclass, or an Explainer built on `model`
    model : keras.Model or path
    images : (N, H, W, C)
    targets : (N,) int
    params : dict, optional
        The method's parameters (not with an explainer: it has its own).
    layers : sequence of str, optional
        Checkpoints, any layers with trainable variables, in any order (they are sorted
        top down). Default: `sanity_checkpoints` of the model.
    seed : int, default 0
        Seeds every redrawn variable; a layer's new values depend only on `seed` and its
        position in the model, not on the checkpoints.
    tolerance : float, optional
        Monte Carlo tolerance of a stochastic method's maps (`Explainer.explain_with_error`,
        capped at the method's own count), as `xai compare` computes them; None: fixed counts.
    original : (N, H, W), optional
        The method's maps of `images` on the model, if already computed.
    max_checkpoints : int, optional
        Default checkpoints thinned to this many (`sanity_checkpoints`); ignored with `layers`.
    min_seed_floor : float, optional
        When the mean ``seed_floor`` is at most this, the cascade is not run (its rows are
        NaN): two seeds' maps of the unchanged model already agree no more than a map that
        ignores the weights may, so no cascade could be read (`xai compare` passes
        `SANITY_THRESHOLD`; RISE on the offline default, recipe 4's model: a floor of 0.39, 8 s
        spared).

    Returns
    -------
    dict with ``layers`` (list of str, top down), ``spearman`` (len(layers), N) and
    ``seed_floor`` ((N,) for a stochastic method, else None).

    Raises
    ------
    ParameterError
        If a name in `layers` is not a layer with trainable variables.
    """
    built = _built(method, model, params)
    cls, params = type(built), dict(built.params if built is method else params or {})
    live = built.model  # what the explainer runs: randomised in place, then restored
    spec = model_spec(live)
    t = check_targets(targets, len(images), spec.num_classes)
    order = weighted_layers_top_down(live)
    if layers is None:
        checkpoints = sanity_checkpoints(live, max_checkpoints)
    else:
        checkpoints = [layers] if isinstance(layers, str) else list(layers)
        unknown = [name for name in checkpoints if name not in order]
        if unknown:
            raise ParameterError(
                f"layers {unknown} are not layers with trainable variables; choose from {order}."
            )
        checkpoints = sorted(dict.fromkeys(checkpoints), key=order.index)

    if original is None:
        original = maps_at(built, images, t, tolerance)
    reseeded = _independent_seed(cls, params)
    explainer = built if reseeded is params else cls(live, spec=spec, **reseeded)
    # The model is still unchanged here: another seed's maps of it measure the sampling noise.
    floor = None if explainer is built else spearman_per_image(original, maps_at(explainer, images, t, tolerance))
    if floor is not None and min_seed_floor is not None and np.nanmean(floor) <= min_seed_floor:
        return {"layers": checkpoints, "spearman": np.full((len(checkpoints), len(images)), np.nan),
                "seed_floor": floor}
    saved = [(v, v.numpy()) for v in live.weights]
    rows, done = [], 0
    try:
        for name in checkpoints:
            stop = order.index(name) + 1
            for position in range(done, stop):
                _reinitialise(live.get_layer(order[position]), _seed(seed, position))
            done = stop
            rows.append(spearman_per_image(original, maps_at(explainer, images, t, tolerance)))
    finally:
        for variable, value in saved:
            variable.assign(value)
    return {"layers": checkpoints, "spearman": np.stack(rows), "seed_floor": floor}


#: Stream of `replicate_seed` that seeds the randomised model's maps (no replicate uses it).
INDEPENDENT_STREAM = 0x7FFFFFFF


def _monte_carlo(cls: type) -> bool:
    """A map estimated from samples drawn from a ``seed`` (not the `random` baseline, whose
    map is the noise itself)."""
    return bool(getattr(cls, "stochastic", False) and getattr(cls, "sample_count", None)
                and "seed" in getattr(cls, "parameters", {}))


def _independent_seed(cls: type, params: dict) -> dict:
    """`params` with another seed for a Monte Carlo method; `params` itself for any other.
    The `random` baseline keeps its seed: its map is the noise, which no weight changes."""
    if not _monte_carlo(cls):
        return params
    seed = params.get("seed", cls.parameters["seed"].default)
    return {**params, "seed": replicate_seed(0 if seed is None else int(seed), INDEPENDENT_STREAM)}


def random_logit(method, model, images, targets, *, params: Optional[dict] = None,
                 seed: int = 0, tolerance: Optional[float] = None,
                 original: Optional[np.ndarray] = None) -> np.ndarray:
    """Spearman correlation between the map of each image's target and of another class
    drawn at random (Adebayo et al.'s random-logit test); high means class-insensitive.
    `method` may be an explainer already built on `model`; `tolerance` and `original` (the
    target's maps) as in `model_randomisation`."""
    explainer = _built(method, model, params)
    n_classes = explainer.spec.num_classes
    t = check_targets(targets, len(images), n_classes)
    rng = np.random.default_rng(seed)
    other = (t + rng.integers(1, n_classes, size=len(t))) % n_classes
    if original is None:
        original = maps_at(explainer, images, t, tolerance)
    return spearman_per_image(original, maps_at(explainer, images, other.astype(np.int32), tolerance))


#: A check passes when its mean Spearman correlation is at most this in absolute value; a
#: Monte Carlo method whose two seeds' maps correlate no more than this cannot be checked.
SANITY_THRESHOLD = 0.5

#: Checkpoints of the cascade in `xai compare` (the classifier, the whole model and evenly
#: spaced stage ends between): each is one more run of the method on the sanity images.
COMPARE_CHECKPOINTS = 4


@register_metric("sanity", higher_is_better=False, kind="per_method", order=50, needs_layer_graph=True,
                 description="Spearman correlation of maps after cascading randomisation and for "
                             "a random class (Adebayo et al. 2018); near 0 = sensitive to the model")
def _sanity_metric(method, model, images, targets, *, params=None, seed: int = 0,
                   tolerance: Optional[float] = None, maps: Optional[np.ndarray] = None) -> dict:
    """Both checks on a few images, summarised as means per checkpoint (for the report): one
    explainer (the run's own when `method` is one) and its original maps serve both, and the
    cascade stops at `COMPARE_CHECKPOINTS` checkpoints. The random-logit check needs three
    classes or more (None with two). `maps`: the method's maps of `images` where the run
    has them already (the maps it scored)."""
    explainer = _built(method, model, params)
    t = check_targets(targets, len(images), explainer.spec.num_classes)
    # The run's maps serve unless the method is stochastic without being Monte Carlo: such a
    # plugin may seed by an image's place in the call, and a batch and the pool would draw it
    # apart (`random` once did; it now seeds by the image, and recomputing it costs nothing).
    reuse = maps is not None and (_monte_carlo(type(explainer)) or not getattr(explainer, "stochastic", False))
    original = np.asarray(maps, np.float32) if reuse else maps_at(explainer, images, t, tolerance)
    randomised = model_randomisation(explainer, model, images, t, seed=seed, tolerance=tolerance,
                                     original=original, max_checkpoints=COMPARE_CHECKPOINTS,
                                     min_seed_floor=SANITY_THRESHOLD)
    # With two classes the other class is always the same one and the check is degenerate
    # (the report does not read it): not run, which spares one more run of the method.
    logit = (random_logit(explainer, model, images, t, seed=seed, tolerance=tolerance, original=original)
             if explainer.spec.num_classes > 2 else np.full(len(images), np.nan))

    def mean(values):
        return float(np.nanmean(values)) if np.isfinite(values).any() else None

    floor = randomised["seed_floor"]
    return {"layers": randomised["layers"], "spearman_mean": [mean(r) for r in randomised["spearman"]],
            "random_logit_mean": mean(logit), "seed_floor_mean": None if floor is None else mean(floor),
            "n_images": int(len(images))}
