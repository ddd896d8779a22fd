"""Several graphs in one NNEF archive, each shared tensor stored once.

tract 0.23.9 loads exactly one graph from an archive: its root ``graph.nnef`` (see
docs/multi-graph.md for what else was tried and why it fails). So the graphs are written as
one NNEF graph whose inputs and outputs are the union of theirs, each name prefixed with its
graph's name (``encoder_input_ids``); a variable whose data another graph already stores
reads that graph's ``.dat``. The archive records which inputs and outputs make each graph
(property :data:`GRAPHS_PROPERTY`), and a user loads one graph by selecting them: tract's
``select_outputs`` / ``select_inputs`` transforms prune everything else
(:func:`load_graph`, ``t2n check --graph NAME``).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from t2n_core.check import CheckReport, check_archive
from t2n_core.errors import ExportInputError, T2NError
from t2n_core.export import (
    ExportResult,
    IOSpec,
    TracedGraph,
    _checked_inputs,
    _dtype_name,
    _tract_version,
    model_properties,
    trace_graph,
)
from t2n_core.graph_select import GRAPHS_PROPERTY, graph_io, select_transforms
from t2n_core.input_plan import DynamicAxes, InputPlan
from t2n_core.ir import IDENTIFIER_RULE, Graph, Operation, Ref, Value, is_identifier
from t2n_core.many_lora import adapter_sites, check_adapter_files, label_adapters, lora_properties
from t2n_core.nnef.archive import check_target, write_archive
from t2n_core.nnef.dat import DatHeader
from t2n_core.passes import prepare_for_archive
from t2n_core.progress import progress_bar
from t2n_core.share import share_identical_tensors
from t2n_core.version import __version__
from t2n_core.writer import archive_files, dat_headers, tensor_bytes_by_type

logger = logging.getLogger(__name__)

#: graph.nnef property naming each graph's inputs and outputs (JSON:
#: ``{"encoder": {"inputs": [...], "outputs": [...]}, ...}``, names as in the archive)


@dataclass
class GraphSpec:
    """One graph of :func:`export_many`: a model, its example inputs and their names."""

    model: nn.Module
    args: Any
    kwargs: dict[str, Any] | None = None
    input_names: Sequence[str] | None = None
    output_names: Sequence[str] | None = None
    dynamic_axes: DynamicAxes | None = None


@dataclass
class ManyExportResult:
    """What :func:`export_many` wrote: per graph an :class:`ExportResult` (its inputs and
    outputs as named in the archive, its ops, the tensor bytes it reads, its tract check)."""

    path: Path
    graphs: dict[str, ExportResult]
    tensor_bytes: dict[str, int]  # stored in the archive, by .dat item type name
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what is stored once, graph rewrites
    dat_headers: dict[str, DatHeader] = field(default_factory=dict)  # by file name

    @property
    def total_tensor_bytes(self) -> int:
        return sum(self.tensor_bytes.values())

    @property
    def bytes_read_by_graphs(self) -> int:
        """Tensor bytes the graphs read, counted per graph: what separate archives store."""
        return sum(r.total_tensor_bytes for r in self.graphs.values())

    def __str__(self) -> str:
        lines = [
            f"{self.path}: {len(self.graphs)} graphs, {len(self.files)} files, "
            f"{self.total_tensor_bytes} tensor bytes stored "
            f"({self.bytes_read_by_graphs} read by the graphs together)"
        ]
        for name, result in self.graphs.items():
            lines.append(f"graph {name}:")
            lines += ["  " + line for line in str(result).splitlines()]
        shared = [n for n in self.notes if n.startswith("stored once")]
        if shared:
            lines.append(f"{len(shared)} tensors stored once for several variables")
        return "\n".join(lines)


def _spec(name: str, item: Any) -> GraphSpec:
    if isinstance(item, GraphSpec):
        return item
    if isinstance(item, tuple) and len(item) in (2, 3):
        options = item[2] if len(item) == 3 else {}
        if not isinstance(options, Mapping):
            raise ExportInputError(
                f"graph {name!r}: the third item must be a dict of options, got "
                f"{type(options).__name__}"
            )
        try:
            return GraphSpec(item[0], item[1], **options)
        except TypeError as exc:
            raise ExportInputError(f"graph {name!r}: {exc}") from None
    raise ExportInputError(
        f"graph {name!r} must be (model, args), (model, args, {{options}}) or a GraphSpec, "
        f"got {type(item).__name__}"
    )


def export_many(
    graphs: Mapping[str, Any],
    path: str | os.PathLike,
    *,
    check: bool = False,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    allow_nan: bool = False,
    overwrite: bool = False,
    compresslevel: int = 0,
    properties: Mapping[str, str] | None = None,
    progress: bool = True,
    fragments: bool = True,
    lora: str | None = None,
) -> ManyExportResult:
    """Export several models (or one model's several call forms) into ONE NNEF archive in
    which each tensor they share is stored once.

    ``graphs`` maps a graph name (an NNEF identifier) to ``(model, args)``,
    ``(model, args, {"input_names": ..., "output_names": ..., "dynamic_axes": ...,
    "kwargs": ...})`` or a :class:`GraphSpec`. In the archive, each graph's inputs and
    outputs are named ``<graph>_<name>`` (``encoder_input``). A tensor is stored once when
    graphs use the same tensor object (a shared ``nn.Parameter`` or buffer) or tensors of
    equal contents (same dtype, shape, encoding and bytes). ``check=True`` runs every graph
    in tract (:func:`load_graph`'s way) on its example inputs and compares with PyTorch
    before the archive replaces anything at ``path``. ``lora`` is :func:`t2n_core.export`'s:
    separate adapters are recorded in ``lora.sites`` once per adapted layer, however many
    graphs use it (:mod:`t2n_core.many_lora`), so ``t2n adapter swap`` works on the archive.
    The other options are :func:`t2n_core.export`'s.

    >>> result = export_many({"encoder": (enc, (x,)), "decoder": (dec, (y,))},
    ...                      "model.nnef.tgz", check=True)   # doctest: +SKIP
    >>> runnable = load_graph("model.nnef.tgz", "decoder").into_runnable()  # doctest: +SKIP
    """
    if not isinstance(graphs, Mapping) or not graphs:
        raise ExportInputError("export_many needs a non-empty dict {graph name: (model, args)}")
    bad = [n for n in graphs if not (isinstance(n, str) and is_identifier(n))]
    if bad:
        raise ExportInputError(f"graph names {bad}: each must be {IDENTIFIER_RULE}")
    specs = {name: _spec(name, item) for name, item in graphs.items()}
    checked: dict[str, tuple[tuple, InputPlan]] = {}
    for name, spec in specs.items():
        try:
            args, input_names = _checked_inputs(spec.model, spec.args, spec.input_names)
            checked[name] = args, InputPlan.resolve(args, input_names, spec.dynamic_axes)
        except ExportInputError as exc:
            raise ExportInputError(f"graph {name!r}: {exc}") from None
    check_target(path, overwrite=overwrite)
    traced: dict[str, TracedGraph] = {}
    for name, spec in specs.items():
        args, plan = checked[name]
        logger.info("capturing graph %s (%s)", name, type(spec.model).__name__)
        try:
            traced[name] = trace_graph(
                spec.model, args, plan, kwargs=spec.kwargs, output_names=spec.output_names,
                check=check, progress=progress, fragments=fragments, lora=lora,
            )  # fmt: skip
        except ExportInputError as exc:
            raise ExportInputError(f"graph {name!r}: {exc}") from None
    sites = adapter_sites(traced)
    merged, io = merge_graphs({name: t.graph for name, t in traced.items()})
    props: dict[str, str] = {}
    for spec in specs.values():
        for key, value in model_properties(spec.model).items():
            props[key] = value if props.get(key, value) == value else f"{props[key]} | {value}"
    merged.properties = {
        "t2n_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "tract_version_checked": _tract_version(),
        **props,
        **lora_properties(traced, sites),
        **(properties or {}),
        GRAPHS_PROPERTY: json.dumps(io, separators=(",", ":")),
    }
    prepare_for_archive(merged)
    adapters = {v.name for site in sites for v, _ in site.variables}
    merged.notes += [f"stored once: {s}" for s in share_identical_tensors(merged, adapters)]
    label_adapters(merged, sites)
    files = list(archive_files(merged))
    check_adapter_files(sites, [name for name, _ in files])
    reports: dict[str, CheckReport] = {}

    def verify(staged: Path) -> None:
        for name, t in traced.items():
            inputs = [a.detach().cpu().numpy() for a in t.args if isinstance(a, torch.Tensor)]
            expected = [r.detach().cpu().numpy() for r in t.reference]
            reports[name] = check_archive(
                staged, inputs, expected, names=io[name]["outputs"], atol=atol, rtol=rtol,
                allow_nan=allow_nan, shown_as=f"{os.fspath(path)} (graph {name})", graph=name,
            )  # fmt: skip

    with progress_bar(
        total=len(files), desc="write", unit="file", disable=not progress, leave=False
    ) as bar:
        write_archive(
            path, files, overwrite=overwrite, compresslevel=compresslevel,
            progress=lambda _name: bar.update(1), verify=verify if check else None,
        )  # fmt: skip
    file_names = [name for name, _ in files]
    results = {
        name: _graph_result(merged, Path(path), io[name], file_names, reports.get(name))
        for name in traced
    }
    logger.info("exported graphs %s to %s", list(traced), path)
    return ManyExportResult(
        Path(path), results, tensor_bytes_by_type(merged), file_names, list(merged.notes),
        dat_headers(merged),
    )  # fmt: skip


def merge_graphs(graphs: Mapping[str, Graph]) -> tuple[Graph, dict[str, dict[str, list[str]]]]:
    """One graph holding ``graphs`` side by side: every value of graph ``g`` renamed
    ``g_<name>``, repeated-block fragments shared when their text is the same (else renamed
    ``g_<block>``). Returns it and, per graph, the archive names of its inputs and outputs."""
    from t2n_core.nnef.text import block_fragment

    merged = Graph(name="graphs")
    io: dict[str, dict[str, list[str]]] = {}
    owner: dict[str, str] = {}
    for gname, graph in graphs.items():
        names = set(graph.values) | set(graph.variables) | {v.name for v in graph.inputs}
        rename = {n: f"{gname}_{n}" for n in names}
        for old, new in rename.items():
            if new in owner:
                raise ExportInputError(
                    f"graph {gname!r} value {old!r} and graph {owner[new]!r} both become "
                    f"{new!r} in the archive; rename one of the graphs"
                )
            owner[new] = gname
        blocks: dict[str, str] = {}
        for bname, body in graph.blocks.items():
            text = block_fragment(body)
            if bname in merged.blocks and block_fragment(merged.blocks[bname]) != text:
                new = f"{gname}_{bname}"
                body.name = new
                merged.blocks[new] = body
                blocks[bname] = new
            else:
                merged.blocks.setdefault(bname, body)
        for fname, text in graph.fragments.items():
            if merged.fragments.setdefault(fname, text) != text:
                raise T2NError(
                    f"fragment {fname} of graph {gname!r} differs from another graph's; "
                    "this is a t2n bug, please report it"
                )
        for value in graph.values.values():
            merged.add_value(Value(rename[value.name], value.dtype, value.shape))
        for value in graph.inputs:
            merged.inputs.append(merged.values[rename[value.name]])
        merged.outputs += [rename[n] for n in graph.outputs]
        for var in graph.variables.values():
            var.name = rename[var.name]
            if var.declared_in in blocks:
                var.declared_in = blocks[var.declared_in]
            merged.variables[var.name] = var
        for op in graph.operations:
            copy = Operation(
                blocks.get(op.op, op.op), [rename[o] for o in op.outputs],
                _renamed(op.args, rename), {k: _renamed(v, rename) for k, v in op.attrs.items()},
                source=f"{gname}:{op.source}" if op.source else gname,
                array_outputs=op.array_outputs,
            )  # fmt: skip
            merged.operations.append(copy)
        merged.extensions |= graph.extensions
        merged.symbols += [s for s in graph.symbols if s not in merged.symbols]
        merged.notes += [f"{gname}: {n}" for n in graph.notes]
        io[gname] = {
            "inputs": [rename[v.name] for v in graph.inputs],
            "outputs": [rename[n] for n in graph.outputs],
        }
    merged.reserve([n for entry in io.values() for names in entry.values() for n in names])
    _label_by_graph(merged, owner)
    return merged, io


def _label_by_graph(merged: Graph, owner: dict[str, str]) -> None:
    """A label (state-dict name) that several graphs use for different tensor objects is
    prefixed with each graph's name (``decoder.lin.weight``), so that the file names say
    whose tensor each is; one tensor object under one label keeps it."""
    by_label: dict[str, list] = {}
    for var in merged.variables.values():
        by_label.setdefault(var.label, []).append(var)
    for label, found in by_label.items():
        graphs = {owner[v.name] for v in found}
        if len(graphs) > 1 and len({id(v.tensor) for v in found}) > 1:
            for var in found:
                var.label = f"{owner[var.name]}.{label}"


def _renamed(item: Any, rename: dict[str, str]) -> Any:
    if isinstance(item, Ref):
        return Ref(rename.get(item.name, item.name))
    if isinstance(item, list):
        return [_renamed(i, rename) for i in item]
    if isinstance(item, tuple):
        return tuple(_renamed(i, rename) for i in item)
    return item


def _graph_result(
    merged: Graph, path: Path, io: dict[str, list[str]], files: list[str], report: Any
) -> ExportResult:
    """One graph's share of ``merged``: the ops and variables its outputs depend on."""
    producers = {out: op for op in merged.operations for out in op.outputs}
    seen: set[str] = set()
    ops: list[Operation] = []
    stack = list(io["outputs"])
    while stack:
        name = stack.pop()
        if name in seen:
            continue
        seen.add(name)
        op = producers.get(name)
        if op is not None and op not in ops:
            ops.append(op)
            stack += _refs([*op.args, *op.attrs.values()])
    sub = Graph(blocks=merged.blocks, operations=ops)
    called = "\n".join(merged.fragments.get(op.op, op.op) for op in ops)
    sub.variables = {
        n: v for n, v in merged.variables.items()
        if n in seen or (v.declared_in is not None and v.declared_in in called)
    }  # fmt: skip
    return ExportResult(
        path=path,
        inputs=[_io_spec(merged, n) for n in io["inputs"]],
        outputs=[_io_spec(merged, n) for n in io["outputs"]],
        op_histogram=sub.op_histogram(),
        tensor_bytes=tensor_bytes_by_type(sub),
        files=files,
        check=report,
    )


def _refs(items: list[Any]) -> list[str]:
    out: list[str] = []
    for item in items:
        if isinstance(item, Ref):
            out.append(item.name)
        elif isinstance(item, (list, tuple)):
            out += _refs(list(item))
    return out


def _io_spec(graph: Graph, name: str) -> IOSpec:
    value = graph.values[name]
    return IOSpec(name, value.shape, _dtype_name(value.dtype))


def load_graph(path: str | os.PathLike, graph: str) -> Any:
    """Load graph ``graph`` of an :func:`export_many` archive in tract (every registry t2n
    may emit) as a ``tract.Model``: the archive's other graphs are pruned away. Call
    ``.into_runnable()`` on it; its inputs and outputs are in the order the graph declared.

    >>> model = load_graph("model.nnef.tgz", "decoder")   # doctest: +SKIP
    >>> outputs = model.into_runnable().run([ids])          # doctest: +SKIP
    """
    import tract

    from t2n_core.errors import TractRunError
    from t2n_core.tract_child import tract_message

    io = graph_io(path, graph)
    try:
        model = tract.nnef().with_tract_transformers().with_tract_extra().load(str(path))
        for transform in select_transforms(io):
            model.transform(transform)
    except Exception as exc:
        raise TractRunError(
            f"tract could not load graph {graph!r} of {os.fspath(path)}: {tract_message(exc)}"
        ) from exc
    return model
