"""Reductions over axes: sum, mean, amax/amin, max/min with indices, var, norms, logsumexp,
prod, any/all, argmax/argmin, and the running sum (cumsum).

NNEF reductions keep the reduced axes (size 1); ``keepdim=False`` squeezes them afterwards.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Expr, Ref
from t2n_core.ops._common import as_operand, norm_axes, norm_axis, out_dtype
from t2n_core.ops.registry import register

aten = torch.ops.aten


def _axes(ctx: EmitContext, dims: Any, rank: int) -> list[int]:
    """Reduced axes; ``None`` or ``[]`` mean every axis (torch's convention)."""
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(rank))
    return norm_axes(dims, rank)


def _reduce(
    ctx: EmitContext, op: str, x: Ref, axes: list[int], keepdim: bool, *,
    dtype: torch.dtype | None = None, attrs: dict[str, Any] | None = None, hint: str | None = None,
) -> Ref:  # fmt: skip
    """``op(x, axes=axes)`` (axes kept), squeezed unless ``keepdim``."""
    dtype = ctx.dtype(x) if dtype is None else dtype
    shape = list(ctx.shape(x))
    if not axes:  # a rank-0 input: nothing to reduce
        return x
    kept = [1 if i in axes else d for i, d in enumerate(shape)]
    y = ctx.emit(op, [x], {"axes": axes, **(attrs or {})}, dtype=dtype, shape=kept, hint=hint)
    if keepdim:
        return y
    return squeeze(ctx, y, axes)


def squeeze(ctx: EmitContext, x: Ref, axes: list[int]) -> Ref:
    shape = [d for i, d in enumerate(ctx.shape(x)) if i not in axes]
    return ctx.emit("squeeze", [x], {"axes": axes}, dtype=ctx.dtype(x), shape=shape)


def _keepdim(ctx: EmitContext, position: int) -> bool:
    return bool(ctx.arg(position, ctx.arg("keepdim", False)))


def _input(ctx: EmitContext, dtype: torch.dtype) -> Ref:
    return as_operand(ctx, ctx.arg(0), dtype)


def _axes_and_keepdim(
    ctx: EmitContext, node: torch.fx.Node, x: Ref, whole_tensor: object
) -> tuple[list[int], bool]:
    """Reduced axes and keepdim: every axis for the whole-tensor overload ``whole_tensor``,
    else ``dim`` (argument 1) and ``keepdim`` (argument 2)."""
    if node.target == whole_tensor:
        return _axes(ctx, None, ctx.rank(x)), False
    return _axes(ctx, ctx.arg(1, ctx.arg("dim")), ctx.rank(x)), _keepdim(ctx, 2)


def _count(ctx: EmitContext, x: Ref, axes: list[int]) -> int | Expr:
    """How many elements each output element reduces (an int, or a TDim expression)."""
    dims = [ctx.shape(x)[a] for a in axes]
    if all(isinstance(d, int) for d in dims):
        return math.prod(dims)
    if len(dims) == 1:
        return Expr(str(dims[0]))
    return Expr(" * ".join(f"({d})" for d in dims))


# ---- sum / mean / prod ------------------------------------------------------------------------


@register(aten.sum.dim_IntList, aten.sum.default)
def sum_(ctx: EmitContext, node: torch.fx.Node):
    """sum.dim_IntList(Tensor self, int[1]? dim, bool keepdim=False, *, ScalarType? dtype=None)"""
    dtype = out_dtype(ctx)
    x = _input(ctx, dtype)
    axes, keepdim = _axes_and_keepdim(ctx, node, x, aten.sum.default)
    return _reduce(ctx, "sum_reduce", x, axes, keepdim)


@register(aten.mean.dim, aten.mean.default)
def mean(ctx: EmitContext, node: torch.fx.Node):
    """mean.dim(Tensor self, int[1]? dim, bool keepdim=False, *, ScalarType? dtype=None)"""
    dtype = out_dtype(ctx)
    x = _input(ctx, dtype)
    axes, keepdim = _axes_and_keepdim(ctx, node, x, aten.mean.default)
    return _reduce(ctx, "sum_reduce", x, axes, keepdim, attrs={"normalize": True}, hint="mean")


@register(aten.prod.dim_int, aten.prod.default)
def prod(ctx: EmitContext, node: torch.fx.Node):
    """prod.dim_int(Tensor self, int dim, bool keepdim=False, *, ScalarType? dtype=None)"""
    dtype = out_dtype(ctx)
    x = _input(ctx, dtype)
    axes, keepdim = _axes_and_keepdim(ctx, node, x, aten.prod.default)
    return _reduce(ctx, "tract_core_product_reduce", x, axes, keepdim, hint="prod")


# ---- max / min --------------------------------------------------------------------------------


@register(aten.amax.default, aten.amin.default, aten.max.default, aten.min.default)
def amax(ctx: EmitContext, node: torch.fx.Node):
    """amax(Tensor self, int[1] dim=[], bool keepdim=False) -> Tensor; amin; max(); min()."""
    op = "max_reduce" if node.target in (aten.amax.default, aten.max.default) else "min_reduce"
    x = ctx.arg(0)
    if node.target in (aten.max.default, aten.min.default):
        return _reduce(ctx, op, x, _axes(ctx, None, ctx.rank(x)), False)
    axes = _axes(ctx, ctx.arg(1, ctx.arg("dim")), ctx.rank(x))
    return _reduce(ctx, op, x, axes, _keepdim(ctx, 2))


@register(aten.max.dim, aten.min.dim)
def max_dim(ctx: EmitContext, node: torch.fx.Node):
    """max.dim(Tensor self, int dim, bool keepdim=False) -> (Tensor values, Tensor indices)"""
    x = ctx.arg(0)
    axes = [norm_axis(ctx.arg(1), ctx.rank(x))]
    keepdim = _keepdim(ctx, 2)
    is_max = node.target == aten.max.dim
    values = _reduce(ctx, "max_reduce" if is_max else "min_reduce", x, axes, keepdim)
    indices = _reduce(ctx, "argmax_reduce" if is_max else "argmin_reduce", x, axes, keepdim,
                      dtype=torch.int64)  # fmt: skip
    return values, indices


@register(aten.aminmax.default)
def aminmax(ctx: EmitContext, node: torch.fx.Node):
    """aminmax(Tensor self, *, int? dim=None, bool keepdim=False) -> (Tensor min, Tensor max)"""
    x = ctx.arg(0)
    dim = ctx.arg("dim")
    axes = _axes(ctx, None if dim is None else [dim], ctx.rank(x))
    keepdim = bool(ctx.arg("keepdim", False)) and dim is not None
    return (_reduce(ctx, "min_reduce", x, axes, keepdim), _reduce(ctx, "max_reduce", x, axes,
                                                                  keepdim))  # fmt: skip


@register(aten.argmax.default, aten.argmin.default)
def argmax(ctx: EmitContext, node: torch.fx.Node):
    """argmax(Tensor self, int? dim=None, bool keepdim=False) -> Tensor; argmin."""
    op = "argmax_reduce" if node.target == aten.argmax.default else "argmin_reduce"
    x = ctx.arg(0)
    dim = ctx.arg(1, ctx.arg("dim"))
    keepdim = _keepdim(ctx, 2)
    if dim is not None:
        axes = [norm_axis(dim, ctx.rank(x))]
        return _reduce(ctx, op, x, axes, keepdim, dtype=torch.int64)
    # over the flattened tensor: index into the row-major flattening, as torch does
    size = _count(ctx, x, list(range(ctx.rank(x))))
    flat = ctx.emit("reshape", [x], {"shape": [-1]}, dtype=ctx.dtype(x), shape=[_dim_text(size)],
                    hint="flatten")  # fmt: skip
    index = ctx.emit(op, [flat], {"axes": [0]}, dtype=torch.int64, shape=[1])
    if not keepdim:
        return squeeze(ctx, index, [0])
    out_shape = [1] * ctx.rank(x)
    return ctx.emit("reshape", [index], {"shape": out_shape}, dtype=torch.int64, shape=out_shape)


def _dim_text(size: int | Expr) -> int | str:
    return size if isinstance(size, int) else size.text


# ---- any / all --------------------------------------------------------------------------------


@register(aten.any.default, aten.any.dim, aten.any.dims, aten.all.default, aten.all.dim,
          aten.all.dims)  # fmt: skip
def any_all(ctx: EmitContext, node: torch.fx.Node):
    """any.dims(Tensor self, int[]? dim=None, bool keepdim=False) -> Tensor; all."""
    if out_dtype(ctx) != torch.bool:
        raise ctx.error("any/all with a non-bool output (uint8 input) is not supported")
    op = "any_reduce" if node.target.overloadpacket == aten.any else "all_reduce"
    x = ctx.arg(0)
    if ctx.dtype(x) != torch.bool:
        zero = ctx.scalar(0, ctx.dtype(x))
        x = ctx.emit("ne", [x, zero], dtype=torch.bool, shape=ctx.shape(x), hint="nonzero")
    if node.target in (aten.any.default, aten.all.default):
        return _reduce(ctx, op, x, _axes(ctx, None, ctx.rank(x)), False)
    dims = ctx.arg(1, ctx.arg("dim"))
    return _reduce(ctx, op, x, _axes(ctx, dims, ctx.rank(x)), _keepdim(ctx, 2))


# ---- variance and norms -----------------------------------------------------------------------


@register(aten.var.correction)
def var(ctx: EmitContext, node: torch.fx.Node):
    """var.correction(Tensor self, int[1]? dim=None, *, Scalar? correction=None,
    bool keepdim=False) -> Tensor"""
    dtype = out_dtype(ctx)
    x = _input(ctx, dtype)
    axes = _axes(ctx, ctx.arg(1, ctx.arg("dim")), ctx.rank(x))
    correction = ctx.arg("correction")
    correction = 1 if correction is None else correction
    keepdim = bool(ctx.arg("keepdim", False))
    shape = ctx.shape(x)
    m = _reduce(ctx, "sum_reduce", x, axes, True, attrs={"normalize": True}, hint="mean")
    d = ctx.emit("sub", [x, m], dtype=dtype, shape=shape, hint="centered")
    sq = ctx.emit("mul", [d, d], dtype=dtype, shape=shape, hint="square")
    total = _reduce(ctx, "sum_reduce", sq, axes, keepdim)
    n = _count(ctx, x, axes)
    if isinstance(n, int):
        return ctx.emit_like("div", [total, ctx.scalar(float(max(n - correction, 0)), dtype)])
    if correction != int(correction):
        raise ctx.error("a fractional correction over a dynamic axis is not supported")
    denom = Expr(f"{n.text} - {int(correction)}") if correction else n
    return ctx.emit_like("div", [total, ctx.cast(denom, dtype)])


@register(aten.linalg_vector_norm.default)
def vector_norm(ctx: EmitContext, node: torch.fx.Node):
    """linalg_vector_norm(Tensor self, Scalar ord=2, int[1]? dim=None, bool keepdim=False, *,
    ScalarType? dtype=None) -> Tensor"""
    dtype = out_dtype(ctx)
    x = _input(ctx, dtype)
    p = ctx.arg(1, ctx.arg("ord", 2))
    axes = _axes(ctx, ctx.arg(2, ctx.arg("dim")), ctx.rank(x))
    keepdim = _keepdim(ctx, 3)
    shape = ctx.shape(x)

    def elementwise(op: str, *args: Any) -> Ref:
        return ctx.emit(op, list(args), dtype=dtype, shape=shape, hint="norm")

    if p == 2:
        total = _reduce(ctx, "sum_reduce", elementwise("mul", x, x), axes, keepdim)
        return ctx.emit_like("sqrt", [total])
    a = elementwise("abs", x)
    if p == 1:
        return _reduce(ctx, "sum_reduce", a, axes, keepdim)
    if p == math.inf:
        return _reduce(ctx, "max_reduce", a, axes, keepdim)
    if p == -math.inf:
        return _reduce(ctx, "min_reduce", a, axes, keepdim)
    if p == 0:
        nonzero = ctx.emit("ne", [a, ctx.scalar(0.0, dtype)], dtype=torch.bool, shape=shape)
        return _reduce(ctx, "sum_reduce", ctx.cast(nonzero, dtype), axes, keepdim)
    powered = elementwise("pow", a, ctx.scalar(float(p), dtype))
    total = _reduce(ctx, "sum_reduce", powered, axes, keepdim)
    return ctx.emit_like("pow", [total, ctx.scalar(1.0 / float(p), dtype)])


@register(aten.logsumexp.default)
def logsumexp(ctx: EmitContext, node: torch.fx.Node):
    """logsumexp(Tensor self, int[1] dim, bool keepdim=False) -> Tensor"""
    dtype = out_dtype(ctx)
    x = _input(ctx, dtype)
    axes = _axes(ctx, ctx.arg(1, ctx.arg("dim")), ctx.rank(x))
    kept = [1 if i in axes else d for i, d in enumerate(ctx.shape(x))]
    # the running max is the shift, as in torch, except where it is infinite (then 0)
    zero = ctx.scalar(0.0, dtype)
    y = ctx.emit(ctx.fragment("t2n_logsumexp"), [x, zero], {"axes": axes}, dtype=dtype,
                 shape=kept)  # fmt: skip
    return y if _keepdim(ctx, 2) else squeeze(ctx, y, axes)


# ---- running sum ------------------------------------------------------------------------------


@register(aten.cumsum.default)
def cumsum(ctx: EmitContext, node: torch.fx.Node):
    """cumsum(Tensor self, int dim, *, ScalarType? dtype=None) -> Tensor"""
    dtype = out_dtype(ctx)
    x = _input(ctx, dtype)
    if ctx.rank(x) == 0:
        return x
    axis = norm_axis(ctx.arg(1), ctx.rank(x))
    return ctx.emit_like("tract_core_cumsum", [x], {"axis": axis, "exclusive": False,
                                                    "reverse": False})  # fmt: skip
