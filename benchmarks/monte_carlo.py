"""Monte Carlo error against cost for every stochastic explainer, on the offline default model.

For each method: maps at fixed sample counts (a quarter, a half, one and two times its
default, and Xplique's default where it differs), and in tolerance mode, each compared with a
high-count reference map (the mean of replicates at `--reference` times the default count).
Columns: samples per image, seconds per image (this machine, this run), the error
`explain_with_error` estimates (median over images), and the error actually measured against
the reference (median relative L2 distance), and the pixel-order error it estimates (the same
for each map less its own mean). Integrated Gradients: completeness gap against
steps. Also SmoothGrad with antithetic noise, at the same counts. Not part of the test suite.

    .venv/bin/python benchmarks/monte_carlo.py                    # 8 test images, all methods
    .venv/bin/python benchmarks/monte_carlo.py --only rise,smoothgrad --images 16
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import xai  # noqa: E402
from xai import data  # noqa: E402
from xai.train import default_model  # noqa: E402

#: method -> (label, parameters, Xplique's default count where it differs from ours).
CASES = {
    "smoothgrad": [("loss (the seed's)", {"score": "loss"}, None), ("logit (default)", {}, None),
                   ("logit, antithetic", {"antithetic": True}, None)],
    "square_grad": [("logit (default)", {}, None), ("logit, antithetic", {"antithetic": True}, None)],
    "var_grad": [("logit (default)", {}, None)],
    "rise": [("default", {}, 4000)],
    "lime": [("default", {}, 150)],
    "kernel_shap": [("default", {}, 800)],
    "sobol": [("default", {}, None)],
    "hsic": [("default", {}, None)],
    "integrated_gradients": [("logit (default)", {}, None)],
}


def relative_distance(maps, reference):
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64)  # noqa: E731
    return np.linalg.norm(flat(maps) - flat(reference), axis=1) / np.linalg.norm(flat(reference), axis=1)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--reference", type=int, default=4, help="reference count, in multiples of the default")
    parser.add_argument("--tolerances", default="0.05")
    parser.add_argument("--only", default=None)
    parser.add_argument("--out", default="benchmarks/results/monte-carlo.json")
    args = parser.parse_args()

    model = default_model(verbose=0)
    batch = next(iter(data.offline(args.images, 64, split="test").batch(args.images)))
    images = batch["image"].numpy()
    targets = np.asarray(model.predict(images, verbose=0).argmax(axis=1), np.int32)
    tolerances = [float(t) for t in args.tolerances.split(",") if t]
    rows = []
    for method, cases in CASES.items():
        if args.only and method not in args.only.split(","):
            continue
        for label, params, peer_count in cases:
            base = xai.create_explainer(method, model, **params)
            count_name = base.sample_count
            default = base.resolved[count_name]
            if method == "integrated_gradients":
                for factor in (0.25, 0.5, 1, 2, 4):
                    steps = max(1, int(default * factor))
                    e = base.variant(steps=steps)
                    e.explain(images[:1], targets[:1])  # tracing stays out of the timing
                    result, seconds = timed(lambda: e.explain_with_error(images, targets))
                    rows.append({"method": method, "setting": label, "mode": f"steps {steps}", "samples": steps,
                                 "seconds_per_image": seconds / len(images),
                                 "estimated": float(np.median(result.errors)), "actual": None})
                for tolerance in tolerances:
                    result, seconds = timed(lambda: base.explain_with_error(images, targets, tolerance=tolerance))
                    rows.append({"method": method, "setting": label, "mode": f"tolerance {tolerance}",
                                 "samples": float(result.samples.mean()), "seconds_per_image": seconds / len(images),
                                 "estimated": float(np.median(result.errors)), "actual": None,
                                 "converged": float(result.converged.mean())})
                print(rows[-1])
                continue
            reference = base.variant(**{count_name: default * args.reference}).explain_with_error(images, targets)
            counts = sorted({max(base.smallest_replicate(), int(default * f)) for f in (0.25, 0.5, 1, 2)}
                            | ({peer_count} if peer_count else set()))
            for count in counts:
                e = base.variant(**{count_name: count})
                e.explain(images[:1], targets[:1])
                maps, seconds = timed(lambda: e.explain(images, targets))
                estimate = e.explain_with_error(images, targets)
                rows.append({"method": method, "setting": label, "mode": f"fixed {count}", "samples": count,
                             "seconds_per_image": seconds / len(images),
                             "estimated": float(np.median(estimate.errors)),
                             "estimated_order": float(np.median(estimate.order_errors)),
                             "actual": float(np.median(relative_distance(maps, reference.maps))),
                             "reference_error": float(np.median(reference.errors))})
                print(rows[-1])
            for tolerance in tolerances:
                for cap in (default, 4 * default):
                    result, seconds = timed(lambda: base.explain_with_error(images, targets, tolerance=tolerance,
                                                                            max_samples=cap))
                    rows.append({"method": method, "setting": label, "mode": f"tolerance {tolerance}, cap {cap}",
                                 "samples": float(result.samples.mean()), "seconds_per_image": seconds / len(images),
                                 "estimated": float(np.median(result.errors)),
                                 "estimated_order": float(np.median(result.order_errors)),
                                 "actual": float(np.median(relative_distance(result.maps, reference.maps))),
                                 "converged": float(result.converged.mean()),
                                 "reference_error": float(np.median(reference.errors))})
                    print(rows[-1])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"images": args.images, "reference": args.reference, "rows": rows}, indent=1))
    print("| method | setting | mode | samples / image | s / image | estimated error | error vs reference |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        actual = "–" if r["actual"] is None else f"{r['actual']:.3f}"
        conv = f" ({r['converged']:.0%} converged)" if "converged" in r else ""
        print(f"| {r['method']} | {r['setting']} | {r['mode']}{conv} | {r['samples']:.0f} | "
              f"{r['seconds_per_image']:.3f} | {r['estimated']:.3f} | {actual} |")
    print(f"saved {out}")


if __name__ == "__main__":
    main()
