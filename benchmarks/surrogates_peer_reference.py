"""Xplique's Lime and KernelShap maps for tests/test_methods_surrogates.py to compare against.

Run with the benchmark environment (./benchmarks/setup.sh):

    .venv-bench/bin/python benchmarks/surrogates_peer_reference.py

It saves a tiny seeded model (two convolutions, global average pooling, Dense softmax at
32x32x3, 3 classes) as tests/fixtures/surrogates_model.keras, and in
tests/fixtures/surrogates_peers.npz: three 32x32 crops of scikit-image's sample photos,
their targets, their SLIC-zero superpixels (the call `xai.plugins._coalitions` makes, here
written out so the fixture does not depend on the plugin), Xplique 2.0.2's Lime and
KernelShap maps on those superpixels (given through ``map_to_interpret_space``) from two
differently seeded runs each, and the exact Shapley values of the superpixels, enumerated
over all 2^m coalitions.

Conventions shared with our plugins: the class probability (Xplique's default operator on
a softmax model), switched-off superpixels grey 0.5 (Xplique's default ``ref_value`` and our
``baseline="grey"`` on [0, 1] images). Lime is given our kernel (cosine distance of the
indicators to all-ones, ``exp(-d^2 / 0.25^2)``) and ``Ridge(alpha=1)``, so both estimate the
same fit; KernelShap runs as Xplique ships it (unconstrained, free intercept). Xplique's
sampling uses TensorFlow's global generator, seeded once here so the fixture can be rebuilt,
but no seed of ours reproduces it: the tests compare statistically, the two runs giving
Xplique's own Monte Carlo spread.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
SIZE, CLASSES, N_SEGMENTS, N_SAMPLES, KERNEL_WIDTH, ALPHA = 32, 3, 12, 20000, 0.25, 1.0


def tiny_model() -> keras.Model:
    rng = np.random.default_rng(0)
    model = keras.Sequential([
        keras.Input((SIZE, SIZE, 3)),
        keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
        keras.layers.Conv2D(8, 3, strides=2, padding="same", activation="relu", name="conv2"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(CLASSES, activation="softmax", name="predictions"),
    ], name="surrogates_tiny")
    model.get_layer("conv1").set_weights([rng.normal(0, 0.5, (3, 3, 3, 8)).astype(np.float32),
                                          rng.normal(0, 0.1, 8).astype(np.float32)])
    model.get_layer("conv2").set_weights([rng.normal(0, 0.3, (3, 3, 8, 8)).astype(np.float32),
                                          rng.normal(0, 0.1, 8).astype(np.float32)])
    model.get_layer("predictions").set_weights([rng.normal(0, 3.0, (8, CLASSES)).astype(np.float32),
                                                np.zeros(CLASSES, np.float32)])
    return model


def photos() -> np.ndarray:
    from skimage import data
    from skimage.transform import resize

    crops = [data.astronaut()[30:250, 130:350], data.chelsea()[:300, 100:400], data.coffee()[50:350, 150:450]]
    return np.stack([resize(c, (SIZE, SIZE), anti_aliasing=True) for c in crops]).astype(np.float32)


def superpixels(image: np.ndarray) -> np.ndarray:
    """`xai.plugins._coalitions.CoalitionExplainer.segment`'s SLIC call, written out."""
    from skimage.segmentation import slic

    raw = slic(image.astype(np.float64), n_segments=N_SEGMENTS, slic_zero=True, start_label=0, channel_axis=-1)
    return np.unique(raw, return_inverse=True)[1].reshape(raw.shape).astype(np.int32)


def cosine_kernel(original_input, interpret_samples, perturbed_samples):
    z = tf.cast(interpret_samples, tf.float32)
    kept = tf.reduce_sum(z, axis=1) / tf.cast(tf.shape(z)[1], tf.float32)
    return tf.exp(-tf.square(1.0 - tf.sqrt(kept)) / KERNEL_WIDTH ** 2)


def exact_shapley(model, image, labels, target) -> np.ndarray:
    """Shapley values of the m superpixels for the target's probability, every coalition
    scored: phi_j = sum_S |S|! (m - |S| - 1)! / m! (f(S + j) - f(S))."""
    from math import factorial

    m = labels.max() + 1
    codes = np.arange(2 ** m)
    z = ((codes[:, None] >> np.arange(m)[None, :]) & 1).astype(np.float32)
    keep = z[:, labels][..., None]
    scores = model.predict(0.5 + keep * (image[None] - 0.5), batch_size=4096, verbose=0)[:, target]
    sizes = z.sum(axis=1).astype(int)
    phi = np.zeros(m)
    for j in range(m):
        without = codes[(codes >> j) & 1 == 0]
        s = sizes[without]
        weight = np.array([factorial(k) * factorial(m - k - 1) / factorial(m) for k in range(m)])[s]
        phi[j] = np.sum(weight * (scores[without | (1 << j)] - scores[without]))
    return phi


def main() -> None:
    import xplique
    from sklearn.linear_model import Ridge
    from xplique.attributions import KernelShap, Lime

    FIXTURES.mkdir(parents=True, exist_ok=True)
    model = tiny_model()
    model.save(FIXTURES / "surrogates_model.keras")
    images = photos()
    targets = model.predict(images, verbose=0).argmax(axis=1).astype(np.int32)
    labels = np.stack([superpixels(image) for image in images])
    grey = np.full(3, 0.5, np.float32)
    maps = {f"{name}{run}": [] for name in ("lime", "kernel_shap") for run in (0, 1)}
    shapley = []
    # Once: Xplique's samplers are tf.functions whose random ops take their seeds when traced
    # (a new Lime traces anew, KernelShap's is shared), so re-seeding, or a new explainer per
    # run, repeats the same coalitions; the two runs of one explainer draw different ones.
    tf.random.set_seed(0)
    for i, (image, segments, target) in enumerate(zip(images, labels, targets)):
        onehot = np.eye(CLASSES, dtype=np.float32)[[target]]
        mapping = lambda inp, s=segments: tf.constant(s)  # noqa: E731 - this image's superpixels
        lime = Lime(model, batch_size=4096, interpretable_model=Ridge(alpha=ALPHA), similarity_kernel=cosine_kernel,
                    map_to_interpret_space=mapping, ref_value=grey, nb_samples=N_SAMPLES)
        shap = KernelShap(model, batch_size=4096, map_to_interpret_space=mapping, nb_samples=N_SAMPLES, ref_value=grey)
        for run in (0, 1):
            maps[f"lime{run}"].append(np.asarray(lime.explain(image[None], onehot))[0, ..., 0])
            maps[f"kernel_shap{run}"].append(np.asarray(shap.explain(image[None], onehot))[0, ..., 0])
        shapley.append(exact_shapley(model, image, segments, target)[segments])
    np.savez_compressed(FIXTURES / "surrogates_peers.npz", images=images, targets=targets, segments=labels,
                        shapley=np.stack(shapley).astype(np.float32), n_samples=N_SAMPLES, n_segments=N_SEGMENTS,
                        kernel_width=KERNEL_WIDTH, alpha=ALPHA, xplique_version=xplique.__version__,
                        **{key: np.stack(value).astype(np.float32) for key, value in maps.items()})
    print("xplique", xplique.__version__, "segments", [int(s.max()) + 1 for s in labels], "wrote",
          FIXTURES / "surrogates_peers.npz")


if __name__ == "__main__":
    main()
