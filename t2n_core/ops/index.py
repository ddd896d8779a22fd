"""Indexing and selection: index_select, gather, indexing with tensors, topk.

``x[i]`` (one index tensor) is ``tract_core_gather``, which takes negative indices.
``x[i, j]`` (several) is ``tract_core_gather_nd(x, stacked, batch_dims = 0)`` (tract 0.23.9:
works with symbolic shapes on data and indices; a negative index panics and aborts the
process, so negatives are wrapped in the graph first).
"""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Expr, Ref
from t2n_core.nnef.text import tract_dtype_name
from t2n_core.ops._common import norm_axis, stacked_indices
from t2n_core.ops.registry import register

aten = torch.ops.aten


def _refuse_mask(ctx: EmitContext, meta) -> None:
    if isinstance(meta, torch.Tensor) and meta.dtype == torch.bool:
        raise ctx.error(
            "indexing with a bool mask gives a data-dependent shape, which tract cannot "
            "express; use torch.where(mask, x, other) or masked_fill instead"
        )


def _gather_attrs(ctx: EmitContext, axis: int) -> dict:
    """``datum_type`` lets the data input be a compressed (Q4_0) weight, as for embeddings."""
    return {"axis": axis, "datum_type": tract_dtype_name(ctx.meta().dtype)}


def _indices(ctx: EmitContext, position: int):
    _refuse_mask(ctx, ctx.meta(position))
    return ctx.arg(position)


@register(aten.index_select.default)
def index_select(ctx: EmitContext, node: torch.fx.Node):
    """index_select(Tensor self, int dim, Tensor index) -> Tensor"""
    x = ctx.arg(0)
    axis = norm_axis(ctx.arg(1), max(ctx.rank(x), 1))
    return ctx.emit_like("tract_core_gather", [x, _indices(ctx, 2)], _gather_attrs(ctx, axis))


@register(aten.gather.default)
def gather(ctx: EmitContext, node: torch.fx.Node):
    """gather(Tensor self, int dim, Tensor index, *, bool sparse_grad=False) -> Tensor"""
    x = ctx.arg(0)
    axis = norm_axis(ctx.arg(1), max(ctx.rank(x), 1))
    return ctx.emit_like("tract_core_gather_elements", [x, _indices(ctx, 2)], {"axis": axis})


@register(aten.index.Tensor)
def index(ctx: EmitContext, node: torch.fx.Node):
    """index.Tensor(Tensor self, Tensor?[] indices) -> Tensor"""
    x = ctx.arg(0)
    raw = ctx.raw(1)
    used = [i for i, item in enumerate(raw) if item is not None]
    for position in used:
        _refuse_mask(ctx, raw[position].meta.get("val"))
    if len(used) == 1:
        axis = used[0]
        indices = ctx.convert(raw[axis])
        return ctx.emit_like("tract_core_gather", [x, indices], _gather_attrs(ctx, axis))
    return _index_nd(ctx, x, used, [ctx.convert(raw[i]) for i in used])


def _index_nd(ctx: EmitContext, x: Ref, axes: list[int], indices: list[Ref]) -> Ref:
    """Advanced indexing with several index tensors as one ``tract_core_gather_nd``.

    The indexed axes are moved to the front of ``x``; the index tensors, negatives wrapped
    (tract's gather_nd aborts the process on a negative index), are broadcast to their common
    shape ``B`` and stacked on a last axis of size ``len(axes)``. gather_nd then yields
    ``[*B, *other axes]``, which is torch's layout when the indexed axes are not adjacent;
    when they are adjacent, torch puts ``B`` where they were, so ``B`` is moved there.
    """
    rank = ctx.rank(x)
    x_shape = ctx.shape(x)
    out_shape = ctx.out_shape()
    n_b = max(ctx.rank(i) for i in indices)
    adjacent = axes == list(range(axes[0], axes[-1] + 1))
    start = axes[0] if adjacent else 0
    b_shape = list(out_shape[start : start + n_b])
    others = [a for a in range(rank) if a not in axes]
    perm = axes + others
    if perm != list(range(rank)):
        x = ctx.emit(
            "transpose", [x], {"axes": perm}, dtype=ctx.dtype(x),
            shape=[x_shape[a] for a in perm], hint="index_nd",
        )  # fmt: skip
    stacked = stacked_indices(ctx, indices, [x_shape[a] for a in axes], b_shape, "index_nd")
    gathered_shape = [*b_shape, *(x_shape[a] for a in others)]
    dtype = ctx.meta().dtype
    out = ctx.emit(
        "tract_core_gather_nd", [x, stacked], {"batch_dims": 0}, dtype=dtype,
        shape=gathered_shape, hint="index_nd",
    )  # fmt: skip
    if start == 0:
        return out
    pre = list(range(n_b, n_b + start))
    post = list(range(n_b + start, len(gathered_shape)))
    return ctx.emit_like("transpose", [out], {"axes": [*pre, *range(n_b), *post]})


@register(aten.topk.default)
def topk(ctx: EmitContext, node: torch.fx.Node):
    """topk(Tensor self, SymInt k, int dim=-1, bool largest=True, bool sorted=True)
    -> (Tensor values, Tensor indices); the result is always sorted. ``k`` may be a size
    expression (``P + T``: every position of a growing axis, sorted), which tract evaluates
    from the input sizes."""
    x = ctx.arg(0)
    k = ctx.arg(1)
    axis = norm_axis(ctx.arg(2, ctx.arg("dim", -1)), max(ctx.rank(x), 1))
    largest = bool(ctx.arg(3, ctx.arg("largest", True)))
    values = ctx.meta()[0]
    shape = ctx.out_shape(values)
    return tuple(
        ctx.emit_multi(
            "tract_core_topk", [x], {"k": runtime_k(ctx, k), "axis": axis, "largest": largest},
            [(values.dtype, shape), (torch.int64, shape)],
        )
    )  # fmt: skip


def runtime_k(ctx: EmitContext, k: int | Expr) -> int | Ref:
    """``tract_core_topk``'s ``k``: an int as is; a size expression (``P + T``) as a tensor
    computed in the graph (the length of a ``tract_core_range`` to it), since tract 0.23.9
    cannot evaluate a symbolic ``k`` literal at run time (``Undetermined symbol``)."""
    if isinstance(k, int):
        return k
    positions = ctx.emit("tract_core_range", [0, k, 1], dtype=torch.int64, shape=[k.text],
                         hint="topk_k")  # fmt: skip
    ones = ctx.emit("ge", [positions, 0], dtype=torch.bool, shape=[k.text], hint="topk_k")
    count = ctx.emit("sum_reduce", [ctx.cast(ones, torch.int64)], {"axes": [0]},
                     dtype=torch.int64, shape=[1], hint="topk_k")  # fmt: skip
    return ctx.emit("squeeze", [count], {"axes": [0]}, dtype=torch.int64, shape=[],
                    hint="topk_k")  # fmt: skip
