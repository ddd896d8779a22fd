"""Walk a captured ``torch.export`` graph and build the NNEF :class:`~t2n_core.ir.Graph`.

Each ``call_function`` node goes to the handler registered for its ATen overload
(``t2n_core.ops``); handlers receive one :class:`EmitContext`.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Mapping
from typing import Any

import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from t2n_core import ops
from t2n_core.emit import EmitContext, describe, module_path, source_line
from t2n_core.errors import TranslationError, UnsupportedOpsError
from t2n_core.ir import Graph, Operation, Ref, Value, Variable
from t2n_core.node_order import canonical_order
from t2n_core.symbolic import SymbolTable

logger = logging.getLogger(__name__)

# Nodes that only compute or assert sizes: their value is read from the node's metadata.
_SHAPE_ONLY = {
    torch.ops.aten.sym_size.int,
    torch.ops.aten.sym_numel.default,
    torch.ops.aten.sym_stride.int,
    operator.add, operator.sub, operator.mul, operator.floordiv, operator.mod,
    operator.neg, operator.truediv,
}  # fmt: skip
_IGNORED = {
    torch.ops.aten._assert_scalar.default,
    torch.ops.aten.sym_constrain_range_for_size.default,
    torch.ops.aten._assert_tensor_metadata.default,
}
for _name in ("sym_constrain_range", "_assert_async"):
    for _ov in ("default", "msg"):
        _op = getattr(getattr(torch.ops.aten, _name, None), _ov, None)
        if _op is not None:
            _IGNORED.add(_op)


def _is_size_node(node: torch.fx.Node) -> bool:
    val = node.meta.get("val")
    return node.target in _SHAPE_ONLY or isinstance(val, (torch.SymInt, torch.SymFloat))


def has_complex_input(node: torch.fx.Node) -> bool:
    """Whether a tensor argument of ``node`` is complex (stored with a last axis of 2)."""
    return any(
        isinstance(a, torch.fx.Node)
        and isinstance(val := a.meta.get("val"), torch.Tensor)
        and val.dtype.is_complex
        for a in node.all_input_nodes
    )


def find_unsupported(ep: ExportedProgram) -> list[str]:
    """Every op in the graph with no translation, with module path and source line."""
    problems: list[str] = []
    seen: set[tuple[Any, str, str]] = set()
    for node in ep.graph.nodes:
        if node.op != "call_function" or node.target in _IGNORED or _is_size_node(node):
            continue
        complex_inputs = has_complex_input(node)
        if ops.lookup(node.target, complex_inputs) is None:
            key = (node.target, module_path(node), source_line(node))
            if key not in seen:
                seen.add(key)
                if complex_inputs:
                    problems.append(
                        f"{describe(node)}: no NNEF translation on complex tensors (take abs, "
                        f"angle, real/imag or view_as_real first; complex ops: "
                        f"{', '.join(ops.complex_ops())})"
                    )
                elif _from_values(node):
                    problems.append(
                        f"{describe(node)}: a size or condition computed from tensor values "
                        "(.tolist(), .item(), nonzero, ...): tract takes sizes from the inputs' "
                        "shapes only; compute it with tensor ops over static shapes (e.g. every "
                        "expert on every token, weighted), or outside the model"
                    )
                else:
                    problems.append(f"{describe(node)}: no NNEF translation")
    return problems


def _from_values(node: torch.fx.Node) -> bool:
    """Whether ``node`` computes a symbolic int/bool from a value read out of a tensor (an
    unbacked symbol of torch.export), not from input shapes."""
    from torch.fx.experimental.symbolic_shapes import free_unbacked_symbols

    val = node.meta.get("val")
    if isinstance(val, (torch.SymInt, torch.SymBool, torch.SymFloat)):
        return bool(free_unbacked_symbols(val))
    return False


def translate(
    ep: ExportedProgram,
    *,
    tensors: dict[str, Any],
    inputs: Mapping[str, str],
    output_names: list[str],
    symbols: SymbolTable,
    progress: Any = None,
    blocks: Any = None,
) -> Graph:
    """Build the NNEF graph of ``ep``; ``tensors`` maps state-dict/constant names to tensors,
    ``inputs`` each tensor user-input placeholder (by node name) to its graph input name."""
    problems = find_unsupported(ep)
    if problems:
        raise UnsupportedOpsError(problems)
    graph = Graph()
    graph.reserve([*inputs.values(), *output_names])
    ctx = EmitContext(graph, symbols, blocks, translate_program=translate)
    kinds = {spec.arg.name: spec for spec in ep.graph_signature.input_specs}
    for node in canonical_order(ep.graph):  # not the traced order: see t2n_core/node_order.py
        ctx.node = node
        if node.op == "placeholder":
            spec = kinds[node.name]
            if spec.kind == InputKind.USER_INPUT:
                meta = node.meta["val"]
                if not isinstance(meta, torch.Tensor):
                    ctx.env[node] = ctx.convert(meta)
                    continue
                name = inputs[node.name]
                value = graph.add_value(Value(name, meta.dtype, symbols.shape(meta.shape)))
                graph.inputs.append(value)
                ctx.env[node] = Ref(name)
            elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR):
                target = spec.target
                tensor = tensors[target]
                name = graph.fresh_name(target)
                graph.variables[name] = Variable(name, target, tensor)
                meta = node.meta["val"]
                graph.add_value(Value(name, meta.dtype, tuple(meta.shape)))
                ctx.env[node] = Ref(name)
            else:
                raise TranslationError(f"input {node.name} of kind {spec.kind} is not supported")
        elif node.op == "call_function":
            if node.target in _IGNORED:
                continue
            if _is_size_node(node):
                ctx.env[node] = ctx.convert(node.meta["val"])
                continue
            entry = ops.lookup(node.target, has_complex_input(node))
            assert entry is not None
            try:
                ctx.env[node] = entry.handler(ctx, node)
            except TranslationError:
                raise
            except Exception as exc:  # a handler bug: say where it happened
                raise TranslationError(f"{describe(node)}: translation failed: {exc}") from exc
            if progress is not None:
                progress.update(1)
        elif node.op == "output":
            results = node.args[0]
            refs = [ctx.convert(r) for r in results]
            _bind_outputs(ctx, refs, output_names)
    return graph


def _bind_outputs(ctx: EmitContext, refs: list[Any], output_names: list[str]) -> None:
    graph = ctx.graph
    used: set[str] = set()
    renamed: dict[str, str] = {}  # an output returned twice ((y, y)) was renamed the first time
    for ref, wanted in zip(refs, output_names):
        if not isinstance(ref, Ref):
            raise TranslationError(
                f"output {wanted!r} is not a tensor computed by the graph ({ref!r})"
            )
        ref = Ref(renamed.get(ref.name, ref.name))
        producer = graph.producer(ref.name)
        is_input = any(v.name == ref.name for v in graph.inputs)
        if producer is None or is_input or ref.name in used or ref.name in graph.variables:
            value = graph.values[ref.name]
            graph.add_value(Value(wanted, value.dtype, value.shape))
            graph.operations.append(Operation("copy", [wanted], [ref], source="output"))
        else:
            _rename(graph, ref.name, wanted)
            renamed[ref.name] = wanted
        used.add(wanted)
        graph.outputs.append(wanted)


def _rename(graph: Graph, old: str, new: str) -> None:
    if old == new:
        return
    if new in graph.values:
        # the wanted name is taken by an intermediate value: move that one aside first
        _rename(graph, new, graph.fresh_name(new + "_inner"))
    value = graph.values.pop(old)
    value.name = new
    graph.values[new] = value
    graph.replace_refs({old: new})
    for op in graph.operations:
        op.outputs = [new if o == old else o for o in op.outputs]
    graph.outputs = [new if o == old else o for o in graph.outputs]
