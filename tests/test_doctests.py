"""The docstring examples run, so they cannot rot (imported by their installed names)."""

import doctest
import importlib

import pytest

MODULES = ["xai.models", "xai.registry", "xai.data", "xai.testing", "xai.plugins.vanilla_gradient",
           "xai.evaluation.faithfulness", "xai.evaluation.localisation", "xai.evaluation.sanity",
           "xai.evaluation.statistics", "xai.evaluation.meta_evaluation", "xai.evaluation.remove_and_debias",
           "xai.evaluation.faithfulness_correlation", "xai.evaluation.map_complexity", "xai.evaluation.robustness",
           "xai.plugins.gradient_input", "xai.plugins.guided_backprop"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE,
                             extraglobs={"xai": importlib.import_module("xai")})
    assert result.failed == 0
