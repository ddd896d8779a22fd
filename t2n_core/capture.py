"""Capture a model with ``torch.export`` (non-strict) and decompose it to the ops we translate."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from t2n_core.blocks import BlockCaptureError, Blocks
from t2n_core.errors import CaptureError, ExportInputError
from t2n_core.ir import is_identifier
from t2n_core.ops import registry
from t2n_core.shape_rules import shape_rules
from t2n_core.storage import NNEFStorage
from t2n_core.symbolic import SymbolTable

logger = logging.getLogger(__name__)

DynamicAxes = Mapping[str, Mapping[int, str] | Sequence[int]]


@dataclass
class Captured:
    program: ExportedProgram
    tensors: dict[str, Any]  # state-dict / constant name -> tensor as the writer must store it
    input_names: list[str]
    symbols: SymbolTable
    blocks: Blocks | None = None  # repeated blocks, each captured once (t2n::block calls)


def _is_identifier(name: str) -> bool:
    return is_identifier(name)


def normalize_args(args: Any) -> tuple[Any, ...]:
    if isinstance(args, torch.Tensor):
        return (args,)
    if isinstance(args, list):
        return tuple(args)
    if not isinstance(args, tuple):
        raise ExportInputError(
            f"example args must be a tensor or a tuple of tensors, got {type(args).__name__}"
        )
    return args


def default_input_names(model: nn.Module, args: tuple[Any, ...]) -> list[str]:
    """Names of the tensor arguments: the ``forward`` parameter names (``xs_0``, ``xs_1``,
    ... for the tensors passed to ``*xs``), else ``input_<i>``."""
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        params = []
    names = []
    for i, arg in enumerate(args):
        if not isinstance(arg, torch.Tensor):
            continue
        name = f"input_{i}"
        var = _varargs_index(params)
        if var is not None and i >= var:
            candidate = f"{params[var].name}_{i - var}"
        elif i < len(params):
            candidate = params[i].name
        else:
            candidate = name
        names.append(candidate if _is_identifier(candidate) else name)
    return names


def _varargs_index(params: list[inspect.Parameter]) -> int | None:
    """Position of the ``*args`` parameter of a signature, if any."""
    for i, p in enumerate(params):
        if p.kind is inspect.Parameter.VAR_POSITIONAL:
            return i
    return None


def group_varargs(model: nn.Module, shapes: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """``dynamic_shapes`` per argument, regrouped as ``torch.export`` wants them for a
    ``forward(self, a, *xs)``: one entry per parameter, a tuple for ``*xs``."""
    if shapes is None:
        return None
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return shapes
    var = _varargs_index(params)
    if var is None or var > len(shapes):
        return shapes
    return (*shapes[:var], tuple(shapes[var:]))


def dynamic_shapes_for(
    args: tuple[Any, ...], input_names: list[str], dynamic_axes: DynamicAxes | None
) -> tuple[Any, ...] | None:
    """torch.export ``dynamic_shapes`` from ``{input: {axis: name}}``."""
    if not dynamic_axes:
        return None
    unknown = [k for k in dynamic_axes if k not in input_names]
    if unknown:
        raise ExportInputError(
            f"dynamic_axes names unknown input(s) {unknown}; inputs are {input_names}"
        )
    dims: dict[str, Dim] = {}
    tensor_args = [a for a in args if isinstance(a, torch.Tensor)]
    per_input: dict[str, dict[int, Dim]] = {}
    for input_name, axes in dynamic_axes.items():
        tensor = tensor_args[input_names.index(input_name)]
        if not isinstance(axes, Mapping):
            axes = {int(a): f"{input_name}_{int(a)}" for a in axes}
        spec: dict[int, Dim] = {}
        for axis, sym in axes.items():
            axis = int(axis)
            if axis < 0:
                axis += tensor.dim()
            if not 0 <= axis < tensor.dim():
                raise ExportInputError(
                    f"dynamic axis {axis} of input {input_name!r} is out of range for its "
                    f"shape {tuple(tensor.shape)}"
                )
            if not _is_identifier(sym):
                raise ExportInputError(
                    f"axis name {sym!r} of input {input_name!r} must be an identifier like 'T'"
                )
            if tensor.shape[axis] < 2:
                raise ExportInputError(
                    f"input {input_name!r} has size {tensor.shape[axis]} on dynamic axis {axis} "
                    f"({sym}); torch.export specialises sizes 0 and 1, so give an example of "
                    "size 2 or more on that axis"
                )
            dims.setdefault(sym, Dim(sym))
            spec[axis] = dims[sym]
        per_input[input_name] = spec
    shapes: list[Any] = []
    names_iter = iter(input_names)
    for arg in args:
        if isinstance(arg, torch.Tensor):
            shapes.append(per_input.get(next(names_iter)))
        else:
            shapes.append(None)
    return tuple(shapes)


@contextlib.contextmanager
def float_proxies(model: nn.Module) -> Iterator[dict[str, Any]]:
    """Swap every storage-protocol tensor (e.g. a QTensor) for a plain proxy while capturing.

    Yields the map from state-dict name to the original tensor. Tied tensors get one proxy.
    """
    originals: dict[str, Any] = {}
    swapped: list[tuple[nn.Module, str, str, Any]] = []
    proxies: dict[int, Any] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for store in ("_parameters", "_buffers"):
            for key, tensor in list(getattr(module, store).items()):
                if tensor is None:
                    continue
                full = f"{mod_name}.{key}" if mod_name else key
                originals[full] = tensor
                if isinstance(tensor, NNEFStorage) and hasattr(tensor, "nnef_float_proxy"):
                    if id(tensor) not in proxies:
                        proxy = tensor.nnef_float_proxy()
                        if store == "_parameters":
                            proxy = nn.Parameter(proxy, requires_grad=False)
                        proxies[id(tensor)] = proxy
                    getattr(module, store)[key] = proxies[id(tensor)]
                    swapped.append((module, store, key, tensor))
    try:
        yield originals
    finally:
        for module, store, key, tensor in swapped:
            getattr(module, store)[key] = tensor


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


#: core ATen ops that ``torch.export`` keeps but torch's reference decompositions spell in
#: ops we translate (checked one by one in tract by ``benchmarks/op_matrix.py``)
_ALSO_DECOMPOSED = ("ldexp", "dist", "tril_indices", "addmv")


def decomposition_table() -> dict[Any, Any]:
    table = torch.export.default_decompositions()
    ops = [getattr(torch.ops.aten, name) for name in _ALSO_DECOMPOSED]
    table.update(torch._decomp.get_decompositions(ops))
    for op in registry.kept_whole():
        table.pop(op, None)
    return table


def capture(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    input_names: list[str],
    dynamic_axes: DynamicAxes | None,
    *,
    fragments: bool = True,
) -> Captured:
    """``torch.export`` the model (eval mode, QTensors as proxies) and decompose it.

    With ``fragments``, each distinct repeated block is captured once and called per instance
    (:mod:`t2n_core.blocks`); if a block cannot be captured alone, the model is captured flat.
    """
    dynamic_shapes = group_varargs(model, dynamic_shapes_for(args, input_names, dynamic_axes))
    blocks = Blocks.find(model) if fragments else None
    with (
        eval_mode(model),
        float_proxies(model) as originals,
        torch.no_grad(),
        shape_rules(),
        warnings.catch_warnings(),
    ):
        # torch.export's internal use of its own deprecated pytree API: not the user's concern
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        # nn.RNN refreshes its _flat_weights list while being traced; the weights are exported
        warnings.filterwarnings("ignore", message=r".*_flat_weights\[0\].*", category=UserWarning)
        try:
            # torch prints the failing graph on stderr (twice, when retried): our error says
            # what went wrong, so that print is kept out of the user's terminal
            with contextlib.redirect_stderr(io.StringIO()), _quiet_torch_logs():
                ep = None
                if blocks is not None:
                    ep = _capture_with_blocks(model, args, kwargs, dynamic_shapes, blocks)
                    blocks.originals = originals
                if ep is None:
                    blocks = None
                    ep = _export(model, args, kwargs, dynamic_shapes)
                    ep = ep.run_decompositions(decomposition_table())
        except Exception as exc:  # torch raises many types
            raise capture_error(type(model).__name__, exc, dynamic_axes) from exc
    tensors: dict[str, Any] = {}
    for spec in ep.graph_signature.input_specs:
        target = spec.target
        if target is None:
            continue
        if target in originals:
            tensors[target] = originals[target]
        elif target in ep.constants:
            tensors[target] = ep.constants[target]
        elif target in ep.state_dict:
            tensors[target] = ep.state_dict[target]
    symbols = SymbolTable()
    user_specs = [s for s in ep.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    tensor_names = iter(input_names)
    for spec in user_specs:
        meta = placeholders[spec.arg.name].meta.get("val")
        if not isinstance(meta, torch.Tensor):
            continue
        name = next(tensor_names)
        axes = (dynamic_axes or {}).get(name, {})
        if not isinstance(axes, Mapping):
            axes = {int(a): f"{name}_{int(a)}" for a in axes}
        for axis, sym in axes.items():
            size = meta.shape[int(axis)]
            if isinstance(size, torch.SymInt):
                symbols.bind(size.node.expr, sym)
            else:
                raise CaptureError(
                    f"dynamic axis {axis} ({sym}) of input {name!r} was specialised to {size} "
                    "by the model's code; remove that axis from dynamic_axes or make the code "
                    "size-agnostic"
                )
    return Captured(ep, tensors, input_names, symbols, blocks)


def _capture_with_blocks(model, args, kwargs, dynamic_shapes, blocks: Blocks):
    """The model with its repeated blocks as ``t2n::block`` calls, each block captured once;
    None (after a warning saying why) if that fails, to capture the model flat instead."""
    try:
        with blocks.intercept(), blocks.active():
            ep = _export(model, args, kwargs, dynamic_shapes)
            ep = ep.run_decompositions(decomposition_table())
        if not blocks.sites:
            return None
        blocks.capture_all(_export_block)
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if not isinstance(exc, BlockCaptureError):
            reason = f"{type(exc).__name__}: {reason}"
        logger.warning(
            "repeated blocks of %s captured flat (no fragments): %s", type(model).__name__, reason
        )
        return None
    logger.debug(
        "%d block call(s), %d distinct capture(s)",
        len(blocks.sites),
        len({id(c) for c in blocks.programs.values()}),
    )
    return ep


def _export_block(module: nn.Module, args, dynamic_shapes) -> ExportedProgram:
    return torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=False)


class _DropNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Unable to find user code")


@contextlib.contextmanager
def _quiet_torch_logs() -> Iterator[None]:
    shapes_log = logging.getLogger("torch.fx.experimental.symbolic_shapes")
    noise = _DropNoise()
    shapes_log.addFilter(noise)
    try:
        yield
    finally:
        shapes_log.removeFilter(noise)


_SPECIALISED = re.compile(
    r"L\['(\w+)'\]((?:\[\d+\])*)\.size\(\)\[(\d+)\] as dynamic but your code specialized it "
    r"to be a constant \((\d+)\)"
)
_USER_CALL = re.compile(r'The following call raised this error:\s*\n\s*File "([^"]+)", line (\d+)'
                        r"[^\n]*\n\s*(.+)")  # fmt: skip


def capture_error(
    model_name: str, exc: Exception, dynamic_axes: DynamicAxes | None
) -> CaptureError:
    """torch.export's failure as one actionable message: which input axis the code fixed to
    what size, or where the code branches on tensor values (not torch's whole report)."""
    text = str(exc)
    fixed = []
    for name, index, axis, size in _SPECIALISED.findall(text):
        if name == "args" and index:
            name = f"positional input {index.strip('[]')}"
        axes = (dynamic_axes or {}).get(name, {})
        sym = axes.get(int(axis), "") if isinstance(axes, Mapping) else ""
        fixed.append(
            f"dynamic axis {axis}{f' ({sym})' if sym else ''} of input {name!r} was fixed to "
            f"{size} by the model's code"
        )
    if fixed:
        return CaptureError(
            f"torch.export could not capture {model_name}: {'; '.join(fixed)}. Some operation "
            "needs that exact size: a reshape / view / expand with a hard-coded size, or a "
            "Python int taken from a shape. Write sizes from the tensor (x.reshape(x.shape[0], "
            "-1)) or remove that axis from dynamic_axes."
        )
    call = _USER_CALL.search(text)
    where = f" at {call.group(1)}:{call.group(2)} ({call.group(3).strip()})" if call else ""
    if "data-dependent" in text or "DataDependent" in type(exc).__name__:
        return CaptureError(
            f"torch.export could not capture {model_name}: the code depends on tensor values"
            f"{where}. An `if` on a tensor, .item() or a size computed from values cannot be "
            "exported; rewrite it with torch.where / torch.cond, or compute it outside the model."
        )
    first = "\n".join(line for line in text.strip().splitlines()[:3] if line.strip())
    return CaptureError(
        f"torch.export could not capture {model_name}{where}: {first}\n"
        "Data-dependent control flow (an `if` on tensor values) and non-tensor outputs cannot "
        "be exported; rewrite them with torch.where / torch.cond or return tensors."
    )


def _export(model: nn.Module, args, kwargs, dynamic_shapes) -> ExportedProgram:
    """``torch.export`` with named Dims; on a range violation, again with ``Dim.DYNAMIC``.

    Named Dims must hold for every size from 0 up, so a Conv1d on a dynamic T fails (it needs
    T >= the kernel span, and a guard that its output size is not 1). ``Dim.DYNAMIC`` on the
    same axes lets torch infer those ranges; ``capture`` checks that the axes stayed dynamic.
    """
    try:
        return torch.export.export(
            model, args, kwargs=kwargs, dynamic_shapes=dynamic_shapes, strict=False
        )
    except torch._dynamo.exc.UserError as exc:
        if dynamic_shapes is None or "Constraints violated" not in str(exc):
            raise
    relaxed = _relaxed(dynamic_shapes)
    return torch.export.export(model, args, kwargs=kwargs, dynamic_shapes=relaxed, strict=False)


def _relaxed(shapes: Any) -> Any:
    """The same dynamic axes, each ``Dim.DYNAMIC`` (through ``*args`` groups too)."""
    if isinstance(shapes, dict):
        return {a: Dim.DYNAMIC for a in shapes}
    if isinstance(shapes, tuple):
        return tuple(_relaxed(s) for s in shapes)
    return shapes
