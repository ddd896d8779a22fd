"""The model's inputs resolved once: name, position, dtype, example shape, dynamic axes and the
symbol of each axis. Export builds one :class:`InputPlan`; capture reads its ``torch.export``
dynamic shapes and binds torch's size symbols through it; translate names the graph inputs from
it; the archive declares its symbols. Nothing else matches inputs by position.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sympy
import torch
import torch.fx
from torch.export import Dim, ExportedProgram

from t2n_core.errors import CaptureError, ExportInputError
from t2n_core.ir import is_identifier
from t2n_core.symbolic import SymbolTable

DynamicAxes = Mapping[str, Mapping[int, str] | Sequence[int]]


@dataclass(frozen=True)
class PlannedInput:
    """One tensor input of the model."""

    name: str
    position: int  # index among the call's positional arguments
    dtype: torch.dtype
    example_shape: tuple[int, ...]
    axes: Mapping[int, str]  # dynamic axis (non-negative) -> symbol

    @property
    def shape(self) -> tuple[int | str, ...]:
        """The declared shape: the example's sizes, a symbol on each dynamic axis.

        >>> PlannedInput("x", 0, torch.float32, (2, 8), {1: "T"}).shape
        (2, 'T')
        """
        return tuple(self.axes.get(i, d) for i, d in enumerate(self.example_shape))


@dataclass(frozen=True)
class InputPlan:
    """The tensor inputs of one call, in order, and the number of positional arguments."""

    inputs: tuple[PlannedInput, ...]
    n_args: int
    streaming_symbol: str | None = None  # the symbol of every streaming axis, if any

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.inputs]

    @property
    def symbols(self) -> list[str]:
        """Every axis symbol, once, in order of first use."""
        return list(dict.fromkeys(s for i in self.inputs for s in i.axes.values()))

    def __getitem__(self, name: str) -> PlannedInput:
        for planned in self.inputs:
            if planned.name == name:
                return planned
        raise KeyError(name)

    def axis_symbol(self, name: str, axis: int) -> str | None:
        """The symbol of ``axis`` of input ``name``, if that axis is dynamic."""
        try:
            return self[name].axes.get(axis)
        except KeyError:
            return None

    @classmethod
    def resolve(
        cls,
        args: tuple[Any, ...],
        input_names: Sequence[str],
        dynamic_axes: DynamicAxes | None = None,
        streaming_axis: Mapping[str, int] | None = None,
    ) -> InputPlan:
        """Check ``input_names``, ``dynamic_axes`` and ``streaming_axis`` against ``args`` and
        resolve them.

        A list of axes gets symbols ``<input>_<axis>``; negative axes count from the end.
        Every streaming axis (``{input: time axis}``) becomes dynamic on one symbol: the one
        ``dynamic_axes`` gives it (all must share it), else ``"S"``.

        >>> plan = InputPlan.resolve((torch.zeros(2, 3), 1.5), ["x"], {"x": [-1]})
        >>> plan.inputs[0].shape, plan.symbols
        ((2, 'x_1'), ['x_1'])
        >>> plan = InputPlan.resolve((torch.zeros(2, 3),), ["x"], {"x": {0: "B"}}, {"x": 1})
        >>> plan.inputs[0].shape, plan.streaming_symbol
        (('B', 'S'), 'S')
        """
        tensors = [(i, a) for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
        names = list(input_names)
        if len(names) != len(tensors):
            raise ExportInputError(
                f"{len(names)} input_names given for {len(tensors)} tensor input(s): {names}"
            )
        unknown = [k for k in dynamic_axes or {} if k not in names]
        if unknown:
            raise ExportInputError(
                f"dynamic_axes names unknown input(s) {unknown}; inputs are {names}"
            )
        by_name = dict(zip(names, tensors))
        axes = {n: _axes_of(n, t, (dynamic_axes or {}).get(n, {})) for n, (_, t) in by_name.items()}
        symbol = None
        if streaming_axis is not None:
            symbol = _add_streaming(axes, streaming_axis, names)
            axes = {n: _axes_of(n, by_name[n][1], a) for n, a in axes.items()}
        planned = [
            PlannedInput(name, position, tensor.dtype, tuple(tensor.shape), axes[name])
            for name, (position, tensor) in by_name.items()
        ]
        return cls(tuple(planned), len(args), symbol)

    def dynamic_shapes(self) -> tuple[Any, ...] | None:
        """``torch.export``'s ``dynamic_shapes``, one entry per positional argument (one
        ``Dim`` per symbol, shared by every axis that names it)."""
        if not any(i.axes for i in self.inputs):
            return None
        dims = {s: Dim(s) for s in self.symbols}
        shapes: list[Any] = [None] * self.n_args
        for planned in self.inputs:
            if planned.axes:
                shapes[planned.position] = {a: dims[s] for a, s in planned.axes.items()}
        return tuple(shapes)

    def by_placeholder(self, program: ExportedProgram) -> dict[str, PlannedInput]:
        """Each tensor user-input placeholder of ``program`` (by node name) -> its input."""
        nodes = user_input_placeholders(program)
        if len(nodes) != len(self.inputs):
            raise CaptureError(
                f"the captured graph has {len(nodes)} tensor input(s), the call "
                f"{len(self.inputs)} ({self.names})"
            )
        return {node.name: planned for node, planned in zip(nodes, self.inputs)}

    def bind_symbols(self, program: ExportedProgram) -> SymbolTable:
        """torch's size symbols of ``program``'s inputs named with the plan's axis symbols;
        an axis the model's code fixed to one size is refused, naming it."""
        symbols = SymbolTable()
        nodes = {n.name: n for n in user_input_placeholders(program)}
        for node_name, planned in self.by_placeholder(program).items():
            meta = nodes[node_name].meta["val"]
            for axis, sym in planned.axes.items():
                size = meta.shape[axis]
                if not isinstance(size, torch.SymInt):
                    raise CaptureError(
                        f"dynamic axis {axis} ({sym}) of input {planned.name!r} was specialised "
                        f"to {size} by the model's code; remove that axis from dynamic_axes or "
                        "make the code size-agnostic"
                    )
                env = size.node.shape_env
                symbols.bind(size.node.expr, sym, env, sorts_as=torch_name(env, size.node.expr))
        return symbols


@contextlib.contextmanager
def shared_dim_symbols() -> Iterator[None]:
    """While ``torch.export`` fakes the inputs, every axis of one named ``Dim`` (the plan's
    symbol) gets the same torch size symbol, as torch does for a duck-sized input.

    torch creates one symbol per input axis and checks the named-Dim equalities after tracing;
    meanwhile the model's ops unify those symbols one guard at a time (sympy work per axis and
    per guard: for a KV cache, per layer the largest part of tracing a model whose layers are
    block calls). An axis whose example size differs from the first axis of its Dim gets its
    own symbol (torch then reports the violated equality, as before). Where torch lacks the
    private names used here, or records its shape events, this does nothing.
    """
    try:
        from torch.fx.experimental.symbolic_shapes import ShapeEnv
    except ImportError:  # pragma: no cover - a torch without it: nothing to share
        yield
        return
    original = ShapeEnv.__dict__.get("create_symbol")
    if original is None:
        yield
        return
    shared: dict[tuple[int, str, int], tuple[Any, Any]] = {}  # -> (shape env, symbol)

    @functools.wraps(original)
    def create_symbol(self: Any, val: Any, source: Any, *args: Any, **kwargs: Any) -> Any:
        names = getattr(self, "source_name_to_debug_name", None)
        name = names.get(getattr(source, "name", None)) if isinstance(names, dict) else None
        key = (id(self), name, val)
        known = shared.get(key) if name is not None and type(val) is int else None
        if known is None or getattr(self, "should_record_events", True):
            out = original(self, val, source, *args, **kwargs)
            if name is not None and type(val) is int and isinstance(out, sympy.Symbol):
                shared.setdefault(key, (self, out))
            return out
        symbol = known[1]
        _note_torch_name(self, symbol, source)
        # what torch's create_symbol does for a duck-sized input
        self.source_to_var[source.name] = symbol
        sources = self.var_to_sources[symbol]
        sources.append(source)
        if not source.is_ephemeral() and sources[0].is_ephemeral():
            sources[0], sources[-1] = sources[-1], sources[0]
        self.symbol_guard_counter[symbol] = 0
        return symbol

    ShapeEnv.create_symbol = create_symbol
    try:
        yield
    finally:
        ShapeEnv.create_symbol = original


#: per ShapeEnv: shared symbol -> the symbol torch would have ended up with (see below)
_TORCH_NAMES: weakref.WeakKeyDictionary[Any, dict[sympy.Symbol, sympy.Symbol]] = (
    weakref.WeakKeyDictionary()
)


def _note_torch_name(shape_env: Any, symbol: sympy.Symbol, source: Any) -> None:
    """Reserve the symbol id torch would have given ``source`` (later symbols keep their names)
    and remember the name torch would have kept for the whole Dim: its guards replace the
    symbol with the larger name by the other, so the smallest name of the group. Archives
    order sums and products by those names (:meth:`SymbolTable.bind`), as before."""
    generate = getattr(shape_env, "_generate_unique_id", None)
    if generate is None:
        return
    prefix = symbol.name.rstrip("0123456789")
    would_be = sympy.Symbol(f"{prefix}{generate(source.name)}", **symbol.assumptions0)
    names = _TORCH_NAMES.setdefault(shape_env, {})
    if would_be.name < names.get(symbol, symbol).name:
        names[symbol] = would_be


def torch_name(shape_env: Any, symbol: sympy.Symbol) -> sympy.Symbol:
    """The symbol torch alone would have given this shared Dim symbol (itself if none)."""
    return _TORCH_NAMES.get(shape_env, {}).get(symbol, symbol)


def user_input_placeholders(program: ExportedProgram) -> list[torch.fx.Node]:
    """The placeholders of ``program`` that stand for the caller's tensor arguments, in order."""
    kinds = {s.arg.name: s.kind.name for s in program.graph_signature.input_specs}
    return [
        n
        for n in program.graph.nodes
        if n.op == "placeholder"
        and kinds.get(n.name) == "USER_INPUT"
        and isinstance(n.meta.get("val"), torch.Tensor)
    ]


def default_input_names(forward: Any, args: tuple[Any, ...]) -> list[str]:
    """Names of the tensor arguments: the parameter names of ``forward`` (``xs_0``, ``xs_1``,
    ... for the tensors passed to ``*xs``), else ``input_<i>``.

    >>> default_input_names(lambda a, *xs: a, (torch.zeros(1), 2, torch.zeros(1)))
    ['a', 'xs_1']
    """
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    var = varargs_index(params)
    names = []
    for i, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            continue
        if var is not None and i >= var:
            candidate = f"{params[var].name}_{i - var}"
        elif i < len(params):
            candidate = params[i].name
        else:
            candidate = f"input_{i}"
        names.append(candidate if is_identifier(candidate) else f"input_{i}")
    return names


def varargs_index(params: list[inspect.Parameter]) -> int | None:
    """Position of the ``*args`` parameter of a signature, if any."""
    for i, p in enumerate(params):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return i
    return None


def _axes_of(
    name: str, tensor: torch.Tensor, spec: Mapping[int, str] | Sequence[int]
) -> dict[int, str]:
    if not isinstance(spec, Mapping):
        spec = {int(a): f"{name}_{int(a) % max(tensor.dim(), 1)}" for a in spec}
    axes: dict[int, str] = {}
    for axis, sym in spec.items():
        axis = int(axis)
        if axis < 0:
            axis += tensor.dim()
        if not 0 <= axis < tensor.dim():
            raise ExportInputError(
                f"dynamic axis {axis} of input {name!r} is out of range for its shape "
                f"{tuple(tensor.shape)}"
            )
        if not is_identifier(sym):
            raise ExportInputError(
                f"axis name {sym!r} of input {name!r} must be an identifier like 'T'"
            )
        if tensor.shape[axis] < 2:
            raise ExportInputError(
                f"input {name!r} has size {tensor.shape[axis]} on dynamic axis {axis} ({sym}); "
                "torch.export specialises sizes 0 and 1, so give an example of size 2 or more "
                "on that axis"
            )
        axes[axis] = sym
    return axes


def _add_streaming(
    axes: dict[str, dict[int, str]], streaming_axis: Mapping[str, int], names: list[str]
) -> str:
    """Put every streaming axis into ``axes`` on one symbol; returns that symbol."""
    unknown = [k for k in streaming_axis if k not in names]
    if unknown or not streaming_axis:
        raise ExportInputError(
            f"streaming_axis must map input names to their time axis, e.g. {{'audio': 2}}; "
            f"got {dict(streaming_axis)} for inputs {names}"
        )
    for name, axis in streaming_axis.items():
        if int(axis) < 0:
            raise ExportInputError(
                f"streaming axis of {name!r} must be given as a non-negative index, got {axis}"
            )
    named = {axes[n].get(int(a)) for n, a in streaming_axis.items()} - {None}
    if len(named) > 1:
        raise ExportInputError(
            f"streaming axes must share one symbol; dynamic_axes names them {sorted(named)}"
        )
    symbol = named.pop() if named else "S"
    for name, axis in streaming_axis.items():
        axes[name][int(axis)] = symbol
    return symbol
