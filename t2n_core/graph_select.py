"""Which graphs an archive of several holds (:func:`t2n_core.many.export_many` records them in
the property :data:`GRAPHS_PROPERTY`), and the tract transforms that keep one of them."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping

from t2n_core.errors import T2NError
from t2n_core.nnef.archive import read_archive_files
from t2n_core.nnef.graph_text import graph_properties

#: property of an archive of several graphs: JSON ``{graph: {"inputs": [...], "outputs": [...]}}``
GRAPHS_PROPERTY = "t2n_graphs"


def archive_graphs(path: str | os.PathLike) -> dict[str, dict[str, list[str]]]:
    """The graphs an :func:`export_many` archive holds: name -> ``{"inputs": [...],
    "outputs": [...]}`` (archive names); ``{}`` for an archive of one graph."""
    text = read_archive_files(path, dat_headers_only=True).get("graph.nnef", b"")
    raw = graph_properties(text.decode("utf-8", errors="replace")).get(GRAPHS_PROPERTY)
    return json.loads(raw) if raw else {}


def graph_io(path: str | os.PathLike, graph: str) -> dict[str, list[str]]:
    """Inputs and outputs of ``graph`` in the archive at ``path``; a clear error naming the
    graphs it holds when there is no such graph."""
    graphs = archive_graphs(path)
    if graph not in graphs:
        held = f"its graphs are {sorted(graphs)}" if graphs else "it holds a single graph"
        raise T2NError(f"{os.fspath(path)} has no graph {graph!r}: {held}")
    return graphs[graph]


def select_transforms(io: Mapping[str, list[str]]) -> list[str]:
    """The tract transforms (JSON) that keep only the graph ``io`` names: outputs first, so
    that the declutter after each transform drops the other graphs' nodes and inputs."""
    return [
        json.dumps({"name": "select_outputs", "outputs": list(io["outputs"])}),
        json.dumps({"name": "select_inputs", "inputs": list(io["inputs"])}),
    ]
