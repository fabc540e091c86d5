"""Xplique's FEM and tf-keras-vis' Layercam maps, for tests/test_methods_cams.py to match.

Run with the benchmark environment (./benchmarks/setup.sh):

    .venv-bench/bin/python benchmarks/cams_peer_reference.py

Writes ``tests/fixtures/cams_peers.npz``, which the tests read without the peers installed:

- the digest of the weights of the tests' ``tiny_model`` (VGG16-GAP, 64x64, width 0.125,
  seed 1, rebuilt here the same way), so a test compares against the model the maps came
  from, and four seeded images with their targets;
- Xplique 2.0.2 ``FEM`` maps at ``block5_conv3`` (its default layer, 4x4 grid, k=2) and at
  ``block4_conv3`` (8x8 grid, k=1), upsampled bicubically as Xplique does;
- the weights of a one-convolution model whose first channel is constant, and Xplique's
  FEM map on it: Xplique's ``>=`` threshold counts a constant channel everywhere, the
  authors' ``>`` never;
- tf-keras-vis 0.8.7 ``Layercam`` maps at ``block5_conv3`` and ``block4_conv3`` with the
  logit (``ReplaceToLinear``): at the feature grid (``expand_cam=False``), upsampled
  (``scipy.ndimage.zoom(order=1)``), both unnormalised, and upsampled with its default
  min-max normalisation.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import xai  # noqa: E402

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "fixtures"
TARGETS = np.array([0, 1, 1, 0], np.int32)
FEM_CASES = {"block5_conv3": 2.0, "block4_conv3": 1.0}  # layer -> k
LAYERCAM_LAYERS = ("block5_conv3", "block4_conv3")
TIE_SIZE, TIE_CONSTANT, TIE_K = 8, 0.75, 1.0


def tiny_model() -> keras.Model:
    """tests/conftest.py's ``tiny_model``, built the same way."""
    keras.utils.set_random_seed(1)
    return xai.vgg16_gap((64, 64, 3), num_classes=2, width=0.125)


def weights_digest(model: keras.Model) -> str:
    h = hashlib.sha256()
    for weight in model.get_weights():
        h.update(np.ascontiguousarray(weight, np.float32).tobytes())
    return h.hexdigest()


def tie_weights() -> list:
    """Conv2D(4, 3) whose channel 0 is the constant ``TIE_CONSTANT`` (zero kernel, bias),
    then global pooling and a 2-class Dense layer."""
    rng = np.random.default_rng(2)
    kernel = rng.normal(0, 0.5, (3, 3, 3, 4)).astype(np.float32)
    bias = rng.normal(0, 0.1, 4).astype(np.float32)
    kernel[..., 0], bias[0] = 0.0, TIE_CONSTANT
    return [kernel, bias, rng.normal(0, 1, (4, 2)).astype(np.float32), np.zeros(2, np.float32)]


def tie_model(weights) -> keras.Model:
    model = keras.Sequential([
        keras.Input((TIE_SIZE, TIE_SIZE, 3)),
        keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="conv"),
        keras.layers.GlobalAveragePooling2D(name="gap"),
        keras.layers.Dense(2, activation="softmax", name="predictions"),
    ], name="fem_tie")
    model.set_weights(weights)
    return model


def main() -> None:
    import tf_keras_vis
    import xplique
    from tf_keras_vis.layercam import Layercam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore
    from xplique.attributions import FEM

    model = tiny_model()
    images = np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32)
    out = {"tiny_digest": weights_digest(model), "images": images, "targets": TARGETS,
           "xplique_version": xplique.__version__, "tf_keras_vis_version": tf_keras_vis.__version__,
           "tensorflow_version": tf.__version__, "keras_version": keras.__version__}

    assert FEM(model).conv_layer.name == "block5_conv3"  # its default: the last layer with filters
    for layer, k in FEM_CASES.items():
        maps = FEM(model, conv_layer=layer, k=k).explain(images)
        out[f"fem_{layer}"] = np.asarray(maps)[..., 0]

    weights = tie_weights()
    tie_images = np.random.default_rng(3).random((2, TIE_SIZE, TIE_SIZE, 3), dtype=np.float32)
    out.update({f"tie_w{i}": w for i, w in enumerate(weights)}, tie_images=tie_images)
    out["fem_tie"] = np.asarray(FEM(tie_model(weights), conv_layer="conv", k=TIE_K).explain(tie_images))[..., 0]

    layercam = Layercam(model, model_modifier=ReplaceToLinear(), clone=True)
    score = CategoricalScore(TARGETS.tolist())
    for layer in LAYERCAM_LAYERS:
        common = dict(penultimate_layer=layer, seek_penultimate_conv_layer=False)
        out[f"layercam_grid_{layer}"] = np.asarray(layercam(score, images, expand_cam=False,
                                                            normalize_cam=False, **common))
        out[f"layercam_{layer}"] = np.asarray(layercam(score, images, normalize_cam=False, **common))
        out[f"layercam_normalized_{layer}"] = np.asarray(layercam(score, images, **common))
    assert model.get_layer("predictions").activation is keras.activations.softmax  # the clone was modified

    path = FIXTURES / "cams_peers.npz"
    np.savez_compressed(path, **out)
    print(f"Xplique {xplique.__version__}, tf-keras-vis {tf_keras_vis.__version__}: wrote {path} "
          f"({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
