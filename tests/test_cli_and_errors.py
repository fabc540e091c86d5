"""Errors by who caused them, `--param` parsing, and no import side effects.

The subprocess tests start a fresh interpreter, because this one has TensorFlow loaded
already (conftest). None of them trains or loads a model.
"""

import doctest
import json
import os
import subprocess
import sys
import textwrap
import types

import click
import pytest
from click.testing import CliRunner

import xai
import xai.cli
from xai.cli import main, parse_params
from xai.errors import (ConfigError, DataError, MissingDependencyError, ModelError, ParameterError,
                        PluginError, StoreError, XAIError)


def run_python(code: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True,
                          text=True, timeout=120, env=env)


def clean_env() -> dict:
    """This environment without what conftest set, so a child sees what a user's shell has."""
    return {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}


# --------------------------------------------------------------------------------------
# No import side effects
# --------------------------------------------------------------------------------------

def test_import_xai_loads_no_framework_and_leaves_the_environment_alone():
    result = run_python("""
        import json, os, sys
        before = dict(os.environ)
        import xai
        dir(xai)  # listing the public names must not load them either
        print(json.dumps({"heavy": [m for m in ("tensorflow", "keras", "matplotlib", "matplotlib.pyplot")
                                    if m in sys.modules],
                          "environ_changed": dict(os.environ) != before}))
    """, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"heavy": [], "environ_changed": False}


def test_listing_explainers_loads_no_framework():
    """`xai list` imports every built-in plugin (their classes carry the parameters it prints)
    without TensorFlow: the core and the built-ins import it on first use."""
    result = run_python("""
        import json, sys
        import xai
        names = xai.list_explainers()
        params = {n: sorted(xai.plugin_info(n).cls.parameters) for n in names}
        print(json.dumps({"names": names, "smoothgrad": params["smoothgrad"], "errors": xai.plugin_errors(),
                          "heavy": [m for m in ("tensorflow", "keras") if m in sys.modules]}))
    """, env=clean_env())
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["heavy"] == [] and out["errors"] == {} and len(out["names"]) >= 10
    assert out["smoothgrad"] == ["antithetic", "batch_size", "jit_compile", "n_samples", "noise_level", "reduce",
                                 "score", "seed"]


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["compare", "--help"], ["explain", "--help"],
                                  ["report", "--help"], ["train", "--help"], ["list", "--help"]])
def test_cli_help_loads_no_framework(args):
    result = run_python("""
        import json, sys
        from xai.cli import main
        try:
            main(sys.argv[1:])
        except SystemExit as exc:
            code = exc.code
        print(json.dumps({"code": code, "heavy": [m for m in ("tensorflow", "keras", "matplotlib")
                                                  if m in sys.modules]}))
    """, *args, env=clean_env())
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout.splitlines()[-1]) == {"code": 0, "heavy": []}


def test_public_names_resolve_lazily_to_their_modules():
    import xai.errors as errors
    import xai.explainer as explainer
    import xai.models as models
    import xai.registry as registry

    where = {"Explainer": explainer, "Param": explainer, "PerturbationExplainer": explainer,
             "ModelSpec": models, "vgg16_gap": models, "create_explainer": registry,
             "list_explainers": registry, "plugin_errors": registry, "plugin_info": registry,
             "register_explainer": registry}
    for name, module in where.items():
        assert getattr(xai, name) is getattr(module, name), name
    assert xai.models is models and xai.registry is registry
    for cls in (XAIError, ModelError, DataError, PluginError, ParameterError, ConfigError, StoreError,
                MissingDependencyError):
        assert getattr(xai, cls.__name__) is getattr(errors, cls.__name__)
    assert set(xai.__all__) <= set(dir(xai))
    assert isinstance(xai.__version__, str)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        xai.nope


def test_error_hierarchy_keeps_builtin_bases():
    for cls in (ModelError, DataError, PluginError, ParameterError, ConfigError, StoreError,
                MissingDependencyError):
        assert issubclass(cls, XAIError) and issubclass(cls, ValueError)
    assert issubclass(ParameterError, TypeError)


def test_display_makes_figures_without_pyplot(tmp_path):
    result = run_python("""
        import sys
        import numpy as np
        from xai import display
        rng = np.random.default_rng(0)
        fig = display.explanation_figure(rng.random((32, 32, 3)), {"a": rng.random((32, 32))})
        grid = display.grid_figure([rng.random((32, 32, 3))], {"a": [rng.random((32, 32))]})
        fig.savefig(sys.argv[1] + "/one.png")
        grid.savefig(sys.argv[1] + "/grid.png")
        print("pyplot" if "matplotlib.pyplot" in sys.modules else "no pyplot")
    """, str(tmp_path), env=clean_env())
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "no pyplot"
    assert (tmp_path / "one.png").stat().st_size > 0 and (tmp_path / "grid.png").stat().st_size > 0


# --------------------------------------------------------------------------------------
# --param parsing
# --------------------------------------------------------------------------------------

@pytest.mark.parametrize("items, expected", [
    (["smoothgrad.n_samples=10"], {"smoothgrad": {"n_samples": 10}}),
    (["smoothgrad.noise_level=0.25", "smoothgrad.n_samples=5"],
     {"smoothgrad": {"noise_level": 0.25, "n_samples": 5}}),
    (["rise.seed=1", "occlusion.patch_size=[8, 8]"],
     {"rise": {"seed": 1}, "occlusion": {"patch_size": [8, 8]}}),
    (["grad_cam.score=probability"], {"grad_cam": {"score": "probability"}}),  # not JSON: as given
    (['grad_cam.score="logit"'], {"grad_cam": {"score": "logit"}}),           # a JSON string
    (['m.label="10"'], {"m": {"label": "10"}}),                                # quoted: stays a string
    (["m.flag=true", "m.nothing=null"], {"m": {"flag": True, "nothing": None}}),
    (["m.expr=a=b=c"], {"m": {"expr": "a=b=c"}}),                              # '=' inside the value
    (["m.empty="], {"m": {"empty": ""}}),
    (["acme.lime.n_samples=3"], {"acme.lime": {"n_samples": 3}}),             # a dotted plugin name
    ([" smoothgrad . n_samples =2"], {"smoothgrad": {"n_samples": 2}}),
    ([], {}),
])
def test_parse_params(items, expected):
    assert parse_params(items) == expected


@pytest.mark.parametrize("item, message", [
    ("smoothgrad.n_samples", "no '='"),
    ("n_samples=10", "no '.'"),
    ("=10", "no '.'"),
    (".n_samples=10", "empty METHOD"),
    ("smoothgrad.=10", "empty PARAM"),
    ("smoothgrad.n-samples=10", "not a parameter name"),
])
def test_parse_params_rejects_malformed_items(item, message):
    with pytest.raises(click.BadParameter, match=message):
        parse_params([item])


def test_parse_params_rejects_a_parameter_given_twice():
    with pytest.raises(click.BadParameter, match="given twice"):
        parse_params(["smoothgrad.n_samples=1", "smoothgrad.n_samples=2"])


def test_parse_params_doctest_and_old_name():
    assert xai.cli._parse_params is parse_params
    assert doctest.testmod(xai.cli, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0


def test_malformed_param_is_a_usage_error_before_anything_loads(tmp_path):
    result = CliRunner().invoke(main, ["explain", str(tmp_path / "x.png"), "--param", "nodot=1",
                                       "--out", str(tmp_path / "out.png")])
    assert result.exit_code == 2
    assert "no '.'" in result.output and "--param" in result.output
    assert "Traceback" not in result.output


# --------------------------------------------------------------------------------------
# Errors: a user's mistake is one line; a bug keeps its traceback
# --------------------------------------------------------------------------------------

def test_user_error_is_one_line_with_exit_code_1(tmp_path):
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert result.output.splitlines() == [
        f"Error: {tmp_path} holds no results.sqlite; is it a directory made by xai compare?"]


def test_debug_shows_the_user_error_with_its_traceback(tmp_path):
    result = CliRunner().invoke(main, ["--debug", "report", str(tmp_path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, StoreError)
    assert result.exc_info[2] is not None
    assert "Error:" not in result.output


def _fake_report_module(monkeypatch):
    """`xai report` then reaches write_report, which fails as a bug would."""
    def write_report(run_dir):
        raise RuntimeError("internal bug in write_report")

    monkeypatch.setitem(sys.modules, "xai.report", types.SimpleNamespace(write_report=write_report))


def test_internal_error_propagates_with_its_traceback(tmp_path, monkeypatch):
    (tmp_path / "results.sqlite").write_bytes(b"")
    _fake_report_module(monkeypatch)
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert isinstance(result.exception, RuntimeError)       # not swallowed into a SystemExit
    assert str(result.exception) == "internal bug in write_report"
    assert "Error:" not in result.output


def test_internal_error_is_not_caught_even_when_it_is_a_value_error(tmp_path, monkeypatch):
    (tmp_path / "results.sqlite").write_bytes(b"")

    def write_report(run_dir):
        raise ValueError("a bug that happens to be a ValueError")

    monkeypatch.setitem(sys.modules, "xai.report", types.SimpleNamespace(write_report=write_report))
    result = CliRunner().invoke(main, ["report", str(tmp_path)])
    assert result.exit_code == 1
    assert type(result.exception) is ValueError


STANDALONE = """
    import sys, types
    def write_report(run_dir):
        raise RuntimeError("internal bug in write_report")
    sys.modules["xai.report"] = types.SimpleNamespace(write_report=write_report)
    from xai.cli import main
    main(sys.argv[1:], prog_name="xai")
"""


def test_standalone_exit_codes_and_tracebacks(tmp_path):
    """What a shell user sees: one line for a user error, a traceback for a bug or under --debug."""
    empty = tmp_path / "empty"
    empty.mkdir()
    user = run_python(STANDALONE, "report", str(empty))
    assert user.returncode == 1
    assert user.stderr.strip().splitlines() == [
        f"Error: {empty} holds no results.sqlite; is it a directory made by xai compare?"]

    debug = run_python(STANDALONE, "--debug", "report", str(empty))
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "xai.errors.StoreError:" in debug.stderr

    (tmp_path / "results.sqlite").write_bytes(b"")
    bug = run_python(STANDALONE, "report", str(tmp_path))
    assert bug.returncode == 1
    assert "Traceback (most recent call last)" in bug.stderr
    assert bug.stderr.strip().splitlines()[-1] == "RuntimeError: internal bug in write_report"
