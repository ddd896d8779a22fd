"""Running reductions beyond cumsum: cumprod, cummax / cummin, logcumsumexp.

tract has a running sum only. ``cumprod`` is a running sum of logs of magnitudes with the
sign and zeros tracked apart (exact signs and zeros, relative error of exp/log otherwise).
``cummax`` / ``cummin`` / ``logcumsumexp`` reduce a triangular view: position ``i`` sees
positions ``j <= i`` of a static axis of size ``n`` (``n x n`` work, fine for the short axes
these ops see in models).
"""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import norm_axis, out_dtype
from t2n_core.ops.registry import register

aten = torch.ops.aten
F32 = torch.float32


def _cumsum(ctx: EmitContext, x: Ref, axis: int) -> Ref:
    return ctx.emit("tract_core_cumsum", [x], {"axis": axis, "exclusive": False, "reverse": False},
                    dtype=ctx.dtype(x), shape=ctx.shape(x), hint="cum")  # fmt: skip


@register(aten.cumprod.default)
def cumprod(ctx: EmitContext, node: torch.fx.Node):
    """cumprod(Tensor self, int dim, *, ScalarType? dtype=None) -> Tensor"""
    dtype = out_dtype(ctx)
    x = ctx.cast(ctx.arg(0), F32)
    if ctx.rank(x) == 0:
        return ctx.cast(x, dtype)
    axis = norm_axis(ctx.arg(1), ctx.rank(x))
    shape = ctx.shape(x)

    def e(op: str, args: list, dt: torch.dtype = F32) -> Ref:
        return ctx.emit(op, args, dtype=dt, shape=shape, hint="cumprod")

    is_zero = e("eq", [x, 0.0], torch.bool)
    magnitude = e("select", [is_zero, 1.0, e("abs", [x])])
    log_prod = _cumsum(ctx, e("log", [magnitude]), axis)
    negatives = _cumsum(ctx, ctx.cast(e("lt", [x, 0.0], torch.bool), F32), axis)
    # (-1) ** negatives = 1 - 2 * (negatives mod 2)
    parity = e("sub", [negatives, e("mul", [e("floor", [e("div", [negatives, 2.0])]), 2.0])])
    sign = e("sub", [1.0, e("mul", [parity, 2.0])])
    zeros_so_far = _cumsum(ctx, ctx.cast(is_zero, F32), axis)
    y = e("mul", [e("exp", [log_prod]), sign])
    y = e("select", [e("gt", [zeros_so_far, 0.0], torch.bool), 0.0, y])
    return ctx.cast(y, dtype)


def _triangular(ctx: EmitContext, x: Ref, axis: int, fill: float) -> tuple[Ref, list]:
    """``[..., n(i), n(j), ...]``: ``x[j]`` where ``j <= i``, else ``fill`` (``j``: axis + 1)."""
    shape = list(ctx.shape(x))
    n = shape[axis]
    if not isinstance(n, int):
        raise ctx.error("this running reduction needs a static size on its axis")
    dtype = ctx.dtype(x)
    tri_shape = [*shape[:axis], n, n, *shape[axis + 1 :]]
    xj = ctx.emit("unsqueeze", [x], {"axes": [axis]}, dtype=dtype,
                  shape=[*shape[:axis], 1, n, *shape[axis + 1 :]], hint="cum_tri")  # fmt: skip
    lower = torch.tril(torch.ones(n, n)).reshape(
        *([1] * axis), n, n, *([1] * (len(shape) - axis - 1))
    )
    mask_ref = ctx.emit(  # stored as f32: a bool .dat of tract is bit-packed
        "gt", [ctx.constant(lower, hint="cum_mask"), 0.5], dtype=torch.bool,
        shape=tuple(lower.shape), hint="cum_mask",
    )  # fmt: skip
    fill_ref = ctx.cast(ctx.scalar(fill, F32), dtype) if dtype != F32 else _exact(ctx, fill)
    y = ctx.emit("select", [mask_ref, xj, fill_ref], dtype=dtype, shape=tri_shape, hint="cum_tri")
    return y, tri_shape


def _exact(ctx: EmitContext, value: float):
    from t2n_core.ops._common import exact_scalar

    return exact_scalar(ctx, value, F32)


def _running_extreme(ctx: EmitContext, largest: bool):
    x = ctx.arg(0)
    axis = norm_axis(ctx.arg(1), max(ctx.rank(x), 1))
    fill = float("-inf") if largest else float("inf")
    tri, tri_shape = _triangular(ctx, x, axis, fill)
    red_shape = list(tri_shape)
    red_shape[axis + 1] = 1
    op = "max_reduce" if largest else "min_reduce"
    values = ctx.emit(op, [tri], {"axes": [axis + 1]}, dtype=ctx.dtype(x), shape=red_shape)
    # torch reports the last position holding the running extreme
    n = tri_shape[axis + 1]
    hit = ctx.emit("eq", [tri, values], dtype=torch.bool, shape=tri_shape, hint="cum_arg")
    positions = torch.arange(n).reshape(
        *([1] * (axis + 1)), n, *([1] * (len(tri_shape) - axis - 2))
    )
    pos = ctx.constant(positions, hint="cum_pos")
    where = ctx.emit("select", [hit, pos, ctx.scalar(-1, torch.int64)], dtype=torch.int64,
                     shape=tri_shape, hint="cum_arg")  # fmt: skip
    index = ctx.emit("max_reduce", [where], {"axes": [axis + 1]}, dtype=torch.int64,
                     shape=red_shape, hint="cum_arg")  # fmt: skip
    out = ctx.out_shape(ctx.meta()[0])
    return tuple(
        ctx.emit("squeeze", [r], {"axes": [axis + 1]}, dtype=ctx.dtype(r), shape=out)
        for r in (values, index)
    )


@register(aten.cummax.default)
def cummax(ctx: EmitContext, node: torch.fx.Node):
    """cummax(Tensor self, int dim) -> (Tensor values, Tensor indices)"""
    return _running_extreme(ctx, largest=True)


@register(aten.cummin.default)
def cummin(ctx: EmitContext, node: torch.fx.Node):
    """cummin(Tensor self, int dim) -> (Tensor values, Tensor indices)"""
    return _running_extreme(ctx, largest=False)


@register(aten.logcumsumexp.default)
def logcumsumexp(ctx: EmitContext, node: torch.fx.Node):
    """logcumsumexp(Tensor self, int dim) -> Tensor"""
    x = ctx.cast(ctx.arg(0), F32)
    axis = norm_axis(ctx.arg(1), max(ctx.rank(x), 1))
    tri, tri_shape = _triangular(ctx, x, axis, float("-inf"))
    red = list(tri_shape)
    red[axis + 1] = 1
    peak = ctx.emit("max_reduce", [tri], {"axes": [axis + 1]}, dtype=F32, shape=red, hint="lcse")
    shifted = ctx.emit("sub", [tri, peak], dtype=F32, shape=tri_shape, hint="lcse")
    total = ctx.emit("sum_reduce", [ctx.emit("exp", [shifted], dtype=F32, shape=tri_shape)],
                     {"axes": [axis + 1]}, dtype=F32, shape=red, hint="lcse")  # fmt: skip
    y = ctx.emit("add", [ctx.emit("log", [total], dtype=F32, shape=red), peak], dtype=F32,
                 shape=red, hint="lcse")  # fmt: skip
    y = ctx.emit("squeeze", [y], {"axes": [axis + 1]}, dtype=F32, shape=ctx.shape(x))
    return ctx.cast(y, out_dtype(ctx))
