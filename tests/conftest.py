import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import xai  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model():
    """Reduced-width VGG16-GAP at 64x64 (2x2 feature grid), random He weights."""
    keras.utils.set_random_seed(1)
    return xai.vgg16_gap((64, 64, 3), num_classes=2, width=0.125)


@pytest.fixture(scope="session")
def images():
    return np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32)


@pytest.fixture(scope="session")
def nested_model(tiny_model):
    """The same layers as tiny_model, built the tutorial way: a conv-base Model nested in a Sequential."""
    base_out = tiny_model.get_layer("block5_pool").output
    base = keras.Model(tiny_model.inputs, base_out, name="vgg16")
    nested = keras.Sequential([keras.Input((64, 64, 3)), base, tiny_model.get_layer("gap"),
                               tiny_model.get_layer("predictions")])
    return nested


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """A private model cache for the session, so tests never reuse a model trained elsewhere."""
    path = tmp_path_factory.mktemp("xai-cache")
    os.environ["XAI_CACHE_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def trained_default(cache_dir):
    """Train the offline default model once (the README's recipe) and report on it."""
    import time

    from xai import data
    from xai.train import DefaultModelConfig, default_model, default_model_path, evaluate_accuracy

    start = time.perf_counter()
    model = default_model(DefaultModelConfig(), verbose=0)
    seconds = time.perf_counter() - start
    accuracy = evaluate_accuracy(model, data.offline(500, 64, split="test"))
    return {"model": model, "seconds": seconds, "accuracy": accuracy,
            "path": default_model_path(DefaultModelConfig())}


@pytest.fixture(scope="session")
def model_file(tmp_path_factory):
    """A small VGG16-GAP saved as a .keras file: runs on it need no trained default model."""
    keras.utils.set_random_seed(3)
    path = tmp_path_factory.mktemp("model") / "tiny.keras"
    xai.models.save_model(xai.vgg16_gap((64, 64, 3), num_classes=2, width=0.125), path)
    return path
