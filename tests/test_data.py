import numpy as np
import pytest
import tensorflow as tf

from xai import data
from xai.errors import DataError


def test_offline_is_deterministic_under_seed():
    a = list(data.offline(6, 32, seed=3).as_numpy_iterator())
    b = list(data.offline(6, 32, seed=3).as_numpy_iterator())
    c = list(data.offline(6, 32, seed=4).as_numpy_iterator())
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        assert x["label"] == y["label"] and x["id"] == y["id"]
    assert not all(np.array_equal(x["image"], z["image"]) for x, z in zip(a, c))
    # Splits are independent streams.
    t = list(data.offline(6, 32, seed=3, split="test").as_numpy_iterator())
    assert not np.array_equal(a[0]["image"], t[0]["image"])


def test_offline_element_format_and_class_names():
    ds = data.offline(8, 48, num_classes=3)
    assert ds.class_names == ("disc", "square", "triangle")
    for e in ds.as_numpy_iterator():
        assert e["image"].shape == (48, 48, 3) and e["image"].dtype == np.float32
        assert 0.0 <= e["image"].min() and e["image"].max() <= 1.0
        assert e["mask"].shape == (48, 48) and set(np.unique(e["mask"])) <= {0.0, 1.0}
        assert 0 <= e["label"] < 3


def test_mask_covers_exactly_the_object():
    for i in range(10):
        image, label, mask = data.render_offline_image(i, size=64)
        inside = image[mask > 0]
        assert len(inside) > 50
        # The object is one flat colour drawn last, so every masked pixel has it ...
        np.testing.assert_array_equal(inside, np.broadcast_to(inside[0], inside.shape))
        # ... and no pixel outside the mask next to it has that colour (nothing missing).
        from scipy import ndimage

        ring = ndimage.binary_dilation(mask > 0, iterations=1) & (mask == 0)
        assert not np.any(np.all(image[ring] == inside[0], axis=-1))


def test_uninformative_images_are_the_offline_world_without_its_class():
    from xai.baselines import blur

    size = 32
    elements = list(data.offline_uninformative(8, image_size=size, seed=3))
    assert [e["kind"].numpy().decode() for e in elements] == list(data.UNINFORMATIVE_KINDS) * 2
    first = 1 << 30
    for i, e in enumerate(elements):
        image, kind = e["image"].numpy(), e["kind"].numpy().decode()
        scene, _, mask = data.render_offline_image(first + i, size=size, seed=3, with_object=False)
        with_object, _, object_mask = data.render_offline_image(first + i, size=size, seed=3)
        assert not mask.any() and object_mask.any()
        # Without its object a scene is the same picture, except where the object was.
        np.testing.assert_array_equal(scene[object_mask == 0], with_object[object_mask == 0])
        expected = {"empty_scene": scene, "black": np.zeros_like(scene),
                    "blurred_scene": blur(with_object[None]).numpy()[0],
                    "blurred_empty_scene": blur(scene[None]).numpy()[0]}[kind]
        np.testing.assert_allclose(image, expected, atol=1e-6, err_msg=kind)


def test_class_decided_by_shape_only():
    """Backgrounds, colours and distractors are drawn the same way for each class: the
    object's colour statistics barely differ between classes while its shape does."""
    rows = [data.render_offline_image(i, size=64) for i in range(300)]
    labels = np.array([r[1] for r in rows])
    assert 0.4 < labels.mean() < 0.6
    mean_colour = np.array([r[0][r[2] > 0].mean() for r in rows])
    assert abs(mean_colour[labels == 0].mean() - mean_colour[labels == 1].mean()) < 0.06
    bg = np.array([r[0][r[2] == 0].mean() for r in rows])
    assert abs(bg[labels == 0].mean() - bg[labels == 1].mean()) < 0.03


def _write_png(path, array):
    path.write_bytes(tf.io.encode_png(array).numpy())


def test_image_folder_and_conversions(tmp_path):
    (tmp_path / "cat").mkdir()
    (tmp_path / "dog").mkdir()
    _write_png(tmp_path / "cat" / "grey.png", np.full((10, 12, 1), 128, np.uint8))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[..., 3] = 255
    _write_png(tmp_path / "dog" / "rgba.png", rgba)
    (tmp_path / "dog" / "photo.jpg").write_bytes(tf.io.encode_jpeg(np.zeros((9, 9, 3), np.uint8)).numpy())
    ds = data.image_folder(tmp_path, image_size=16)
    assert ds.class_names == ("cat", "dog")
    items = list(ds.as_numpy_iterator())
    assert [e["label"] for e in items] == [0, 1, 1]
    assert all(e["image"].shape == (16, 16, 3) for e in items)
    np.testing.assert_allclose(items[0]["image"], 128 / 255, atol=1e-6)  # grey -> RGB
    np.testing.assert_allclose(items[2]["image"][..., 0], 1.0, atol=1e-6)  # RGBA red -> RGB red
    np.testing.assert_allclose(items[2]["image"][..., 1:], 0.0, atol=1e-6)


def test_image_folder_rejects_corrupt_file_by_name(tmp_path):
    (tmp_path / "a").mkdir()
    _write_png(tmp_path / "a" / "ok.png", np.zeros((4, 4, 3), np.uint8))
    (tmp_path / "a" / "broken.jpg").write_text("this is not a jpeg")
    with pytest.raises(DataError, match="broken.jpg"):
        data.image_folder(tmp_path, 8)


def test_load_image_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        data.load_image(tmp_path / "missing.png")
    bad = tmp_path / "truncated.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 10)
    with pytest.raises(DataError, match="truncated.png"):
        data.load_image(bad)


def test_cats_vs_dogs_through_tfds_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        ds = data.cats_vs_dogs(split="train", image_size=32)
        items = list(ds.take(3).as_numpy_iterator())
    assert ds.class_names == ("cat", "dog")
    assert len(items) == 3
    for e in items:
        assert e["image"].shape == (32, 32, 3) and e["image"].dtype == np.float32
        assert 0 <= e["image"].min() and e["image"].max() <= 1.0
        assert e["label"] in (0, 1)


def test_cats_vs_dogs_missing_data_is_clear(tmp_path):
    with pytest.raises(DataError, match="offline default"):
        data.cats_vs_dogs(data_dir=str(tmp_path), download=False)
