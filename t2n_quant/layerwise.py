"""Data-aware quantization, block by block: what each weight's module sees on calibration data.

A data-aware calibration (``"gptq"``) needs, per Linear weight, ``H = X^T X`` over the
inputs its module sees. How they are gathered:

- **block by block** when the model keeps its repeated blocks in an ``nn.ModuleList``
  (``model.layers``, ``encoder.layer``, ...) and consecutive blocks chain (each block's
  first input is the previous block's first output, the other arguments equal): the inputs
  of the first block are captured once (the model stops there), then each block in turn is
  run on them to gather the Hessians of its weights, its weights are quantized, and the
  quantized block is run again to give the next block its inputs (so each block is
  calibrated on the activations of the already quantized blocks before it, as in GPTQ).
  Only the block at hand needs to be on ``device``; the weights outside the blocks (an LM
  head) are calibrated last, with the blocks replaced by their recorded outputs.
- **all at once** otherwise: one pass of the float model with every Hessian gathered.

Weights no data-aware method applies to (not a Linear, shared by several modules, never
reached by the data) get the weight-only ``inner`` calibration and a note saying so.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from t2n_quant.calibration.gptq import gptq
from t2n_quant.calibration_data import Batch
from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.errors import CalibrationDataError

logger = logging.getLogger(__name__)

#: calibrations that need data, handled here rather than by :mod:`t2n_quant.calibration`
DATA_AWARE = ("gptq",)


def is_data_aware(calibration: object) -> bool:
    """Whether ``calibration`` names a data-aware method (``"gptq"``, ``"gptq:mse"``).

    >>> is_data_aware("gptq:mse"), is_data_aware("mse")
    (True, False)
    """
    return isinstance(calibration, str) and calibration.split(":")[0] in DATA_AWARE


class _Stop(Exception):
    pass


@dataclass
class Target:
    """One weight to calibrate with data: its Linear module and the Hessian of its inputs."""

    weight: Any  # swap._Weight
    codec: Codec
    path: str
    module: nn.Linear
    hessian: torch.Tensor | None = None
    rows: int = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.detach().reshape(-1, x.shape[-1]).float()
        h = x.T @ x
        self.hessian = h if self.hessian is None else self.hessian.add_(h)
        self.rows += x.shape[0]


def _first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise CalibrationDataError(f"a block returned {type(out).__name__}, not a tensor first")


def _with_first(args: tuple[Any, ...], first: torch.Tensor) -> tuple[Any, ...]:
    return (first, *args[1:])


def find_blocks(model: nn.Module, paths: list[str]) -> tuple[str, nn.ModuleList] | None:
    """The ``nn.ModuleList`` whose children hold the most of ``paths`` (at least two)."""
    best: tuple[int, str, nn.ModuleList] | None = None
    for name, module in model.named_modules():
        if not isinstance(module, nn.ModuleList) or len(module) < 2:
            continue
        prefix = f"{name}." if name else ""
        holders = {p[len(prefix) :].split(".")[0] for p in paths if p.startswith(prefix)}
        if len(holders) >= 2 and (best is None or len(holders) > best[0]):
            best = (len(holders), name, module)
    return None if best is None else (best[1], best[2])


class _Standin(nn.Module):
    """Takes a block's place: records its inputs and stops the model, or replays an output."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.__dict__["_block"] = block  # not a submodule: moving the model leaves it be
        self.mode = "stop"
        self.seen: list[tuple[tuple[Any, ...], dict[str, Any]]] = []
        self.replay: Any = None

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if self.mode == "replay":
            return self.replay
        self.seen.append((args, kwargs))
        raise _Stop

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.__dict__["_block"], name)


@contextlib.contextmanager
def _standins(blocks: nn.ModuleList) -> Iterator[list[_Standin]]:
    original = list(blocks)
    stand = [_Standin(b) for b in original]
    for i, s in enumerate(stand):
        blocks[i] = s
    try:
        yield stand
    finally:
        for i, b in enumerate(original):
            blocks[i] = b


@contextlib.contextmanager
def _on(module: nn.Module, device: torch.device | None) -> Iterator[None]:
    """``module`` moved to ``device`` for the duration (back where it was after)."""
    home = next((p.device for p in module.parameters()), None)
    if device is None or home is None or home == device:
        yield
        return
    module.to(device)
    try:
        yield
    finally:
        module.to(home)


@contextlib.contextmanager
def no_kv_cache(model: nn.Module) -> Iterator[None]:
    """Hugging Face models: no KV cache while calibrating (blocks are run several times)."""
    config = getattr(model, "config", None)
    before = getattr(config, "use_cache", None)
    if before is not None:
        config.use_cache = False  # type: ignore[union-attr]
    try:
        yield
    finally:
        if before is not None:
            config.use_cache = before  # type: ignore[union-attr]


@contextlib.contextmanager
def no_fastpath() -> Iterator[None]:
    """PyTorch's fused transformer fast path skips submodule hooks (and a quantized model
    never takes it): turn it off so hooks see every Linear's input."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    before = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(before)


def _to(value: Any, device: torch.device | None) -> Any:
    if device is None:
        return value
    return torch.utils._pytree.tree_map(
        lambda t: t.to(device) if isinstance(t, torch.Tensor) else t, value
    )


def _rejected(stage: str, i: int, err: Exception, what: str) -> CalibrationDataError:
    return CalibrationDataError(
        f"the model rejected calibration batch {i} while {stage} ({what}): "
        f"{type(err).__name__}: {err}"
    )


@contextlib.contextmanager
def _gathering(targets: list[Target]) -> Iterator[None]:
    def hook(t: Target) -> Callable[..., None]:
        return lambda module, args: t.add(args[0])

    handles = [t.module.register_forward_pre_hook(hook(t)) for t in targets]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _what(targets: list[Target], method: str) -> str:
    names = ", ".join(t.weight.name for t in targets[:4]) + (", ..." if len(targets) > 4 else "")
    codecs = ", ".join(sorted({t.codec.spec for t in targets}))
    return f"{method} for {codecs} of {names}" if targets else method


def _run_model(
    model: nn.Module, data: list[Batch], device: torch.device | None, stage: str, what: str,
    before: Callable[[int], None] | None = None,
) -> None:  # fmt: skip
    for i, (args, kwargs) in enumerate(data):
        if before is not None:
            before(i)
        try:
            model(*_to(args, device), **_to(kwargs, device))
        except _Stop:
            pass
        except Exception as err:
            raise _rejected(stage, i, err, what) from err


def _run_block(
    block: nn.Module, inputs: list[tuple[tuple[Any, ...], dict[str, Any]]], stage: str, what: str
) -> list[Any]:
    outs = []
    for i, (args, kwargs) in enumerate(inputs):
        try:
            outs.append(block(*args, **kwargs))
        except Exception as err:
            raise _rejected(stage, i, err, what) from err
    return outs


def _chains(block0: nn.Module, inputs0: tuple[tuple[Any, ...], dict[str, Any]],
            seen1: tuple[tuple[Any, ...], dict[str, Any]]) -> bool:  # fmt: skip
    """Whether block 1 was called with block 0's first output and otherwise the same args."""
    args0, kwargs0 = inputs0
    args1, kwargs1 = seen1
    if not args0 or not args1 or len(args0) != len(args1) or kwargs0.keys() != kwargs1.keys():
        return False
    out0 = _first_tensor(block0(*args0, **kwargs0))
    if not isinstance(args1[0], torch.Tensor) or args1[0].shape != out0.shape:
        return False
    if not torch.allclose(args1[0], out0, rtol=1e-4, atol=1e-5):
        return False
    leaves0, spec0 = torch.utils._pytree.tree_flatten((args0[1:], kwargs0))
    leaves1, spec1 = torch.utils._pytree.tree_flatten((args1[1:], kwargs1))
    if spec0 != spec1:
        return False
    for a, b in zip(leaves0, leaves1):
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            if a.shape != b.shape or not torch.equal(a, b):
                return False
        elif a is not b and (isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor) or a != b):
            return False
    return True


def calibrate_with_data(
    model: nn.Module,
    targets: list[Target],
    data: list[Batch],
    assign: Callable[[Target, torch.Tensor, QParams], None],
    *,
    method: str,
    options: dict[str, Any],
    device: torch.device | None,
    progress: bool,
) -> str:
    """Gather each target's Hessian on ``data``, run ``method`` and ``assign`` the result;
    returns how the inputs were gathered (``"block by block (model.layers)"``, ...)."""
    paths = [t.path for t in targets]
    found = find_blocks(model, paths)
    mode = "all at once"
    with torch.no_grad(), no_kv_cache(model), no_fastpath():
        if found is not None:
            name, blocks = found
            inputs = _capture_first_block(model, blocks, data, device, _what(targets, method))
            if inputs is not None:
                mode = f"block by block ({name}, {len(blocks)} blocks)"
                _sequential(model, name, blocks, targets, data, inputs, assign, method,
                            options, device, progress)  # fmt: skip
                return mode
        what = _what(targets, method)
        with _on(model, device), _gathering(targets):
            _run_model(model, data, device, "running the model", what)
        _solve(targets, assign, method, options, device, progress, "all layers")
    return mode


def _capture_first_block(
    model: nn.Module, blocks: nn.ModuleList, data: list[Batch], device: torch.device | None,
    what: str,
) -> list[tuple[tuple[Any, ...], dict[str, Any]]] | None:  # fmt: skip
    """The inputs of ``blocks[0]`` for every batch, or None when the blocks do not chain."""
    with _standins(blocks) as stand, _on(model, device):
        _run_model(model, data, device, "capturing the inputs of the first block", what)
        inputs = stand[0].seen
        if len(inputs) != len(data):
            raise CalibrationDataError(
                f"the model did not reach its first block on {len(data) - len(inputs)} of "
                f"{len(data)} calibration batch(es)"
            )
        # does block 1 take block 0's output? run block 0 for real on the first batch
        stand[0].mode, stand[0].replay = "replay", None
        first_args, first_kwargs = inputs[0]
        with _on(stand[0]._block, device):
            stand[0].replay = stand[0]._block(*first_args, **first_kwargs)
            stand[1].seen.clear()
            _run_model(model, data[:1], device, "checking how the blocks chain", what)
            chains = bool(stand[1].seen) and _chains(stand[0]._block, inputs[0], stand[1].seen[0])
    if not chains:
        logger.info("blocks do not chain (block 1 is not fed block 0's output): all at once")
        return None
    return inputs


def _sequential(
    model: nn.Module, name: str, blocks: nn.ModuleList, targets: list[Target],
    data: list[Batch], inputs: list[tuple[tuple[Any, ...], dict[str, Any]]],
    assign: Callable[[Target, torch.Tensor, QParams], None], method: str,
    options: dict[str, Any], device: torch.device | None, progress: bool,
) -> None:  # fmt: skip
    prefix = f"{name}." if name else ""
    in_block: dict[int, list[Target]] = {}
    rest = []
    for t in targets:
        head = t.path[len(prefix) :].split(".")[0] if t.path.startswith(prefix) else ""
        if head.isdigit() and int(head) < len(blocks):
            in_block.setdefault(int(head), []).append(t)
        else:
            rest.append(t)
    outs: list[Any] = []
    bar = tqdm(range(len(blocks)), desc=f"{method} block by block", unit="block",
               disable=not progress)  # fmt: skip
    for i in bar:
        block = blocks[i]
        mine = in_block.get(i, [])
        what = _what(mine, method)
        with _on(block, device):
            if mine:
                with _gathering(mine):
                    _run_block(block, inputs, f"running block '{prefix}{i}'", what)
                _solve(mine, assign, method, options, device, False, f"block {i}")
            outs = _run_block(block, inputs, f"running block '{prefix}{i}' quantized", what)
            inputs = [(_with_first(a, _first_tensor(o)), k) for (a, k), o in zip(inputs, outs)]
    if not rest:
        return
    what = _what(rest, method)
    with _standins(blocks) as stand, _on(model, device), _gathering(rest):
        for s in stand:
            s.mode = "replay"

        def replay(b: int) -> None:
            for s in stand:
                s.replay = outs[b]

        _run_model(model, data, device, "running the layers outside the blocks", what, replay)
    _solve(rest, assign, method, options, device, progress, "outside the blocks")


def _solve(
    targets: list[Target], assign: Callable[[Target, torch.Tensor, QParams], None],
    method: str, options: dict[str, Any], device: torch.device | None, progress: bool,
    where: str,
) -> None:  # fmt: skip
    for t in tqdm(targets, desc=f"{method} ({where})", unit="layer", disable=not progress):
        if t.hessian is None:
            continue  # never reached: the caller falls back to weight-only calibration
        w = t.weight.param.detach()
        dev = device or w.device
        new_w, params = gptq(w.to(dev), t.hessian.to(dev), t.codec, **options)
        t.hessian = None
        assign(t, new_w.reshape(w.shape).to(w.dtype), params)


def quantize_with_data(
    model: nn.Module,
    todo: list[tuple[Any, Codec]],
    data: list[Batch],
    install: Callable[[Any, Codec, Any], None],
    summary: Any,
    *,
    method: str,
    options: dict[str, Any],
    device: str | torch.device | None,
    progress: bool,
) -> list[tuple[Any, Codec]]:
    """Quantize the weights of ``todo`` that ``method`` applies to, with ``data``; returns
    the others, for weight-only calibration, each with a note in ``summary``."""
    from t2n_quant.quantize import quantize_tensor

    dev = torch.device(device) if device is not None else None
    gptq_options = {k: v for k, v in options.items() if k in ("inner", "damp", "block")}
    unknown = sorted(set(options) - set(gptq_options))
    if unknown:
        raise TypeError(f"unknown calibration_options {unknown} for {method!r}; "
                        "known: inner, damp, block")  # fmt: skip
    targets: list[Target] = []
    left: list[tuple[Any, Codec]] = []
    inner = options.get("inner", "minmax")
    for w, codec in todo:
        path, module = w.users[0]
        if len(w.users) == 1 and isinstance(module, nn.Linear) and w.attr == "weight":
            targets.append(Target(w, codec, path, module))
            continue
        why = "shared by several modules" if len(w.users) > 1 else f"a {w.module_type}"
        summary.notes.append(f"{w.name}: {method} applies to Linear weights only ({why}); "
                             f"weight-only {inner!r} calibration")  # fmt: skip
        left.append((w, codec))
    done: set[int] = set()

    def assign(t: Target, new_w: torch.Tensor, params: QParams) -> None:
        qt = quantize_tensor(new_w.float(), t.codec, params=params, name=t.weight.name)
        if qt.dtype != t.weight.param.dtype:
            qt = qt.with_inner(lambda x: x, dtype=t.weight.param.dtype)
        install(t.weight, t.codec, qt)
        done.add(id(t))

    if targets:
        mode = calibrate_with_data(model, targets, data, assign, method=method,
                                   options=gptq_options, device=dev, progress=progress)  # fmt: skip
        logger.info("%s: inputs gathered %s", method, mode)
        summary.notes.append(f"{method}: layer inputs gathered {mode} on {len(data)} batch(es)")
    for t in targets:
        if id(t) not in done:
            summary.notes.append(f"{t.weight.name}: never reached by the calibration data; "
                                 f"weight-only {inner!r} calibration")  # fmt: skip
            left.append((t.weight, t.codec))
    return left
