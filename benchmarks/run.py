"""Benchmark xai's explainers and metrics against their floors, in one process run.

Floors, on the same model and batch: one forward pass (CAM, deletion/insertion per step)
and one forward+backward pass (gradient methods; SmoothGrad per noise sample). Reported as
ratios ours / floor measured in this run (median of repeats after warm-up), plus images
per second with the machine's description. Not part of the test suite.

    .venv/bin/python benchmarks/run.py                      # width 1.0, 64x64, 8 images
    .venv/bin/python benchmarks/run.py --size 224 --images 4
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import xai  # noqa: E402
from xai import evaluation as ev  # noqa: E402


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up: tracing and allocation stay out of the figures
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def floors(model, images, targets, batch_rows: int, jit: bool):
    """Compiled forward and forward+backward on `batch_rows` images, like any method would."""
    spec = tf.TensorSpec((None, *images.shape[1:]), tf.float32)

    @tf.function(input_signature=[spec], jit_compile=jit)
    def forward(x):
        return model(x, training=False)

    @tf.function(input_signature=[spec, tf.TensorSpec((None,), tf.int32)], jit_compile=jit)
    def forward_backward(x, t):
        with tf.GradientTape() as tape:
            tape.watch(x)
            p = model(x, training=False)
            s = tf.reduce_sum(tf.gather(p, t, batch_dims=1))
        return tape.gradient(s, x)

    x = tf.constant(np.resize(images, (batch_rows, *images.shape[1:])))
    t = tf.constant(np.resize(targets, (batch_rows,)).astype(np.int32))
    return (lambda: forward(x).numpy()), (lambda: forward_backward(x, t).numpy())


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--samples", type=int, default=16, help="SmoothGrad noise samples")
    parser.add_argument("--steps", type=int, default=16, help="deletion/insertion steps")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--jit", action="store_true", help="XLA for ours and the floors")
    parser.add_argument("--out", default="benchmarks/results/latest.json")
    args = parser.parse_args()

    keras.utils.set_random_seed(0)
    model = xai.vgg16_gap((args.size, args.size, 3), width=args.width)
    rng = np.random.default_rng(0)
    images = rng.random((args.images, args.size, args.size, 3), dtype=np.float32)
    targets = rng.integers(0, 2, args.images).astype(np.int32)
    n = args.images

    fwd, fwd_bwd = floors(model, images, targets, n, args.jit)
    t_fwd, t_fwd_bwd = median_time(fwd, args.repeats), median_time(fwd_bwd, args.repeats)
    sg_rows = n * args.samples
    _, fwd_bwd_sg = floors(model, images, targets, min(sg_rows, 64), args.jit)
    t_fwd_bwd_sg = median_time(fwd_bwd_sg, args.repeats) * (sg_rows / min(sg_rows, 64))
    curve_rows = n * (args.steps + 1)
    fwd_curve, _ = floors(model, images, targets, min(curve_rows, 256), args.jit)
    t_fwd_curve = median_time(fwd_curve, args.repeats) * (curve_rows / min(curve_rows, 256))

    rows = []

    def record(name, seconds, floor, floor_name):
        rows.append({"what": name, "seconds": seconds, "floor": floor_name, "floor_seconds": floor,
                     "ratio_to_floor": seconds / floor, "images_per_second": n / seconds})

    jit = {"jit_compile": args.jit}
    for name, params, floor, floor_name in [
        ("vanilla_gradient", {"score": "probability", "batch_size": n}, t_fwd_bwd, "forward+backward"),
        ("cam", {"batch_size": n}, t_fwd, "forward"),
        ("smoothgrad", {"n_samples": args.samples, "batch_size": 64, "score": "probability"},
         t_fwd_bwd_sg, f"forward+backward x {args.samples} samples"),
    ]:
        explainer = xai.create_explainer(name, model, **params, **jit)
        record(name, median_time(lambda: explainer.explain(images, targets), args.repeats), floor, floor_name)

    maps = xai.create_explainer("vanilla_gradient", model).explain(images, targets)
    scorer = ev.ModelScorer(model, jit_compile=args.jit)
    for metric in ("deletion", "insertion"):
        fn = lambda m=metric: ev.causal_curves(m, scorer, images, targets, maps, steps=args.steps,  # noqa: E731
                                               baseline="zero", batch_size=256)
        record(f"{metric} ({args.steps} steps)", median_time(fn, args.repeats), t_fwd_curve,
               f"forward x {args.steps + 1} points")

    machine = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, TF {tf.__version__}"
    print(f"VGG16-GAP width {args.width}, {args.size}x{args.size}, {n} images, XLA={args.jit}; {machine}")
    print(f"{'what':32s} {'ratio to floor':>15s} {'images/s':>10s}  floor")
    for r in rows:
        print(f"{r['what']:32s} {r['ratio_to_floor']:15.3f} {r['images_per_second']:10.1f}  {r['floor']}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "machine": machine, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
