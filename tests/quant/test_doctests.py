"""The examples in t2n_quant's docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import t2n_quant

MODULES = sorted(m.name for m in pkgutil.walk_packages(t2n_quant.__path__, prefix="t2n_quant."))


@pytest.mark.parametrize("name", ["t2n_quant", *MODULES])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
