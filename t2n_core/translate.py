"""Walk a captured ``torch.export`` graph and build the NNEF :class:`~t2n_core.ir.Graph`.

Each ``call_function`` node goes to the handler registered for its ATen overload
(``t2n_core.ops``); handlers receive one :class:`EmitContext`.
"""

from __future__ import annotations

import functools
import logging
import operator
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind

from t2n_core.errors import TranslationError, UnsupportedOpsError
from t2n_core.ir import Expr, Graph, Operation, Ref, Value, Variable
from t2n_core.ops import registry
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


def module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    for path, _type in reversed(list(stack.values())):
        if isinstance(path, str) and not path.startswith("_empty"):
            return path
    return ""


def source_line(node: torch.fx.Node) -> str:
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+)', trace)
    if not frames:
        return "unknown source line"
    user = [f for f in frames if f"{os.sep}torch{os.sep}" not in f[0]]
    file, line = (user or frames)[-1]
    return f"{file}:{line}"


def user_op(node: torch.fx.Node) -> str:
    """The op the user's code called: torch.export wraps side-effecting ops (``print``,
    custom ops with effects) in ``with_effects(token, op, *args)``."""
    if getattr(node.target, "__name__", "") == "with_effects" and len(node.args) > 1:
        return f"{node.args[1]} (an op with side effects)"
    return str(node.target)


def describe(node: torch.fx.Node) -> str:
    where = module_path(node) or "<root module>"
    return f"{user_op(node)} in module '{where}' ({source_line(node)})"


def _short_op_name(target: Any) -> str:
    name = getattr(target, "__name__", str(target))
    return name.split(".")[0]


class EmitContext:
    """What a handler sees: the current node's arguments as NNEF operands, and ways to emit."""

    def __init__(self, graph: Graph, symbols: SymbolTable, blocks: Any = None):
        self.graph = graph
        self.symbols = symbols
        self.blocks = blocks  # t2n_core.blocks.Blocks of the capture, for t2n::block calls
        self.fragment_cache: dict[Any, Any] = {}  # block variant -> its fragment (ops.blocks)
        self.env: dict[torch.fx.Node, Any] = {}
        self.node: torch.fx.Node | None = None

    # ---- reading the current node -------------------------------------------------------
    def raw(self, index: int | str, default: Any = None) -> Any:
        """The fx argument ``index`` (position) or keyword, unconverted."""
        assert self.node is not None
        if isinstance(index, str):
            return self.node.kwargs.get(index, default)
        return self.node.args[index] if index < len(self.node.args) else default

    def arg(self, index: int | str, default: Any = None) -> Any:
        """Argument ``index`` as an NNEF operand: a Ref, an int/float/bool, or an Expr."""
        return self.convert(self.raw(index, default))

    def convert(self, item: Any) -> Any:
        if isinstance(item, torch.fx.Node):
            if item not in self.env:
                raise self.error(f"argument {item.name} was not translated")
            return self.env[item]
        if isinstance(item, (list, tuple)):
            return type(item)(self.convert(i) for i in item)
        if isinstance(item, torch.SymInt):
            return self.dim(item)
        return item

    def meta(self, item: torch.fx.Node | int | None = None) -> Any:
        """The FakeTensor (or SymInt) that torch.export recorded for a node or argument index."""
        if item is None:
            item = self.node
        elif isinstance(item, int):
            item = self.raw(item)
        assert isinstance(item, torch.fx.Node)
        return item.meta.get("val")

    def value(self, ref: Ref) -> Value:
        return self.graph.values[ref.name]

    def dtype(self, operand: Any) -> torch.dtype:
        if isinstance(operand, Ref):
            return self.value(operand).dtype
        if isinstance(operand, bool):
            return torch.bool
        if isinstance(operand, (int, Expr)):
            return torch.int64
        return torch.float32

    def rank(self, ref: Ref) -> int:
        return self.value(ref).rank

    def shape(self, ref: Ref) -> tuple[int | str, ...]:
        return self.value(ref).shape

    def dim(self, size: int | torch.SymInt) -> int | Expr:
        d = self.symbols.dim(size)
        return d if isinstance(d, int) else Expr(d)

    def out_shape(self, meta: Any = None) -> tuple[int | str, ...]:
        meta = self.meta() if meta is None else meta
        return self.symbols.shape(meta.shape)

    # ---- writing -------------------------------------------------------------------------
    def hint(self, suffix: str | None = None) -> str:
        assert self.node is not None
        path = module_path(self.node)
        op = suffix or _short_op_name(self.node.target)
        return f"{path}_{op}" if path else op

    def emit(
        self,
        op: str,
        args: Sequence[Any],
        attrs: dict[str, Any] | None = None,
        *,
        dtype: torch.dtype,
        shape: Sequence[int | str],
        hint: str | None = None,
    ) -> Ref:
        """Append ``name = op(args, attrs)`` and return a Ref to the new value."""
        name = self.graph.fresh_name(self.hint(hint))
        self.graph.add_value(Value(name, dtype, tuple(shape)))
        self.graph.operations.append(
            Operation(op, [name], list(args), dict(attrs or {}), source=self.hint())
        )
        return Ref(name)

    def emit_multi(
        self,
        op: str,
        args: Sequence[Any],
        attrs: dict[str, Any] | None,
        outputs: Sequence[tuple[torch.dtype, Sequence[int | str]]],
        *,
        array: bool = False,
        hint: str | None = None,
    ) -> list[Ref]:
        names = []
        for dtype, shape in outputs:
            name = self.graph.fresh_name(self.hint(hint))
            self.graph.add_value(Value(name, dtype, tuple(shape)))
            names.append(name)
        self.graph.operations.append(
            Operation(op, names, list(args), dict(attrs or {}), self.hint(), array_outputs=array)
        )
        return [Ref(n) for n in names]

    def emit_like(
        self, op: str, args: Sequence[Any], attrs: dict[str, Any] | None = None, **kw: Any
    ) -> Ref:
        """Emit an op whose output has the current node's dtype and shape (a complex one gets
        the last axis of 2 that stores it)."""
        meta = self.meta()
        shape = self.out_shape(meta) + ((2,) if meta.dtype.is_complex else ())
        return self.emit(op, args, attrs, dtype=meta.dtype, shape=shape, **kw)

    def cast(self, operand: Any, dtype: torch.dtype) -> Any:
        """``operand`` as ``dtype``: a literal for f32 python numbers, else a cast op if needed."""
        from t2n_core.nnef.text import tract_dtype_name

        if not isinstance(operand, (Ref, Expr)):
            return self.scalar(operand, dtype)
        if isinstance(operand, Ref) and self.dtype(operand) == dtype:
            return operand
        shape = self.shape(operand) if isinstance(operand, Ref) else ()
        return self.emit(
            "tract_core_cast",
            [operand],
            {"to": tract_dtype_name(dtype)},
            dtype=dtype,
            shape=shape,
            hint="cast",
        )

    def scalar(self, value: float | int | bool, dtype: torch.dtype) -> Any:
        """A rank-0 operand of ``dtype`` (NNEF literals are f32, TDim or bool)."""
        if dtype == torch.float32:
            return float(value)
        if dtype == torch.bool:
            return bool(value)
        from t2n_core.nnef.text import tract_dtype_name

        lit = float(value) if dtype.is_floating_point else int(value)
        return self.emit(
            "tract_core_cast", [lit], {"to": tract_dtype_name(dtype)}, dtype=dtype, shape=(),
            hint="const",
        )  # fmt: skip

    def constant(self, tensor: torch.Tensor, hint: str = "const") -> Ref:
        """A tensor baked into the archive as a variable."""
        name = self.graph.fresh_name(self.hint(hint))
        self.graph.variables[name] = Variable(name, name, tensor.detach().clone())
        self.graph.add_value(Value(name, tensor.dtype, tuple(tensor.shape)))
        return Ref(name)

    def fragment(self, name: str, text: str | None = None) -> str:
        """Declare fragment ``name`` (text given, or read from ``ops/fragments/<name>.nnef``)."""
        if name not in self.graph.fragments:
            self.graph.fragments[name] = text if text is not None else fragment_text(name)
        return name

    def extension(self, name: str) -> None:
        self.graph.extensions.add(name)

    def error(self, message: str) -> TranslationError:
        where = describe(self.node) if self.node is not None else "graph"
        return TranslationError(f"{where}: {message}")


_FRAGMENT_DIR = Path(__file__).parent / "ops" / "fragments"


@functools.cache
def fragment_text(name: str) -> str:
    """The NNEF text of a fragment kept as data in ``t2n_core/ops/fragments/``."""
    return (_FRAGMENT_DIR / f"{name}.nnef").read_text()


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
        if registry.lookup(node.target, complex_inputs) is None:
            key = (node.target, module_path(node), source_line(node))
            if key not in seen:
                seen.add(key)
                if complex_inputs:
                    problems.append(
                        f"{describe(node)}: no NNEF translation on complex tensors (take abs, "
                        f"angle, real/imag or view_as_real first; complex ops: "
                        f"{', '.join(registry.complex_ops())})"
                    )
                else:
                    problems.append(f"{describe(node)}: no NNEF translation")
    return problems


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
    ctx = EmitContext(graph, symbols, blocks)
    kinds = {spec.arg.name: spec for spec in ep.graph_signature.input_specs}
    for node in ep.graph.nodes:
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
            entry = registry.lookup(node.target, has_complex_input(node))
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
