"""Write Xplique's MuFidelity values for tests/test_metric_mufidelity.py to compare against.

Run with the benchmark environment (./benchmarks/setup.sh):

    .venv-bench/bin/python benchmarks/xplique_mufidelity_reference.py

It saves a tiny seeded model (Conv2D, global average pooling, Dense softmax at 16x16x3) as
tests/fixtures/mufidelity_model.keras, and eight seeded images, targets and maps with
Xplique 2.0.2's per-image MuFidelity (1000 subsets) in tests/fixtures/xplique_mufidelity.npz.

Xplique returns the mean over the images it is given, so each image gets its own
`MuFidelity` (one image, its own masks). Its masks come from TensorFlow's global generator,
seeded here per image so the fixture can be rebuilt.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SIZE, CLASSES, N_IMAGES = 16, 3, 8
SETTINGS = {"nb_samples": 1000, "grid_size": 9, "subset_percent": 0.2, "baseline_mode": 0.0,
            "batch_size": 64}


def tiny_model() -> keras.Model:
    """Keras 3 (Xplique's ``tf.keras`` is Keras 3 under TF 2.21), weights from a seeded rng."""
    rng = np.random.default_rng(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(6, 3, padding="same", activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(CLASSES, activation="softmax", name="predictions"),
    ], name="mufidelity_tiny")
    model.get_layer("conv").set_weights([rng.normal(0, 0.5, (3, 3, 3, 6)).astype(np.float32),
                                         rng.normal(0, 0.1, 6).astype(np.float32)])
    model.get_layer("predictions").set_weights([rng.normal(0, 2.0, (6, CLASSES)).astype(np.float32),
                                                np.zeros(CLASSES, np.float32)])
    return model


def inputs(model: keras.Model):
    """Images, targets and maps with a spread of correlations: gradient x input (0-3), its
    negative (4-5) and noise (6-7)."""
    rng = np.random.default_rng(1)
    images = rng.random((N_IMAGES, SIZE, SIZE, 3), dtype=np.float32)
    targets = rng.integers(0, CLASSES, N_IMAGES).astype(np.int32)
    x = tf.constant(images)
    with tf.GradientTape() as tape:
        tape.watch(x)
        score = tf.reduce_sum(model(x) * tf.one_hot(targets, CLASSES), axis=-1)
    grad_x_input = (tape.gradient(score, x) * x).numpy().sum(-1)
    maps = np.concatenate([grad_x_input[:4], -grad_x_input[4:6],
                           rng.normal(size=(2, SIZE, SIZE)).astype(np.float32)]).astype(np.float32)
    return images, targets, maps


def xplique_values(model, images, targets, maps) -> np.ndarray:
    from xplique.metrics import MuFidelity

    onehot = tf.one_hot(targets, CLASSES).numpy()
    values = []
    for i in range(len(images)):
        tf.random.set_seed(1000 + i)
        metric = MuFidelity(model, images[i:i + 1], onehot[i:i + 1], **SETTINGS)
        values.append(metric.evaluate(maps[i:i + 1]))
    return np.array(values, np.float64)


def main() -> None:
    import xplique

    FIXTURES.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    images, targets, maps = inputs(model)
    values = xplique_values(model, images, targets, maps)
    model_path = FIXTURES / "mufidelity_model.keras"
    model.save(model_path)
    np.savez_compressed(
        FIXTURES / "xplique_mufidelity.npz", images=images, targets=targets, maps=maps, values=values,
        outputs=model.predict(images, verbose=0), xplique_version=xplique.__version__,
        tensorflow_version=tf.__version__, keras_version=keras.__version__,
        **{key: np.asarray(value) for key, value in SETTINGS.items()})
    print(f"Xplique {xplique.__version__} MuFidelity per image: {np.round(values, 3).tolist()}")
    print(f"wrote {model_path} ({model_path.stat().st_size} bytes) and xplique_mufidelity.npz")


if __name__ == "__main__":
    main()
