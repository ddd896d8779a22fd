"""Tract-native weights (Q4_0) of a loop: declared inside the loop body, not passed to it.

A recurrent layer (:mod:`t2n_core.ops.recurrent`) passes its recurrent weight matrices to
``tract_core_scan`` as ``full`` inputs. tract 0.23.9 turns a constant ``full`` input into a
constant of the body while optimizing, which fails for a block-quantized tensor ("Exotic tensor
requires an exotic_fact"). Declared with ``variable`` *inside* the body fragment, the same
tensor loads as a constant of the body and reaches the body's matmul compressed. So, at write
time, for each call of a scan-wrapping fragment that receives such a variable, this pass writes
a copy of the wrapper and of its body without that parameter, the body declaring the variable
itself (see docs/tract-facts.md).

The fragments it rewrites follow the shape of ``t2n_core/ops/fragments/t2n_<cell>.nnef``: the
wrapper passes parameter ``w`` on as ``('w', w)`` in the ``full`` list of
``tract_core_scan(body = '<body>', ...)``, and the body takes a parameter of the same name.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from t2n_core.ir import Graph, Ref, Variable
from t2n_core.nnef.text import literal

_HEADER = re.compile(r"fragment\s+(\w+)\s*\((.*?)\)\s*->", re.S)
_BODY_NAME = re.compile(r"body\s*=\s*'(\w+)'")
_FULL = re.compile(r"full\s*=\s*\[(.*?)\]", re.S)


def inline_native_loop_weights(graph: Graph, is_native: Callable[[Variable], bool]) -> int:
    """Move tract-native variables passed to scan wrappers into copies of their bodies.

    Returns how many variables were moved. Each moved variable keeps its place in
    ``graph.variables`` (its ``.dat`` is still written) with ``declared_in`` set to the body
    fragment that declares it.
    """
    moved = 0
    copies: dict[str, int] = {}
    for op in graph.operations:
        text = graph.fragments.get(op.op)
        if text is None or "tract_core_scan" not in text:
            continue
        defs = _split(text)
        wrapper = defs.get(op.op)
        body_name = _BODY_NAME.search(wrapper or "")
        if wrapper is None or body_name is None or body_name.group(1) not in defs:
            continue
        body = defs[body_name.group(1)]
        names = _parameter_names(wrapper)
        native = {
            names[i]: graph.variables[a.name]
            for i, a in enumerate(op.args)
            if isinstance(a, Ref) and a.name in graph.variables and i < len(names)
            and is_native(graph.variables[a.name]) and _passed_full(wrapper, names[i])
        }  # fmt: skip
        if not native:
            continue
        copies[op.op] = copies.get(op.op, 0) + 1
        suffix = f"_w{copies[op.op]}"
        new_body, new_wrapper = body_name.group(1) + suffix, op.op + suffix
        declarations = [
            f"{param} = variable<scalar>(label = {literal(var.label)}, "
            f"shape = {literal(list(var.tensor.shape))});"
            for param, var in native.items()
        ]
        body = _without_parameters(body, new_body, set(native), declarations)
        wrapper = _without_parameters(wrapper, new_wrapper, set(native), [])
        wrapper = _without_full(wrapper.replace(f"'{body_name.group(1)}'", f"'{new_body}'"),
                                set(native))  # fmt: skip
        graph.fragments[new_wrapper] = body.strip() + "\n\n" + wrapper.strip() + "\n"
        op.args = [a for i, a in enumerate(op.args) if i >= len(names) or names[i] not in native]
        op.op = new_wrapper
        for var in native.values():
            var.declared_in = new_body
        moved += len(native)
    for name in [n for n in copies if all(op.op != n for op in graph.operations)]:
        del graph.fragments[name]
    return moved


def _split(text: str) -> dict[str, str]:
    """The fragment definitions of one fragment file, by name."""
    starts = [m.start() for m in re.finditer(r"^fragment\s", text, re.M)]
    out = {}
    for begin, end in zip(starts, [*starts[1:], len(text)]):
        part = text[begin:end]
        out[_HEADER.match(part).group(1)] = part  # type: ignore[union-attr]
    return out


def _parameters(text: str) -> list[str]:
    """The parameter declarations (``'w: tensor<scalar>'``) of a fragment's header."""
    match = _HEADER.search(text)
    if match is None:
        raise ValueError(f"not a fragment: {text[:60]!r}")
    return [p.strip() for p in match.group(2).split(",") if p.strip()]


def _parameter_names(text: str) -> list[str]:
    return [p.split(":")[0].strip() for p in _parameters(text)]


def _passed_full(wrapper: str, name: str) -> bool:
    full = _FULL.search(wrapper)
    return full is not None and f"('{name}', {name})" in full.group(1)


def _without_parameters(text: str, new_name: str, drop: set[str], declarations: list[str]) -> str:
    """``text`` renamed, without the parameters ``drop``, with ``declarations`` opening its body."""
    match = _HEADER.search(text)
    assert match is not None
    kept = [p for p in _parameters(text) if p.split(":")[0].strip() not in drop]
    header = f"fragment {new_name}(\n    " + ",\n    ".join(kept) + "\n) ->"
    rest = text[match.end() :]
    if declarations:
        brace = rest.index("{") + 1
        rest = rest[:brace] + "".join(f"\n  {d}" for d in declarations) + rest[brace:]
    return text[: match.start()] + header + rest


def _without_full(text: str, drop: set[str]) -> str:
    full = _FULL.search(text)
    assert full is not None
    entries = re.findall(r"\('(\w+)',\s*(\w+)\)", full.group(1))
    kept = ", ".join(f"('{a}', {b})" for a, b in entries if a not in drop)
    return text[: full.start()] + f"full = [{kept}]" + text[full.end() :]
