"""The decomposition table's split, computed once per state of the op registry."""

from __future__ import annotations

import torch
from torch.export.exported_program import _split_decomp_table_to_cia_and_python_decomp

from t2n_core.decompositions import decomposition_table, split_decomposition_table


def test_split_is_torch_split_and_fresh_each_call() -> None:
    cia, python = split_decomposition_table()
    fresh_cia, fresh_python = _split_decomp_table_to_cia_and_python_decomp(decomposition_table())
    assert set(cia) == set(fresh_cia) and set(python) == set(fresh_python)
    assert cia and python
    cia.clear()
    python.clear()
    again_cia, again_python = split_decomposition_table()
    assert set(again_cia) == set(fresh_cia) and set(again_python) == set(fresh_python)


def test_split_sees_an_op_registered_after_it() -> None:
    split_decomposition_table()
    lib = torch.library.Library("t2n_test_split", "DEF")
    lib.define("twice(Tensor x) -> Tensor")
    lib.impl("twice", lambda x: x * 2, "CompositeImplicitAutograd")
    op = torch.ops.t2n_test_split.twice.default
    cia, _ = split_decomposition_table()
    fresh_cia, _ = _split_decomp_table_to_cia_and_python_decomp(decomposition_table())
    assert op in fresh_cia and op in cia
