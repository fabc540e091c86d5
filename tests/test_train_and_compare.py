"""End to end: the offline default model, `xai compare`, the report, resuming, failures."""

import base64
import csv
import html.parser
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner

import xai
from xai.cli import main
from xai.runner import CompareConfig, compare

SMALL = ["--n-images", "8", "--batch-size", "4", "--param", "smoothgrad.n_samples=4",
         "--param", "rise.n_masks=128", "--param", "integrated_gradients.steps=8",
         "--param", "occlusion.patch_size=16", "--param", "occlusion.stride=16",
         "--param", "square_grad.n_samples=4", "--param", "var_grad.n_samples=4", "--quiet"]


def test_offline_default_model_reaches_the_accuracy_bar(trained_default):
    print(f"default model: held-out accuracy {trained_default['accuracy']:.3f}, "
          f"trained in {trained_default['seconds']:.0f}s")
    assert trained_default["accuracy"] >= 0.95
    # Trained with batch normalisation, shipped without: the plain VGG16-GAP.
    model = trained_default["model"]
    assert not any(isinstance(layer, __import__("keras").layers.BatchNormalization) for layer in model.layers)
    assert xai.models.model_spec(model).feature_layer == "block5_conv3"
    report = json.loads(trained_default["path"].with_suffix(".train.json").read_text())
    print(f"epochs {report['epochs']}, validation accuracy {report['history']['val_accuracy']}")
    # Training stopped at the first epoch that reached the target, or ran to the cap.
    accuracy, target = report["history"]["val_accuracy"], report["config"]["target_accuracy"]
    assert accuracy[-1] >= target or len(accuracy) == report["config"]["epochs"], accuracy
    assert all(a < target for a in accuracy[:-1]), accuracy
    # Pictures that show no class get about the uniform answer, not a confident guess: where
    # the RISE protocol's deletion curves end (black) and insertion curves start (blurred).
    from xai import data

    empty = next(iter(data.offline_uninformative(64, 64, split="test").batch(64)))
    answers = trained_default["model"].predict(empty["image"], verbose=0).max(axis=1)
    kinds = empty["kind"].numpy().astype(str)
    assert answers[kinds == "black"].max() < 0.6, answers[kinds == "black"]
    assert answers.mean() < 0.75, {k: answers[kinds == k].mean() for k in set(kinds)}
    # The second request is a cache hit: same file, no training.
    from xai.train import default_model
    mtime = trained_default["path"].stat().st_mtime
    default_model(verbose=0)
    assert trained_default["path"].stat().st_mtime == mtime


@pytest.fixture(scope="module")
def run_dir(trained_default, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(main, ["compare", *SMALL, "--out", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    dirs = [p for p in out.iterdir() if p.is_dir()]
    assert len(dirs) == 1
    return dirs[0]


class _Images(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs, self.alts = [], []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])
            self.alts.append(dict(attrs).get("alt"))


def test_compare_writes_every_report_file(run_dir):
    for name in ("report.html", "report.md", "results.json", "results.csv", "results.sqlite",
                 "figures/deletion.png", "figures/insertion.png", "figures/symmetric_relevance_gain.png",
                 "figures/sanity.png", "model.keras",
                 *(f"figures/gallery-{n}.png" for n in range(4))):  # --n-examples 4 (the default)
        assert (run_dir / name).is_file(), name
    parser = _Images()
    page = (run_dir / "report.html").read_text()
    parser.feed(page)
    assert len(parser.srcs) == 4 + 4  # three curves, sanity, one gallery figure per example image
    assert "<h2>Verdict</h2>" in page and 'id="gallery"' in page and 'scope="col"' in page
    assert all(alt for alt in parser.alts)
    import matplotlib.image
    import io
    for src in parser.srcs:
        assert src.startswith("data:image/png;base64,")
        picture = matplotlib.image.imread(io.BytesIO(base64.b64decode(src.split(",", 1)[1])), format="png")
        assert picture.shape[0] > 50 and picture.shape[1] > 50

    with open(run_dir / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["image_id", "method", "metric", "value"]
    from xai.runner import default_methods

    methods = set(default_methods())
    metrics = {"deletion", "insertion", "symmetric_relevance_gain", "pointing_game", "relevance_mass",
               "seconds_per_image"}
    # Diagnostics beside: the Monte Carlo error of stochastic maps (tolerance mode, IG's
    # completeness gap; the pixel-order error where replicates estimate it) and where a
    # gradient of the loss saturates (issue 20: vanilla_gradient keeps the seed's loss).
    mc = {"smoothgrad", "square_grad", "var_grad", "rise", "integrated_gradients"}
    diagnostics = ({(m, k) for m in mc for k in ("map_error", "map_converged")}
                   | {(m, "map_order_error") for m in mc - {"integrated_gradients"}}
                   | {("vanilla_gradient", "score_saturated")})
    assert {(r["method"], r["metric"]) for r in rows} == {(m, k) for m in methods for k in metrics} | diagnostics
    assert len(rows) == 8 * (len(methods) * len(metrics) + len(diagnostics))
    summary = json.loads((run_dir / "results.json").read_text())
    assert set(summary["sanity"]) == methods
    assert summary["sanity"]["random"]["spearman_mean"][-1] == pytest.approx(1.0)


def test_report_rerenders_without_recomputing(run_dir):
    before = (run_dir / "results.sqlite").stat().st_mtime_ns
    (run_dir / "report.html").unlink()
    result = CliRunner().invoke(main, ["report", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "report.html").is_file()
    assert (run_dir / "results.sqlite").stat().st_mtime_ns == before


def test_report_renders_in_headless_chromium(run_dir, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it)")
    page = tmp_path / "probe.html"
    probe = ("<script>window.addEventListener('load', () => { document.body.setAttribute("
             "'data-sizes', JSON.stringify([...document.images].map(i => [i.naturalWidth, "
             "i.naturalHeight, i.getBoundingClientRect().width]))); });</script></body>")
    page.write_text((run_dir / "report.html").read_text().replace("</body>", probe))
    out = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120)
    marker = 'data-sizes="'
    assert marker in out.stdout, out.stderr[-1500:]
    sizes = json.loads(html.unescape(out.stdout.split(marker, 1)[1].split('"', 1)[0]))
    assert len(sizes) == 4 + 4  # three curves, sanity, four gallery figures
    assert all(w > 0 and h > 0 and shown > 0 for w, h, shown in sizes)
    # Readable at report width: no figure is shown narrower than half its drawn width.
    assert all(shown >= 0.5 * min(w, 1000) for w, h, shown in sizes)


def _values(run_dir):
    with sqlite3.connect(run_dir / "results.sqlite") as db:
        return sorted(db.execute("SELECT image_id, method, metric, value FROM vals "
                                 "WHERE metric != 'seconds_per_image'").fetchall())


def test_sigkill_then_rerun_equals_uninterrupted(trained_default, tmp_path):
    config = dict(methods=["vanilla_gradient", "cam", "random"], n_images=24, batch_size=4,
                  metrics=["deletion", "insertion", "pointing_game"])
    reference = compare(CompareConfig(**config, out=str(tmp_path / "ref")), quiet=True)
    out = tmp_path / "killed"
    code = (f"from xai.runner import CompareConfig, compare; "
            f"compare(CompareConfig(**{config!r}, out={str(out)!r}), quiet=True)")
    proc = subprocess.Popen([sys.executable, "-c", code], env=os.environ.copy())
    deadline = time.time() + 240
    done = 0
    while time.time() < deadline and proc.poll() is None:
        dbs = list(out.glob("*/results.sqlite"))
        if dbs:
            try:
                with sqlite3.connect(dbs[0]) as db:
                    done = db.execute("SELECT COUNT(*) FROM batches WHERE status='done'").fetchone()[0]
            except sqlite3.Error:
                done = 0
            if done >= 4:
                break
        time.sleep(0.2)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_dir = next(out.iterdir())
    with sqlite3.connect(killed_dir / "results.sqlite") as db:
        partial = db.execute("SELECT COUNT(*) FROM batches WHERE status='done'").fetchone()[0]
    assert 0 < partial < 18  # 6 batches x 3 methods
    resumed = compare(CompareConfig(**config, out=str(out)), quiet=True)
    assert resumed == killed_dir and resumed.name == reference.name
    a, b = _values(reference), _values(resumed)
    assert [r[:3] for r in a] == [r[:3] for r in b]
    np.testing.assert_allclose([r[3] for r in a], [r[3] for r in b], rtol=1e-6)


def test_changed_configuration_starts_a_new_run(trained_default, tmp_path):
    a = compare(CompareConfig(methods=["cam"], n_images=4, metrics=["pointing_game"], out=str(tmp_path)), quiet=True,
                write_report=False)
    b = compare(CompareConfig(methods=["cam"], n_images=4, metrics=["pointing_game"], seed=1, out=str(tmp_path)),
                quiet=True, write_report=False)
    assert a != b


def test_failing_plugin_is_isolated_and_reported(trained_default, tmp_path):
    @xai.register_explainer("always_fails")
    class AlwaysFails(xai.Explainer):
        def explain_batch(self, images, targets, offset):
            raise RuntimeError("boom from the plugin")

    @xai.register_explainer("wrong_shape")
    class WrongShape(xai.Explainer):
        def explain_batch(self, images, targets, offset):
            return np.zeros((int(images.shape[0]), 3, 3), np.float32)

    try:
        run = compare(CompareConfig(methods=["always_fails", "wrong_shape", "cam"], n_images=8,
                                    batch_size=4, metrics=["deletion"], out=str(tmp_path)), quiet=True)
    finally:
        xai.registry.REGISTRY.unregister("always_fails")
        xai.registry.REGISTRY.unregister("wrong_shape")
    summary = json.loads((run / "results.json").read_text())
    failed = {(f["method"], f["batch"]) for f in summary["failures"]}
    assert failed == {("always_fails", 0), ("always_fails", 1), ("wrong_shape", 0), ("wrong_shape", 1)}
    assert any("boom from the plugin" in f["error"] for f in summary["failures"])
    assert {r["method"] for r in summary["values"]} == {"cam"}
    assert "boom from the plugin" in (run / "report.html").read_text()


@pytest.mark.parametrize("args, message", [
    (["compare", "--methods", "nope", "--quiet"], "unknown method"),
    (["compare", "--model", "missing.keras", "--quiet"], "does not exist"),
    (["compare", "--metrics", "accuracy", "--quiet"], "unknown metric"),
    (["compare", "--n-images", "0"], "n-images"),
    (["explain", "no-such-image.png", "--out", "x.png"], "does not exist"),
    (["report", "."], "results.sqlite"),
])
def test_bad_cli_input_gives_one_line_error(trained_default, args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, args)
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_explain_command_writes_the_seed_picture(trained_default, tmp_path):
    from xai import data
    image, _, _ = data.render_offline_image(0, size=64, split="test")
    import tensorflow as tf
    path = tmp_path / "object.png"
    path.write_bytes(tf.io.encode_png((image * 255).astype(np.uint8)).numpy())
    result = CliRunner().invoke(main, ["explain", str(path), "--method", "vanilla_gradient", "--method", "cam",
                                       "--out", str(tmp_path / "out.png")])
    assert result.exit_code == 0, result.output
    import matplotlib.image
    picture = matplotlib.image.imread(tmp_path / "out.png")
    assert picture.shape[1] > picture.shape[0] * 2  # image + 2 x (grey, overlay) side by side


def test_list_command():
    result = CliRunner().invoke(main, ["list"])
    assert result.exit_code == 0
    assert "smoothgrad" in result.output and "xai-saliency-bench" in result.output
