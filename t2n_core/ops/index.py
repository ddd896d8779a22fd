"""Indexing and selection: index_select, gather, indexing with a tensor, topk."""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.nnef.text import tract_dtype_name
from t2n_core.ops._common import norm_axis
from t2n_core.ops.registry import register
from t2n_core.translate import EmitContext

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
    """index.Tensor(Tensor self, Tensor?[] indices) -> Tensor (one index tensor)"""
    x = ctx.arg(0)
    raw = ctx.raw(1)
    used = [i for i, item in enumerate(raw) if item is not None]
    if len(used) != 1:
        raise ctx.error(
            f"indexing with {len(used)} index tensors is not supported (only one); "
            "index one axis at a time, or flatten the indexed axes and index once"
        )
    axis = used[0]
    item = raw[axis]
    _refuse_mask(ctx, item.meta.get("val"))
    return ctx.emit_like("tract_core_gather", [x, ctx.convert(item)], _gather_attrs(ctx, axis))


@register(aten.topk.default)
def topk(ctx: EmitContext, node: torch.fx.Node):
    """topk(Tensor self, SymInt k, int dim=-1, bool largest=True, bool sorted=True)
    -> (Tensor values, Tensor indices); the result is always sorted."""
    x = ctx.arg(0)
    k = ctx.arg(1)
    if not isinstance(k, int):
        raise ctx.error("topk with a k that depends on a dynamic axis is not supported by tract")
    axis = norm_axis(ctx.arg(2, ctx.arg("dim", -1)), max(ctx.rank(x), 1))
    largest = bool(ctx.arg(3, ctx.arg("largest", True)))
    values = ctx.meta()[0]
    shape = ctx.out_shape(values)
    return tuple(
        ctx.emit_multi(
            "tract_core_topk", [x], {"k": k, "axis": axis, "largest": largest},
            [(values.dtype, shape), (torch.int64, shape)],
        )
    )  # fmt: skip
