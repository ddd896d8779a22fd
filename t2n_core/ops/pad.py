"""Padding: constant, reflect, replicate and circular (``F.pad`` and the ``*_pad*d`` ops).

NNEF ``pad`` in tract takes one ``(before, after)`` pair per axis (all axes), a ``border`` of
``'constant'``, ``'reflect'`` or ``'replicated'`` (not the spec's ``'replicate'``) and an f32
``value``. Negative pads (cropping) become slices; circular padding becomes slices + concat.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Expr, Ref
from t2n_core.ops._common import exact_scalar, out_dtype
from t2n_core.ops.registry import register

aten = torch.ops.aten

_BORDER = {"constant": "constant", "reflect": "reflect", "replicate": "replicated"}


def _offset(d: int | str, k: int) -> int | str:
    if k == 0:
        return d
    if isinstance(d, int):
        return d + k
    return f"({d} + {k})" if k > 0 else f"({d} - {-k})"


def _as_attr(d: int | str) -> int | Expr:
    return d if isinstance(d, int) else Expr(d)


def _pairs(ctx: EmitContext, pad: Any, rank: int) -> list[tuple[int, int]]:
    """PyTorch's ``pad`` list (last axis first) as one ``(before, after)`` per axis."""
    if any(not isinstance(p, int) for p in pad):
        raise ctx.error(f"pad sizes must be static integers, got {pad!r}")
    if len(pad) % 2 or len(pad) // 2 > rank:
        raise ctx.error(f"pad list {list(pad)} does not fit an input of rank {rank}")
    pairs = [(0, 0)] * rank
    for i in range(len(pad) // 2):
        pairs[rank - 1 - i] = (int(pad[2 * i]), int(pad[2 * i + 1]))
    return pairs


def _crop(ctx: EmitContext, x: Ref, pairs: list[tuple[int, int]]) -> tuple[Ref, list]:
    """Apply the negative parts of ``pairs`` as slices; return the non-negative rest."""
    shape = list(ctx.shape(x))
    axes, begins, ends = [], [], []
    for axis, (before, after) in enumerate(pairs):
        if before < 0 or after < 0:
            axes.append(axis)
            begin, end = max(0, -before), _offset(shape[axis], min(0, after))
            begins.append(begin)
            ends.append(_as_attr(end))
            shape[axis] = _offset(end, -begin)
    if not axes:
        return x, pairs
    x = ctx.emit("slice", [x], {"axes": axes, "begin": begins, "end": ends},
                 dtype=ctx.dtype(x), shape=tuple(shape), hint="crop")  # fmt: skip
    return x, [(max(0, b), max(0, a)) for b, a in pairs]


def _pad(ctx: EmitContext, pad: Any, mode: str, value: float = 0.0) -> Ref:
    x = ctx.arg(0)
    dtype = out_dtype(ctx)
    rank = ctx.rank(x)
    if mode == "constant" and any(isinstance(p, Expr) for p in pad):
        return _symbolic_constant_pad(ctx, x, pad, value)
    pairs = _pairs(ctx, pad, rank)
    if mode == "circular":
        return _circular(ctx, x, pairs)
    if mode not in _BORDER:
        raise ctx.error(f"pad mode {mode!r} is not supported")
    if not dtype.is_floating_point and (mode != "constant" or value != 0):
        raise ctx.error(f"pad mode {mode!r} on {dtype} tensors is not supported")
    x, pairs = _crop(ctx, x, pairs)
    if not any(b or a for b, a in pairs):
        return x
    attrs = {"padding": pairs, "border": _BORDER[mode], "value": float(value)}
    return ctx.emit_like("pad", [x], attrs)


def _symbolic_constant_pad(ctx: EmitContext, x: Ref, pad: Any, value: float) -> Ref:
    """Constant padding by sizes known only at run time (GIT pads its mask by the past length
    ``P``): ``concat([full(before), x, full(after)])`` axis by axis, the filled parts broadcast
    from the value to shapes that hold the symbolic sizes (taken as non-negative: a size)."""
    rank = ctx.rank(x)
    if len(pad) % 2 or len(pad) // 2 > rank:
        raise ctx.error(f"pad list {list(pad)} does not fit an input of rank {rank}")
    dtype = ctx.dtype(x)
    shape: list[int | str] = list(ctx.shape(x))
    fill = exact_scalar(ctx, value, dtype)
    for i in range(len(pad) // 2):
        axis = rank - 1 - i
        amounts = [p.text if isinstance(p, Expr) else int(p) for p in pad[2 * i : 2 * i + 2]]
        if any(isinstance(a, int) and a < 0 for a in amounts):
            raise ctx.error(f"negative pad {amounts} beside a symbolic one is not supported")
        parts: list[Ref] = []
        for amount, side in zip(amounts, ("before", "after")):
            if amount == 0:
                continue
            part_shape = list(shape)
            part_shape[axis] = amount
            parts.append(ctx.emit(
                "tract_core_broadcast", [fill], {"shape": [_as_attr(d) for d in part_shape]},
                dtype=dtype, shape=tuple(part_shape), hint=f"pad_{side}",
            ))  # fmt: skip
        if not parts:
            continue
        before = amounts[0] != 0
        parts.insert(1 if before else 0, x)
        for amount in amounts:
            shape[axis] = _sum(shape[axis], amount)
        x = ctx.emit("concat", [parts], {"axis": axis}, dtype=dtype, shape=tuple(shape),
                     hint="pad")  # fmt: skip
    return x


def _sum(a: int | str, b: int | str) -> int | str:
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    return a if b == 0 else b if a == 0 else f"({a} + {b})"


def _circular(ctx: EmitContext, x: Ref, pairs: list[tuple[int, int]]) -> Ref:
    """Wrap-around padding: ``concat([x[-before:], x, x[:after]])`` axis by axis."""
    if any(b < 0 or a < 0 for b, a in pairs):
        raise ctx.error("negative circular padding is not supported")
    dtype = ctx.dtype(x)
    shape = list(ctx.shape(x))
    for axis, (before, after) in enumerate(pairs):
        if not before and not after:
            continue
        size = shape[axis]
        parts = []
        if before:
            part_shape = list(shape)
            part_shape[axis] = before
            begin = _as_attr(_offset(size, -before))
            parts.append(ctx.emit(
                "slice", [x], {"axes": [axis], "begin": [begin], "end": [_as_attr(size)]},
                dtype=dtype, shape=tuple(part_shape), hint="wrap",
            ))  # fmt: skip
        parts.append(x)
        if after:
            part_shape = list(shape)
            part_shape[axis] = after
            parts.append(ctx.emit(
                "slice", [x], {"axes": [axis], "begin": [0], "end": [after]},
                dtype=dtype, shape=tuple(part_shape), hint="wrap",
            ))  # fmt: skip
        shape[axis] = _offset(size, before + after)
        x = ctx.emit("concat", [parts], {"axis": axis}, dtype=dtype, shape=tuple(shape),
                     hint="circular_pad")  # fmt: skip
    return x


@register(aten.constant_pad_nd.default)
def constant_pad_nd(ctx: EmitContext, node: torch.fx.Node):
    """constant_pad_nd(Tensor self, SymInt[] pad, Scalar value=0) -> Tensor"""
    return _pad(ctx, ctx.arg(1), "constant", ctx.arg(2, ctx.arg("value", 0.0)))


@register(aten.pad.default)
def pad(ctx: EmitContext, node: torch.fx.Node):
    """pad(Tensor self, SymInt[] pad, str mode="constant", float? value=None) -> Tensor"""
    mode = ctx.arg(2, ctx.arg("mode", "constant"))
    value = ctx.arg(3, ctx.arg("value"))
    return _pad(ctx, ctx.arg(1), mode, 0.0 if value is None else value)


_MODES = {
    aten.reflection_pad1d.default: "reflect", aten.reflection_pad2d.default: "reflect",
    aten.reflection_pad3d.default: "reflect", aten.replication_pad1d.default: "replicate",
    aten.replication_pad2d.default: "replicate", aten.replication_pad3d.default: "replicate",
    aten._pad_circular.default: "circular",
}  # fmt: skip


@register(*_MODES)
def mode_pad(ctx: EmitContext, node: torch.fx.Node):
    """reflection_pad2d(Tensor self, SymInt[4] padding) -> Tensor, and the replication_pad*d
    and _pad_circular variants"""
    return _pad(ctx, ctx.arg(1), _MODES[node.target])
