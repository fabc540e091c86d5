"""`xai.compare` in Python: the CLI's comparison with a model in memory, and its result."""

import keras
import numpy as np
import pytest

import xai
from xai.runner import model_digest


def _tiny():
    keras.utils.set_random_seed(5)
    return xai.vgg16_gap((32, 32, 3), num_classes=2, width=0.125)


def test_compare_takes_a_model_in_memory_and_returns_its_results(tmp_path):
    model = _tiny()
    kwargs = dict(methods="random,cam,grad_cam", n_images=8, batch_size=4, metrics=["deletion"],
                  out=tmp_path, quiet=True, params={"grad_cam.relu": True})
    result = xai.compare(model, **kwargs)
    assert isinstance(result, xai.Comparison) and result.report.is_file()
    assert {(r["method"], r["metric"]) for r in result.rows} == {
        (m, k) for m in ("random", "cam", "grad_cam") for k in ("deletion", "seconds_per_image")}
    assert len(result.rows) == 3 * 2 * 8
    assert set(result.meta_evaluation) == {"deletion"}
    assert {r["method"] for r in result.summary if r["metric"] == "deletion"} == {"random", "cam", "grad_cam"}
    page = result._repr_html_()
    assert "deletion" in page and result.meta_evaluation["deletion"]["verdict"] in page
    # Same weights, another object, the CLI's flat parameter spelling: the same run, resumed.
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    again = xai.compare(clone, **{**kwargs, "params": {"grad_cam": {"relu": True}}})
    assert again.run_dir == result.run_dir
    assert again.rows == result.rows  # timings included: nothing was recomputed


def test_a_method_that_finds_out_only_from_the_model_is_reported_not_applicable(tmp_path):
    """Guided backprop needs ReLUs, which only the model shows: without any, the comparison
    lists it as not applicable (as CAM off its architecture), not as failing batch after batch."""
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.GlobalAveragePooling2D()(x))
    result = xai.compare(keras.Model(inputs, outputs), methods="random,guided_backprop", n_images=4,
                         batch_size=4, metrics=["deletion"], out=tmp_path, quiet=True)
    summary = __import__("json").loads((result.run_dir / "results.json").read_text())
    assert "no ReLU" in summary["not_applicable"]["guided_backprop"]
    assert summary["failures"] == [] and {r["method"] for r in result.rows} == {"random"}


def test_model_digest_follows_the_weights_not_the_object():
    model = _tiny()
    clone = keras.models.clone_model(model)
    clone.set_weights(model.get_weights())
    assert model_digest(clone) == model_digest(model)
    weights = clone.get_weights()
    weights[0] = weights[0] + np.float32(1e-3)
    clone.set_weights(weights)
    assert model_digest(clone) != model_digest(model)


def test_explain_gives_the_seed_picture_in_one_call(tmp_path):
    from PIL import Image

    model = _tiny()
    image = np.random.default_rng(0).random((32, 32, 3), dtype=np.float32)
    explanation = xai.explain(image, "vanilla_gradient,cam", model)
    assert list(explanation.maps) == ["vanilla_gradient", "cam"]
    direct = xai.create_explainer("cam", model).explain(image[None], [explanation.target])[0]
    np.testing.assert_allclose(explanation.maps["cam"], direct, rtol=1e-5, atol=1e-7)
    assert explanation._repr_png_().startswith(b"\x89PNG")
    assert explanation._repr_html_().startswith("<img alt=") and "base64," in explanation._repr_html_()
    assert explanation.save(tmp_path / "seed.png").stat().st_size > 1000
    # From a file, resized to the model's input, for a chosen class.
    path = tmp_path / "photo.png"
    Image.fromarray((np.random.default_rng(1).random((50, 40, 3)) * 255).astype(np.uint8)).save(path)
    from_file = xai.explain(path, ["vanilla_gradient"], model, target=1)
    assert from_file.target == 1 and from_file.maps["vanilla_gradient"].shape == (32, 32)
    with pytest.raises(xai.ParameterError, match="target"):
        xai.explain(image, "cam", model, target=7)
    with pytest.raises(xai.DataError, match="input size"):
        xai.explain(np.zeros((16, 16, 3), np.float32), "cam", model)


def test_gallery_spans_batches_and_pages(tmp_path, monkeypatch):
    import html.parser

    from xai import report

    monkeypatch.setattr(report, "GALLERY_PAGE", 3)
    result = xai.compare(_tiny(), methods="random,cam", n_images=8, batch_size=4, n_examples=8,
                         metrics=["deletion"], out=tmp_path, quiet=True)

    class Images(html.parser.HTMLParser):
        def __init__(self):
            super().__init__()
            self.alts = []

        def handle_starttag(self, tag, attrs):
            if tag == "img" and "Image offline" in (dict(attrs).get("alt") or ""):
                self.alts.append(dict(attrs)["alt"])

    counts = []
    for name in ("report.html", "gallery-2.html", "gallery-3.html"):
        parser = Images()
        parser.feed((result.run_dir / name).read_text())
        counts.append(len(parser.alts))
    assert counts == [3, 3, 2]  # 8 example images from both batches, 3 per page
    assert not (result.run_dir / "gallery-4.html").exists()
    assert "gallery-2.html" in (result.run_dir / "report.html").read_text()
