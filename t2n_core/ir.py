"""A small NNEF-level graph: what the op translators build and the text writer prints.

Values are named tensors with a dtype and a shape whose entries are ints or TDim
expressions over the graph's symbols (strings such as ``"S"`` or ``"S * 4"``).
Operations are ``outputs = op(args..., attr = value)`` assignments.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

Dim = int | str


@dataclass(frozen=True)
class Ref:
    """A reference to a named value in the graph."""

    name: str


@dataclass(frozen=True)
class Expr:
    """Raw NNEF text, used for TDim shape expressions such as ``S * 4``."""

    text: str


@dataclass
class Value:
    name: str
    dtype: torch.dtype
    shape: tuple[Dim, ...]

    @property
    def rank(self) -> int:
        return len(self.shape)


@dataclass
class Variable:
    """A tensor stored in the archive (one or more ``.dat`` files)."""

    name: str
    label: str
    tensor: Any  # a torch.Tensor or an NNEFStorage
    declared_in: str | None = None  # a fragment that declares it (see t2n_core.loop_weights)
    #: (label, tensor, encoding) of the last ``encoding.encoding_of``: computed once per label
    encoded: Any = field(default=None, repr=False, compare=False)


@dataclass
class Operation:
    op: str
    outputs: list[str]
    args: list[Any]
    attrs: dict[str, Any] = field(default_factory=dict)
    source: str = ""  # module path (and op) that produced it
    array_outputs: bool = False  # outputs written as ``[a, b] = op(...)`` instead of ``(a, b)``


@dataclass
class Graph:
    name: str = "network"
    inputs: list[Value] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    values: dict[str, Value] = field(default_factory=dict)
    variables: dict[str, Variable] = field(default_factory=dict)
    operations: list[Operation] = field(default_factory=list)
    fragments: dict[str, str] = field(default_factory=dict)
    #: fragments defined by a graph (repeated blocks): name -> body, whose inputs are the
    #: fragment's parameters; an operation whose ``op`` is such a name calls it
    blocks: dict[str, Graph] = field(default_factory=dict)
    extensions: set[str] = field(default_factory=set)
    symbols: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what passes changed, for the summary
    prepared: bool = False  # through t2n_core.passes.prepare_for_archive, ready to write
    _taken: Counter = field(default_factory=Counter)
    _reserved: set[str] = field(default_factory=set)

    def reserve(self, names: list[str]) -> None:
        """Keep ``names`` (the user's input and output names) out of :meth:`fresh_name`."""
        self._reserved.update(names)

    def fresh_name(self, hint: str) -> str:
        """A unique identifier derived from ``hint`` (e.g. a module path).

        Never one of the :meth:`reserve`-d names: user names win, generated names yield.
        """
        base = sanitize(hint)
        count = self._taken[base]
        self._taken[base] += 1
        name = base if count == 0 else f"{base}_{count}"
        while name in self.values or name in self.variables or name in self._reserved:
            count += 1
            self._taken[base] += 1
            name = f"{base}_{count}"
        return name

    def add_value(self, value: Value) -> Value:
        self.values[value.name] = value
        return value

    def producer(self, name: str) -> Operation | None:
        """The operation whose outputs include ``name`` (None for inputs and variables)."""
        for op in reversed(self.operations):
            if name in op.outputs:
                return op
        return None

    def replace_refs(self, renames: dict[str, str]) -> None:
        """Point every operand that refers to ``old`` at ``new``, for each ``old: new``."""

        def sub(item: Any) -> Any:
            if isinstance(item, Ref):
                return Ref(renames.get(item.name, item.name))
            if isinstance(item, list):
                return [sub(i) for i in item]
            if isinstance(item, tuple):
                return tuple(sub(i) for i in item)
            return item

        for op in self.operations:
            op.args = sub(op.args)
            op.attrs = {k: sub(v) for k, v in op.attrs.items()}

    def op_histogram(self) -> dict[str, int]:
        """How many times each op runs, counting the ops inside each block call."""
        counts: Counter[str] = Counter()
        for op in self.operations:
            if op.op in self.blocks:
                counts.update(self.blocks[op.op].op_histogram())
            else:
                counts[op.op] += 1
        return dict(sorted(counts.items()))

    def inline(self, block: str) -> int:
        """Replace every call of fragment ``block`` by a copy of its body; returns how many."""
        body = self.blocks.pop(block)
        expanded: list[Operation] = []
        calls = 0
        for op in self.operations:
            if op.op != block:
                expanded.append(op)
                continue
            calls += 1
            names = {v.name: _name(a) for v, a in zip(body.inputs, op.args)}
            names.update(zip(body.outputs, op.outputs))
            prefix = op.outputs[0]
            for inner in body.operations:
                for out in inner.outputs:
                    if out not in names:
                        names[out] = self.fresh_name(f"{prefix}_{out}")
                        value = body.values[out]
                        self.add_value(Value(names[out], value.dtype, value.shape))
            renames = {k: v for k, v in names.items() if isinstance(v, str)}
            literals = {k: v for k, v in names.items() if not isinstance(v, str)}
            for inner in body.operations:
                copy = Operation(
                    inner.op, [renames[o] for o in inner.outputs],
                    _substitute(inner.args, renames, literals),
                    {k: _substitute(v, renames, literals) for k, v in inner.attrs.items()},
                    source=op.source, array_outputs=inner.array_outputs,
                )  # fmt: skip
                expanded.append(copy)
        self.operations = expanded
        return calls

    def remove_dead_code(self) -> int:
        """Drop operations whose outputs are never used; returns how many were dropped."""
        live = set(self.outputs)
        kept: list[Operation] = []
        for op in reversed(self.operations):
            if any(o in live for o in op.outputs):
                kept.append(op)
                live.update(_refs(op.args))
                live.update(_refs(list(op.attrs.values())))
        dropped = len(self.operations) - len(kept)
        self.operations = kept[::-1]
        for name in [n for n, v in self.variables.items() if n not in live and not v.declared_in]:
            del self.variables[name]
        return dropped


_NAME_RE = re.compile(r"[^A-Za-z0-9_]")
IDENTIFIER_RULE = (
    "an NNEF identifier: ASCII letters, digits and '_', not starting with a digit, "
    "and not an NNEF keyword"
)
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_RESERVED = {
    "version", "extension", "fragment", "graph", "tensor", "integer", "scalar", "logical",
    "string", "true", "false", "for", "in", "if", "else", "yield", "length_of", "shape_of",
    "range_of",
}  # fmt: skip


def is_identifier(name: str) -> bool:
    """Whether ``name`` can be written as is in graph.nnef (see :data:`IDENTIFIER_RULE`)."""
    return bool(_IDENTIFIER_RE.fullmatch(name)) and name not in _RESERVED


def sanitize(hint: str) -> str:
    """``encoder.layers.0.linear1.weight`` -> ``encoder_layers_0_linear1_weight``."""
    name = _NAME_RE.sub("_", hint).strip("_") or "v"
    name = re.sub(r"_+", "_", name)
    if name[0].isdigit() or name in _RESERVED:
        name = "v_" + name
    return name


def _name(arg: Any) -> Any:
    return arg.name if isinstance(arg, Ref) else arg


def _substitute(item: Any, renames: dict[str, str], literals: dict[str, Any]) -> Any:
    if isinstance(item, Ref):
        if item.name in literals:
            return literals[item.name]
        return Ref(renames.get(item.name, item.name))
    if isinstance(item, list):
        return [_substitute(i, renames, literals) for i in item]
    if isinstance(item, tuple):
        return tuple(_substitute(i, renames, literals) for i in item)
    return item


def _refs(items: list[Any]) -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, Ref):
            out.append(item.name)
        elif isinstance(item, (list, tuple)):
            out.extend(_refs(list(item)))
    return out
