"""Print an :class:`~t2n_core.ir.Graph` as graph.nnef text."""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from t2n_core.encoding import encoding_of
from t2n_core.errors import TranslationError
from t2n_core.ir import Expr, Graph, Operation, Ref

_EXTERNAL_DTYPES = {
    torch.float32: "f32",
    torch.float16: "f16",
    torch.float64: "f64",
    torch.int64: "i64",
    torch.int32: "i32",
    torch.int16: "i16",
    torch.int8: "i8",
    torch.uint8: "u8",
    torch.bool: "bool",
}


def tract_dtype_name(dtype: torch.dtype) -> str:
    """tract's name of a torch dtype (``torch.float32`` -> ``'f32'``)."""
    try:
        return _EXTERNAL_DTYPES[dtype]
    except KeyError:
        raise TranslationError(f"dtype {dtype} has no tract equivalent") from None


def nnef_type(dtype: torch.dtype) -> str:
    """The NNEF tensor type of a dtype: scalar, integer or logical."""
    if dtype.is_floating_point:
        return "scalar"
    if dtype == torch.bool:
        return "logical"
    return "integer"


def literal(value: Any) -> str:
    """NNEF text of a Python value or :class:`Ref`/:class:`Expr`."""
    if isinstance(value, Ref):
        return value.name
    if isinstance(value, Expr):
        return value.text
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            raise TranslationError("NaN cannot be written as an NNEF literal")
        if math.isinf(value):
            value = math.copysign(3.4028234663852886e38, value)
        text = repr(value)
        if "." not in text:
            text = text.replace("e", ".0e") if "e" in text else text + ".0"
        return text
    if isinstance(value, str):
        return "'" + escape_string(value) + "'"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(literal(v) for v in value) + "]"
    if isinstance(value, torch.dtype):
        return literal(tract_dtype_name(value))
    raise TranslationError(f"cannot write {value!r} ({type(value).__name__}) as an NNEF literal")


def format_operation(op: Operation) -> str:
    if len(op.outputs) == 1:
        lhs = op.outputs[0]
    elif op.array_outputs:
        lhs = "[" + ", ".join(op.outputs) + "]"
    else:
        lhs = "(" + ", ".join(op.outputs) + ")"
    parts = [literal(a) for a in op.args]
    parts += [f"{k} = {literal(v)}" for k, v in op.attrs.items()]
    return f"{lhs} = {op.op}({', '.join(parts)});"


def escape_string(text: str) -> str:
    """``text`` for an NNEF string literal as tract parses it.

    tract ends a string at any quote, ``'`` or ``"``, and reads ``\\c`` as ``c``: every
    backslash and quote gets a backslash in front; everything else is written as is.
    """
    return _ESCAPED.sub(r"\\\g<0>", text)


def unescape_string(text: str) -> str:
    """The inverse of :func:`escape_string` (``\\c`` -> ``c``)."""
    return re.sub(r"\\(.)", r"\1", text, flags=re.S)


_ESCAPED = re.compile(r"[\\'\"]")


def properties_fragment(properties: dict[str, str]) -> str:
    def clean(text: str) -> str:
        return escape_string(str(text))

    items = ",\n".join(f'    ("{clean(k)}", "{clean(v)}")' for k, v in properties.items())
    return (
        "fragment tract_core_properties(\n"
        ") -> (properties: (string, tensor<scalar>)[])\n"
        "{\n"
        f"  properties = [\n{items}\n  ];\n"
        "}\n"
    )


def render(graph: Graph) -> str:
    """The complete graph.nnef text, deterministic for a given graph."""
    lines = ["version 1.0;", ""]
    for ext in sorted(graph.extensions):
        lines.append(f"extension {ext};")
    for sym in graph.symbols:
        lines.append(f"extension tract_symbol {sym};")
    lines.append("")
    fragments = dict(graph.fragments)
    if graph.properties:
        fragments["tract_core_properties"] = properties_fragment(graph.properties)
    for name in sorted(fragments):
        lines.append(fragments[name].strip())
        lines.append("")
    for body in graph.blocks.values():
        lines.append(block_fragment(body))
        lines.append("")
    inputs = ", ".join(v.name for v in graph.inputs)
    outputs = ", ".join(graph.outputs)
    lines.append(f"graph {graph.name}({inputs}) -> ({outputs})")
    lines.append("{")
    for value in graph.inputs:
        shape = literal([_dim(d) for d in value.shape])
        dtype = tract_dtype_name(value.dtype)
        lines.append(
            f"  {value.name} = tract_core_external(shape = {shape}, datum_type = '{dtype}');"
        )
    for var in graph.variables.values():
        if var.declared_in is None:
            lines.extend("  " + line for line in variable_lines(graph, var.name))
    for op in graph.operations:
        lines.append("  " + format_operation(op))
    lines.append("}")
    return "\n".join(lines) + "\n"


def block_fragment(body: Graph) -> str:
    """A repeated block as a fragment: its inputs and weights in, its outputs out."""

    def typed(names: list[str]) -> str:
        parts = [f"{n}: tensor<{nnef_type(body.values[n].dtype)}>" for n in names]
        return ",\n    ".join(parts)

    lines = [f"fragment {body.name}(", f"    {typed([v.name for v in body.inputs])}"]
    lines.append(f") -> (\n    {typed(body.outputs)}\n)")
    lines.append("{")
    lines.extend("  " + format_operation(op) for op in body.operations)
    lines.append("}")
    return "\n".join(lines)


def _dim(d: int | str) -> int | Expr:
    return d if isinstance(d, int) else Expr(d)


def variable_lines(graph: Graph, name: str) -> list[str]:
    """Declarations of one variable (several for an encoded tensor)."""
    var = graph.variables[name]
    encoding = encoding_of(var)
    out: list[str] = []
    single = encoding.call is None
    for ev in encoding.variables:
        vname = var.name if single else f"{var.name}{ev.suffix}"
        kind = "scalar" if ev.dtype is None else nnef_type(ev.dtype)
        label = var.label + ev.suffix
        shape = literal(list(ev.shape))
        out.append(f"{vname} = variable<{kind}>(label = {literal(label)}, shape = {shape});")
    if not single:
        frag, suffixes, attrs = encoding.call
        parts = [f"{var.name}{s}" for s in suffixes]
        parts += [f"{k} = {literal(v)}" for k, v in attrs.items()]
        out.append(f"{var.name} = {frag}({', '.join(parts)});")
    return out
