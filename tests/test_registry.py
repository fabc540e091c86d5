import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import xai
from xai.errors import PluginError
from xai.registry import Registry

FIXTURE = Path(__file__).parent / "fixtures" / "xai_example_plugin"


def test_builtins_are_found_through_entry_points_with_provenance():
    assert {"vanilla_gradient", "cam", "smoothgrad", "random"} <= set(xai.list_explainers())
    info = xai.plugin_info("cam")
    assert info.distribution == "xai-saliency-bench" and info.version == xai.__version__
    assert info.entry_point == "xai.plugins.cam:CAM"
    assert xai.list_explainers("*grad*") == ["grad_cam", "grad_cam_plus_plus", "gradient_input",
                                             "integrated_gradients", "smoothgrad", "square_grad",
                                             "vanilla_gradient", "var_grad"]


def test_reregistering_replaces_with_a_warning_and_unknown_names_list_the_known():
    """A notebook cell run again defines a new class under the same name: the new one wins."""
    def define(offset):
        class Edited(xai.Explainer):
            def compute(self, images, targets):
                return images[..., 0] * 0.0 + offset
        return Edited

    first, second = define(1.0), define(2.0)
    assert first.__qualname__ == second.__qualname__
    try:
        xai.register_explainer("edited_in_a_notebook")(first)
        xai.register_explainer("edited_in_a_notebook")(first)  # the same class: silent
        with pytest.warns(RuntimeWarning, match="replaced"):
            xai.register_explainer("edited_in_a_notebook")(second)
        assert xai.registry.get_explainer("edited_in_a_notebook") is second
        assert xai.plugin_info("cam").cls.name == "cam"  # the entry point alone names it
    finally:
        xai.registry.REGISTRY.unregister("edited_in_a_notebook")
    with pytest.raises(PluginError, match="registered: .*cam.*smoothgrad"):
        xai.create_explainer("gradcam_typo", None)


def _fake_entry_points(monkeypatch, tmp_path, lines):
    """A distribution on sys.path whose entry points are `lines`."""
    dist = tmp_path / "broken_pkg-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-pkg\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[xai.explainers]\n" + "\n".join(lines) + "\n")
    monkeypatch.syspath_prepend(str(tmp_path))


def test_broken_plugin_is_reported_and_others_load(monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, ["exploding = no_such_module_xyz:Thing"])
    registry = Registry()
    with pytest.warns(RuntimeWarning, match="exploding"):
        names = registry.names()
    assert "cam" in names and "exploding" not in names
    assert "ModuleNotFoundError" in registry.errors()["exploding"]
    with pytest.raises(PluginError, match="failed to load"):
        registry.info("exploding")


def test_autoload_switch_keeps_only_builtins(monkeypatch, tmp_path):
    _fake_entry_points(monkeypatch, tmp_path, ["exploding = no_such_module_xyz:Thing"])
    monkeypatch.setenv("XAI_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = Registry()
    assert "cam" in registry.names() and registry.errors() == {}


def test_third_party_plugin_package_installs_and_registers(tmp_path, tiny_model):
    """The docs/writing-a-plugin.md example: a separate package with its own entry point."""
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--target", str(target), str(FIXTURE)], check=True)
    code = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {str(target)!r})
        import numpy as np, xai
        from xai.testing import check_explainer
        info = xai.plugin_info("gradient_x_input")
        assert info.distribution == "xai-example-plugin", info
        model = xai.vgg16_gap((32, 32, 3), width=0.125)
        check_explainer("gradient_x_input", model)
        print("OK", info.version)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK 0.1.0" in out.stdout


def test_the_documented_plugin_is_the_tested_one_and_fits_in_15_lines():
    source = (FIXTURE / "xai_example_plugin" / "gradient_x_input.py").read_text()
    code = source.split('"""', 2)[2].strip()  # without the module docstring
    guide = (Path(__file__).parents[1] / "docs" / "writing-a-plugin.md").read_text()
    assert code in guide
    assert len(source.strip().splitlines()) <= 15
    assert "register_explainer" not in source and "_" + "explain_batch" not in source
