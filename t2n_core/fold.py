"""Graph passes on stored tensors, run by :mod:`t2n_core.passes` before the graph is written.

:func:`fold_row_slices` turns ``slice`` of a stored tensor along dim 0 (or dim 1) into a new
stored tensor holding those rows (columns), when the tensor can cut its own rows (the
optional ``nnef_slice_rows`` / ``nnef_slice_cols`` methods of the storage protocol,
:mod:`t2n_core.storage`). Column ranges come from a matmul or conv whose input is a concat
along its input features, which the translation splits per piece. This is what
lets ``nn.MultiheadAttention`` cross-attention, which splits its packed ``in_proj_weight``
into query and key/value rows before the matmuls, keep a tract-native weight (Q4_0)
compressed: tract can feed such a weight to matmul but not to ``slice``.
:func:`fold_reshapes` then stores a tensor whose only use is a squeeze with the new shape
(``nnef_reshape``): a row of a 3-D expert weight, squeezed, becomes one 2-D matrix, and a
3-D expert weight flattened to ``[experts * out, in]`` (gathered experts) is stored so.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from t2n_core.ir import Graph, Operation, Ref, Value, Variable, _refs

logger = logging.getLogger(__name__)


def fold_row_slices(graph: Graph, is_native: Callable[[Variable], bool]) -> int:
    """Replace row slices of stored tensors by stored row ranges; returns how many were folded.

    A ``slice(v, axes = [0], begin = [b], end = [e])`` (static bounds, stride 1) of a variable
    ``v`` whose tensor has ``nnef_slice_rows`` becomes a variable labelled
    ``'<v label>.rows_<b>_<e>'`` (one per distinct range; a slice of a slice counts rows in
    the first tensor), declared right after ``v``; ``axes = [1]`` likewise gives
    ``'<v label>.cols_<b>_<e>'`` through ``nnef_slice_cols``. The
    slices of ``v`` are folded when ``is_native(v)`` (tract could not run the slice) or when
    every use of ``v`` is such a slice (so ``v`` itself is no longer written); otherwise they
    are left alone, so that a weight also used whole is not stored twice. Variables no longer
    used are dropped.
    """
    folder = _RowFolder(graph, is_native)
    folded = 0
    while renames := folder.fold_once():
        folded += len(renames)
        graph.replace_refs(renames)
    if folded:
        folder.place_after_origin()
        graph.remove_dead_code()
        logger.debug("folded %d row slice(s) of stored tensors", folded)
    return folded


def fold_reshapes(graph: Graph) -> int:
    """Store a tensor that offers ``nnef_reshape`` with the shape of its only use, a
    ``squeeze`` or ``reshape`` (static shapes); returns how many were folded. The variable
    keeps its name and label; the squeeze or reshape is dropped."""
    uses: dict[str, list[Operation]] = {name: [] for name in graph.variables}
    for op in graph.operations:
        for name in _refs([*op.args, *op.attrs.values()]):
            if name in uses:
                uses[name].append(op)
    renames: dict[str, str] = {}
    for name, ops in uses.items():
        var = graph.variables[name]
        if len(ops) != 1 or name in graph.outputs:
            continue
        op = ops[0]
        if op.op not in ("squeeze", "reshape") or op.args != [Ref(name)] or len(op.outputs) != 1:
            continue
        if op.outputs[0] in graph.outputs:
            continue
        if not callable(getattr(var.tensor, "nnef_reshape", None)):
            continue
        out = graph.values[op.outputs[0]]
        if not all(type(d) is int for d in out.shape):
            continue
        tensor = var.tensor.nnef_reshape(tuple(out.shape))
        if tensor is None:
            continue
        graph.variables[name] = Variable(name, var.label, tensor)
        graph.add_value(Value(name, out.dtype, out.shape))
        renames[op.outputs[0]] = name
    if renames:
        graph.operations = [op for op in graph.operations if op.outputs[0] not in renames]
        graph.replace_refs(renames)
        logger.debug("stored %d tensor(s) with the shape of their only reshape", len(renames))
    return len(renames)


class _RowFolder:
    def __init__(self, graph: Graph, is_native: Callable[[Variable], bool]) -> None:
        self.graph = graph
        self.is_native = is_native
        self.by_label: dict[str, str] = {}  # label of a row range -> its variable name
        self.origin: dict[str, str] = {}  # row-range variable -> the variable it was cut from
        self.root: dict[str, tuple[str, int]] = {}  # row-range variable -> (first label, row)

    def fold_once(self) -> dict[str, str]:
        """One round: drops the slices it folds, returns ``{slice output: row variable}``."""
        graph = self.graph
        uses: dict[str, list[Operation | None]] = {name: [] for name in graph.variables}
        for op in graph.operations:
            for name in _refs([*op.args, *op.attrs.values()]):
                if name in uses:
                    uses[name].append(op)
        for name in graph.outputs:
            if name in uses:
                uses[name].append(None)

        renames: dict[str, str] = {}
        for name, ops in uses.items():
            var = graph.variables[name]
            slices = [(op, r) for op in ops if op is not None and (r := _dim_range(op, name))]
            slices = [(o, r) for o, r in slices if callable(getattr(var.tensor, _CUT[r[0]], None))]
            if not slices or (len(slices) != len(ops) and not self.is_native(var)):
                continue
            for op, (axis, begin, end) in slices:
                target = self.range_variable(var, axis, begin, end, op)
                if target is not None:
                    renames[op.outputs[0]] = target
        graph.operations = [
            op for op in graph.operations if not (op.op == "slice" and op.outputs[0] in renames)
        ]
        return renames

    def range_variable(
        self, var: Variable, axis: int, begin: int, end: int, op: Operation
    ) -> str | None:
        """The variable holding ``begin:end`` of dim ``axis`` of ``var`` (once per range)."""
        graph = self.graph
        if not 0 <= begin < end <= var.tensor.shape[axis] or op.outputs[0] in graph.outputs:
            return None
        if axis == 0:
            root, offset = self.root.get(var.name, (var.label, 0))
            label = f"{root}.rows_{offset + begin}_{offset + end}"
        else:
            root, offset = var.label, 0
            label = f"{root}.cols_{begin}_{end}"
        if label in self.by_label:
            return self.by_label[label]
        tensor = getattr(var.tensor, _CUT[axis])(begin, end)
        if tensor is None:
            return None
        out = graph.values[op.outputs[0]]
        name = graph.fresh_name(label)
        graph.variables[name] = Variable(name, label, tensor)
        graph.add_value(Value(name, out.dtype, out.shape))
        self.by_label[label] = name
        self.origin[name] = var.name
        if axis == 0:
            self.root[name] = (root, offset + begin)
        return name

    def place_after_origin(self) -> None:
        """Reorder the variables so that each row range follows the variable it was cut from."""
        children: dict[str, list[str]] = {}
        for name, origin in self.origin.items():
            children.setdefault(origin, []).append(name)
        ordered: dict[str, Variable] = {}

        def place(name: str) -> None:
            ordered[name] = self.graph.variables[name]
            for child in children.get(name, []):
                place(child)

        for name in self.graph.variables:
            if name not in self.origin:
                place(name)
        self.graph.variables = ordered


#: the storage-protocol method that cuts a range of each dim
_CUT = {0: "nnef_slice_rows", 1: "nnef_slice_cols"}


def _dim_range(op: Operation, name: str) -> tuple[int, int, int] | None:
    """``(axis, begin, end)`` when ``op`` slices ``name`` on dim 0 or 1 with stride 1."""
    if op.op != "slice" or op.args != [Ref(name)] or len(op.outputs) != 1:
        return None
    attrs = op.attrs
    if set(attrs) - {"axes", "begin", "end", "stride"} or attrs.get("axes") not in ([0], [1]):
        return None
    if attrs.get("stride", [1]) != [1]:
        return None
    begin, end = attrs.get("begin"), attrs.get("end")
    if not (isinstance(begin, list) and isinstance(end, list) and len(begin) == len(end) == 1):
        return None
    b, e = begin[0], end[0]
    if type(b) is not int or type(e) is not int:
        return None
    return attrs["axes"][0], b, e
