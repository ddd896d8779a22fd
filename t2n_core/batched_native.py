"""A batched matmul over a 3-D tract-native weight, one 2-D matmul per batch entry.

A mixture of experts that runs all its experts at once with ``torch.bmm(x, W)`` (Llama 4's
``Llama4TextExperts``: ``x`` ``[experts, tokens, in]``, ``W`` ``[experts, in, out]``, stored
``[experts, out, in]`` and read transposed once quantized, see
:func:`t2n_quant.matmul_weights.untranspose_bmm_experts`) translates to
``matmul(x, transpose(W))``. tract's quantized matmul takes a 2-D block-quantized weight only:
:func:`split_batched_native_matmul` writes one ``matmul`` per expert on ``W``'s rows of that
expert, which the writer then stores as a 2-D tensor of its own (a row slice, then a squeeze:
:mod:`t2n_core.fold`), and concatenates the results. Float weights keep the one batched matmul.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from t2n_core.ir import Graph, Operation, Ref, Value, Variable

logger = logging.getLogger(__name__)


def split_batched_native_matmul(graph: Graph, is_native: Callable[[Variable], bool]) -> int:
    """Replace each ``matmul(x, W)`` / ``matmul(x, transpose(W, [0, 2, 1]))`` whose ``W`` is a
    3-D tract-native variable and ``x`` a 3-D value with the same static first dim by one
    matmul per entry of that dim; returns how many were split."""
    split = 0
    operations: list[Operation] = []
    for op in graph.operations:
        found = _batched_native(graph, op, is_native)
        if found is None:
            operations.append(op)
            continue
        weight, transpose_b = found
        operations += _per_entry(graph, op, weight, transpose_b)
        split += 1
    if split:
        graph.operations = operations
        graph.remove_dead_code()
        logger.debug("split %d batched matmul(s) of 3-D tract-native weights", split)
    return split


def _batched_native(
    graph: Graph, op: Operation, is_native: Callable[[Variable], bool]
) -> tuple[str, bool] | None:
    """``(weight variable, transposeB of each 2-D matmul)`` when ``op`` is one to split."""
    if op.op != "matmul" or len(op.args) != 2 or op.attrs.get("transposeA", False):
        return None
    x, w = op.args
    if not (isinstance(x, Ref) and isinstance(w, Ref)) or x.name not in graph.values:
        return None
    transpose_b = bool(op.attrs.get("transposeB", False))
    if w.name not in graph.variables:
        producer = graph.producer(w.name)
        if producer is None or producer.op != "transpose" or producer.attrs != {"axes": [0, 2, 1]}:
            return None
        w, transpose_b = producer.args[0], not transpose_b
        if not isinstance(w, Ref) or w.name not in graph.variables:
            return None
    if not is_native(graph.variables[w.name]):
        return None
    w_shape, x_shape = graph.values[w.name].shape, graph.values[x.name].shape
    if len(w_shape) != 3 or len(x_shape) != 3 or type(w_shape[0]) is not int:
        return None
    return (w.name, transpose_b) if x_shape[0] == w_shape[0] else None


def _per_entry(graph: Graph, op: Operation, weight: str, transpose_b: bool) -> list[Operation]:
    x = op.args[0].name
    out = graph.values[op.outputs[0]]
    x_value, w_value = graph.values[x], graph.values[weight]

    def value(hint: str, shape: tuple, dtype=None) -> str:
        name = graph.fresh_name(f"{op.outputs[0]}_{hint}")
        graph.add_value(Value(name, dtype or out.dtype, shape))
        return name

    def entry(source: str, src: Value, e: int, hint: str) -> list[Operation]:
        cut = value(f"{hint}{e}_rows", (1, *src.shape[1:]), src.dtype)
        row = value(f"{hint}{e}", tuple(src.shape[1:]), src.dtype)
        return [
            Operation("slice", [cut], [Ref(source)], {"axes": [0], "begin": [e], "end": [e + 1]},
                      source=op.source),
            Operation("squeeze", [row], [Ref(cut)], {"axes": [0]}, source=op.source),
        ]  # fmt: skip

    ops: list[Operation] = []
    pieces: list[Ref] = []
    for e in range(w_value.shape[0]):
        ops += entry(x, x_value, e, "x")
        ops += entry(weight, w_value, e, "w")
        x_e, w_e = ops[-3].outputs[0], ops[-1].outputs[0]
        y = value(f"y{e}", tuple(out.shape[1:]))
        ops.append(
            Operation(
                "matmul",
                [y],
                [Ref(x_e), Ref(w_e)],
                {"transposeA": False, "transposeB": transpose_b},
                source=op.source,
            )
        )
        piece = value(f"y{e}_row", (1, *out.shape[1:]))
        ops.append(Operation("unsqueeze", [piece], [Ref(y)], {"axes": [0]}, source=op.source))
        pieces.append(Ref(piece))
    ops.append(Operation("concat", op.outputs, [pieces], {"axis": 0}, source=op.source))
    return ops
