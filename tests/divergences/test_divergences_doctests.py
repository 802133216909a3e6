"""The runnable examples in the docstrings of gmppl.divergences."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = ["__init__", "estimate", "fdivergences", "quadrature", "registry", "samples", "variational"]


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples(name):
    module = importlib.import_module("gmppl.divergences" + ("" if name == "__init__" else f".{name}"))
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
