"""Store each tensor of a graph once: variables holding the same data get one label.

Several graphs written into one archive (:func:`t2n_core.many.export_many`) often hold the
same weights: an encoder and a decoder sharing embeddings, an LLM's prefill and decode
graphs sharing all of them. tract resolves ``variable(label = ...)`` by label, and two
declarations may name the same label (measured with tract 0.23.9: both read the one
``.dat``), so a tensor stored once only needs one label for all its variables.
"""

from __future__ import annotations

import hashlib
import logging
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass

from t2n_core.encoding import encoding_of
from t2n_core.ir import Graph, Variable
from t2n_core.writer import header_of

logger = logging.getLogger(__name__)


@dataclass
class SharedTensor:
    """One stored tensor that several variables read."""

    label: str
    others: list[str]  # the other variables that read it (graph names)
    nbytes: int  # bytes of one copy (headers included)
    same_object: bool  # the same tensor object everywhere (else: equal contents)

    def __str__(self) -> str:
        how = "same tensor" if self.same_object else "equal contents"
        return f"{self.label} ({self.nbytes} bytes) also read by {self.others} ({how})"


def _files_of(var: Variable) -> tuple[tuple[str, bytes], ...]:
    """The ``(suffix, .dat header)`` of each file of ``var``: equal data has equal ones."""
    return tuple((ev.suffix, header_of(ev).pack()) for ev in encoding_of(var).variables)


def _digest(var: Variable) -> str:
    h = hashlib.sha256()
    for ev in encoding_of(var).variables:
        h.update(ev.suffix.encode() + b"\0")
        h.update(memoryview(ev.data()).cast("B"))
    return h.hexdigest()


def share_identical_tensors(graph: Graph, apart: Collection[str] = ()) -> list[SharedTensor]:
    """Give every variable of ``graph`` whose data equals an earlier one's (the same tensor
    object, or the same ``.dat`` headers and payload bytes) that variable's label, so that
    :func:`t2n_core.writer.archive_files` writes its files once. Run it after
    :func:`t2n_core.passes.prepare_for_archive` (the labels are final then). Payloads are
    hashed only among variables whose headers match. Variables named in ``apart`` (LoRA
    adapters, which a swap replaces) keep their labels and lend them to no other variable.
    Returns what is now shared, in order."""
    by_files: dict[tuple, list[Variable]] = defaultdict(list)
    for var in graph.variables.values():
        if var.name in apart:
            continue
        by_files[_files_of(var)].append(var)
    shared: dict[str, SharedTensor] = {}
    for files, group in by_files.items():
        if len(group) < 2:
            continue
        by_object: dict[int, Variable] = {}
        by_digest: dict[str, Variable] = {}
        for var in group:
            first = by_object.get(id(var.tensor))
            same_object = first is not None
            if first is None:
                digest = _digest(var)
                first = by_digest.setdefault(digest, var)
                by_object[id(var.tensor)] = first
                if first is var:
                    continue
            if var.label != first.label:
                nbytes = sum(len(header) for _, header in files) + sum(
                    header_of(ev).data_length for ev in encoding_of(var).variables
                )
                entry = shared.setdefault(first.label, SharedTensor(first.label, [], nbytes, True))
                entry.others.append(var.name)
                entry.same_object &= same_object
                var.label = first.label
    for entry in shared.values():
        logger.info("stored once: %s", entry)
    return list(shared.values())
