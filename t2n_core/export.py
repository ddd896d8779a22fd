"""``t2n_core.export``: PyTorch model -> NNEF archive, optionally checked in tract."""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from t2n_core.capture import capture, float_proxies, normalize_args
from t2n_core.check import CheckReport, check_archive
from t2n_core.deferred import holds_deferred
from t2n_core.errors import ExportInputError, TranslationError, UnsupportedOpsError
from t2n_core.input_plan import DynamicAxes, InputPlan, default_input_names
from t2n_core.io_spec import IOSpec
from t2n_core.ir import IDENTIFIER_RULE, Graph, is_identifier, sanitize
from t2n_core.lora import LoraPlan, applied, plan_lora
from t2n_core.nnef.archive import check_target, write_archive
from t2n_core.nnef.dat import DatHeader
from t2n_core.passes import prepare_for_archive
from t2n_core.progress import progress_bar
from t2n_core.translate import translate
from t2n_core.version import __version__
from t2n_core.writer import archive_files, dat_headers, tensor_bytes_by_type

logger = logging.getLogger(__name__)


@dataclass
class ExportResult:
    """What ``export`` wrote, and how it checked."""

    path: Path
    inputs: list[IOSpec]
    outputs: list[IOSpec]
    op_histogram: dict[str, int]
    tensor_bytes: dict[str, int]  # by .dat item type name
    files: list[str] = field(default_factory=list)
    check: CheckReport | None = None
    notes: list[str] = field(default_factory=list)  # graph rewrites worth knowing about
    dat_headers: dict[str, DatHeader] = field(default_factory=dict)  # by file name

    @property
    def total_tensor_bytes(self) -> int:
        return sum(self.tensor_bytes.values())

    def __str__(self) -> str:
        from t2n_core.summary import format_summary

        return format_summary(self)


def _tensor_leaves(value: Any, what: str) -> list[torch.Tensor]:
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    bad = [type(v).__name__ for v in leaves if not isinstance(v, torch.Tensor)]
    if bad:
        raise ExportInputError(
            f"the model's {what} must be tensors (or tuples/lists/dicts of tensors); found {bad}"
        )
    return leaves


def model_properties(model: nn.Module) -> dict[str, str]:
    """The ``t2n_properties`` dicts carried by ``model``'s modules (``quantize_model`` leaves
    one with the codec, calibration and calibration data hash), merged; differing values of
    one key are joined with ``" | "``.

    >>> m = nn.Sequential(nn.Linear(2, 2)); m[0].t2n_properties = {"a": "1"}
    >>> model_properties(m)
    {'a': '1'}
    """
    out: dict[str, str] = {}
    for module in model.modules():
        for key, value in (getattr(module, "t2n_properties", None) or {}).items():
            out[key] = value if out.get(key, value) == value else f"{out[key]} | {value}"
    return out


def export(
    model: nn.Module,
    args: Any,
    path: str | os.PathLike,
    *,
    kwargs: dict[str, Any] | None = None,
    input_names: Sequence[str] | None = None,
    output_names: Sequence[str] | None = None,
    dynamic_axes: DynamicAxes | None = None,
    streaming_axis: Mapping[str, int] | None = None,
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
) -> ExportResult:
    """Export ``model`` called on ``args`` to an NNEF archive that tract loads.

    ``path`` ending in ``.tgz``/``.tar.gz``/``.tar`` gives a tar archive, anything else a
    directory. ``dynamic_axes`` maps input names to ``{axis: symbol}``; ``streaming_axis`` maps
    input names to their time axis (``{"audio": 2}``): that axis becomes dynamic, on one symbol
    recorded in the archive, so that :func:`t2n_core.pulse.check_pulsed` and
    ``t2n check --pulse N`` can stream it in tract. ``check=True`` runs the
    archive in tract on ``args`` and raises :class:`CheckMismatchError` if it disagrees with
    PyTorch beyond ``atol + rtol * max|reference|``; a NaN in either output fails it unless
    ``allow_nan=True`` and both have NaN at the same places. Tar archives are stored uncompressed
    inside gzip by default (``compresslevel=0``: weights barely compress and level 1 runs at
    ~40 MB/s); pass ``compresslevel=6`` for smaller files. With ``fragments`` (the default),
    a block that the model repeats (transformer layers, residual blocks...) is captured once
    and written once as an NNEF fragment, called per instance with its own weights.
    ``lora`` says how LoRA adapters (PEFT or plain ``lora_A`` / ``lora_B``, see
    :mod:`t2n_core.lora`) are written: ``"separate"`` (the default) keeps each adapter apart
    from its base weight, in ``<module path>.lora_A`` / ``.lora_B`` / ``.lora_scale`` files that
    ``t2n adapter swap`` can replace; ``"merged"`` writes one weight ``W + s·B·A`` per layer.

    >>> result = export(nn.Linear(4, 2), (torch.randn(3, 4),), "lin.nnef.tgz",
    ...                 dynamic_axes={"input": {0: "B"}}, check=True)   # doctest: +SKIP
    """
    args, input_names = _checked_inputs(model, args, input_names)
    plan = InputPlan.resolve(args, input_names, dynamic_axes, streaming_axis)
    streaming_properties: dict[str, str] = {}
    if plan.streaming_symbol is not None:
        from t2n_core.pulse import STREAMING_PROPERTY

        streaming_properties[STREAMING_PROPERTY] = plan.streaming_symbol
    check_target(path, overwrite=overwrite)  # before the capture: fail fast, name the target
    traced = trace_graph(
        model, args, plan, kwargs=kwargs, output_names=output_names, check=check,
        progress=progress, fragments=fragments, lora=lora,
    )  # fmt: skip
    graph, ref_leaves, output_names = traced.graph, traced.reference, traced.output_names
    lora_plan = traced.lora
    graph.properties = {
        "t2n_version": __version__,
        "torch_version": torch.__version__.split("+")[0],
        "tract_version_checked": _tract_version(),
        **streaming_properties,
        **model_properties(model),
        **(lora_plan.properties if lora_plan else {}),
        **(properties or {}),
    }
    files = list(archive_files(prepare_for_archive(graph)))
    if lora_plan is not None:
        _check_adapter_files(lora_plan, [name for name, _ in files])
    check_report: list[CheckReport] = []

    def verify(staged: Path) -> None:
        """Run the staged archive in tract before it replaces anything at ``path``."""
        inputs = [a.detach().cpu().numpy() for a in args if isinstance(a, torch.Tensor)]
        expected = [r.detach().cpu().numpy() for r in ref_leaves]
        report = check_archive(
            staged, inputs, expected, names=output_names, atol=atol, rtol=rtol,
            allow_nan=allow_nan, shown_as=os.fspath(path),
        )  # fmt: skip
        check_report.append(report)

    with progress_bar(
        total=len(files), desc="write", unit="file", disable=not progress, leave=False
    ) as bar:
        write_archive(
            path,
            files,
            overwrite=overwrite,
            compresslevel=compresslevel,
            progress=lambda _name: bar.update(1),
            verify=verify if check else None,
        )
    result = ExportResult(
        path=Path(path),
        inputs=[IOSpec(v.name, v.shape, _dtype_name(v.dtype)) for v in graph.inputs],
        outputs=[
            IOSpec(n, graph.values[n].shape, _dtype_name(graph.values[n].dtype))
            for n in graph.outputs
        ],
        op_histogram=graph.op_histogram(),
        tensor_bytes=tensor_bytes_by_type(graph),
        files=[name for name, _ in files],
        dat_headers=dat_headers(graph),
        notes=list(graph.notes),
        check=check_report[0] if check_report else None,
    )
    logger.info("exported %s to %s", type(model).__name__, path)
    return result


@dataclass
class TracedGraph:
    """A model captured and translated (not yet written): its graph, the reference outputs
    PyTorch gave on the example inputs, and the output names."""

    graph: Graph
    args: tuple
    reference: list[torch.Tensor]
    output_names: list[str]
    lora: LoraPlan | None = None  # how LoRA adapters were captured (None: the model has none)


def _checked_inputs(
    model: nn.Module, args: Any, input_names: Sequence[str] | None
) -> tuple[tuple, list[str]]:
    """``args`` as a tuple and the input names (given, or from ``forward``), checked."""
    if not isinstance(model, nn.Module):
        raise ExportInputError(f"export needs an nn.Module, got {type(model).__name__}")
    args = normalize_args(args)
    if input_names is None:
        input_names = default_input_names(model.forward, args)
    input_names = list(input_names)
    _check_names(input_names, "input_names")
    return args, input_names


def trace_graph(
    model: nn.Module,
    args: tuple,
    plan: InputPlan,
    *,
    kwargs: dict[str, Any] | None,
    output_names: Sequence[str] | None,
    check: bool,
    progress: bool,
    fragments: bool,
    lora: str | None = None,
) -> TracedGraph:
    """Run ``model`` on ``args`` for the reference outputs, capture and translate it: the
    graph :func:`export` writes. Without ``check``, a model holding deferred weights runs on
    fake tensors. LoRA sites are captured as ``lora`` asks (:mod:`t2n_core.lora`)."""
    input_names = plan.names
    _refuse_dtypes_tract_lacks(plan)
    reference: Any = None
    # unchecked streamed weights with the output names given: PyTorch's outputs are not used,
    # the capture gives their count (a forward, even on fake tensors, costs a pass per layer)
    skip_reference = not check and output_names is not None and holds_deferred(model)
    if not skip_reference:
        reference = _reference_outputs(model, args, kwargs, fake=not check)
    ref_leaves = [] if skip_reference else _tensor_leaves(reference, "outputs")
    if output_names is None:
        output_names = default_output_names(reference)
    output_names = list(output_names)
    if not skip_reference and len(output_names) != len(ref_leaves):
        raise ExportInputError(
            f"{len(output_names)} output_names given for {len(ref_leaves)} output tensor(s)"
        )
    _check_names(output_names, "output_names")
    clash = set(input_names) & set(output_names)
    if clash:
        raise ExportInputError(f"names used both as input and output: {sorted(clash)}")

    lora_plan = plan_lora(model, lora)
    with applied(model, lora_plan) as target:
        captured = capture(target, args, kwargs, plan, fragments=fragments, progress=progress)
    if skip_reference and len(output_names) != len(captured.program.graph_signature.user_outputs):
        raise ExportInputError(
            f"{len(output_names)} output_names given for "
            f"{len(captured.program.graph_signature.user_outputs)} output tensor(s)"
        )
    _refuse_dtypes_tract_lacks(plan, captured.program)
    try:
        graph = _translate(captured, output_names, progress)
    except (TranslationError, UnsupportedOpsError) as exc:
        if captured.blocks is None:
            raise
        reason = " ".join(line.strip() for line in str(exc).splitlines()[:6])  # the ops too
        logger.warning(
            "repeated blocks of %s written flat (no fragments): %s", type(model).__name__, reason
        )
        with applied(model, lora_plan) as target:
            captured = capture(target, args, kwargs, plan, fragments=False, progress=progress)
        graph = _translate(captured, output_names, progress)
    bound = set(captured.symbols.names.values())  # torch may merge two axes into one symbol
    graph.symbols = [s for s in plan.symbols if s in bound]
    graph.remove_dead_code()
    graph.extensions.add("tract_registry tract_core")
    if lora_plan.scan.sites:
        graph.notes += [*lora_plan.scan.notes, lora_plan.summary()]
    return TracedGraph(
        graph, args, ref_leaves, output_names, lora_plan if lora_plan.scan.sites else None
    )


def _reference_outputs(
    model: nn.Module, args: tuple, kwargs: dict[str, Any] | None, *, fake: bool
) -> Any:
    """``model(*args, **kwargs)`` in eval mode, without gradients; with ``fake``, a model
    holding deferred weights runs on fake tensors instead (only the outputs' structure is
    needed: reading streamed weights would cost a pass over the whole model)."""
    with torch.no_grad():
        was_training = model.training
        model.eval()
        try:
            if fake and holds_deferred(model):
                with float_proxies(model), FakeTensorMode(allow_non_fake_inputs=True):
                    return model(*args, **(kwargs or {}))
            return model(*args, **(kwargs or {}))
        finally:
            model.train(was_training)


def default_output_names(reference: Any) -> list[str]:
    """Output names from the structure the model returns.

    One tensor: ``output``; a tuple/list: ``output_0, output_1, ...``; a dict (or a Hugging
    Face ``ModelOutput``): its keys, joined with ``_`` when nested (``{"a": (x, y)}`` gives
    ``a_0, a_1``).

    >>> default_output_names({"logits": torch.zeros(1), "hidden": (torch.zeros(1),)})
    ['logits', 'hidden_0']
    """
    from torch.utils._pytree import tree_flatten_with_path

    paths = [path for path, _ in tree_flatten_with_path(reference)[0]]
    keyed = any(hasattr(k, "key") or hasattr(k, "name") for p in paths for k in p)
    if not keyed:
        return ["output"] if len(paths) == 1 else [f"output_{i}" for i in range(len(paths))]
    names: list[str] = []
    for i, path in enumerate(paths):
        parts = [str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", "")))) for k in path]
        name = sanitize("_".join(parts))
        if not is_identifier(name) or name in names:
            name = f"output_{i}"
        names.append(name)
    return names


def _refuse_dtypes_tract_lacks(plan: InputPlan, program: Any = None) -> None:
    """bf16 (or another dtype tract has no type for) in an input, or computed on by the
    captured graph: one clear error, with what to do. (A bf16 weight the model converts to
    float itself is fine: it is stored as f32.)"""
    from t2n_core.emit import module_path
    from t2n_core.nnef.text import _EXTERNAL_DTYPES

    found = {
        f"input {i.name!r}": str(i.dtype) for i in plan.inputs if i.dtype not in _EXTERNAL_DTYPES
    }
    for node in program.graph.nodes if program is not None else []:
        val = node.meta.get("val")
        if node.op == "call_function" and isinstance(val, torch.Tensor):
            # complex64 values are stored as f32 with a last axis of 2 (t2n_core.ops.spectral)
            if val.dtype not in _EXTERNAL_DTYPES and val.dtype != torch.complex64:
                found.setdefault(f"module '{module_path(node) or '<root>'}'", str(val.dtype))
    if found:
        where = ", ".join(list(found)[:5]) + (
            f" and {len(found) - 5} more" if len(found) > 5 else ""
        )
        raise ExportInputError(
            f"tract has no {' / '.join(sorted(set(found.values())))} type, used by {where}. "
            "Convert the model and inputs first: model.float() with float32 inputs (or "
            "model.half() with float16 inputs)"
        )


def _translate(captured: Any, output_names: list[str], progress: bool) -> Any:
    n_nodes = sum(1 for n in captured.program.graph.nodes if n.op == "call_function")
    with progress_bar(
        total=n_nodes, desc="translate", unit="op", disable=not progress, leave=False
    ) as bar:
        return translate(
            captured.program,
            tensors=captured.tensors,
            inputs=captured.input_names(),
            output_names=output_names,
            symbols=captured.symbols,
            progress=bar,
            blocks=captured.blocks,
        )


def _check_adapter_files(plan: LoraPlan, files: list[str]) -> None:
    """Refuse, before writing, separate adapters whose files did not get their names (a
    file-name clash renamed them): ``t2n adapter swap`` finds them by those names."""
    missing = [f for f in plan.adapter_files() if f not in files]
    if missing:
        from t2n_core.errors import LoraError

        raise LoraError(
            f"the adapter files {missing[:3]} could not be written under their names (another "
            "tensor's file clashes with them); rename the clashing module"
        )


def _check_names(names: list[str], what: str) -> None:
    bad = [n for n in names if not is_identifier(n)]
    if bad:
        raise ExportInputError(f"{what} {bad}: each name must be {IDENTIFIER_RULE}")
    dup = [n for n, c in Counter(names).items() if c > 1]
    if dup:
        raise ExportInputError(f"{what} has duplicates: {dup}")


def _dtype_name(dtype: torch.dtype) -> str:
    from t2n_core.nnef.text import tract_dtype_name

    return tract_dtype_name(dtype)


def _tract_version() -> str:
    try:
        from importlib.metadata import version

        return version("tract")
    except Exception:
        return "unknown"
