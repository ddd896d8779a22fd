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


def decomposition_table() -> dict[Any, Any]:
    table = torch.export.default_decompositions()
    also = [getattr(torch.ops.aten, name) for name in _ALSO_DECOMPOSED]
    table.update(torch._decomp.get_decompositions(also))
    for op in ops.kept_whole():
        table.pop(op, None)
    return table
