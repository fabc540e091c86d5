"""The compatibility matrix: models no one on the project wrote x every method and deletion.

Each cell is "ok" (finite maps of the input's size; for deletion, finite AUCs in [0, 1]) or
"n/a" (a clear `NotApplicable` refusal); anything else fails the test. docs/models.md is
this file's own output: ``XAI_MODEL_MATRIX=full XAI_WRITE_MODELS_DOC=1 pytest
tests/test_model_matrix.py`` runs every cell compiled, as users run them, and writes it.

CI runs a subset inside its time budget: every model with the methods that depend on its
structure (CAM, Grad-CAM: layer discovery and the head) plus the input gradient and
deletion, and the small forms with every method; keras.applications networks run eagerly
there (their tracing costs seconds per method), ConvNeXt compiled (TensorFlow has no eager
CPU gradient for its grouped convolutions). The last test checks that every cell that ran
agrees with docs/models.md.
"""

import gc
import os
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

import xai
from xai.errors import NotApplicable
from xai.evaluation.faithfulness import deletion
from xai.models import model_spec, prepare_model

FULL = os.environ.get("XAI_MODEL_MATRIX") == "full"
DOC = Path(__file__).parents[1] / "docs" / "models.md"

S = 32


class SubclassedCNN(keras.Model):
    """A subclassed classifier, as written in many tutorials."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.conv1 = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")
        self.pool = keras.layers.MaxPooling2D()
        self.conv2 = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")
        self.gap = keras.layers.GlobalAveragePooling2D()
        self.fc = keras.layers.Dense(3, activation="softmax")

    def call(self, x):
        return self.fc(self.gap(self.conv2(self.pool(self.conv1(x)))))


def _app(name, size=S, **kwargs):
    return lambda: getattr(keras.applications, name)(weights=None, input_shape=(size, size, 3),
                                                      classes=3, **kwargs)


def _small(head, first=None):
    def build():
        inputs = keras.Input((S, S, 3))
        x = first(inputs) if first else inputs
        x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(x)
        x = keras.layers.MaxPooling2D()(x)
        x = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
        return keras.Model(inputs, head(keras.layers.GlobalAveragePooling2D()(x)))
    return build


def _sequential(by_call):
    def build():
        layers = [keras.layers.Conv2D(8, 3, activation="relu", name="conv1"), keras.layers.MaxPooling2D(),
                  keras.layers.Conv2D(16, 3, activation="relu", name="conv2"),
                  keras.layers.GlobalAveragePooling2D(),
                  keras.layers.Dense(3, activation="softmax")]
        if by_call:
            model = keras.Sequential(layers)
            model(np.zeros((1, S, S, 3), np.float32))
            return model
        return keras.Sequential([keras.Input((S, S, 3)), *layers])
    return build


def _subclassed():
    model = SubclassedCNN()
    model(np.zeros((1, S, S, 3), np.float32))
    return model


def _nested():
    base = keras.applications.MobileNetV2(include_top=False, weights=None, alpha=0.35,
                                          input_shape=(S, S, 3))
    return keras.Sequential([keras.Input((S, S, 3)), base, keras.layers.GlobalAveragePooling2D(),
                             keras.layers.Dense(3, activation="softmax")])


def _mixed_precision():
    return xai.models.with_precision(_small(lambda x: keras.layers.Dense(3, activation="softmax")(x))(),
                                     "mixed_bfloat16")


#: name -> (builder, what it is, whether it holds a keras.applications network: CI runs
#: CORE on those, eagerly)
MODELS = {
    "VGG16": (_app("VGG16"), "keras.applications, 32x32", True),
    "VGG19": (_app("VGG19"), "keras.applications, 32x32", True),
    "ResNet50": (_app("ResNet50"), "keras.applications, 32x32", True),
    "ResNet50V2": (_app("ResNet50V2"), "keras.applications, 32x32", True),
    "MobileNetV2": (_app("MobileNetV2", alpha=0.35), "keras.applications (alpha 0.35), 32x32", True),
    "MobileNetV3Small": (_app("MobileNetV3Small", minimalistic=True), "keras.applications "
                         "(minimalistic), 32x32", True),
    "EfficientNetB0": (_app("EfficientNetB0"), "keras.applications, 32x32", True),
    "EfficientNetV2B0": (_app("EfficientNetV2B0"), "keras.applications, 32x32", True),
    "DenseNet121": (_app("DenseNet121"), "keras.applications, 32x32", True),
    "InceptionV3": (_app("InceptionV3", size=75), "keras.applications, 75x75 (its minimum)", True),
    "Xception": (_app("Xception", size=71), "keras.applications, 71x71 (its minimum)", True),
    "ConvNeXtTiny": (_app("ConvNeXtTiny"), "keras.applications, 32x32", True),
    "sequential": (_sequential(False), "keras.Sequential starting with keras.Input", False),
    "sequential_by_call": (_sequential(True), "keras.Sequential built by a first call", False),
    "subclassed": (_subclassed, "subclassed keras.Model (CAM family: layer=model.conv2)", False),
    "nested": (_nested, "Sequential(MobileNetV2 base, GAP, Dense)", True),
    "logits": (_small(lambda x: keras.layers.Dense(3)(x)), "Dense head without softmax", False),
    "sigmoid": (_small(lambda x: keras.layers.Dense(1, activation="sigmoid")(x)),
                "one sigmoid unit (binary)", False),
    "rescaling": (_small(lambda x: keras.layers.Dense(3, activation="softmax")(x),
                         keras.layers.Rescaling(1 / 255.0)), "Rescaling(1/255) inside: [0, 255] input",
                  False),
    "mixed_bfloat16": (_mixed_precision, "mixed_bfloat16 copy (xai.models.with_precision)", False),
}
METHODS = sorted(xai.list_explainers())
COLUMNS = METHODS + ["deletion"]
#: What CI runs on a keras.applications model (all of them run on the small forms).
CORE = ("cam", "grad_cam", "vanilla_gradient", "deletion")
LIGHT = {"smoothgrad": {"n_samples": 2}, "integrated_gradients": {"steps": 2}, "rise": {"n_masks": 8},
         "score_cam": {"max_maps": 4}, "occlusion": {"patch_size": 16, "stride": 16},
         "square_grad": {"n_samples": 2}, "var_grad": {"n_samples": 2}, "sobol": {"grid_size": 2, "n_designs": 2},
         "hsic": {"grid_size": 2, "n_designs": 4}, "lime": {"n_samples": 8, "n_segments": 4}, "kernel_shap": {"n_samples": 8, "n_segments": 4}}
#: Methods that read a feature layer: a subclassed model's is passed as the layer object.
LAYER_METHODS = ("grad_cam", "grad_cam_plus_plus", "score_cam", "fem", "layer_cam")

CELLS = [(m, c) for m in MODELS for c in COLUMNS if FULL or not MODELS[m][2] or c in CORE]
RESULTS: dict = {}
SPECS: dict = {}
_built: dict = {}


def _model(name):
    if name not in _built:
        _built.clear()
        gc.collect()
        if FULL:  # auto-generated layer names (re_lu_22) then do not depend on what ran before
            keras.backend.clear_session()
        keras.utils.set_random_seed(0)
        _built[name] = prepare_model(MODELS[name][0]())
    return _built[name]


@pytest.fixture
def execution_mode(request):
    """Eager for keras.applications models in the CI subset (see the module docstring)."""
    name = request.node.callspec.params["cell"][0]
    eager = not FULL and MODELS[name][2] and name != "ConvNeXtTiny"
    tf.config.run_functions_eagerly(eager)
    yield
    tf.config.run_functions_eagerly(False)


@pytest.mark.parametrize("cell", CELLS, ids=[f"{m}-{c}" for m, c in CELLS])
def test_cell(cell, execution_mode):
    name, column = cell
    model = _model(name)
    spec = SPECS[name] = model_spec(model)
    low, high = spec.input_range
    images = np.random.default_rng(0).uniform(low, high, (1, *spec.input_shape)).astype(np.float32)
    try:
        if column == "deletion":
            result = deletion(model, images, [1], np.random.default_rng(1).random(images.shape[:3]),
                              steps=4)
            assert np.all(np.isfinite(result.auc)) and np.all((result.auc >= 0) & (result.auc <= 1))
        else:
            params = dict(LIGHT.get(column, {}))
            if name == "subclassed" and column in LAYER_METHODS:
                params["layer"] = model.conv2
            maps = xai.create_explainer(column, model, **params).explain(images)
            assert maps.shape == images.shape[:3] and np.all(np.isfinite(maps))
        RESULTS[cell] = "ok"
    except NotApplicable as exc:
        assert str(exc).strip()
        RESULTS[cell] = "n/a"


START, END = "<!-- matrix:start -->", "<!-- matrix:end -->"


def _render() -> str:
    """The table, written between the markers of docs/models.md."""
    lines = [
        START,
        "<!-- Generated by tests/test_model_matrix.py (XAI_MODEL_MATRIX=full XAI_WRITE_MODELS_DOC=1 "
        "pytest tests/test_model_matrix.py); do not edit by hand. -->",
        "",
        "| model | form | CAM-family layer | head | input | " + " | ".join(COLUMNS) + " |",
        "|---|---|---|---|---|" + "---|" * len(COLUMNS),
    ]
    for name, (_, form, _) in MODELS.items():
        spec = SPECS[name]
        layer = "`model.conv2` (passed)" if name == "subclassed" else f"`{spec.last_conv_layer}`"
        cells = " | ".join(RESULTS[(name, c)] for c in COLUMNS)
        lines.append(f"| {name} | {form} | {layer} | {spec.output} | {_range_text(spec)} | {cells} |")
    return "\n".join(lines + ["", END])


def _range_text(spec) -> str:
    low, high = spec.input_range
    return f"[{low:g}, {high:g}]"


def _documented() -> dict:
    """(model, column) -> documented value; columns "head" and "input" included."""
    table = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 + len(COLUMNS) and cells[0] in MODELS:
            table.update({(cells[0], c): v for c, v in zip(["head", "input", *COLUMNS], cells[3:])})
    return table


def test_zz_docs_models_md_is_this_matrix():
    if os.environ.get("XAI_WRITE_MODELS_DOC") == "1":
        assert FULL and len(RESULTS) == len(MODELS) * len(COLUMNS), "write the doc from a full run"
        text = DOC.read_text()
        DOC.write_text(text[:text.index(START)] + _render() + text[text.index(END) + len(END):])
    documented = _documented()
    ran = dict(RESULTS)
    assert ran, "no cell ran"
    for name, spec in SPECS.items():  # what was read from each model is documented too
        ran[(name, "head")], ran[(name, "input")] = spec.output, _range_text(spec)
    disagree = {f"{m}/{c}": (v, documented.get((m, c))) for (m, c), v in ran.items()
                if documented.get((m, c)) != v}
    assert not disagree, f"cells that differ from docs/models.md (ran, documented): {disagree}"
    assert re.search(r"do not edit by hand", DOC.read_text())
