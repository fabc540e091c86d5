"""The metric registry: name -> how to compute it, which way is better, what it needs.

The runner, the report and the CLI read metrics from here and nowhere else, so adding a
metric touches one file: a module in ``xai.evaluation`` that defines the metric and
registers an adapter with `register_metric`. Modules of the package are discovered on the
first look-up.

Two kinds of metric:

- per batch (``per_batch``): a function of one batch's images, targets and maps, called as
  ``per_batch(MetricInputs) -> MetricOutput`` on every batch (deletion, insertion,
  pointing game...); robustness metrics also re-explain perturbed copies with
  ``inputs.explainer`` (``uses_explainer=True``), stochastic ones read ``inputs.seed``;
- per method (``per_method``): needs to run the explainer again (the sanity checks), called
  once per method on a few images as
  ``per_method(explainer_class, model, images, targets, params=..., seed=..., tolerance=...,
  maps=...) -> dict``, with the run's Monte Carlo tolerance for the maps it computes (None:
  fixed counts) and the maps of `images` the run already has (or None); in a comparison
  `explainer_class` is the explainer the batches ran, already traced.

``seconds_per_image`` is registered too, as a cost: the runner measures it; so are
``map_error``, ``map_converged`` and ``map_order_error``, the Monte Carlo error of stochastic methods' maps
(`xai.monte_carlo`), diagnostics that are shown and never ranked.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from typing import Any, Callable, Optional

import numpy as np

from xai.errors import ConfigError


@dataclasses.dataclass
class MetricInputs:
    """One batch as a per-batch metric sees it."""

    scorer: Any  # xai.evaluation.ModelScorer of the run's model
    images: np.ndarray  # (N, H, W, C)
    targets: np.ndarray  # (N,) int32
    maps: np.ndarray  # (N, H, W)
    masks: Optional[np.ndarray] = None  # (N, H, W) ground-truth object masks, if the data has them
    protocol: str = "rise"  # the deletion/insertion preset of the run
    #: The method's explainer, for metrics that re-explain perturbed images (robustness).
    explainer: Any = None
    #: Seed of stochastic metrics; the runner computes them under a second seed too.
    seed: int = 0
    #: Results one metric computed that another of the same batch may reuse (the MoRF
    #: deletion curves are both `deletion` and half of `symmetric_relevance_gain`), keyed by
    #: everything they depend on; shared by `dataclasses.replace` copies of these inputs.
    shared: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)

    def memo(self, key: tuple, compute: Callable[[], Any]) -> Any:
        """`compute()`, once per `key` for this batch's images, targets and maps."""
        if key not in self.shared:
            self.shared[key] = compute()
        return self.shared[key]


@dataclasses.dataclass
class MetricOutput:
    """Per-image values (N,), and optionally curves ``(x (P,), curves (N, P))`` and the
    protocol settings that produced them (shown in the report)."""

    values: np.ndarray
    curves: Optional[tuple] = None
    protocol: Optional[dict] = None


@dataclasses.dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    description: str
    per_batch: Optional[Callable[[MetricInputs], MetricOutput]] = None
    per_method: Optional[Callable[..., dict]] = None
    needs_masks: bool = False
    #: Reads the model's layer graph (which a subclassed model does not have).
    needs_layer_graph: bool = False
    #: A per-batch metric that re-runs the method's explainer (on perturbed copies).
    uses_explainer: bool = False
    uses_protocol: bool = False
    #: Its value depends on a seed (random subsets, noise): the runner computes it under two
    #: seeds and the meta-evaluation reports how much the ranking moves between them.
    stochastic: bool = False
    #: In the default metric set of `xai compare`.
    default: bool = True
    #: A cost, not a quality: measured by the runner, never requested.
    is_cost: bool = False
    #: Position in tables and figures.
    order: int = 100

    @property
    def needs_explainer(self) -> bool:
        return self.per_method is not None or self.uses_explainer


_METRICS: dict[str, Metric] = {}
_discovered = False


def register_metric(name: str, *, higher_is_better: bool, description: str, kind: str = "per_batch",
                    needs_masks: bool = False, needs_layer_graph: bool = False, uses_explainer: bool = False,
                    uses_protocol: bool = False, stochastic: bool = False, default: bool = True,
                    order: int = 100):
    """Decorator: register `fn` as metric `name` (``kind``: "per_batch" or "per_method")."""
    if kind not in ("per_batch", "per_method"):
        raise ValueError(f"kind must be 'per_batch' or 'per_method'; got {kind!r}.")

    def decorate(fn):
        _METRICS[name] = Metric(name=name, higher_is_better=higher_is_better, description=description,
                                needs_masks=needs_masks, needs_layer_graph=needs_layer_graph,
                                uses_explainer=uses_explainer,
                                uses_protocol=uses_protocol, stochastic=stochastic, default=default,
                                order=order, **{kind: fn})
        return fn
    return decorate


_METRICS["seconds_per_image"] = Metric(
    "seconds_per_image", higher_is_better=False, is_cost=True, default=False, order=1000,
    description="explanation time per image on this machine")


_METRICS["map_error"] = Metric(
    "map_error", higher_is_better=False, is_cost=True, default=False, order=1001,
    description="Monte Carlo error of each map of a stochastic method: the relative L2 standard error "
                "of its replicates (Integrated Gradients: its completeness gap); a diagnostic, not ranked")
_METRICS["map_order_error"] = Metric(
    "map_order_error", higher_is_better=False, is_cost=True, default=False, order=1004,
    description="the same error for each map's deviation from its own pixel mean: the noise in the "
                "order of the pixels, which deletion, insertion and every ranking metric read")
_METRICS["score_saturated"] = Metric(
    "score_saturated", higher_is_better=False, is_cost=True, default=False, order=1003,
    description="1 where a gradient method's score (loss or probability) saturates: 1 - p(target) < 1e-3")
_METRICS["map_converged"] = Metric(
    "map_converged", higher_is_better=True, is_cost=True, default=False, order=1002,
    description="1 where a map's error reached the run's tolerance, 0 where its sampling hit the cap")


def _discover() -> None:
    global _discovered
    if _discovered:
        return
    _discovered = True
    import xai.evaluation as package

    for module in pkgutil.iter_modules(package.__path__):
        importlib.import_module(f"{package.__name__}.{module.name}")


def metrics() -> list[Metric]:
    """Every registered metric, in report order."""
    _discover()
    return sorted(_METRICS.values(), key=lambda m: (m.order, m.name))


def get_metric(name: str) -> Metric:
    _discover()
    if name not in _METRICS:
        raise ConfigError(f"unknown metric {name!r}; choose from {', '.join(requestable_names())}.")
    return _METRICS[name]


def requestable_names() -> list[str]:
    """Metrics a user can ask `xai compare` for (everything but costs)."""
    return [m.name for m in metrics() if not m.is_cost]


def default_names() -> list[str]:
    """The default metric set of `xai compare`."""
    return [m.name for m in metrics() if m.default and not m.is_cost]


def check_names(names) -> list[str]:
    """`names` de-duplicated and sorted into report order; `ConfigError` for unknown ones
    or an empty list."""
    names = list(names)
    if not names:
        raise ConfigError(f"no metrics given; choose from {', '.join(requestable_names())}.")
    known = requestable_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError(f"unknown metric(s) {unknown}; choose from {', '.join(known)}.")
    return [n for n in known if n in set(names)]


#: Separates a stochastic metric's name from the seed of its replicate values.
REPLICATE = "#seed+1"


def replicate_name(name: str) -> str:
    """Where a stochastic metric's values under the run's seed + 1 are stored (for the
    meta-evaluation's agreement between seeds); never ranked or summarised."""
    return name + REPLICATE


def is_replicate(name: str) -> bool:
    return name.endswith(REPLICATE)
