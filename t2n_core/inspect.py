"""Describe any NNEF archive (ours or not): io, op histogram, tensor bytes by type."""

from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from t2n_core.errors import ArchiveFormatError
from t2n_core.graph_select import GRAPHS_PROPERTY
from t2n_core.io_spec import IOSpec
from t2n_core.nnef.archive import read_archive_files
from t2n_core.nnef.dat import DatHeader
from t2n_core.nnef.graph_text import GRAPH_RE, graph_body, graph_properties

_ASSIGN_RE = re.compile(r"^\s*(?:[\w\[\](), ]+?)\s*=\s*([A-Za-z_]\w*)\s*(?:<\w+>)?\s*\(", re.M)
_DECLS = {"external", "tract_core_external", "variable"}
_FRAGMENT_RE = re.compile(r"^fragment\s+(\w+)\s*\(.*?\)\s*->\s*\(.*?\)\s*\{(.*?)^\}", re.M | re.S)
_CALL_RE = re.compile(r"^\s*[\w\[\](), ]+?\s*=\s*([A-Za-z_]\w*)\s*(?:<\w+>)?\s*\(", re.S)


@dataclass
class ArchiveInfo:
    path: Path
    graph_name: str
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    op_histogram: dict[str, int]
    tensor_bytes: dict[str, int]
    extensions: list[str] = field(default_factory=list)
    properties: dict[str, str] = field(default_factory=dict)
    #: fragments whose ops the histogram counts per call: name -> calls
    fragment_calls: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        from t2n_core.summary import format_summary

        text = format_summary(self)
        graphs = self.properties.get(GRAPHS_PROPERTY)
        if graphs:  # an archive of several graphs (t2n_core.many): which io makes each
            text += "\ngraphs (run one with t2n check --graph NAME):\n" + "\n".join(
                f"  {name}: ({', '.join(io['inputs'])}) -> ({', '.join(io['outputs'])})"
                for name, io in json.loads(graphs).items()
            )
        if self.fragment_calls:
            text += "\nfragment calls (the ops above count each call's ops):\n" + "\n".join(
                f"  {name}  {calls}" for name, calls in sorted(self.fragment_calls.items())
            )
        if self.extensions:
            text += "\nextensions:\n" + "\n".join(f"  {e}" for e in self.extensions)
        if self.properties:
            text += "\nproperties:\n" + "\n".join(
                f"  {k}: {v}" for k, v in sorted(self.properties.items())
            )
        return text


def inspect_archive(path: str | os.PathLike) -> ArchiveInfo:
    """Summarise an NNEF archive (directory or tar).

    >>> print(inspect_archive("model.nnef.tgz"))   # doctest: +SKIP
    """
    files = read_archive_files(path, dat_headers_only=True)
    if "graph.nnef" not in files:
        raise ArchiveFormatError(f"{os.fspath(path)} has no graph.nnef")
    text = files["graph.nnef"].decode("utf-8", errors="replace")
    match = GRAPH_RE.search(text)
    if not match:
        raise ArchiveFormatError(f"{os.fspath(path)}: graph.nnef has no graph declaration")
    graph_name = match.group(1)
    input_names = [n.strip() for n in match.group(2).split(",") if n.strip()]
    output_names = [n.strip() for n in match.group(3).split(",") if n.strip()]
    ops, fragment_calls = op_counts(text)
    sizes: Counter = Counter()
    for name, raw in files.items():
        if name.endswith(".dat"):
            header = DatHeader.unpack(raw, name=f"{os.fspath(path)}: {name}")
            sizes[header.type_name()] += header.data_length
    inputs, outputs = _io_from_tract(path, input_names, output_names)
    extensions = re.findall(r"^extension\s+([^;]+);", text, re.M)
    properties = graph_properties(text)
    return ArchiveInfo(
        Path(path), graph_name, inputs, outputs, dict(sorted(ops.items())),
        dict(sorted(sizes.items())), extensions, properties, fragment_calls,
    )  # fmt: skip


def op_counts(text: str) -> tuple[Counter, dict[str, int]]:
    """How many times the graph of a graph.nnef text runs each op, and the fragments whose
    calls were counted by their ops (name -> calls).

    A fragment defined in the text whose body is only ``outputs = op(...)`` statements (a
    repeated block) counts as the ops inside it, once per call, recursively; any other (a
    helper written with operators such as ``x - mean``) counts as one op of its name.
    """
    bodies = {name: body for name, body in _FRAGMENT_RE.findall(text)}
    expandable = {
        name: [m.group(1) for m in map(_CALL_RE.match, statements) if m]
        for name, body in bodies.items()
        if (statements := [s for s in body.split(";") if s.strip()])
        and all(_CALL_RE.match(s) for s in statements)
    }
    calls: Counter = Counter()

    def count(ops: list[str], times: int, seen: tuple[str, ...]) -> Counter:
        out: Counter = Counter()
        for op in ops:
            if op in _DECLS:
                continue
            if op in expandable and op not in seen:
                calls[op] += times
                out.update(count(expandable[op], times, (*seen, op)))
            else:
                out[op] += times
        return out

    return count(_ASSIGN_RE.findall(graph_body(text)), 1, ()), dict(sorted(calls.items()))


def _io_from_tract(
    path: str | os.PathLike, input_names: list[str], output_names: list[str]
) -> tuple[list[IOSpec], list[IOSpec]]:
    """Shapes and dtypes as tract infers them (in a child process); names from graph.nnef."""
    from t2n_core.check import tract_facts
    from t2n_core.errors import TractRunError

    try:
        in_facts, out_facts = tract_facts(path)
    except TractRunError as exc:
        raise ArchiveFormatError(str(exc)) from exc

    def spec(name: str, fact: str) -> IOSpec:
        *dims, dtype = fact.split(",")
        shape = tuple(int(d) if d.lstrip("-").isdigit() else d for d in dims)
        return IOSpec(name, shape, dtype)

    names_in = input_names + [f"input_{i}" for i in range(len(input_names), len(in_facts))]
    names_out = output_names + [f"output_{i}" for i in range(len(output_names), len(out_facts))]
    inputs = [spec(n, f) for n, f in zip(names_in, in_facts)]
    outputs = [spec(n, f) for n, f in zip(names_out, out_facts)]
    return inputs, outputs
