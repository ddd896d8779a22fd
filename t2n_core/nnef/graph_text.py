"""Reading graph.nnef text back: its graph line, its body, the properties t2n wrote."""

from __future__ import annotations

import re

from t2n_core.nnef.text import unescape_string

#: ``graph name(inputs) -> (outputs)``
GRAPH_RE = re.compile(r"graph\s+(\w+)\s*\(([^)]*)\)\s*->\s*\(([^)]*)\)")
_STRING = r"""(?:\\.|[^"\\])*"""
#: one ``("key", "value")`` pair of ``tract_core_properties``
PROPERTY_RE = re.compile(rf'\(\s*"({_STRING})"\s*,\s*"({_STRING})"\s*\)', re.S)


def graph_body(text: str) -> str:
    """graph.nnef without its fragment definitions (they are not run as such)."""
    start = GRAPH_RE.search(text)
    return text[start.start() :] if start else text


def graph_properties(text: str) -> dict[str, str]:
    """The ``tract_core_properties`` of a graph.nnef text, as written by t2n."""
    return {unescape_string(k): unescape_string(v) for k, v in PROPERTY_RE.findall(text)}
