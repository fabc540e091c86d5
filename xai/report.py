"""Render a run's stored results: report.html (self-contained), report.md, results.json,
results.csv and the figures as PNG. Reads the results store only; recomputes nothing."""

from __future__ import annotations

import base64
import csv
import json
from pathlib import Path
from typing import Optional

import jinja2
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # the object API: no pyplot, no backend switch

from xai import display  # noqa: E402
from xai.evaluation import statistics as st  # noqa: E402
from xai.evaluation import registry as metric_registry
from xai.evaluation.meta_evaluation import meta_evaluate
# Adebayo et al. 2018 read their checks by eye; xai states a line (SANITY_THRESHOLD): a method
# passes when its maps' mean Spearman correlation with the original falls to it or below.
from xai.evaluation.sanity import SANITY_THRESHOLD
from xai.store import ResultsStore  # noqa: E402

def metric_info() -> dict:
    """Metric -> (higher is better, one-line meaning), from the metric registry, in report order."""
    return {m.name: (m.higher_is_better, m.description) for m in metric_registry.metrics()}


def split_arrays(arrays: dict) -> tuple[dict, dict, dict]:
    """`ResultsStore.value_arrays()` split into quality metrics, costs, and the second-seed
    replicates of stochastic metrics (keyed by the metric's own name)."""
    costs = {m.name for m in metric_registry.metrics() if m.is_cost}
    quality = {k: v for k, v in arrays.items() if k not in costs and not metric_registry.is_replicate(k)}
    replicates = {k[:-len(metric_registry.REPLICATE)]: v for k, v in arrays.items()
                  if metric_registry.is_replicate(k)}
    return quality, {k: v for k, v in arrays.items() if k in costs}, replicates


def verdicts(arrays: dict) -> dict:
    """The meta-evaluation of every quality metric of a run: metric -> `MetricVerdict`."""
    quality, _, replicates = split_arrays(arrays)
    info = metric_info()
    quality = {m: quality[m] for m in sorted(quality, key=lambda m: list(info).index(m) if m in info else len(info))}
    return meta_evaluate(quality, {m: info.get(m, (True, ""))[0] for m in quality}, replicates=replicates)


def summary_table(arrays: dict, trusted=None) -> list[dict]:
    """Per metric and method: summary, rank, and a paired test against the best method.

    `arrays` is `ResultsStore.value_arrays()`: metric -> method -> (image ids, values).
    p-values are Holm-corrected over the comparisons of one metric. Metrics not in
    `trusted` (default: all) and costs get no rank and no p-value: a number that cannot
    be trusted must not look like a ranking.
    """
    info = metric_info()
    quality, costs, _ = split_arrays(arrays)
    table = []
    for metric in sorted({**quality, **costs}, key=lambda m: list(info).index(m) if m in info else len(info)):
        per_method = arrays[metric]
        higher = info.get(metric, (True, ""))[0]
        summaries = {m: st.summarise(v) for m, (_, v) in per_method.items()}
        ranks = st.rank_methods({m: s["mean"] for m, s in summaries.items()}, higher)
        best = min(ranks, key=ranks.get)
        best_ids, best_values = per_method[best]
        ranked = metric in quality and (trusted is None or metric in trusted)
        # Unranked metrics in alphabetical order: best-to-worst would be a ranking without numbers.
        ordered = sorted(per_method, key=lambda m: ranks[m] if ranked else m)
        raw = []
        for method in ordered:
            ids, values = per_method[method]
            _, mine, theirs = np.intersect1d(np.asarray(ids), np.asarray(best_ids), return_indices=True)
            raw.append(np.nan if method == best else st.paired_test(values[mine], best_values[theirs])["p_value"])
        adjusted = st.holm(raw)
        for method, p in zip(ordered, adjusted):
            table.append({"metric": metric, "method": method, "rank": ranks[method] if ranked else None,
                          "higher_is_better": higher, **summaries[method],
                          "p_vs_best": float(p) if ranked and np.isfinite(p) else None,
                          "best": best if ranked else None, "ranked": ranked})
    return table


#: Example images shown in report.html; the rest of the gallery goes to further pages of this size.
GALLERY_PAGE = 12
#: Okabe & Ito's colour-blind-safe qualitative palette (curves; line styles repeat it past 8).
OKABE_ITO = ("#000000", "#E69F00", "#56B4E9", "#009E73", "#F0E442", "#0072B2", "#D55E00", "#CC79A7")
#: Colour-blind-safe sequential shades (light to dark blue, ColorBrewer "Blues") for ranks.
RANK_SHADES = ("#eff3ff", "#c6dbef", "#9ecae1", "#6baed6", "#4292c6", "#2171b5")


def map_errors(arrays: dict) -> dict:
    """method -> the Monte Carlo error of its maps (`xai.monte_carlo`): median and 90th
    percentile over images, and on how many of the ``n`` images it reached the tolerance."""
    converged, order = arrays.get("map_converged", {}), arrays.get("map_order_error", {})
    out = {}
    for method, (_, errors) in arrays.get("map_error", {}).items():
        reached = converged.get(method, (None, np.ones_like(errors)))[1]
        order_errors = order.get(method, (None, None))[1]
        out[method] = {"median": float(np.nanmedian(errors)), "p90": float(np.nanpercentile(errors, 90)),
                       "converged": int(np.nansum(reached)), "n": int(len(errors)),
                       "order_median": (float(np.nanmedian(order_errors))
                                        if order_errors is not None and np.isfinite(order_errors).any() else None)}
    return out


def saturation(arrays: dict, method_params: dict) -> dict:
    """method -> on how many images its score saturates (`Explainer.saturated`), for the
    gradient methods of a saturating score that saturates on at least one image."""
    out = {}
    for method, (_, flags) in arrays.get("score_saturated", {}).items():
        if np.nansum(flags) > 0:
            out[method] = {"saturated": int(np.nansum(flags)), "n": int(len(flags)),
                           "score": method_params.get(method, {}).get("score", "?")}
    return out


def leaderboard(table: list[dict], meta: dict, timings: dict, errors: Optional[dict] = None) -> dict:
    """Methods x trusted metrics: rank, mean, and whether the method is tied with the best
    (Holm-corrected p >= 0.05 against it); methods ordered by mean rank over those metrics."""
    trusted = [m for m, v in meta.items() if v.trusted]
    cells: dict = {}
    for row in table:
        if row["metric"] in trusted:
            tied = row["rank"] == 1 or (row["p_vs_best"] is not None and row["p_vs_best"] >= 0.05)
            cells.setdefault(row["method"], {})[row["metric"]] = {
                "rank": row["rank"], "mean": row["mean"], "tied_best": tied}
    methods = sorted({r["method"] for r in table}, key=lambda m: (
        np.mean([c["rank"] for c in cells.get(m, {}).values()]) if cells.get(m) else np.inf, m))
    n = max(len(methods), 1)
    for per_metric in cells.values():
        for cell in per_metric.values():
            shade = RANK_SHADES[::-1][min(len(RANK_SHADES) - 1, int((cell["rank"] - 1) * len(RANK_SHADES) / n))]
            cell["shade"], cell["dark"] = shade, shade in RANK_SHADES[3:]
    mean_rank = {m: float(np.mean([c["rank"] for c in cells[m].values()])) for m in cells}
    return {"metrics": trusted, "methods": methods, "cells": cells, "mean_rank": mean_rank,
            "seconds": {m: timings.get(m) for m in methods}, "map_error": errors or {}}


def verdict_sentences(board: dict, meta: dict) -> list[str]:
    """Three sentences that answer "which explanation should I trust?" for this run."""
    untrusted = [m for m, v in meta.items() if not v.trusted]
    if not meta:
        return ["This run has no per-image quality metric, so it cannot say which explanation to trust."]
    if not board["metrics"]:
        return [f"None of the {len(meta)} metrics can rank methods on this model and these images "
                f"({', '.join(untrusted)}): each fails its check against `random` or does not repeat; "
                "see the readings below before drawing any conclusion.",
                "Add images, keep `random` among the methods, or choose metrics that separate methods "
                "from chance here (docs/metrics.md).",
                "No method is named best: a ranking on these numbers would be noise."]
    first = (f"{len(board['metrics'])} of {len(meta)} metrics can rank methods here "
             f"({', '.join(board['metrics'])})"
             + (f"; {', '.join(untrusted)} cannot and {'is' if len(untrusted) == 1 else 'are'} shown apart."
                if untrusted else "."))
    ranked = [m for m in board["methods"] if m in board["mean_rank"]]
    best = ranked[0]
    tied = [m for m in ranked[1:] if all(board["cells"][m].get(k, {}).get("tied_best") for k in board["metrics"])]
    second = (f"{best} ranks best on average (mean rank {board['mean_rank'][best]:.1f} over those metrics)"
              + (f"; {', '.join(tied)} cannot be told apart from it on any of them." if tied else
                 ", and no other method is tied with it on every one of them."))
    costs = {m: board["seconds"].get(m) for m in [best, *tied] if board["seconds"].get(m) is not None}
    if len(costs) > 1:
        cheapest = min(costs, key=costs.get)
        third = (f"Among those, {cheapest} is the cheapest at {costs[cheapest]:.3g} s per image "
                 f"(cost is measured on this machine, not ranked).")
    elif costs:
        third = f"It costs {costs[best]:.3g} s per image on this machine (a cost, not ranked)."
    else:
        third = "Its cost was not measured."
    return [first, second, third]


def sanity_readings(sanity: dict, n_classes: int) -> dict:
    """Per method: pass (True) or fail (False) of each check against `SANITY_THRESHOLD`, or
    None where it cannot be read; ``too_noisy`` where a Monte Carlo method's maps from two
    seeds on the unchanged model correlate no more than the threshold (``seed_floor_mean``):
    a cascade that falls below it then says nothing about the weights."""
    out = {}
    for method, r in sanity.items():
        if "spearman_mean" not in r:
            continue
        finite = lambda v: v if v is not None and np.isfinite(v) else None  # noqa: E731
        cascade = finite(r["spearman_mean"][-1]) if r["spearman_mean"] else None
        logit = finite(r.get("random_logit_mean"))
        floor = finite(r.get("seed_floor_mean"))
        too_noisy = floor is not None and floor <= SANITY_THRESHOLD
        out[method] = {
            "cascade": None if cascade is None or too_noisy else bool(abs(cascade) <= SANITY_THRESHOLD),
            "random_logit": None if logit is None or n_classes <= 2 else bool(abs(logit) <= SANITY_THRESHOLD),
        }
        if too_noisy:
            out[method]["too_noisy"] = True
    return out


def metric_failures(store) -> list[dict]:
    """Metrics that raised on some batch of a method (their values there are missing)."""
    return [{"metric": key.split("::")[0], "method": key.split("::")[1], "error": error}
            for key, error in sorted(store.extras_under("metric_error::").items())]


def _png(fig, path: Path, dpi: int = 110) -> str:
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return base64.b64encode(path.read_bytes()).decode()


def _gallery(store, figures_dir: Path, input_range) -> list[dict]:
    """Per stored example image: one figure of every method's grey map and overlay, and the
    image's own value on every metric. The report grows by one small PNG per example image
    (``--n-examples``), never with the number of images in the run."""
    examples = store.examples()
    if not examples:
        return []
    scores: dict = {}
    for image_id, method, metric, value in store.values_of(examples):
        if not metric_registry.is_replicate(metric):
            scores.setdefault(image_id, {}).setdefault(method, {})[metric] = float(value)
    entries = []
    for n, (image_id, entry) in enumerate(examples.items()):
        methods = sorted(entry["maps"])
        fig = display.gallery_figure(entry["image"], {m: entry["maps"][m] for m in methods},
                                     mask=entry["mask"], input_range=input_range)
        name = f"gallery-{n}.png"
        entries.append({"id": image_id, "anchor": f"image-{n}", "file": f"figures/{name}",
                        "data": _png(fig, figures_dir / name, dpi=72), "methods": methods,
                        "scores": scores.get(image_id, {}),
                        "metrics": sorted({k for v in scores.get(image_id, {}).values() for k in v})})
    return entries


def _curve_figure(metric: str, curves: dict):
    fig = Figure(figsize=(7.0, 3.4))
    ax = fig.subplots()
    for k, (method, (x, mean, std, n)) in enumerate(sorted(curves.items())):
        half = 1.96 * std / np.sqrt(n)
        colour = OKABE_ITO[k % len(OKABE_ITO)]
        ax.plot(x, mean, label=method, color=colour, linestyle=("-", "--", ":")[k // len(OKABE_ITO) % 3])
        ax.fill_between(x, mean - half, mean + half, alpha=0.15, color=colour)
    ax.set_xlabel("fraction of pixels " + ("inserted" if metric == "insertion" else "removed"))
    ax.set_ylabel("LeRF minus MoRF score" if metric == "symmetric_relevance_gain" else "target-class score")
    ax.set_title(f"{metric} (mean, 95% CI band)")
    ax.set_xlim(0, 1)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)  # beside, not over
    fig.tight_layout()
    return fig


def _sanity_figure(sanity: dict):
    fig = Figure(figsize=(7.0, 3.4))
    ax = fig.subplots()
    for method, r in sorted(sanity.items()):
        if "layers" in r:
            ys = [np.nan if v is None else v for v in r["spearman_mean"]]
            ax.plot(range(len(ys)), ys, marker="o", label=method)
            ax.set_xticks(range(len(r["layers"])), r["layers"], rotation=30, fontsize=7)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_ylabel("Spearman vs original map")
    ax.set_title("cascading randomisation (top layer first)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    fig.tight_layout()
    return fig


def _fmt(v, digits=3):
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}" if abs(v) < 1e-3 and v != 0 else f"{v:.{digits}f}"
    return str(v)


def write_report(run_dir) -> Path:
    """Write every report file into `run_dir` from its results store; returns report.html."""
    run_dir = Path(run_dir)
    store = ResultsStore(run_dir)
    from xai.runner import merged

    config = merged(store.config, store.extra("provenance", {}))
    curve_metrics = [m.name for m in metric_registry.metrics() if not m.is_cost]
    arrays = store.value_arrays()
    meta = verdicts(arrays)
    table = summary_table(arrays, trusted={m for m, v in meta.items() if v.trusted})
    figures_dir = run_dir / "figures"
    figures_dir.mkdir(exist_ok=True)

    figures = []
    for metric in curve_metrics:
        curves = store.curve_stats(metric)
        if curves:
            figures.append({"title": f"{metric.replace('_', ' ').capitalize()} curves", "file": f"figures/{metric}.png",
                            "data": _png(_curve_figure(metric, curves), figures_dir / f"{metric}.png")})
    gallery = _gallery(store, figures_dir, tuple(store.config.get("input_range", (0.0, 1.0))))
    pages = [gallery[k:k + GALLERY_PAGE] for k in range(0, len(gallery), GALLERY_PAGE)] or [[]]
    page_names = [f"gallery-{n}.html" for n in range(2, len(pages) + 1)]
    sanity = store.extra("sanity", {})
    if any("layers" in r for r in sanity.values()):
        figures.append({"title": "Sanity check: model parameter randomisation",
                        "file": "figures/sanity.png",
                        "data": _png(_sanity_figure(sanity), figures_dir / "sanity.png")})

    protocols = {m.name: store.extra(f"protocol_{m.name}") for m in metric_registry.metrics()}
    protocols = {k: v for k, v in protocols.items() if v}
    board = leaderboard(table, meta, store.timings(), map_errors(arrays))
    board["saturation"] = saturation(arrays, {m: entry.get("params", {}) for m, entry in
                                              dict(config.get("methods") or {}).items()})
    n_classes = len(config.get("class_names", [])) or 2
    context = {
        "board": board, "verdict": verdict_sentences(board, meta), "gallery": pages[0],
        "gallery_pages": page_names, "n_examples": len(gallery),
        "sanity_readings": sanity_readings(sanity, n_classes), "sanity_threshold": SANITY_THRESHOLD,
        "n_classes": n_classes,
        "config": config, "table": table, "figures": figures, "failures": store.failures(),
        "sanity": sanity, "protocols": protocols, "metric_info": metric_info(),
        "meta": {m: v.to_dict() for m, v in meta.items()},
        "skipped": store.extra("skipped_metrics", {}),
        "metric_failures": metric_failures(store),
        "not_applicable": store.extra("not_applicable", {}), "n_images": store.n_images(),
        "timings": store.timings(), "resumed_with": store.extra("resumed_with", []), "fmt": _fmt, "run_id": run_dir.name,
        "sanity_layers": next((r["layers"] for r in sanity.values() if "layers" in r), []),
    }
    env = jinja2.Environment(loader=jinja2.PackageLoader("xai", "templates"),
                             autoescape=jinja2.select_autoescape(["html", "j2"]),
                             undefined=jinja2.StrictUndefined)
    (run_dir / "report.html").write_text(env.get_template("report.html.j2").render(**context))
    for n, (name, entries) in enumerate(zip(page_names, pages[1:]), start=2):
        (run_dir / name).write_text(env.get_template("gallery_page.html.j2").render(
            gallery=entries, page=n, n_pages=len(pages), run_id=run_dir.name, fmt=_fmt,
            previous="report.html#gallery" if n == 2 else page_names[n - 3],
            next=page_names[n - 1] if n - 1 < len(page_names) else None))
    md_env = jinja2.Environment(loader=jinja2.PackageLoader("xai", "templates"), autoescape=False,
                                undefined=jinja2.StrictUndefined)
    (run_dir / "report.md").write_text(md_env.get_template("report.md.j2").render(**context))

    # Streamed from the store: memory does not grow with the number of images.
    clean = lambda v: None if isinstance(v, float) and not np.isfinite(v) else v  # noqa: E731
    with open(run_dir / "results.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image_id", "method", "metric", "value"])
        writer.writerows((i, m, k, float(v)) for i, m, k, v in store.iter_values())
    with open(run_dir / "results.json", "w") as fh:
        head = json.dumps({
            "config": config, "summary": [{k: clean(v) for k, v in r.items()} for r in table],
            "verdict": verdict_sentences(board, meta),
            "leaderboard": {k: board[k] for k in ("metrics", "methods", "mean_rank", "seconds")},
            "meta_evaluation": {m: v.to_dict() for m, v in meta.items()},
            "sanity_readings": sanity_readings(sanity, n_classes),
            "metric_failures": metric_failures(store),
            "sanity": sanity, "failures": store.failures(),
            "not_applicable": store.extra("not_applicable", {}),
            "skipped_metrics": store.extra("skipped_metrics", {}), "protocols": protocols, "values": []},
            indent=1)
        fh.write(head[:head.rindex("[]")] + "[")
        for n, (i, m, k, v) in enumerate(store.iter_values()):
            fh.write(("," if n else "") + "\n  " + json.dumps(
                {"image_id": i, "method": m, "metric": k, "value": clean(float(v))}))
        fh.write("\n ]\n}\n")
    store.close()
    return run_dir / "report.html"

