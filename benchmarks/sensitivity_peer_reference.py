"""Xplique's Sobol and HSIC values for tests/test_methods_sensitivity.py to compare against.

Run with the benchmark environment (./benchmarks/setup.sh):

    .venv-bench/bin/python benchmarks/sensitivity_peer_reference.py

Writes, for tests that run without Xplique installed:

- ``tests/fixtures/sensitivity_model.keras``: a tiny seeded classifier (two convolutions,
  global average pooling, Dense softmax over 3 classes at 32x32x3);
- ``tests/fixtures/sensitivity_peers.npz``:

  - ``jansen_*``: Xplique 2.0.2's ``JansenEstimator`` on fixed synthetic designs (Saltelli's
    A, B, C_i from seeded uniform numbers) and outputs (a nonlinear function of them), for
    two sizes: an exact comparison of the estimators on the same numbers;
  - ``binary_*``: its ``BinaryEstimator`` (HSIC, Dirac input kernel, RBF output kernel) on
    fixed binary designs and outputs, one case with a negative median output;
  - ``images``, ``targets`` and Xplique's maps of ``SobolAttributionMethod`` and
    ``HsicAttributionMethod`` at their defaults (grid 8; 32 and 500 designs; inpainting;
    the unscrambled ``tf.math.sobol_sample`` designs, which the test rebuilds with
    TensorFlow alone; the target's softmax probability; bicubic upsampling).
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SIZE, CLASSES, N_IMAGES = 32, 3, 3
#: (grid_size, nb_design) of the synthetic estimator cases.
JANSEN_CASES = ((2, 8), (3, 16))
BINARY_CASES = ((3, 40, 1.0), (4, 64, -0.5))  # (grid_size, nb_design, offset of the outputs)


def tiny_model() -> keras.Model:
    """Keras 3 (Xplique's ``tf.keras`` is Keras 3 under TF 2.21), weights from a seeded rng."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.MaxPooling2D(2, name="pool"),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(CLASSES, activation="softmax", name="predictions"),
    ], name="sensitivity_tiny")
    model.get_layer("conv1").set_weights([rng.normal(0, 0.5, (3, 3, 3, 6)).astype(np.float32),
                                          rng.normal(0, 0.1, 6).astype(np.float32)])
    model.get_layer("conv2").set_weights([rng.normal(0, 0.2, (3, 3, 6, 8)).astype(np.float32),
                                          rng.normal(0, 0.1, 8).astype(np.float32)])
    model.get_layer("predictions").set_weights([rng.normal(0, 0.7, (8, CLASSES)).astype(np.float32),
                                                np.zeros(CLASSES, np.float32)])
    return model


def images_and_targets():
    """Smooth random images (a coarse grid upsampled) so that regions, not pixels, matter."""
    rng = np.random.default_rng(1)
    coarse = rng.random((N_IMAGES, 4, 4, 3), dtype=np.float32)
    images = tf.image.resize(coarse, (SIZE, SIZE), method="bilinear").numpy().astype(np.float32)
    targets = rng.integers(0, CLASSES, N_IMAGES).astype(np.int32)
    return images, targets


def jansen_cases(rng) -> dict:
    from xplique.attributions.global_sensitivity_analysis import JansenEstimator
    from xplique.attributions.global_sensitivity_analysis.replicated_designs import ReplicatedSampler

    out = {}
    for k, (grid, n) in enumerate(JANSEN_CASES):
        d = grid * grid
        a = rng.random((n, d)).astype(np.float32)
        b = rng.random((n, d)).astype(np.float32)
        c = ReplicatedSampler.build_replicated_design(tf.constant(a), tf.constant(b)).numpy()
        designs = np.concatenate([a, b, c]).astype(np.float32)
        weights = rng.normal(size=d)
        outputs = (np.sin(designs @ weights) + designs[:, 0] * designs[:, -1]).astype(np.float32)
        masks = designs.reshape(-1, grid, grid, 1)
        out[f"jansen_designs{k}"] = designs
        out[f"jansen_outputs{k}"] = outputs
        out[f"jansen_values{k}"] = JansenEstimator()(tf.constant(masks), tf.constant(outputs), n).numpy()[..., 0]
    return out


def binary_cases(rng) -> dict:
    from xplique.attributions.global_sensitivity_analysis import BinaryEstimator

    out = {}
    for k, (grid, n, offset) in enumerate(BINARY_CASES):
        d = grid * grid
        designs = (rng.random((n, d)) < 0.5).astype(np.float32)
        weights = rng.normal(size=d) * (rng.random(d) < 0.7)  # some cells ignored
        outputs = (np.tanh(designs @ weights) + offset + 0.05 * rng.normal(size=n)).astype(np.float32)
        estimator = BinaryEstimator(output_kernel="rbf")
        values = estimator(tf.constant(designs.reshape(n, grid, grid, 1)), tf.constant(outputs), n)
        out[f"binary_designs{k}"] = designs
        out[f"binary_outputs{k}"] = outputs
        out[f"binary_values{k}"] = np.asarray(values)[..., 0]
    return out


def peer_maps(model, images, targets) -> dict:
    from xplique.attributions import HsicAttributionMethod, SobolAttributionMethod

    onehot = tf.one_hot(targets, CLASSES).numpy()
    sobol = SobolAttributionMethod(model, batch_size=256)
    hsic = HsicAttributionMethod(model, batch_size=256)
    return {"sobol_maps": np.asarray(sobol.explain(images, onehot), np.float32),
            "hsic_maps": np.asarray(hsic.explain(images, onehot), np.float32),
            "sobol_grid_size": sobol.grid_size, "sobol_nb_design": sobol.nb_design,
            "hsic_grid_size": hsic.grid_size, "hsic_nb_design": hsic.nb_design}


def main() -> None:
    import xplique

    FIXTURES.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(2)
    model = tiny_model()
    images, targets = images_and_targets()
    values = {**jansen_cases(rng), **binary_cases(rng), **peer_maps(model, images, targets)}
    model_path = FIXTURES / "sensitivity_model.keras"
    model.save(model_path)
    np.savez_compressed(
        FIXTURES / "sensitivity_peers.npz", images=images, targets=targets,
        outputs=model.predict(images, verbose=0), xplique_version=xplique.__version__,
        tensorflow_version=tf.__version__, keras_version=keras.__version__,
        **{key: np.squeeze(np.asarray(value)) for key, value in values.items()})
    for name in ("sobol_maps", "hsic_maps"):
        maps = np.squeeze(values[name])
        print(f"Xplique {xplique.__version__} {name}: shape {maps.shape}, max {maps.max():.4g}")
    print(f"wrote {model_path} ({model_path.stat().st_size} bytes) and sensitivity_peers.npz "
          f"({(FIXTURES / 'sensitivity_peers.npz').stat().st_size} bytes)")


if __name__ == "__main__":
    main()
