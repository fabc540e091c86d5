import keras
import numpy as np
import pytest
import tensorflow as tf

import xai
from xai import models
from xai.errors import ModelError, NotApplicable, ParameterError


def test_full_width_parameter_count_and_layer_names():
    model = xai.vgg16_gap()
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == models.VGG16_CONV_PARAMS + 512 * 2 + 2
    names = [layer.name for layer in model.layers]
    convs = [n for n in names if "_conv" in n]
    assert convs == [f"block{b}_conv{c}" for b, n in enumerate((2, 2, 3, 3, 3), 1) for c in range(1, n + 1)]
    assert names[-2:] == ["gap", "predictions"]
    assert [n for n in names if n.endswith("_pool")] == [f"block{b}_pool" for b in range(1, 6)]
    # Same conv-base shapes as Keras' own VGG16.
    reference = keras.applications.VGG16(include_top=False, weights=None, input_shape=(224, 224, 3))
    for layer in reference.layers:
        if layer.weights:
            assert [w.shape for w in layer.weights] == [w.shape for w in model.get_layer(layer.name).weights]


def test_declared_spec(tiny_model):
    spec = models.model_spec(tiny_model)
    assert (spec.feature_layer, spec.last_conv_layer, spec.classifier_layer) == \
        ("block5_pool", "block5_conv3", "predictions")
    assert spec.input_shape == (64, 64, 3) and spec.num_classes == 2


def test_without_pool5_conv5_3_feeds_the_pooling_at_twice_the_resolution(tiny_model, images):
    """The CAM paper's cut: the same VGG16 layers but block5_pool, so the map CAM reads is
    4x4 at 64x64 (2x2 with pool5) and the computation up to it is the seed model's."""
    keras.utils.set_random_seed(1)
    cut = xai.vgg16_gap((64, 64, 3), num_classes=2, width=0.125, pool5=False)
    names = [layer.name for layer in cut.layers]
    assert "block5_pool" not in names
    assert names == [n for n in (layer.name for layer in tiny_model.layers) if n != "block5_pool"]
    spec = models.model_spec(cut)
    assert (spec.feature_layer, spec.last_conv_layer) == ("block5_conv3", "block5_conv3")
    assert tuple(cut.get_layer("gap").input.shape[1:3]) == (4, 4)
    for layer in cut.layers:  # same weights as the seed's model: only the pooling differs
        if layer.weights:
            layer.set_weights(tiny_model.get_layer(layer.name).get_weights())
    conv = keras.Model(tiny_model.inputs[0], tiny_model.get_layer("block5_conv3").output)(images).numpy()
    dense = tiny_model.get_layer("predictions")
    logits = conv.mean(axis=(1, 2)) @ dense.kernel.numpy() + dense.bias.numpy()
    np.testing.assert_allclose(cut(images).numpy(), tf.nn.softmax(logits).numpy(), rtol=1e-4, atol=1e-6)
    # CAM on it is the 4x4 class map, upsampled.
    by_hand = np.einsum("nhwk,k->nhw", conv, dense.kernel.numpy()[:, 1])
    cam = xai.create_explainer("cam", cut, interpolation="nearest").explain(images, [1] * len(images))
    np.testing.assert_allclose(cam[:, ::16, ::16], by_hand, rtol=1e-4, atol=1e-5 * np.abs(by_hand).max())


def test_centred_input_is_the_same_model_fed_2x_minus_1(tiny_model, images):
    centred = xai.vgg16_gap((64, 64, 3), num_classes=2, width=0.125, centre_input=True)
    assert centred.layers[1].name == "centre" and models.model_spec(centred).input_range == (0.0, 1.0)
    for layer in centred.layers:
        if layer.weights:
            layer.set_weights(tiny_model.get_layer(layer.name).get_weights())
    np.testing.assert_allclose(centred(images).numpy(), tiny_model(2 * images - 1).numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="centre_input"):
        xai.vgg16_gap((32, 32, 3), weights="imagenet", centre_input=True)


def test_width_scales_filters_not_topology(tiny_model):
    assert tiny_model.get_layer("block1_conv1").filters == 8
    assert tiny_model.get_layer("block5_conv3").filters == 64
    assert len(tiny_model.layers) == len(xai.vgg16_gap((64, 64, 3)).layers)


def test_nested_model_is_flattened_and_layers_derived(nested_model, tiny_model, images):
    flat = models.prepare_model(nested_model)
    assert not any(isinstance(layer, keras.Model) for layer in flat.layers)
    spec = models.model_spec(flat)
    assert (spec.feature_layer, spec.last_conv_layer, spec.classifier_layer) == \
        ("block5_pool", "block5_conv3", "predictions")
    np.testing.assert_allclose(flat(images), nested_model(images), rtol=1e-6)


def test_keras_vgg16_nested_in_sequential_derives_layers():
    base = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    model = keras.Sequential([keras.Input((32, 32, 3)), base, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(3, activation="softmax")])
    spec = models.model_spec(models.prepare_model(model))
    assert spec.feature_layer == "block5_pool" and spec.last_conv_layer == "block5_conv3"
    assert spec.num_classes == 3


def test_model_without_gap_gets_clear_cam_error():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.Flatten()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(x))
    spec = models.model_spec(models.prepare_model(model))
    # Without global pooling the CAM family reads the last 4-D output; CAM itself does not apply.
    assert spec.feature_layer == "conv" and spec.classifier_layer is not None and not spec.linear_head
    with pytest.raises(NotApplicable, match="no global average pooling"):
        xai.create_explainer("cam", model)
    # Gradient methods still work: they need no layer.
    maps = xai.create_explainer("vanilla_gradient", model).explain(np.zeros((1, 32, 32, 3), np.float32), [1])
    assert maps.shape == (1, 32, 32)


def test_user_can_name_layers():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="my_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="head")(x))
    spec = models.derive_spec(model, last_conv_layer="my_conv")
    assert spec.last_conv_layer == "my_conv" and spec.classifier_layer == "head"
    with pytest.raises(ModelError, match="not a layer"):
        models.derive_spec(model, feature_layer="nope")


def test_save_load_round_trip_identical_outputs(tiny_model, images, tmp_path):
    path = models.save_model(tiny_model, tmp_path / "m.keras")
    loaded = models.load_model(path)
    np.testing.assert_array_equal(loaded(images).numpy(), tiny_model(images).numpy())
    assert models.model_spec(loaded) == models.model_spec(tiny_model)


def test_load_refuses_code_in_model_file(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Lambda(lambda t: t * 2)(inputs))
    model.save(tmp_path / "lambda.keras")
    with pytest.raises(ModelError, match="could not load"):
        models.load_model(tmp_path / "lambda.keras")


def test_imagenet_weights_copied_into_conv_base(monkeypatch):
    keras.utils.set_random_seed(3)
    source = keras.applications.VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    calls = {}

    def fake_vgg16(include_top, weights, input_shape):
        calls.update(include_top=include_top, weights=weights, input_shape=input_shape)
        return source

    monkeypatch.setattr(keras.applications, "VGG16", fake_vgg16)
    model = xai.vgg16_gap((32, 32, 3), weights="imagenet")
    assert calls == {"include_top": False, "weights": "imagenet", "input_shape": (32, 32, 3)}
    np.testing.assert_array_equal(model.get_layer("block3_conv2").kernel.numpy(),
                                  source.get_layer("block3_conv2").kernel.numpy())
    assert models.model_spec(model).preprocessing == "caffe"
    # [0, 1] images are mapped to Caffe-style input inside the model.
    pre = model.get_layer("preprocess")(np.ones((1, 2, 2, 3), np.float32)).numpy()
    np.testing.assert_allclose(pre[0, 0, 0], [255 - 103.939, 255 - 116.779, 255 - 123.68], rtol=1e-6)


def test_imagenet_download_failure_is_clear(monkeypatch):
    def offline(**kwargs):
        raise OSError("URL fetch failure: no network")

    monkeypatch.setattr(keras.applications, "VGG16", offline)
    with pytest.raises(ModelError, match="weights=None"):
        xai.vgg16_gap((32, 32, 3), weights="imagenet")


@pytest.mark.parametrize("kwargs, match", [
    ({"input_shape": (16, 16, 3)}, "at least 32x32"),
    ({"num_classes": 1}, "num_classes"),
    ({"width": 0}, "width"),
    ({"weights": "imagenet", "width": 0.5}, "width=1.0"),
])
def test_builder_validates(kwargs, match):
    with pytest.raises(ValueError, match=match):
        xai.vgg16_gap(**kwargs)


def test_fold_batch_norm_gives_the_plain_architecture_with_the_same_outputs():
    """The default is trained with batch normalisation and shipped without it: folding each
    BatchNormalization's inference transform into its convolution changes no output."""
    from xai.models import fold_batch_norm

    keras.utils.set_random_seed(1)
    trained = xai.vgg16_gap((32, 32, 3), 2, width=0.125, pool5=False, centre_input=True, batch_norm=True)
    rng = np.random.default_rng(0)
    for layer in trained.layers:  # statistics far from the identity, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 2, shape), rng.normal(0, 0.3, shape),
                               rng.normal(0, 0.3, shape), rng.uniform(0.2, 3, shape)])
    plain = fold_batch_norm(trained, xai.vgg16_gap((32, 32, 3), 2, width=0.125, pool5=False, centre_input=True))
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in plain.layers)
    assert xai.models.model_spec(plain).feature_layer == "block5_conv3"
    assert xai.models.model_spec(trained).feature_layer == "block5_relu3"
    x = rng.random((4, 32, 32, 3)).astype("float32")
    def logits(model):  # the pooled features through the Dense layer, before its softmax
        kernel, bias = model.get_layer("predictions").get_weights()
        return keras.Model(model.inputs, model.get_layer("predictions").input)(x).numpy() @ kernel + bias

    np.testing.assert_allclose(logits(plain), logits(trained), rtol=1e-4, atol=1e-4 * np.abs(logits(trained)).max())
    with pytest.raises(ParameterError, match="batch_norm"):
        xai.vgg16_gap(weights="imagenet", batch_norm=True)


def test_train_stops_at_the_first_epoch_that_reaches_the_target_accuracy():
    from xai import data
    from xai.train import train

    keras.utils.set_random_seed(2)
    model = xai.vgg16_gap((32, 32, 3), 2, width=0.125, batch_norm=True)
    images = data.offline(n_images=32, image_size=32, split="train")
    report = train(model, images, images, epochs=3, batch_size=16, target_accuracy=0.01, verbose=0)
    assert report["epochs"] == 1 and len(report["history"]["val_accuracy"]) == 1
    report = train(model, images, images, epochs=2, batch_size=16, verbose=0)
    assert report["epochs"] == 2
    with pytest.raises(ParameterError, match="val_ds"):
        train(model, images, None, epochs=1, target_accuracy=0.9)
    with pytest.raises(ParameterError, match="target_accuracy"):
        train(model, images, images, epochs=1, target_accuracy=1.5)
