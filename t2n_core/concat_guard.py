"""Keep tract from splitting a tract-native (Q4_0) matmul over a concatenated input.

tract 0.23.9's ``ConcatThenEinsum`` optimization rewrites ``matmul(concat(a, b), W)``, the
concatenation on the summed axis, into ``matmul(a, slice(W)) + matmul(b, slice(W))``. It
slices the weight along its columns, which a block-quantized tensor cannot be: the tract
process aborts ("Tensor storage is not plain"). This happens after any ``torch.cat`` of
features feeding a quantized Linear, and between the layers of a bidirectional LSTM/GRU.
The translation already splits such a product per piece when the concat is its direct input
(:func:`t2n_core.ops.linear.split_concat_product`); this pass is the net for a concat that
reaches the matmul through axis ops, which tract folds away (a bidirectional batch-first LSTM
feeding a GRU: concat, transpose to batch-first, transpose back to time-major). ``max(x, x)``
between them is an identity that tract does not look through (measured), so the matmul keeps
its whole compressed weight.
"""

from __future__ import annotations

from collections.abc import Callable

from t2n_core.ir import Graph, Operation, Ref, Value, Variable

#: ops that only move axes: tract folds them into the matmul, so they do not shield it
_AXIS_OPS = {"reshape", "squeeze", "unsqueeze", "transpose"}


def guard_concat_before_native_matmul(graph: Graph, is_native: Callable[[Variable], bool]) -> int:
    """Insert ``max(x, x)`` before each matmul of a native weight whose input is a concat.

    Returns how many were inserted.
    """
    guarded = 0
    operations: list[Operation] = []
    for op in graph.operations:
        if op.op == "matmul" and _native_weight(graph, op, is_native) and _from_concat(graph, op):
            source = op.args[0]
            value = graph.values[source.name]
            name = graph.fresh_name(f"{source.name}_unsplit")
            graph.add_value(Value(name, value.dtype, value.shape))
            operations.append(Operation("max", [name], [source, source], source=op.source))
            op.args = [Ref(name), *op.args[1:]]
            guarded += 1
        operations.append(op)
    graph.operations = operations
    return guarded


def _native_weight(graph: Graph, op: Operation, is_native: Callable[[Variable], bool]) -> bool:
    w = op.args[1] if len(op.args) > 1 else None
    return isinstance(w, Ref) and w.name in graph.variables and is_native(graph.variables[w.name])


def _from_concat(graph: Graph, op: Operation) -> bool:
    source = op.args[0]
    while isinstance(source, Ref):
        producer = graph.producer(source.name)
        if producer is None:
            return False
        if producer.op == "concat":
            return True
        if producer.op not in _AXIS_OPS:
            return False
        source = producer.args[0]
    return False
