"""Peak resident memory against the number of images: it must not grow.

Each measurement runs in a fresh Python process (peak RSS is per process), so the figures
are comparable:

- ``metrics``: deletion and insertion (RISE protocol) streamed over N offline images in
  chunks, with CAM maps, as `xai compare` does;
- ``compare``: the whole ``xai compare`` command (every stage: data, explainers, metrics,
  store, report) with cheap methods, so the data volume dominates.

    .venv/bin/python benchmarks/memory.py metrics 100 1000
    .venv/bin/python benchmarks/memory.py compare 100 2000
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CHILD_METRICS = r"""
import os, resource, sys, numpy as np, keras, xai
from xai import data, evaluation as ev
n, chunk = int(sys.argv[1]), 50
keras.utils.set_random_seed(0)
model = xai.vgg16_gap((64, 64, 3), width=0.25)
cam = xai.create_explainer("cam", model)
scorer = ev.ModelScorer(model)
aucs = []
for batch in data.offline(n, 64, split="test").batch(chunk).prefetch(2):
    images, targets = batch["image"].numpy(), batch["label"].numpy()
    maps = cam.explain(images, targets)
    for mode in ("deletion", "insertion"):
        aucs.append(ev.causal_curves(mode, scorer, images, targets, maps, protocol="rise",
                                     batch_size=256).auc)
print(len(np.concatenate(aucs)) // 2, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def measure_metrics(n: int) -> dict:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", CHILD_METRICS, str(n)], check=True,
                         capture_output=True, text=True).stdout.split()
    return {"images": int(out[-2]), "peak_rss_mib": int(out[-1]) / 1024,
            "seconds": time.perf_counter() - start}


def measure_compare(n: int) -> dict:
    """Peak RSS of `xai compare` (the child's own maximum, from the kernel)."""
    xai = str(Path(sys.executable).with_name("xai"))
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        subprocess.run([xai, "compare", "--methods", "cam,vanilla_gradient,random", "--n-images", str(n),
                        "--batch-size", "32", "--metrics", "deletion,insertion,pointing_game,relevance_mass", "--protocol", "rise",
                        "--out", out, "--quiet"], check=True, capture_output=True)
        peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    # ru_maxrss of children is the largest child so far: run each size in its own process.
    return {"images": n, "peak_rss_mib": peak / 1024, "seconds": time.perf_counter() - start,
            "note": None if peak > before else "not above an earlier child's peak"}


def main():
    what, sizes = sys.argv[1], [int(a) for a in sys.argv[2:]] or [100, 1000]
    fn = {"metrics": measure_metrics, "compare": measure_compare}[what]
    results = []
    for n in sizes:
        # A fresh interpreter per size, so that RUSAGE_CHILDREN holds this size's peak only.
        if what == "compare" and len(sizes) > 1:
            line = subprocess.run([sys.executable, __file__, what, str(n)], check=True,
                                  capture_output=True, text=True).stdout.strip().splitlines()[-1]
            results.append(json.loads(line))
        else:
            results.append(fn(n))
    for r in results:
        print(json.dumps(r))


if __name__ == "__main__":
    main()
