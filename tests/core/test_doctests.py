"""The examples in t2n_core's docstrings run and give what they show."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import t2n_core

MODULES = sorted(m.name for m in pkgutil.walk_packages(t2n_core.__path__, prefix="t2n_core."))


@pytest.mark.parametrize("name", ["t2n_core", *MODULES])
def test_docstring_examples(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, verbose=False)
    assert result.failed == 0, f"{result.failed} doctest(s) failed in {name}"
