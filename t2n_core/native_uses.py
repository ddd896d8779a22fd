"""Tract-native tensors (e.g. Q4_0) may only feed the ops tract runs on them compressed: find
those uses, give other uses a dequantized view, inline fragments that would hide a misuse,
and refuse what is left."""

from __future__ import annotations

import logging

from t2n_core.encoding import is_native
from t2n_core.errors import TranslationError
from t2n_core.fold_scale import multiply_follows
from t2n_core.ir import Graph, Operation, Ref, Variable

logger = logging.getLogger(__name__)


#: ops that tract runs directly on block-quantized (tract-native) weights
NATIVE_CONSUMERS = {"matmul": 1, "conv": 1, "tract_core_gather": 0}
_SLICE_HINT = " (only a slice of whole rows, on dim 0 with stride 1, stays compressed)"


def native_use_ok(graph: Graph, op: Operation, position: int) -> bool:
    """Whether tract can take a tract-native tensor as ``op``'s operand ``position``: a
    :data:`NATIVE_CONSUMERS` position, or a fragment parameter that only reaches those
    (:func:`native_parameters`)."""
    if op.op in graph.blocks:
        return position in native_parameters(graph.blocks[op.op])
    return NATIVE_CONSUMERS.get(op.op) == position


def give_native_views(graph: Graph) -> list[str]:
    """Point each use of a tract-native tensor that tract cannot run on it (anything but the
    :data:`NATIVE_CONSUMERS` positions) at a view of the same values in a fragment encoding
    (the storage protocol's optional ``nnef_fragment_view``), labelled ``'<label>.view'``;
    matmul / conv / gather uses stay native. Returns one note per tensor given a view.
    """
    notes: list[str] = []
    for name, var in list(graph.variables.items()):
        if not is_native(var) or not callable(getattr(var.tensor, "nnef_fragment_view", None)):
            continue
        ops = [
            op for op in graph.operations
            if any(isinstance(a, Ref) and a.name == name and not native_use_ok(graph, op, i)
                   for i, a in enumerate(op.args))
        ]  # fmt: skip
        if not ops:
            continue
        tensor = var.tensor.nnef_fragment_view()
        if tensor is None:
            continue
        label = f"{var.label}.view"
        view = graph.fresh_name(label)
        graph.variables[view] = Variable(view, label, tensor)
        value = graph.values[name]
        graph.values[view] = type(value)(view, value.dtype, value.shape)
        for op in ops:
            op.args = [
                Ref(view) if isinstance(a, Ref) and a.name == name and
                not native_use_ok(graph, op, i) else a
                for i, a in enumerate(op.args)
            ]  # fmt: skip
        used = sorted({op.op for op in ops})
        note = (
            f"tensor {var.label!r} is tract-native but also used by {used} (from "
            f"'{ops[0].source or '<root module>'}'): those uses read a dequantized view "
            f"{label!r} (the same values in a fragment encoding, decoded to float when tract "
            "loads it); matmul/conv/gather uses stay native"
        )
        logger.info("%s", note)
        notes.append(note)
    return notes


def check_native_uses(graph: Graph) -> None:
    """Refuse a tract-native encoded tensor (e.g. Q4_0) fed to an op tract cannot run on it.

    tract keeps such tensors compressed and runs matmul (as the second operand), conv (as the
    filter) and gather (as the data) on them; anything else fails when tract loads the archive.
    :mod:`t2n_core.passes` first folds whole-row slices of such tensors into row-range
    variables (:func:`t2n_core.fold.fold_row_slices`).
    """
    native = {name: var for name, var in graph.variables.items() if is_native(var)}
    if not native:
        return
    for op in graph.operations:
        for position, arg in enumerate(op.args):
            if isinstance(arg, Ref) and arg.name in native:
                if not native_use_ok(graph, op, position):
                    var = native[arg.name]
                    where = op.source or "<root module>"
                    hint = _SLICE_HINT if op.op == "slice" else ""
                    raise TranslationError(
                        f"tensor {var.label!r} is stored in a tract-native quantized format, "
                        f"which tract can only feed to matmul, conv and gather, but op "
                        f"'{op.op}' (from '{where}') uses it{hint}. Exclude that module from "
                        "quantize_model (exclude=[...]) or quantize it with a fragment codec "
                        "such as 'minmax'."
                    )
        for value in op.attrs.values():
            if isinstance(value, Ref) and value.name in native:
                raise TranslationError(
                    f"tensor {native[value.name].label!r} (tract-native quantized) is used as "
                    f"an attribute of '{op.op}'"
                )


def native_parameters(body: Graph) -> dict[int, set[int]]:
    """The fragment parameters of ``body`` that may receive a tract-native tensor: position ->
    the positions of the parameters whose value its matmuls take as input.

    Such a parameter must only feed matmul (as the weight, its input not a concatenation,
    which tract would split, see :mod:`t2n_core.concat_guard`), gather (as the data) or conv
    (as the filter, not followed by a multiply: :func:`t2n_core.fold_scale.guard_block_convs`
    guards those first); anything else needs the graph passes that run on a flat graph.
    """
    params = {v.name: i for i, v in enumerate(body.inputs)}
    uses: dict[str, list[tuple[Operation, int]]] = {}  # parameter -> (op, operand), in order
    for op in body.operations:
        for i, arg in enumerate([*op.args, *op.attrs.values()]):
            if isinstance(arg, Ref) and arg.name in params:
                uses.setdefault(arg.name, []).append((op, i))
    ok: dict[int, set[int]] = {}
    for position, param in enumerate(body.inputs):
        if param.name not in uses:
            continue
        sources: set[int] = set()
        for op, i in uses[param.name]:
            source = _native_use(body, op, i)
            if source is False:
                break
            if isinstance(source, str):
                sources.add(params[source])
        else:
            ok[position] = sources
    return ok


_AXIS_OPS = ("reshape", "squeeze", "unsqueeze", "transpose")


def _native_use(body: Graph, op: Operation, position: int) -> bool | str:
    """Whether a native tensor may be ``op``'s operand ``position``; for a matmul whose input
    comes (through axis moves) from a parameter of ``body``, that parameter's name."""
    if op.op == "tract_core_gather":
        return position == 0
    if op.op == "conv":  # as the filter, unless tract would fold a multiply into it
        return position == 1 and not multiply_follows(body, op)
    if op.op != "matmul" or position != 1:
        return False
    return _concat_free_source(body, op.args[0])


def _concat_free_source(graph: Graph, source: object) -> bool | str:
    while isinstance(source, Ref):
        producer = graph.producer(source.name)
        if producer is None:
            return source.name if any(v.name == source.name for v in graph.inputs) else True
        if producer.op == "concat":
            return False
        if producer.op not in _AXIS_OPS:
            return True
        source = producer.args[0]
    return True


def _call_keeps_native(graph: Graph, op: Operation, ok: dict[int, set[int]]) -> bool:
    for position, arg in enumerate(op.args):
        if not (isinstance(arg, Ref) and arg.name in graph.variables):
            continue
        if not is_native(graph.variables[arg.name]):
            continue
        if position not in ok:
            return False
        for k in ok[position]:
            if _concat_free_source(graph, op.args[k]) is False:
                return False
    return True


def inline_blocks_with_native_misuse(graph: Graph) -> list[str]:
    """Inline the fragments that a tract-native variable reaches other than through
    :func:`native_parameters`, so that the passes on stored tensors (row slices, folds,
    guards) and the native-use check see their ops; returns their names."""
    inlined = []
    for name, body in list(graph.blocks.items()):
        ok = native_parameters(body)
        calls = [op for op in graph.operations if op.op == name]
        if not all(_call_keeps_native(graph, op, ok) for op in calls):
            graph.inline(name)
            inlined.append(name)
            logger.info("fragment %s inlined: a tract-native weight needs graph passes", name)
    return inlined
