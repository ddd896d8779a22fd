"""File labels: every stored tensor gets a safe, unique ``.dat`` file name."""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Collection

from t2n_core.encoding import encoding_of
from t2n_core.ir import Graph

logger = logging.getLogger(__name__)

_SAFE_LABEL = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
#: longest label kept as is: with a codec suffix and ".dat" it stays under 255 bytes
MAX_LABEL = 200


def assign_file_labels(graph: Graph, keep_first: Collection[str] = ()) -> set[str]:
    """Give every variable a label that is a safe, unique file name (the ``.dat`` stem).

    A label (the state-dict name, e.g. ``encoder.0.weight``) is kept when it is made of
    letters, digits, ``_``, ``.``, ``-`` only, does not start with ``.`` or ``-``, is not
    too long and none of its files clashes with another's (compared case-insensitively, as
    on macOS and Windows file systems). Otherwise the variable's identifier is used (a module
    named ``/some/dir/head`` gets ``some_dir_head_weight``), with a ``_<n>`` suffix if taken.
    So no file of the archive can land outside it or overwrite another. Variables named in
    ``keep_first`` (labelled by an earlier call) are served first, so their labels hold.
    Returns the names of all variables.
    """
    taken: set[str] = set()
    ordered = sorted(graph.variables.values(), key=lambda v: v.name not in keep_first)
    for var in ordered:
        suffixes = [ev.suffix for ev in encoding_of(var).variables]

        def files(label: str, suffixes: list[str] = suffixes) -> set[str]:
            return {f"{label}{s}.dat".lower() for s in suffixes}

        label = var.label
        if not (_SAFE_LABEL.fullmatch(label) and len(label) <= MAX_LABEL) or files(label) & taken:
            base = var.name if len(var.name) <= MAX_LABEL else _shortened(var.name)
            label, n = base, 0
            while files(label) & taken:
                n += 1
                label = f"{base}_{n}"
            logger.info("tensor %r is stored as %s.dat", var.label, label)
        var.label = label
        taken |= files(label)
    return set(graph.variables)


def _shortened(name: str) -> str:
    digest = hashlib.sha1(name.encode()).hexdigest()[:12]
    return f"{name[: MAX_LABEL - 13]}_{digest}"
