"""Tensors created inside ``forward``: arange, full/zeros/ones (and their ``_like`` forms).

Sizes may come from dynamic axes (``torch.arange(x.shape[1])``): they are written as tract
TDim expressions, so the created tensor follows the input's length at run time.
"""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Expr
from t2n_core.ops._common import exact_scalar, meta_shape, out_dtype, shape_operand
from t2n_core.ops.registry import register

aten = torch.ops.aten


@register(aten.arange.start_step, aten.arange.start, aten.arange.default)
def arange(ctx: EmitContext, node: torch.fx.Node):
    """arange.start_step(Scalar start, Scalar end, Scalar step=1, *, ScalarType? dtype=None, ...)"""
    dtype = out_dtype(ctx)
    if node.target == aten.arange.default:
        start, end, step = 0, ctx.arg(0), 1
    else:
        start, end = ctx.arg(0), ctx.arg(1)
        step = ctx.arg(2, ctx.arg("step", 1)) if node.target == aten.arange.start_step else 1
    bounds = (start, end, step)
    if all(isinstance(b, (int, Expr)) and not isinstance(b, bool) for b in bounds):
        # integer bounds (possibly TDim expressions): tract's range yields i64
        r = ctx.emit("tract_core_range", list(bounds), dtype=torch.int64, shape=ctx.out_shape(),
                     hint="arange")  # fmt: skip
        if any(isinstance(b, Expr) for b in bounds):
            r = _hide_coordinates(ctx, r)
        return ctx.cast(r, dtype)
    if any(isinstance(b, Expr) for b in bounds):
        raise ctx.error(
            "arange with fractional bounds and a size from a dynamic axis is not supported; "
            "use integer bounds and scale the result"
        )
    return ctx.constant(torch.arange(start, end, step, dtype=dtype), hint="arange")


def _hide_coordinates(ctx: EmitContext, r):
    """``r & -1`` (the same i64 values), so that tract does not see ``r`` as its index axis.

    tract 0.23.9 gives a ``tract_core_range`` with a symbolic bound a ``uniform_tdim`` fact
    (value = ``start + step * 🎯0``, ``🎯k`` = the coordinate on axis k) and carries it through
    unsqueeze/broadcast/cast/comparisons; a ``select`` (or ``mul``/``and``) whose mask then
    compares two such coordinates (``i[:, None] >= i[None, :]``) is "split in two regions" at
    ``🎯1``, a coordinate, which fails at run time ("Undetermined symbol in expression: 🎯1").
    ``tract_core_bitand`` does not carry that fact, so masks built from ``arange`` stay plain
    tensors.
    """
    return ctx.emit(
        "tract_core_bitand", [r, ctx.scalar(-1, torch.int64)], dtype=torch.int64,
        shape=ctx.shape(r), hint="arange",
    )  # fmt: skip


def _filled(ctx: EmitContext, value, shape) -> object:
    dtype = out_dtype(ctx)
    return ctx.emit_like(
        "tract_core_broadcast", [exact_scalar(ctx, value, dtype)], {"shape": list(shape)},
        hint="full",
    )  # fmt: skip


@register(aten.full.default)
def full(ctx: EmitContext, node: torch.fx.Node):
    """full(SymInt[] size, Scalar fill_value, *, ScalarType? dtype=None, ...) -> Tensor"""
    return _filled(ctx, ctx.arg(1), shape_operand(ctx, ctx.arg(0)))


@register(aten.full_like.default)
def full_like(ctx: EmitContext, node: torch.fx.Node):
    """full_like(Tensor self, Scalar fill_value, *, ScalarType? dtype=None, ...) -> Tensor"""
    return _filled(ctx, ctx.arg(1), meta_shape(ctx))


@register(aten.scalar_tensor.default)
def scalar_tensor(ctx: EmitContext, node: torch.fx.Node):
    """scalar_tensor(Scalar s, *, ScalarType? dtype=None, ...) -> Tensor"""
    return _filled(ctx, ctx.arg(0), [])


@register(aten.empty.memory_format, aten.empty_like.default)
def empty(ctx: EmitContext, node: torch.fx.Node):
    """empty.memory_format(SymInt[] size, *, ScalarType? dtype=None, ...) -> Tensor (zeros)"""
    return _filled(ctx, 0, meta_shape(ctx))
