"""Turn a :class:`~t2n_core.ir.Graph` into archive files (graph.nnef + one ``.dat`` per tensor).

The graph must have been through :func:`t2n_core.passes.prepare_for_archive`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterator
from itertools import chain

from t2n_core.encoding import encoding_of
from t2n_core.ir import Graph
from t2n_core.nnef import dat, text
from t2n_core.nnef.archive import Stream
from t2n_core.nnef.dat import HEADER_SIZE
from t2n_core.storage import EncodedVariable

logger = logging.getLogger(__name__)


def archive_files(graph: Graph) -> Iterator[tuple[str, Callable[[], bytes]]]:
    """``(relative path, bytes producer)`` for every file of the archive, in a fixed order."""
    if not graph.prepared:
        raise RuntimeError("archive_files needs a graph through passes.prepare_for_archive first")
    graph_text = text.render(graph)
    yield "graph.nnef", lambda: graph_text.encode()
    written: set[str] = set()
    for var in graph.variables.values():
        for ev in encoding_of(var).variables:
            name = f"{var.label}{ev.suffix}.dat"
            if name not in written:  # labels are unique unless shared (same data)
                written.add(name)
                yield name, _dat_producer(ev)


def header_of(ev: EncodedVariable, payload_size: int | None = None) -> dat.DatHeader:
    """The ``.dat`` header of an encoded variable (a tract type needs its payload size)."""
    if ev.custom_item_type is not None:
        size = ev.payload_size() if payload_size is None else payload_size
        return dat.DatHeader.for_tract_type(ev.custom_item_type, ev.shape, size)
    assert ev.dtype is not None
    return dat.DatHeader.for_dtype(ev.dtype, ev.shape)


def dat_headers(graph: Graph) -> dict[str, dat.DatHeader]:
    """The header of every ``.dat`` file :func:`archive_files` writes, by file name, known
    without producing any payload (a file shared by several variables is listed once)."""
    headers: dict[str, dat.DatHeader] = {}
    for var in graph.variables.values():
        for ev in encoding_of(var).variables:
            name = f"{var.label}{ev.suffix}.dat"
            if name not in headers:
                headers[name] = header_of(ev)
    return headers


def tensor_bytes_by_type(graph: Graph) -> dict[str, int]:
    """Payload bytes of every stored file, by ``.dat`` item type name (as ``inspect`` reports)."""
    totals: Counter[str] = Counter()
    for header in dat_headers(graph).values():
        totals[header.type_name()] += header.data_length
    return dict(sorted(totals.items()))


def _dat_producer(ev: EncodedVariable) -> Callable[[], list[bytes | memoryview] | Stream]:
    def produce() -> list[bytes | memoryview] | Stream:
        if ev.chunks is not None and ev.nbytes is not None:
            header = header_of(ev, ev.nbytes)
            return Stream(HEADER_SIZE + header.data_length, chain([header.pack()], ev.chunks()))
        payload = ev.data()
        header = header_of(ev, len(payload))
        expected = header.data_length if ev.custom_item_type is None else ev.nbytes
        if expected is not None and expected != len(payload):
            raise ValueError(
                f"payload of {ev.suffix or 'tensor'} has {len(payload)} bytes, {expected} "
                "were announced"
            )
        return [header.pack(), payload]  # written one after the other: no joined copy

    return produce
