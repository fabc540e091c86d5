"""Meta-evaluation: can this metric be believed, on this model and these images?

A metric earns the right to rank methods in three steps, each computed from the run's own
per-image values (nothing is re-run):

(a) **noise floor**: every method against the chance baseline `random` (paired Wilcoxon
    signed-rank tests on the same images, Holm-corrected over the methods). A metric on
    which most methods cannot be told from random maps measures the setup (the baseline,
    a saturated model), not the maps;
(b) **reliability**: the method ranking on one half of the images against the other half,
    and, for stochastic metrics, under one seed against another (Spearman correlation of
    the two rankings). A ranking that does not repeat is noise;
(c) one plain sentence saying what (a) and (b) mean for the reader.

Like the noise-floor and reliability checks of MetaQuantus (Hedström et al. 2023), but
on the user's run rather than on synthetic perturbations: the question is whether *this*
comparison can be ranked on *this* metric.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

import numpy as np
from scipy import stats

from xai.evaluation.statistics import holm, paired_test

#: The method that stands for chance: maps unrelated to the model and the image.
CHANCE = "random"
#: Family-wise error rate of the noise-floor tests.
ALPHA = 0.05
#: Rankings agreeing less than this between halves (or seeds) are called unstable.
MIN_AGREEMENT = 0.5


@dataclasses.dataclass
class MetricVerdict:
    """What the meta-evaluation found for one metric."""

    metric: str
    #: "separates": at least half the methods beat chance; "fails": they do not;
    #: "unchecked": `random` has no values in this run.
    noise_floor: str
    #: Methods better / worse than chance at Holm-corrected p < ALPHA.
    beats_chance: list
    below_chance: list
    #: Method -> Holm-corrected p-value of the paired test against chance.
    p_vs_chance: dict
    #: 1-based rank of chance among all methods (1 = best), by mean.
    chance_rank: Optional[int]
    n_methods: int
    #: Spearman correlation of the method rankings between two halves of the images / two seeds.
    halves_agreement: Optional[float]
    seeds_agreement: Optional[float]
    sentence: str
    #: Methods left out of the tests: fewer than two images with values for both it and chance.
    untested: list = dataclasses.field(default_factory=list)

    @property
    def reliable(self) -> bool:
        """The ranking repeats between halves of the images and between seeds (where defined)."""
        return all(a is None or a >= MIN_AGREEMENT for a in (self.halves_agreement, self.seeds_agreement))

    @property
    def trusted(self) -> bool:
        """May the report rank methods on this metric? Above the noise floor, and reliable."""
        return self.noise_floor == "separates" and self.reliable

    @property
    def verdict(self) -> str:
        if self.noise_floor == "unchecked":
            return "not checked"
        return "ranks" if self.trusted else "do not rank"

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out.update(trusted=self.trusted, reliable=self.reliable, verdict=self.verdict)
        return out


def _aligned(a: tuple, b: tuple) -> tuple[np.ndarray, np.ndarray]:
    """Values of two methods on the images both have, in the same order."""
    _, ia, ib = np.intersect1d(np.asarray(a[0]), np.asarray(b[0]), return_indices=True)
    return np.asarray(a[1], np.float64)[ia], np.asarray(b[1], np.float64)[ib]


def _ranking_agreement(first: Mapping[str, float], second: Mapping[str, float],
                       chance: str = CHANCE) -> Optional[float]:
    """Spearman correlation of two method -> mean maps over the methods but chance (which is
    reliably last and would make any ranking look stable); None when it is undefined."""
    names = [m for m in first if m in second and m != chance
             and np.isfinite(first[m]) and np.isfinite(second[m])]
    if len(names) < 3:
        return None
    a, b = [first[m] for m in names], [second[m] for m in names]
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return float(stats.spearmanr(a, b).statistic)


def _half_means(per_method: Mapping[str, tuple]) -> tuple[dict, dict]:
    """Each method's mean on the images at even and at odd positions of the sorted image ids
    (the same split for every method, so the two rankings are over disjoint images)."""
    ids = sorted(set.intersection(*(set(map(str, i)) for i, _ in per_method.values())))
    halves = (set(ids[0::2]), set(ids[1::2]))
    out = ({}, {})
    for method, (image_ids, values) in per_method.items():
        image_ids = np.asarray(list(map(str, image_ids)))
        values = np.asarray(values, np.float64)
        for half, chosen in zip(out, halves):
            keep = np.isin(image_ids, list(chosen)) & np.isfinite(values)
            half[method] = float(values[keep].mean()) if keep.any() else np.nan
    return out


def _means(per_method: Mapping[str, tuple]) -> dict:
    """Each method's mean over its finite values (NaN when it has none)."""
    out = {}
    for method, (_, values) in per_method.items():
        v = np.asarray(values, np.float64)
        out[method] = float(np.nanmean(v)) if np.isfinite(v).any() else np.nan
    return out


def evaluate_metric(metric: str, per_method: Mapping[str, tuple], higher_is_better: bool, *,
                    replicate: Optional[Mapping[str, tuple]] = None, chance: str = CHANCE,
                    alpha: float = ALPHA) -> MetricVerdict:
    """The verdict on one metric.

    Parameters
    ----------
    metric : str
    per_method : method -> (image ids, per-image values)
    higher_is_better : bool
    replicate : method -> (image ids, values) of the same metric under a second seed
        (stochastic metrics), optional
    chance : the method that stands for chance, default "random"
    alpha : family-wise error rate of the noise-floor tests

    Examples
    --------
    A metric whose values do not depend on the map cannot tell methods from chance:

    >>> rng = np.random.default_rng(0)
    >>> ids, same = list(range(40)), rng.random(40)
    >>> values = {m: (ids, same + rng.normal(0, 1e-3, 40)) for m in ["a", "b", "c", "random"]}
    >>> evaluate_metric("blind", values, higher_is_better=True).noise_floor
    'fails'
    """
    means = _means(per_method)
    ordered = sorted(means, key=lambda m: (-means[m] if higher_is_better else means[m])
                     if np.isfinite(means[m]) else np.inf)
    others = [m for m in ordered if m != chance]
    halves = _half_means(per_method) if len(per_method) >= 3 else ({}, {})
    halves_agreement = _ranking_agreement(*halves, chance=chance)
    seeds_agreement = (_ranking_agreement(means, _means(replicate), chance=chance)
                       if replicate else None)

    pairs = {m: _aligned(per_method[m], per_method[chance]) for m in others} if chance in per_method else {}
    pairs = {m: (a[np.isfinite(a) & np.isfinite(b)], b[np.isfinite(a) & np.isfinite(b)])
             for m, (a, b) in pairs.items()}
    tested = [m for m in others if m in pairs and len(pairs[m][0]) >= 2]
    untested = [m for m in others if m not in tested] if chance in per_method else []
    if not tested or not np.isfinite(means.get(chance, np.nan)):
        verdict = MetricVerdict(metric, "unchecked", [], [], {}, None, len(per_method),
                                halves_agreement, seeds_agreement, "", untested=untested)
        verdict.sentence = _sentence(verdict)
        return verdict

    sign = 1.0 if higher_is_better else -1.0
    raw, direction = [], {}
    for m in tested:
        a, b = pairs[m]
        p = paired_test(a, b)["p_value"]
        raw.append(1.0 if not np.isfinite(p) else p)  # identical to chance on every image: no evidence
        direction[m] = sign * _signed_rank_shift(a - b)
    adjusted = dict(zip(tested, holm(raw)))
    beats = [m for m in tested if adjusted[m] < alpha and direction[m] > 0]
    below = [m for m in tested if adjusted[m] < alpha and direction[m] < 0]
    separates = len(beats) * 2 >= len(tested)
    verdict = MetricVerdict(
        metric, "separates" if separates else "fails", beats, below,
        {m: float(p) for m, p in adjusted.items()},
        ordered.index(chance) + 1, len(per_method), halves_agreement, seeds_agreement, "",
        untested=untested)
    verdict.sentence = _sentence(verdict)
    return verdict


def _signed_rank_shift(differences: np.ndarray) -> float:
    """W+ - W-: the direction the Wilcoxon signed-rank test sees (zeros dropped, as in the test)."""
    d = differences[differences != 0]
    if d.size == 0:
        return 0.0
    ranks = stats.rankdata(np.abs(d))
    return float(ranks[d > 0].sum() - ranks[d < 0].sum())


def _sentence(v: MetricVerdict) -> str:
    """(c): what the numbers mean for someone about to rank methods on this metric."""
    others = len(v.p_vs_chance)
    if v.noise_floor == "unchecked":
        first = (f"{v.metric} was not checked against chance: `random` (or every other method) has no "
                 "values in this run; include `random` among the methods (or see its failures) to know "
                 "whether the metric can tell the methods apart on this model")
    elif v.noise_floor == "fails" and v.below_chance:
        first = (f"{v.metric} does not put the methods above chance on this model: only "
                 f"{len(v.beats_chance)} of {others} beat `random` and {len(v.below_chance)} score worse "
                 f"than it (Holm-corrected p < {ALPHA}), so it rewards something maps unrelated to the "
                 "model have; do not rank on it")
    elif v.noise_floor == "fails":
        first = (f"{v.metric} cannot tell the methods from chance on this model "
                 f"(only {len(v.beats_chance)} of {others} beat `random` at Holm-corrected "
                 f"p < {ALPHA}; `random` ranks {v.chance_rank} of {v.n_methods}); do not rank on it")
    else:
        first = (f"{v.metric} separates methods from chance on this model "
                 f"({len(v.beats_chance)} of {others} beat `random` at Holm-corrected p < {ALPHA})")
    notes = []
    if v.noise_floor == "separates" and not v.reliable:
        notes.append("its ranking does not repeat (below), so do not rank on it yet")
    if v.untested:
        notes.append(f"not tested (fewer than two images with values): {', '.join(v.untested)}")
    if v.below_chance and v.noise_floor == "separates":
        notes.append(f"{', '.join(v.below_chance)} score{'s' if len(v.below_chance) == 1 else ''} "
                     "worse than `random`")
    for between, value, advice in (("two halves of the images", v.halves_agreement, "use more images"),
                                   ("two seeds", v.seeds_agreement, "use more samples")):
        if value is not None and value < MIN_AGREEMENT:
            notes.append(f"its ranking is unstable between {between} (Spearman {value:.2f}): {advice}")
        elif value is not None:
            notes.append(f"its ranking repeats between {between} (Spearman {value:.2f})")
    return "; ".join([first, *notes]) + "."


def meta_evaluate(arrays: Mapping[str, Mapping[str, tuple]], higher_is_better: Mapping[str, bool], *,
                  replicates: Optional[Mapping[str, Mapping[str, tuple]]] = None,
                  chance: str = CHANCE) -> dict:
    """`evaluate_metric` for every metric of a run.

    `arrays` is `ResultsStore.value_arrays()` (metric -> method -> (ids, values)) restricted
    to quality metrics; `replicates` the same for the second seed of stochastic metrics.
    Returns metric -> `MetricVerdict`.
    """
    replicates = replicates or {}
    return {metric: evaluate_metric(metric, per_method, higher_is_better[metric],
                                    replicate=replicates.get(metric), chance=chance)
            for metric, per_method in arrays.items()}
