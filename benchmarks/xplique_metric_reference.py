"""Reference values of Xplique's complexity and stability metrics, for our tests to match.

    .venv-bench/bin/python benchmarks/xplique_metric_reference.py

Writes two fixtures, which the tests read without Xplique installed:

- ``tests/fixtures/xplique_complexity.npz``: fixed maps (3-D, 4-D with signed channels, a
  one-pixel, a uniform, an all-zero and a very faint map) and Xplique's per-image
  ``Sparseness`` and ``Complexity`` (``detailed_evaluate``);
- ``tests/fixtures/xplique_stability.npz``: four 8x8x3 images and Xplique's
  ``AverageStability`` of each (one metric per image, so the value is per image) for a
  model-free, deterministic explainer, ``map = mean over channels of image ** 2``. Its
  noise cannot be reproduced (TensorFlow's global generator), so the test compares
  statistically, with many samples; the squares make the value depend on the direction
  of the noise, so the comparison checks Xplique's one-sided sampling too.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import xplique  # noqa: E402
from xplique.metrics import AverageStability, Complexity, Sparseness  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
STABILITY_SAMPLES = 2000
RADIUS = 0.1


def reference_maps() -> tuple[np.ndarray, np.ndarray]:
    """(6, 16, 16) and (3, 12, 12, 3) float32 maps covering the cases that matter."""
    rng = np.random.default_rng(0)
    maps3 = np.zeros((6, 16, 16), np.float32)
    maps3[0] = rng.normal(size=(16, 16))
    maps3[1] = rng.normal(size=(16, 16)) * (rng.random((16, 16)) < 0.1)  # sparse
    maps3[2, 3, 5] = 2.5  # one pixel
    maps3[3] = -0.7  # uniform
    # maps3[4] stays all zero
    maps3[5] = rng.random((16, 16)) * 1e-9  # mass below Xplique's eps: not scale free
    maps4 = rng.normal(size=(3, 12, 12, 3)).astype(np.float32)  # signed: |.| before the mean matters
    maps4[1] *= rng.random((12, 12, 1)) < 0.2
    return maps3, maps4


def squared_image(inputs, targets):
    return np.mean(np.asarray(inputs, np.float64) ** 2, axis=-1)


def main() -> None:
    maps3, maps4 = reference_maps()
    values = {f"{name}{rank}": metric.detailed_evaluate(maps)
              for name, metric in (("sparseness", Sparseness()), ("complexity", Complexity()))
              for rank, maps in (("3", maps3), ("4", maps4))}
    np.savez(FIXTURES / "xplique_complexity.npz", maps3=maps3, maps4=maps4, **values,
             xplique_version=xplique.__version__)

    tf.random.set_seed(0)
    rng = np.random.default_rng(1)
    images = rng.random((4, 8, 8, 3), dtype=np.float32)
    images[3] = 0.0  # at the bottom of the range: only the noise moves the map
    targets = np.eye(2, dtype=np.float32)[[0, 1, 0, 1]]
    values = {}
    for distance in ("l2", "l1"):
        values[distance] = np.array([
            AverageStability(None, images[i:i + 1], targets[i:i + 1], radius=RADIUS, distance=distance,
                             nb_samples=STABILITY_SAMPLES)(squared_image)
            for i in range(len(images))])
    np.savez(FIXTURES / "xplique_stability.npz", images=images, targets=targets.argmax(axis=1),
             radius=RADIUS, n_samples=STABILITY_SAMPLES, l2=values["l2"], l1=values["l1"],
             xplique_version=xplique.__version__)
    print("xplique", xplique.__version__, "wrote", FIXTURES / "xplique_complexity.npz", "and",
          FIXTURES / "xplique_stability.npz")


if __name__ == "__main__":
    main()
