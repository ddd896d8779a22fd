"""Elementwise arithmetic, comparisons, logic and activations."""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.ir import Ref
from t2n_core.ops._common import as_operand, broadcastable, out_dtype
from t2n_core.ops.registry import register
from t2n_core.translate import EmitContext

aten = torch.ops.aten


def _binary(ctx: EmitContext, op: str, a, b, dtype: torch.dtype):
    return ctx.emit_like(op, broadcastable(ctx, a, b, dtype=dtype))


def _compute_dtype(ctx: EmitContext) -> torch.dtype:
    """Dtype in which a comparison's operands meet (torch's type promotion)."""
    metas = []
    for i in (0, 1):
        raw = ctx.raw(i)
        m = raw.meta.get("val") if isinstance(raw, torch.fx.Node) else raw
        metas.append(m)
    return torch.result_type(*metas) if all(
        isinstance(m, (torch.Tensor, int, float, bool)) for m in metas
    ) else torch.float32  # fmt: skip


_ARITH = {
    aten.add.Tensor: "add", aten.add.Scalar: "add",
    aten.sub.Tensor: "sub", aten.sub.Scalar: "sub",
    aten.mul.Tensor: "mul", aten.mul.Scalar: "mul",
    aten.maximum.default: "max", aten.minimum.default: "min",
    aten.pow.Tensor_Tensor: "pow",
}  # fmt: skip


@register(*_ARITH)
def arithmetic(ctx: EmitContext, node: torch.fx.Node):
    """add.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) and friends."""
    dtype = out_dtype(ctx)
    a, b = ctx.arg(0), ctx.arg(1)
    alpha = ctx.arg("alpha", 1)
    if alpha != 1:
        b = as_operand(ctx, b, dtype)
        shape = ctx.shape(b) if isinstance(b, Ref) else ()
        b = ctx.emit("mul", [b, ctx.scalar(alpha, dtype)], dtype=dtype, shape=shape, hint="alpha")
    return _binary(ctx, _ARITH[node.target], a, b, dtype)


@register(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode)
def div(ctx: EmitContext, node: torch.fx.Node):
    """div.Tensor_mode(Tensor self, Tensor other, *, str? rounding_mode)"""
    dtype = out_dtype(ctx)
    mode = ctx.arg("rounding_mode")
    if not dtype.is_floating_point:
        # integer division in torch: floor (or trunc); compute in f32 and round
        a, b = broadcastable(ctx, ctx.arg(0), ctx.arg(1), dtype=torch.float32)
        shape = ctx.out_shape()
        q = ctx.emit("div", [a, b], dtype=torch.float32, shape=shape)
        q = ctx.emit("floor" if mode != "trunc" else _trunc_op(ctx), [q], dtype=torch.float32,
                     shape=shape)  # fmt: skip
        return ctx.cast(q, dtype)
    q = _binary(ctx, "div", ctx.arg(0), ctx.arg(1), dtype)
    if mode == "floor":
        return ctx.emit_like("floor", [q])
    if mode == "trunc":
        return ctx.emit_like(_trunc_op(ctx), [q])
    return q


def _trunc_op(ctx: EmitContext) -> str:
    return ctx.fragment("t2n_trunc")


_COMPARE = {
    aten.eq.Tensor: "eq", aten.eq.Scalar: "eq", aten.ne.Tensor: "ne", aten.ne.Scalar: "ne",
    aten.lt.Tensor: "lt", aten.lt.Scalar: "lt", aten.le.Tensor: "le", aten.le.Scalar: "le",
    aten.gt.Tensor: "gt", aten.gt.Scalar: "gt", aten.ge.Tensor: "ge", aten.ge.Scalar: "ge",
}  # fmt: skip


@register(*_COMPARE)
def compare(ctx: EmitContext, node: torch.fx.Node):
    """eq.Tensor(Tensor self, Tensor other) -> Tensor(bool), and lt/le/gt/ge/ne."""
    dtype = _compute_dtype(ctx)
    return ctx.emit_like(
        _COMPARE[node.target], broadcastable(ctx, ctx.arg(0), ctx.arg(1), dtype=dtype)
    )


_LOGICAL = {
    aten.logical_and.default: "and", aten.logical_or.default: "or",
    aten.bitwise_and.Tensor: "and", aten.bitwise_or.Tensor: "or",
}  # fmt: skip


@register(*_LOGICAL)
def logical(ctx: EmitContext, node: torch.fx.Node):
    """logical_and(Tensor self, Tensor other) -> Tensor"""
    if out_dtype(ctx) != torch.bool:
        raise ctx.error("bitwise ops are only supported on bool tensors")
    a, b = broadcastable(ctx, ctx.arg(0), ctx.arg(1), dtype=torch.bool)
    return ctx.emit_like(_LOGICAL[node.target], [a, b])


@register(aten.logical_not.default, aten.bitwise_not.default)
def logical_not(ctx: EmitContext, node: torch.fx.Node):
    """logical_not(Tensor self) -> Tensor"""
    if out_dtype(ctx) != torch.bool:
        raise ctx.error("bitwise_not is only supported on bool tensors")
    return ctx.emit_like("not", [as_operand(ctx, ctx.arg(0), torch.bool)])


@register(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def where(ctx: EmitContext, node: torch.fx.Node):
    """where.self(Tensor condition, Tensor self, Tensor other) -> Tensor"""
    dtype = out_dtype(ctx)
    cond = as_operand(ctx, ctx.arg(0), torch.bool)
    a, b = as_operand(ctx, ctx.arg(1), dtype), as_operand(ctx, ctx.arg(2), dtype)
    return ctx.emit_like("select", broadcastable(ctx, cond, a, b))


_UNARY = {
    aten.relu.default: "relu", aten.sigmoid.default: "sigmoid", aten.tanh.default: "tanh",
    aten.exp.default: "exp", aten.log.default: "log", aten.sqrt.default: "sqrt",
    aten.rsqrt.default: "rsqrt", aten.abs.default: "abs", aten.sign.default: "sign",
    aten.neg.default: "neg", aten.sin.default: "sin", aten.cos.default: "cos",
    aten.floor.default: "floor", aten.ceil.default: "ceil", aten.reciprocal.default: "rcp",
    aten.round.default: "round", aten.erf.default: "tract_core_erf",
    aten.tan.default: "tan", aten.asin.default: "asin", aten.acos.default: "acos",
    aten.atan.default: "atan", aten.sinh.default: "sinh", aten.cosh.default: "cosh",
    aten.asinh.default: "asinh", aten.acosh.default: "acosh", aten.atanh.default: "atanh",
}  # fmt: skip


@register(*_UNARY)
def unary(ctx: EmitContext, node: torch.fx.Node):
    """relu(Tensor self) -> Tensor, and the other one-argument math functions."""
    dtype = out_dtype(ctx)
    x = ctx.arg(0)
    if node.target in (aten.abs.default, aten.neg.default, aten.sign.default, aten.relu.default):
        return ctx.emit_like(_UNARY[node.target], [x])
    return ctx.emit_like(_UNARY[node.target], [as_operand(ctx, x, dtype)])
