"""Capture a model with ``torch.export`` (non-strict) and decompose it to the ops we translate."""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.export import Dim, ExportedProgram

from t2n_core.blocks import BlockCaptureError, Blocks
from t2n_core.decompose import decompose
from t2n_core.errors import CaptureError, ExportInputError
from t2n_core.gc_freeze import long_lived_frozen
from t2n_core.input_plan import InputPlan, shared_dim_symbols, varargs_index
from t2n_core.progress import progress_bar
from t2n_core.shape_rules import shape_rules
from t2n_core.storage import NNEFStorage
from t2n_core.symbolic import SymbolTable

logger = logging.getLogger(__name__)


@dataclass
class Captured:
    program: ExportedProgram
    tensors: dict[str, Any]  # state-dict / constant name -> tensor as the writer must store it
    plan: InputPlan
    symbols: SymbolTable  # torch's size symbols -> the plan's axis symbols
    blocks: Blocks | None = None  # repeated blocks, each captured once (t2n::block calls)

    def input_names(self) -> dict[str, str]:
        """Each tensor user-input placeholder of the program (node name) -> its input name."""
        return {node: i.name for node, i in self.plan.by_placeholder(self.program).items()}


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


def group_varargs(model: nn.Module, shapes: tuple[Any, ...] | None) -> tuple[Any, ...] | None:
    """``dynamic_shapes`` per argument, regrouped as ``torch.export`` wants them for a
    ``forward(self, a, *xs)``: one entry per parameter, a tuple for ``*xs``."""
    if shapes is None:
        return None
    try:
        params = list(inspect.signature(model.forward).parameters.values())
    except (TypeError, ValueError):
        return shapes
    var = varargs_index(params)
    if var is None or var > len(shapes):
        return shapes
    return (*shapes[:var], tuple(shapes[var:]))


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


def capture(
    model: nn.Module,
    args: tuple[Any, ...],
    kwargs: dict[str, Any] | None,
    plan: InputPlan,
    *,
    fragments: bool = True,
    progress: bool = False,
) -> Captured:
    """``torch.export`` the model (eval mode, QTensors as proxies) and decompose it.

    With ``fragments``, each distinct repeated block is captured once and called per instance
    (:mod:`t2n_core.blocks`); if a block cannot be captured alone, the model is captured flat.
    ``progress``: a bar over the steps (trace, decompose, each distinct block) of a model that
    repeats blocks (the captures that last seconds: a layer stack), once they last a second.
    """
    dynamic_shapes = group_varargs(model, plan.dynamic_shapes())
    blocks = Blocks.find(model) if fragments else None
    bar = progress_bar(
        total=2, desc="capture", unit="step", disable=not progress or blocks is None, leave=False
    )
    with (
        long_lived_frozen(),  # the trace's collections need not traverse torch's objects
        bar,
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
                    ep = _capture_with_blocks(model, args, kwargs, dynamic_shapes, blocks, bar)
                    blocks.originals = originals
                if ep is None:
                    blocks = None
                    bar.reset(total=2)
                    ep = _traced_and_decomposed(model, args, kwargs, dynamic_shapes, bar)
        except Exception as exc:  # torch raises many types
            raise capture_error(type(model).__name__, exc, plan) from exc
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
    symbols = plan.bind_symbols(ep)
    symbols.assume(*getattr(model, "size_facts", ()))  # e.g. CausalLMWithCache's context
    return Captured(ep, tensors, plan, symbols, blocks)


def _traced_and_decomposed(model, args, kwargs, dynamic_shapes, bar: Any) -> ExportedProgram:
    """``torch.export`` then decompose, each a step of the progress ``bar``."""
    bar.set_postfix_str("trace", refresh=False)
    ep = _export(model, args, kwargs, dynamic_shapes)
    bar.update(1)
    bar.set_postfix_str("decompose", refresh=False)
    ep = decompose(ep)
    bar.update(1)
    return ep


def _capture_with_blocks(model, args, kwargs, dynamic_shapes, blocks: Blocks, bar: Any):
    """The model with its repeated blocks as ``t2n::block`` calls, each block captured once;
    None (after a warning saying why) if that fails, to capture the model flat instead."""
    try:
        with blocks.intercept(), blocks.active():
            ep = _traced_and_decomposed(model, args, kwargs, dynamic_shapes, bar)
        if not blocks.sites:
            return None
        blocks.capture_all(_export_block, progress=bar)
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


def capture_error(model_name: str, exc: Exception, plan: InputPlan | None) -> CaptureError:
    """torch.export's failure as one actionable message: which input axis the code fixed to
    what size, or where the code branches on tensor values (not torch's whole report)."""
    text = str(exc)
    fixed = []
    for name, index, axis, size in _SPECIALISED.findall(text):
        if name == "args" and index:
            name = f"positional input {index.strip('[]')}"
        sym = (plan.axis_symbol(name, int(axis)) if plan is not None else None) or ""
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
        with shared_dim_symbols():
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
