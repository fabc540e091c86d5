"""Statistics of a comparison: summaries with bootstrap CIs and paired tests."""

from __future__ import annotations

import itertools
from typing import Iterable, Mapping

import numpy as np
from scipy import stats

from xai.errors import DataError, ParameterError


def summarise(values, *, confidence: float = 0.95, n_resamples: int = 2000, seed: int = 0) -> dict:
    """Mean, median, std and a percentile-bootstrap CI of the mean over images.

    NaNs (undefined per-image values) are dropped and counted.
    """
    if not 0 < confidence < 1:
        raise ParameterError(f"confidence must be between 0 and 1 (exclusive); got {confidence!r}.")
    if not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ParameterError(f"n_resamples must be an integer >= 1; got {n_resamples!r}.")
    v = np.asarray(values, dtype=np.float64)
    finite = v[np.isfinite(v)]
    out = {"n": int(finite.size), "n_missing": int(v.size - finite.size),
           "mean": np.nan, "median": np.nan, "std": np.nan, "ci_low": np.nan, "ci_high": np.nan}
    if finite.size == 0:
        return out
    out.update(mean=float(finite.mean()), median=float(np.median(finite)),
               std=float(finite.std(ddof=1)) if finite.size > 1 else 0.0)
    if finite.size > 1 and np.ptp(finite) > 0:
        # Resample in batches: all at once would hold n_resamples x n values (800 MB at 50,000 images).
        ci = stats.bootstrap((finite,), np.mean, confidence_level=confidence,
                             n_resamples=n_resamples, method="percentile",
                             batch=max(1, min(n_resamples, 1_000_000 // finite.size)),
                             random_state=np.random.default_rng(seed)).confidence_interval
        out.update(ci_low=float(ci.low), ci_high=float(ci.high))
    else:
        out.update(ci_low=out["mean"], ci_high=out["mean"])
    return out


def paired_test(a, b) -> dict:
    """Wilcoxon signed-rank test of paired per-image values (two-sided).

    Pairs with a NaN on either side are dropped. Returns the statistic, p-value, the
    number of pairs and the median difference a - b; p is NaN when all differences are 0
    or fewer than two pairs remain.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape:
        raise DataError(
            f"paired values must have the same shape (one per image); got {a.shape} and {b.shape}.")
    keep = np.isfinite(a) & np.isfinite(b)
    a, b = a[keep], b[keep]
    out = {"n": int(a.size), "median_difference": float(np.median(a - b)) if a.size else np.nan,
           "statistic": np.nan, "p_value": np.nan}
    if a.size >= 2 and np.any(a != b):
        res = stats.wilcoxon(a, b, zero_method="wilcox", alternative="two-sided")
        out.update(statistic=float(res.statistic), p_value=float(res.pvalue))
    return out


def pairwise_tests(values_by_method: Mapping[str, Iterable[float]]) -> list[dict]:
    """`paired_test` between every two methods (values aligned on the same images)."""
    rows = []
    for (m1, v1), (m2, v2) in itertools.combinations(values_by_method.items(), 2):
        rows.append({"method_a": m1, "method_b": m2, **paired_test(list(v1), list(v2))})
    return rows


def rank_methods(means: Mapping[str, float], higher_is_better: bool) -> dict:
    """1 = best. Ties share the better rank; NaN means rank last."""
    def key(item):
        value = item[1]
        if not np.isfinite(value):
            return np.inf
        return -value if higher_is_better else value
    ordered = sorted(means.items(), key=key)
    ranks, prev, rank = {}, None, 0
    for i, (name, value) in enumerate(ordered, start=1):
        if key((name, value)) != prev:
            rank, prev = i, key((name, value))
        ranks[name] = rank
    return ranks


def tidy(records: Iterable[Mapping]) -> list[dict]:
    """Rows (image_id, method, metric, value) in a stable order, for CSV and pandas."""
    rows = [{"image_id": r["image_id"], "method": r["method"], "metric": r["metric"],
             "value": float(r["value"])} for r in records]
    return sorted(rows, key=lambda r: (r["method"], r["metric"], r["image_id"]))


def holm(p_values) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down; controls the family-wise error rate).

    NaNs (tests that could not be made) stay NaN and do not count in the family.

    Examples
    --------
    >>> holm([0.01, 0.04, 0.03, float("nan")]).round(3).tolist()
    [0.03, 0.06, 0.06, nan]
    """
    p = np.asarray(p_values, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = finite.size
    if m == 0:
        return out
    order = finite[np.argsort(p[finite], kind="stable")]
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out[order] = adjusted
    return out
