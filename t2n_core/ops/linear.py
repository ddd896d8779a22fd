"""Matrix products: linear, mm, addmm, bmm, matmul."""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.ops._common import as_operand, broadcastable, out_dtype
from t2n_core.ops.registry import register
from t2n_core.translate import EmitContext

aten = torch.ops.aten


@register(aten.linear.default)
def linear(ctx: EmitContext, node: torch.fx.Node):
    """linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor"""
    dtype = out_dtype(ctx)
    x, w, b = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    x = as_operand(ctx, x, dtype)
    rank = ctx.rank(x)
    if rank == 1:
        raise ctx.error("linear on a 1-D input is not supported; unsqueeze it to 2-D first")
    if rank != 2:
        w = _unsqueeze_to(ctx, w, rank)
    y = ctx.emit(
        "matmul", [x, w], {"transposeA": False, "transposeB": True},
        dtype=dtype, shape=ctx.out_shape(), hint="linear",
    )  # fmt: skip
    if b is not None:
        y = ctx.emit_like("add", broadcastable(ctx, y, b, dtype=dtype), hint="linear_bias")
    return y


def _unsqueeze_to(ctx: EmitContext, ref, rank: int):
    have = ctx.rank(ref)
    if have >= rank:
        return ref
    axes = list(range(rank - have))
    return ctx.emit(
        "unsqueeze", [ref], {"axes": axes},
        dtype=ctx.dtype(ref), shape=(1,) * len(axes) + tuple(ctx.shape(ref)), hint="unsqueeze",
    )  # fmt: skip


@register(aten.mm.default, aten.bmm.default, aten.matmul.default)
def matmul(ctx: EmitContext, node: torch.fx.Node):
    """mm(Tensor self, Tensor mat2) -> Tensor; bmm; matmul with broadcasting (rank >= 2)."""
    dtype = out_dtype(ctx)
    a = as_operand(ctx, ctx.arg(0), dtype)
    b = as_operand(ctx, ctx.arg(1), dtype)
    if ctx.rank(a) < 2 or ctx.rank(b) < 2:
        raise ctx.error("matmul with a 1-D operand is not supported; unsqueeze it first")
    rank = max(ctx.rank(a), ctx.rank(b))
    a, b = _unsqueeze_to(ctx, a, rank), _unsqueeze_to(ctx, b, rank)
    return ctx.emit_like("matmul", [a, b], {"transposeA": False, "transposeB": False})


@register(aten.addmm.default)
def addmm(ctx: EmitContext, node: torch.fx.Node):
    """addmm(Tensor self, Tensor mat1, Tensor mat2, *, Scalar beta=1, Scalar alpha=1)"""
    if ctx.arg("beta", 1) != 1 or ctx.arg("alpha", 1) != 1:
        raise ctx.error("addmm with beta or alpha other than 1 is not supported")
    dtype = out_dtype(ctx)
    a = as_operand(ctx, ctx.arg(1), dtype)
    b = as_operand(ctx, ctx.arg(2), dtype)
    y = ctx.emit("matmul", [a, b], {"transposeA": False, "transposeB": False},
                 dtype=dtype, shape=ctx.out_shape())  # fmt: skip
    return ctx.emit_like("add", broadcastable(ctx, y, ctx.arg(0), dtype=dtype))
