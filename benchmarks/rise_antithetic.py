"""RISE with plain against antithetic (complementary) masks, at equal mask counts.

On the offline default model: each map is compared with a reference (the mean of a plain and
an antithetic map of `--reference` masks each, other seeds) by its relative L2 error, by the
relative L2 error of the map minus its mean ("centred": what a ranking of pixels reads; a
RISE map is mostly its mean), and by Spearman rank correlation; and with a second seed's map
at the same count (the seed-to-seed agreement the sanity checks show). Medians and means over
images. Not part of the test suite.

    .venv/bin/python benchmarks/rise_antithetic.py                 # 8 test images
    .venv/bin/python benchmarks/rise_antithetic.py --images 16 --counts 250,500,1000
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

import xai  # noqa: E402
from xai import data  # noqa: E402
from xai.evaluation.sanity import spearman_per_image  # noqa: E402
from xai.train import default_model  # noqa: E402


def relative_error(maps, reference, centred=False):
    flat = lambda a: a.reshape(len(a), -1).astype(np.float64)  # noqa: E731
    a, b = flat(maps), flat(reference)
    if centred:
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--counts", default="250,500,1000")
    parser.add_argument("--reference", type=int, default=8000)
    parser.add_argument("--out", default="benchmarks/results/rise-antithetic.json")
    args = parser.parse_args()

    model = default_model()
    batch = next(iter(data.offline(n_images=args.images, split="test").batch(args.images)))
    x, t = batch["image"].numpy(), batch["label"].numpy()

    def maps(n, antithetic, seed):
        return xai.create_explainer("rise", model, n_masks=n, antithetic=antithetic, seed=seed).explain(x, t)

    reference = 0.5 * (maps(args.reference, False, 99) + maps(args.reference, True, 98))
    rows = []
    for n in (int(c) for c in args.counts.split(",")):
        for antithetic in (False, True):
            first, second = maps(n, antithetic, 1), maps(n, antithetic, 2)
            row = {"masks": n, "antithetic": antithetic,
                   "l2_error": float(np.median(relative_error(first, reference))),
                   "centred_error": float(np.median(relative_error(first, reference, centred=True))),
                   "spearman_to_reference": float(np.nanmean(spearman_per_image(first, reference))),
                   "spearman_between_seeds": float(np.nanmean(spearman_per_image(first, second)))}
            rows.append(row)
            print(" ".join(f"{k}={v:.3f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                  flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"images": args.images, "reference_masks": 2 * args.reference,
                                          "rows": rows}, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
