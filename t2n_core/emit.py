"""What an op handler sees while translating one node: :class:`EmitContext` (the node's
arguments as NNEF operands, ways to emit operations into the graph) and where a node comes
from in the user's code. Below both the translator and the op modules."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.fx

from t2n_core.errors import TranslationError
from t2n_core.ir import Expr, Graph, Operation, Ref, Value, Variable
from t2n_core.nnef.text import tract_dtype_name
from t2n_core.symbolic import SymbolTable


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

    def __init__(
        self,
        graph: Graph,
        symbols: SymbolTable,
        blocks: Any = None,
        translate_program: Callable[..., Graph] | None = None,
    ):
        self.graph = graph
        self.symbols = symbols
        self.blocks = blocks  # t2n_core.blocks.Blocks of the capture, for t2n::block calls
        #: the translator (t2n_core.translate.translate), for a block's own program
        self.translate_program = translate_program
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
