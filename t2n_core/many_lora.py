"""Separate LoRA adapters in an archive of several graphs (:func:`t2n_core.many.export_many`).

Each adapted layer is one archive site, however many graphs use it: graphs that hold the same
layer (the same ``A`` and ``B`` tensor objects) read one set of files
``<site>.lora_A`` / ``.lora_B`` / ``.lora_scale``, and the archive's ``lora.sites`` property
lists each site once, so that ``t2n adapter swap`` replaces it for every graph. A site is
named by its module path in the first graph that holds it; when two different sites would
get the same name, each is prefixed with its graph's name (``decoder.0``). Adapter tensors
are never shared by content with another tensor (two scales of 2.0 stay two files): a swap
must change one site without changing anything else.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from t2n_core.errors import LoraError
from t2n_core.file_labels import _SAFE_LABEL, MAX_LABEL
from t2n_core.ir import Graph, Variable
from t2n_core.lora import MODE_PROPERTY, SITES_PROPERTY, SUFFIXES, stem

if TYPE_CHECKING:
    from t2n_core.export import TracedGraph


@dataclass
class ArchiveSite:
    """One adapted layer of the archive, and where each graph holds it."""

    holders: list[tuple[str, str]]  # (graph, module path in that graph's model)
    rank: int
    fan_in: int
    fan_out: int
    variables: list[tuple[Variable, str]] = field(default_factory=list)  # (variable, suffix)
    name: str = ""


def adapter_sites(traced: Mapping[str, TracedGraph]) -> list[ArchiveSite]:
    """The separate LoRA sites of the captured graphs, named; run before the graphs are
    merged (their variables' labels are still the state-dict names)."""
    sites: dict[tuple[int, int], ArchiveSite] = {}
    for gname, t in traced.items():
        if t.lora is None or t.lora.mode != "separate":
            continue
        stems: dict[str, tuple[ArchiveSite, str]] = {}
        for s in t.lora.scan.sites:
            assert s.a is not None and s.b is not None
            site = sites.setdefault(
                (id(s.a), id(s.b)),
                ArchiveSite([], s.rank, int(s.a.shape[1]), int(s.b.shape[0])),
            )
            site.holders.append((gname, s.path))
            stems.update({stem(s.path, suffix): (site, suffix) for suffix in SUFFIXES})
        for var in t.graph.variables.values():
            if var.label in stems:
                site, suffix = stems[var.label]
                site.variables.append((var, suffix))
    found = list(sites.values())
    first = [site.holders[0][1] for site in found]
    for site, path in zip(found, first, strict=True):
        gname = site.holders[0][0]
        site.name = path if first.count(path) == 1 else f"{gname}.{path}" if path else gname
    return found


def label_adapters(merged: Graph, sites: list[ArchiveSite]) -> set[str]:
    """Give each site's variables the site's file labels (after the labels were made
    unique and the shared tensors found); refuses a label that is not a safe file name or
    that another tensor's file already has. Returns the adapter variables' names."""
    adapters: set[str] = set()
    labels: dict[str, str] = {}
    for site in sites:
        for var, suffix in site.variables:
            var.label = stem(site.name, suffix)
            adapters.add(var.name)
            if labels.setdefault(var.label.lower(), site.name) != site.name:
                raise LoraError(
                    f"LoRA sites {labels[var.label.lower()]!r} and {site.name!r} would share "
                    f"the file {var.label}.dat; rename one of the modules or graphs"
                )
            if not (_SAFE_LABEL.fullmatch(var.label) and len(var.label) <= MAX_LABEL):
                raise LoraError(
                    f"LoRA site {site.name!r}: {var.label!r} is not a safe file name; rename "
                    "the module (letters, digits, '_', '.', '-')"
                )
    clash = sorted(
        v.label for v in merged.variables.values()
        if v.name not in adapters and v.label.lower() in labels
    )  # fmt: skip
    if clash:
        raise LoraError(
            f"the adapter files {clash[:3]} clash with other tensors' files; rename the "
            "clashing module or graph"
        )
    return adapters


def lora_properties(traced: Mapping[str, TracedGraph], sites: list[ArchiveSite]) -> dict[str, str]:
    """``lora.mode`` (when a graph has LoRA layers) and, separate, ``lora.sites``."""
    modes = {t.lora.mode for t in traced.values() if t.lora is not None}
    if not modes:
        return {}
    props = {MODE_PROPERTY: modes.pop()}
    if props[MODE_PROPERTY] == "separate":
        listed = [{"path": s.name, "rank": s.rank, "in": s.fan_in, "out": s.fan_out}
                  for s in sites]  # fmt: skip
        props[SITES_PROPERTY] = json.dumps(listed, separators=(",", ":"))
    return props


def check_adapter_files(sites: list[ArchiveSite], files: list[str]) -> None:
    """Every site's three files are in the archive (``t2n adapter swap`` needs them)."""
    missing = [f"{stem(s.name, x)}.dat" for s in sites for x in SUFFIXES
               if f"{stem(s.name, x)}.dat" not in files]  # fmt: skip
    if missing:
        raise LoraError(
            f"the adapter files {missing[:3]} are not in the archive (a pass rewrote those "
            "tensors); this is a t2n bug, please report it, or export with lora='merged'"
        )
