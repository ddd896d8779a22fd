"""Elementwise arithmetic, comparisons, logic and one-argument math functions."""

from __future__ import annotations

import math

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import as_operand, broadcastable, exact_scalar, meta_shape, out_dtype
from t2n_core.ops.registry import register

aten = torch.ops.aten


def _binary(ctx: EmitContext, op: str, a, b, dtype: torch.dtype):
    return ctx.emit_like(op, broadcastable(ctx, a, b, dtype=dtype))


def _emit_binary(ctx: EmitContext, op: str, a, b, dtype: torch.dtype, hint: str | None = None):
    """``op(a, b)`` in ``dtype`` with the broadcast shape of the current node."""
    a, b = broadcastable(ctx, a, b, dtype=dtype)
    return ctx.emit(op, [a, b], dtype=dtype, shape=ctx.out_shape(), hint=hint)


def _compute_dtype(ctx: EmitContext) -> torch.dtype:
    """Dtype in which a binary op's operands meet (torch's type promotion)."""
    metas = []
    for i in (0, 1):
        raw = ctx.raw(i)
        m = raw.meta.get("val") if isinstance(raw, torch.fx.Node) else raw
        metas.append(m)
    return torch.result_type(*metas) if all(
        isinstance(m, (torch.Tensor, int, float, bool)) for m in metas
    ) else torch.float32  # fmt: skip


def _distinct_int_operand(ctx: EmitContext, a, b):
    """``b`` rewritten as ``neg(neg(b))`` when it is the same integer value as ``a``.

    tract turns ``mul(x, x)`` into its ``Square`` op, which has no integer kernel.
    """
    if isinstance(a, Ref) and a == b and not ctx.dtype(a).is_floating_point:
        shape = ctx.shape(b)
        n = ctx.emit("neg", [b], dtype=ctx.dtype(b), shape=shape, hint="neg")
        return ctx.emit("neg", [n], dtype=ctx.dtype(b), shape=shape, hint="neg")
    return b


_ARITH = {
    aten.add.Tensor: "add", aten.add.Scalar: "add",
    aten.sub.Tensor: "sub", aten.sub.Scalar: "sub",
    aten.mul.Tensor: "mul", aten.mul.Scalar: "mul",
    aten.maximum.default: "max", aten.minimum.default: "min",
    aten.pow.Tensor_Tensor: "pow",
}  # fmt: skip
_BOOL_ARITH = {"add": "or", "mul": "and", "max": "or", "min": "and"}


@register(*_ARITH)
def arithmetic(ctx: EmitContext, node: torch.fx.Node):
    """add.Tensor(Tensor self, Tensor other, *, Scalar alpha=1) and friends."""
    dtype = out_dtype(ctx)
    op = _ARITH[node.target]
    a, b = ctx.arg(0), ctx.arg(1)
    if dtype == torch.bool:
        if op not in _BOOL_ARITH:
            raise ctx.error(f"{op} on bool tensors is not supported")
        return _binary(ctx, _BOOL_ARITH[op], a, b, dtype)
    alpha = ctx.arg("alpha", 1)
    if alpha != 1:
        b = as_operand(ctx, b, dtype)
        shape = ctx.shape(b) if isinstance(b, Ref) else ()
        b = ctx.emit("mul", [b, ctx.scalar(alpha, dtype)], dtype=dtype, shape=shape, hint="alpha")
    a, b = exact_scalar(ctx, a, dtype), exact_scalar(ctx, b, dtype)
    if op == "mul":
        b = _distinct_int_operand(ctx, a, b)
    return _binary(ctx, op, a, b, dtype)


# ---- division, floor division, remainder ------------------------------------------------------


@register(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode)
def div(ctx: EmitContext, node: torch.fx.Node):
    """div.Tensor_mode(Tensor self, Tensor other, *, str? rounding_mode)"""
    dtype = out_dtype(ctx)
    mode = ctx.arg("rounding_mode")
    a, b = ctx.arg(0), ctx.arg(1)
    if not dtype.is_floating_point:
        # integer division stays exact: tract's integer div truncates toward zero
        if mode == "floor":
            return _int_floor_div(ctx, a, b, dtype)
        return _emit_binary(ctx, "div", a, b, dtype)
    q = _binary(ctx, "div", a, b, dtype)
    if mode == "floor":
        return ctx.emit_like("floor", [q])
    if mode == "trunc":
        return ctx.emit_like(_trunc_op(ctx), [q])
    return q


def _trunc_op(ctx: EmitContext) -> str:
    return ctx.fragment("t2n_trunc")


def _int_floor_div(ctx: EmitContext, a, b, dtype: torch.dtype):
    """Exact floor division of integers: truncated quotient, minus 1 where signs differ."""
    a, b = broadcastable(ctx, a, b, dtype=dtype)
    shape = ctx.out_shape()
    q = ctx.emit("div", [a, b], dtype=dtype, shape=shape, hint="div")
    r = ctx.emit("sub", [a, ctx.emit("mul", [q, b], dtype=dtype, shape=shape)], dtype=dtype,
                 shape=shape, hint="rem")  # fmt: skip
    zero = ctx.scalar(0, dtype)
    inexact = ctx.emit("ne", [r, zero], dtype=torch.bool, shape=shape)
    r_neg = ctx.emit("lt", [r, zero], dtype=torch.bool, shape=shape)
    b_neg = ctx.emit("lt", [b, zero], dtype=torch.bool, shape=ctx.shape(b) if isinstance(b, Ref)
                     else ())  # fmt: skip
    signs = ctx.emit("tract_core_xor", [r_neg, b_neg], dtype=torch.bool, shape=shape)
    adjust = ctx.emit("and", [inexact, signs], dtype=torch.bool, shape=shape)
    return ctx.emit("sub", [q, ctx.cast(adjust, dtype)], dtype=dtype, shape=shape, hint="floordiv")


@register(aten.remainder.Tensor, aten.remainder.Scalar, aten.fmod.Tensor, aten.fmod.Scalar)
def remainder(ctx: EmitContext, node: torch.fx.Node):
    """remainder.Tensor(Tensor self, Tensor other) -> Tensor; fmod (sign of the dividend)."""
    dtype = out_dtype(ctx)
    floor = node.target in (aten.remainder.Tensor, aten.remainder.Scalar)
    a, b = broadcastable(ctx, ctx.arg(0), ctx.arg(1), dtype=dtype)
    shape = ctx.out_shape()
    if dtype.is_floating_point:
        q = ctx.emit("div", [a, b], dtype=dtype, shape=shape, hint="div")
        q = ctx.emit("floor" if floor else _trunc_op(ctx), [q], dtype=dtype, shape=shape)
    elif floor:
        q = _int_floor_div(ctx, a, b, dtype)
    else:
        q = ctx.emit("div", [a, b], dtype=dtype, shape=shape, hint="div")
    prod = ctx.emit("mul", [q, b], dtype=dtype, shape=shape)
    return ctx.emit_like("sub", [a, prod])


# ---- powers -----------------------------------------------------------------------------------


@register(aten.pow.Tensor_Scalar)
def pow_scalar(ctx: EmitContext, node: torch.fx.Node):
    """pow.Tensor_Scalar(Tensor self, Scalar exponent) -> Tensor"""
    dtype = out_dtype(ctx)
    x, e = as_operand(ctx, ctx.arg(0), dtype), ctx.arg(1)
    if not dtype.is_floating_point:
        if not (isinstance(e, int) and 0 <= e <= 16):
            raise ctx.error(
                f"integer pow with exponent {e!r} is not supported (only 0..16); "
                "compute it in float"
            )
        return _int_power(ctx, x, e, dtype)
    special = {1: None, 2: "square", 0.5: "sqrt", -0.5: "rsqrt", -1: "recip"}
    if e in special:
        if special[e] is None:
            return x
        if special[e] == "square":
            return ctx.emit_like("mul", [x, x])
        return ctx.emit_like(special[e], [x])
    if e == 0:
        return ctx.emit_like("tract_core_broadcast", [ctx.scalar(1.0, dtype)],
                             {"shape": meta_shape(ctx)})  # fmt: skip
    return ctx.emit_like("pow", [x, ctx.scalar(float(e), dtype)])


def _int_power(ctx: EmitContext, x, e: int, dtype: torch.dtype):
    shape = ctx.out_shape()
    if e == 0:
        one = ctx.scalar(1, dtype)
        return ctx.emit_like("tract_core_broadcast", [one], {"shape": meta_shape(ctx)})
    copy = _distinct_int_operand(ctx, x, x)
    result = x
    for _ in range(e - 1):
        result = ctx.emit("mul", [result, copy], dtype=dtype, shape=shape, hint="pow")
    return result


@register(aten.pow.Scalar)
def pow_base_scalar(ctx: EmitContext, node: torch.fx.Node):
    """pow.Scalar(Scalar self, Tensor exponent) -> Tensor"""
    dtype = out_dtype(ctx)
    if not dtype.is_floating_point:
        raise ctx.error("integer pow of a scalar base is not supported; compute it in float")
    base, x = ctx.arg(0), as_operand(ctx, ctx.arg(1), dtype)
    return ctx.emit_like("pow", [ctx.scalar(float(base), dtype), x])


# ---- clamp ------------------------------------------------------------------------------------


@register(aten.clamp.default, aten.clamp.Tensor, aten.clamp_min.default, aten.clamp_min.Tensor,
          aten.clamp_max.default, aten.clamp_max.Tensor)  # fmt: skip
def clamp(ctx: EmitContext, node: torch.fx.Node):
    """clamp(Tensor self, Scalar? min=None, Scalar? max=None) -> Tensor; .Tensor, clamp_min/max."""
    dtype = out_dtype(ctx)
    name = node.target.overloadpacket.__name__
    if name == "clamp_min":
        lo, hi = ctx.arg(1), None
    elif name == "clamp_max":
        lo, hi = None, ctx.arg(1)
    else:
        lo, hi = ctx.arg(1, ctx.arg("min")), ctx.arg(2, ctx.arg("max"))
    if lo is None and hi is None:
        raise ctx.error("clamp needs at least one of min and max")
    y = as_operand(ctx, ctx.arg(0), dtype)
    for op, bound in (("max", lo), ("min", hi)):
        if bound is not None:
            y = _emit_binary(ctx, op, y, exact_scalar(ctx, bound, dtype), dtype, hint="clamp")
    return y


# ---- comparisons and logic --------------------------------------------------------------------

_COMPARE = {
    aten.eq.Tensor: "eq", aten.eq.Scalar: "eq", aten.ne.Tensor: "ne", aten.ne.Scalar: "ne",
    aten.lt.Tensor: "lt", aten.lt.Scalar: "lt", aten.le.Tensor: "le", aten.le.Scalar: "le",
    aten.gt.Tensor: "gt", aten.gt.Scalar: "gt", aten.ge.Tensor: "ge", aten.ge.Scalar: "ge",
}  # fmt: skip


@register(*_COMPARE)
def compare(ctx: EmitContext, node: torch.fx.Node):
    """eq.Tensor(Tensor self, Tensor other) -> Tensor(bool), and lt/le/gt/ge/ne."""
    dtype = _compute_dtype(ctx)
    a = as_operand(ctx, ctx.arg(0), dtype)
    b = exact_scalar(ctx, ctx.arg(1), dtype)
    op = _COMPARE[node.target]
    if dtype == torch.bool:
        # tract's comparisons refuse bool operands ("Bool is not a number")
        if op not in ("eq", "ne"):
            a, b = as_operand(ctx, a, torch.uint8), as_operand(ctx, b, torch.uint8)
        elif op == "ne":
            return ctx.emit_like("tract_core_xor", broadcastable(ctx, a, b))
        else:
            differ = _emit_binary(ctx, "tract_core_xor", a, b, torch.bool, hint="xor")
            return ctx.emit_like("not", [differ])
    return ctx.emit_like(op, broadcastable(ctx, a, b))


_LOGICAL = {
    aten.logical_and.default: "and", aten.logical_or.default: "or",
    aten.logical_xor.default: "tract_core_xor",
}  # fmt: skip


@register(*_LOGICAL)
def logical(ctx: EmitContext, node: torch.fx.Node):
    """logical_and(Tensor self, Tensor other) -> Tensor; logical_or, logical_xor."""
    if out_dtype(ctx) != torch.bool:
        raise ctx.error("logical ops with a non-bool output dtype are not supported")
    a, b = broadcastable(ctx, _truthy(ctx, ctx.arg(0)), _truthy(ctx, ctx.arg(1)))
    return ctx.emit_like(_LOGICAL[node.target], [a, b])


def _truthy(ctx: EmitContext, x):
    """``x != 0`` as bool (a bool tensor passes through)."""
    if isinstance(x, Ref) and ctx.dtype(x) != torch.bool:
        zero = ctx.scalar(0, ctx.dtype(x))
        return ctx.emit("ne", [x, zero], dtype=torch.bool, shape=ctx.shape(x), hint="nonzero")
    return as_operand(ctx, x, torch.bool)


@register(aten.logical_not.default)
def logical_not(ctx: EmitContext, node: torch.fx.Node):
    """logical_not(Tensor self) -> Tensor"""
    return ctx.emit_like("not", [_truthy(ctx, ctx.arg(0))])


_BITWISE = {
    aten.bitwise_and.Tensor: ("and", "tract_core_bitand"),
    aten.bitwise_and.Scalar: ("and", "tract_core_bitand"),
    aten.bitwise_or.Tensor: ("or", "tract_core_bitor"),
    aten.bitwise_or.Scalar: ("or", "tract_core_bitor"),
    aten.bitwise_xor.Tensor: ("tract_core_xor", "tract_core_bitxor"),
    aten.bitwise_xor.Scalar: ("tract_core_xor", "tract_core_bitxor"),
}


@register(*_BITWISE)
def bitwise(ctx: EmitContext, node: torch.fx.Node):
    """bitwise_and.Tensor(Tensor self, Tensor other) -> Tensor; or, xor (bool or integer)."""
    dtype = out_dtype(ctx)
    if dtype.is_floating_point:
        raise ctx.error("bitwise ops need bool or integer tensors")
    op = _BITWISE[node.target][0 if dtype == torch.bool else 1]
    return _binary(ctx, op, ctx.arg(0), ctx.arg(1), dtype)


@register(aten.bitwise_not.default)
def bitwise_not(ctx: EmitContext, node: torch.fx.Node):
    """bitwise_not(Tensor self) -> Tensor"""
    dtype = out_dtype(ctx)
    if dtype.is_floating_point:
        raise ctx.error("bitwise_not needs a bool or integer tensor")
    return ctx.emit_like("not" if dtype == torch.bool else "tract_core_bitnot", [ctx.arg(0)])


@register(aten.where.self, aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar)
def where(ctx: EmitContext, node: torch.fx.Node):
    """where.self(Tensor condition, Tensor self, Tensor other) -> Tensor"""
    dtype = out_dtype(ctx)
    cond = _truthy(ctx, ctx.arg(0))
    a, b = exact_scalar(ctx, ctx.arg(1), dtype), exact_scalar(ctx, ctx.arg(2), dtype)
    return ctx.emit_like("select", broadcastable(ctx, cond, a, b))


# ---- one-argument math ------------------------------------------------------------------------

_UNARY = {
    aten.relu.default: "relu", aten.sigmoid.default: "sigmoid", aten.tanh.default: "tanh",
    aten.exp.default: "exp", aten.log.default: "log", aten.sqrt.default: "sqrt",
    aten.rsqrt.default: "rsqrt", aten.abs.default: "abs", aten.sign.default: "sign",
    aten.neg.default: "neg", aten.sin.default: "sin", aten.cos.default: "cos",
    aten.floor.default: "floor", aten.ceil.default: "ceil", aten.reciprocal.default: "recip",
    aten.round.default: "tract_core_round_even", aten.erf.default: "tract_core_erf",
    aten.trunc.default: "t2n_trunc",
    aten.tan.default: "tan", aten.asin.default: "asin", aten.acos.default: "acos",
    aten.atan.default: "atan", aten.sinh.default: "sinh", aten.cosh.default: "cosh",
    aten.asinh.default: "asinh", aten.acosh.default: "acosh", aten.atanh.default: "atanh",
}  # fmt: skip
# ops that keep integer tensors integer (torch returns the input's dtype)
_INT_OK = {"relu", "abs", "neg", "sign"}
_INT_IDENTITY = {"floor", "ceil", "tract_core_round_even", "t2n_trunc"}


@register(*_UNARY)
def unary(ctx: EmitContext, node: torch.fx.Node):
    """relu(Tensor self) -> Tensor, and the other one-argument math functions."""
    dtype = out_dtype(ctx)
    op = _UNARY[node.target]
    x = ctx.arg(0)
    if not dtype.is_floating_point:
        if op in _INT_IDENTITY:
            return x
        if op not in _INT_OK:
            raise ctx.error(f"{op} on {dtype} tensors is not supported")
        return ctx.emit_like(op, [x])
    if op == "t2n_trunc":
        ctx.fragment(op)
    return ctx.emit_like(op, [as_operand(ctx, x, dtype)])


_LOG_SCALE = {aten.log2.default: 1.0 / math.log(2.0), aten.log10.default: 1.0 / math.log(10.0)}


@register(aten.log2.default, aten.log10.default)
def log_base(ctx: EmitContext, node: torch.fx.Node):
    """log2(Tensor self) -> Tensor; log10."""
    dtype = out_dtype(ctx)
    ln = ctx.emit_like("log", [as_operand(ctx, ctx.arg(0), dtype)])
    return ctx.emit_like("mul", [ln, ctx.scalar(_LOG_SCALE[node.target], dtype)])


@register(aten.log1p.default, aten.expm1.default)
def log1p_expm1(ctx: EmitContext, node: torch.fx.Node):
    """log1p(Tensor self) -> Tensor (log(1 + x)); expm1 (exp(x) - 1)."""
    dtype = out_dtype(ctx)
    x = as_operand(ctx, ctx.arg(0), dtype)
    one = ctx.scalar(1.0, dtype)
    if node.target == aten.log1p.default:
        return ctx.emit_like("log", [ctx.emit_like("add", [x, one])])
    return ctx.emit_like("sub", [ctx.emit_like("exp", [x]), one])


@register(aten.round.decimals)
def round_decimals(ctx: EmitContext, node: torch.fx.Node):
    """round.decimals(Tensor self, *, int decimals) -> Tensor"""
    dtype = out_dtype(ctx)
    scale = ctx.scalar(10.0 ** ctx.arg("decimals", 0), dtype)
    x = ctx.emit_like("mul", [as_operand(ctx, ctx.arg(0), dtype), scale])
    return ctx.emit_like("div", [ctx.emit_like("tract_core_round_even", [x]), scale])
