"""Xplique's Gradient * Input, Guided Backprop, DeconvNet, SquareGrad and VarGrad maps, for
tests/test_methods_gradients.py to match without Xplique installed.

    .venv-bench/bin/python benchmarks/gradients_peer_reference.py

Writes ``tests/fixtures/gradients_peers.npz``: two 64x64 images (each spans exactly
[0, 1], so Xplique's absolute noise ``0.2`` is our ``noise_level=0.2``), their targets,
the tiny model's probabilities on them (the test's guard that it rebuilt the same
model: tests/conftest.py's ``tiny_model``, rebuilt here with the same seed) and
Xplique's maps with its default channel reduction (``reducer="mean"``), each (2, 64, 64):

- ``*_probability``: Xplique on the model itself, which differentiates the model's
  output times the one-hot target: on this softmax model, the probability;
- ``*_logit``: Xplique on a copy of the model ending at the pre-softmax logits (its
  recommended use);
- ``square_grad_{a,b}``, ``var_grad_{a,b}``: on the logits, ``STATISTIC_SAMPLES`` noisy
  copies each, two independent runs (TensorFlow's global generator, which cannot be
  reproduced elsewhere): their difference is the Monte Carlo error the test allows.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import xplique  # noqa: E402
from xplique.attributions import DeconvNet, GradientInput, GuidedBackprop, SquareGrad, VarGrad  # noqa: E402

import xai  # noqa: E402

FIXTURE = Path(__file__).resolve().parents[1] / "tests" / "fixtures" / "gradients_peers.npz"
STATISTIC_SAMPLES = 256
NOISE = 0.2


def tiny_model():
    """tests/conftest.py's ``tiny_model``, built the same way."""
    keras.utils.set_random_seed(1)
    return xai.vgg16_gap((64, 64, 3), num_classes=2, width=0.125)


def logits_model(model):
    """The same layers up to the pre-softmax logits of the final Dense layer."""
    dense = model.get_layer("predictions")
    logits = keras.layers.Dense(dense.units, name="logits")
    out = logits(model.get_layer("predictions").input)
    logits.set_weights(dense.get_weights())
    return keras.Model(model.inputs, out)


def reference_images() -> np.ndarray:
    images = np.random.default_rng(5).random((2, 64, 64, 3), dtype=np.float32)
    images[:, 0, 0, 0], images[:, 0, 1, 0] = 0.0, 1.0
    return images


def main() -> None:
    model = tiny_model()
    images = reference_images()
    targets = np.array([0, 1], np.int32)
    onehot = np.eye(2, dtype=np.float32)[targets]
    values = {"images": images, "targets": targets, "probabilities": model.predict(images, verbose=0),
              "statistic_samples": STATISTIC_SAMPLES, "noise": NOISE, "xplique_version": xplique.__version__}
    for score, peer_model in (("probability", model), ("logit", logits_model(model))):
        for name, cls in (("gradient_input", GradientInput), ("guided_backprop", GuidedBackprop),
                          ("deconvnet", DeconvNet)):
            values[f"{name}_{score}"] = np.asarray(cls(peer_model)(images, onehot))[..., 0]
    tf.random.set_seed(0)
    peer_model = logits_model(model)
    for run in ("a", "b"):
        for name, cls in (("square_grad", SquareGrad), ("var_grad", VarGrad)):
            explainer = cls(peer_model, nb_samples=STATISTIC_SAMPLES, noise=NOISE, batch_size=64)
            values[f"{name}_{run}"] = np.asarray(explainer(images, onehot))[..., 0]
    np.savez(FIXTURE, **values)
    print("xplique", xplique.__version__, "wrote", FIXTURE, f"({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
