"""The decomposition table ``torch.export`` runs after capture: its default one, less the ops
we translate whole, plus a few core ops we translate through torch's reference decompositions.
"""

from __future__ import annotations

from typing import Any

import torch

from t2n_core import ops

#: core ATen ops that ``torch.export`` keeps but torch's reference decompositions spell in
#: ops we translate (checked one by one in tract by ``benchmarks/op_matrix.py``)
_ALSO_DECOMPOSED = ("ldexp", "dist", "tril_indices", "addmv")

#: registry state -> the split of :func:`decomposition_table` (see split_decomposition_table)
_SPLIT: dict[Any, tuple[dict[Any, Any], dict[Any, Any]]] = {}


def decomposition_table() -> dict[Any, Any]:
    table = torch.export.default_decompositions()
    also = [getattr(torch.ops.aten, name) for name in _ALSO_DECOMPOSED]
    table.update(torch._decomp.get_decompositions(also))
    for op in ops.kept_whole():
        table.pop(op, None)
    return table


def split_decomposition_table() -> tuple[dict[Any, Any], dict[Any, Any]]:
    """:func:`decomposition_table` split as ``run_decompositions`` splits it: (composite
    implicit ops -> their handling, the other decompositions), fresh dicts.

    Splitting walks every op namespace for the composite implicit (CIA) ops (about 0.1 s of
    CPU, twice per export with repeated blocks); the result depends only on the ops we keep
    whole and on the registered CIA kernels and op namespaces, so it is computed again only
    when one of those changed (a custom op registered in between).
    """
    from torch.export.exported_program import _split_decomp_table_to_cia_and_python_decomp

    key = _registry_state()
    if key not in _SPLIT:
        _SPLIT.clear()
        split = _split_decomp_table_to_cia_and_python_decomp(decomposition_table())
        _SPLIT[key] = _SPLIT[_registry_state()] = split  # splitting names more namespaces
    cia, python = _SPLIT[key]
    return dict(cia), dict(python)


def _registry_state() -> tuple[Any, ...]:
    cia = torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")
    return frozenset(ops.kept_whole()), tuple(torch.ops._dir), frozenset(cia)
