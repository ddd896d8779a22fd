"""Ordering: sort (and argsort, msort), kthvalue, searchsorted, bucketize.

A sort is ``tract_core_topk`` with ``k`` the whole axis. ``searchsorted`` / ``bucketize``
count, for each value, the boundaries below it (``<``, or ``<=`` with ``right=True``): one
comparison against every boundary, summed, which is exact and needs no data-dependent loop.
"""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Expr, Ref
from t2n_core.ops._common import norm_axis, unsqueeze_front
from t2n_core.ops.index import runtime_k
from t2n_core.ops.registry import register

aten = torch.ops.aten


@register(aten.sort.default, aten.sort.stable)
def sort(ctx: EmitContext, node: torch.fx.Node):
    """sort(Tensor self, int dim=-1, bool descending=False) -> (Tensor values, Tensor indices);
    sort.stable(Tensor self, *, bool? stable, int dim=-1, bool descending=False)"""
    x = ctx.arg(0)
    stable = node.target is aten.sort.stable
    dim = ctx.arg("dim", -1 if stable else ctx.arg(1, -1))
    descending = bool(ctx.arg("descending", False if stable else ctx.arg(2, False)))
    axis = norm_axis(dim, max(ctx.rank(x), 1))
    size = ctx.shape(x)[axis]
    k = size if isinstance(size, int) else Expr(size)
    values = ctx.meta()[0]
    shape = ctx.out_shape(values)
    return tuple(
        ctx.emit_multi(
            "tract_core_topk", [x], {"k": runtime_k(ctx, k), "axis": axis, "largest": descending},
            [(values.dtype, shape), (torch.int64, shape)],
        )
    )  # fmt: skip


@register(aten.kthvalue.default)
def kthvalue(ctx: EmitContext, node: torch.fx.Node):
    """kthvalue(Tensor self, SymInt k, int dim=-1, bool keepdim=False) -> (values, indices)"""
    x, k = ctx.arg(0), ctx.arg(1)
    if not isinstance(k, int):
        raise ctx.error("kthvalue with a k that depends on a dynamic axis is not supported")
    axis = norm_axis(ctx.arg(2, -1), max(ctx.rank(x), 1))
    return _kth(ctx, x, k, axis, bool(ctx.arg(3, False)))


@register(aten.median.dim)
def median_dim(ctx: EmitContext, node: torch.fx.Node):
    """median.dim(Tensor self, int dim, bool keepdim=False) -> (values, indices): the lower
    median, the ``(n - 1) // 2``-th smallest value, as torch."""
    x = ctx.arg(0)
    axis = norm_axis(ctx.arg(1), max(ctx.rank(x), 1))
    n = ctx.shape(x)[axis]
    if not isinstance(n, int):
        raise ctx.error("median over a dynamic axis is not supported")
    return _kth(ctx, x, (n - 1) // 2 + 1, axis, bool(ctx.arg(2, False)))


def _kth(ctx: EmitContext, x: Ref, k: int, axis: int, keepdim: bool) -> tuple[Ref, Ref]:
    """The ``k``-th smallest values along ``axis`` and their positions."""
    shape = list(ctx.shape(x))
    shape[axis] = k
    low = ctx.emit_multi(
        "tract_core_topk", [x], {"k": k, "axis": axis, "largest": False},
        [(ctx.dtype(x), shape), (torch.int64, shape)],
    )  # fmt: skip
    one = list(shape)
    one[axis] = 1
    outs = []
    for ref in low:
        y = ctx.emit("slice", [ref], {"axes": [axis], "begin": [k - 1], "end": [k]},
                     dtype=ctx.dtype(ref), shape=one, hint="kthvalue")  # fmt: skip
        if not keepdim:
            y = ctx.emit("squeeze", [y], {"axes": [axis]}, dtype=ctx.dtype(ref),
                         shape=[d for i, d in enumerate(one) if i != axis])  # fmt: skip
        outs.append(y)
    return tuple(outs)


def _count_below(ctx: EmitContext, boundaries: Ref, values, right: bool, out_dtype) -> Ref:
    """For each value, how many of ``boundaries`` (last axis) are < it (<= with ``right``)."""
    v_shape = list(ctx.shape(values)) if isinstance(values, Ref) else []
    b_rank = ctx.rank(boundaries)
    v = ctx.emit("unsqueeze", [values], {"axes": [len(v_shape)]}, dtype=ctx.dtype(values),
                 shape=[*v_shape, 1], hint="search")  # fmt: skip
    b = boundaries
    n = ctx.shape(b)[-1]
    if b_rank > 1:  # one row of boundaries per row of values: [..., 1, N]
        b = ctx.emit("unsqueeze", [b], {"axes": [b_rank - 1]}, dtype=ctx.dtype(b),
                     shape=[*ctx.shape(b)[:-1], 1, n], hint="search")  # fmt: skip
    b = unsqueeze_front(ctx, b, len(v_shape) + 1)
    below = ctx.emit("le" if right else "lt", [b, v], dtype=torch.bool, shape=[*v_shape, n],
                     hint="search")  # fmt: skip
    counts = ctx.emit("sum_reduce", [ctx.cast(below, torch.int64)], {"axes": [len(v_shape)]},
                      dtype=torch.int64, shape=[*v_shape, 1], hint="search")  # fmt: skip
    y = ctx.emit_like("squeeze", [counts], {"axes": [len(v_shape)]}, hint="search")
    return ctx.cast(y, out_dtype) if out_dtype != torch.int64 else y


@register(aten.searchsorted.Tensor)
def searchsorted(ctx: EmitContext, node: torch.fx.Node):
    """searchsorted.Tensor(Tensor sorted_sequence, Tensor self, *, bool out_int32=False,
    bool right=False, str? side=None, Tensor? sorter=None) -> Tensor"""
    if ctx.arg("sorter") is not None:
        raise ctx.error("searchsorted(sorter=...) is not supported; sort the sequence first")
    right = bool(ctx.arg("right", False)) or ctx.arg("side") == "right"
    return _count_below(ctx, ctx.arg(0), ctx.arg(1), right, ctx.meta().dtype)


@register(aten.bucketize.Tensor)
def bucketize(ctx: EmitContext, node: torch.fx.Node):
    """bucketize.Tensor(Tensor self, Tensor boundaries, *, bool out_int32=False,
    bool right=False) -> Tensor"""
    right = bool(ctx.arg("right", False))
    return _count_below(ctx, ctx.arg(1), ctx.arg(0), right, ctx.meta().dtype)
