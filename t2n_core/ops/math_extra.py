"""Float functions torch keeps as single core ATen ops, spelled in NNEF primitives: erfc,
exp2, signbit, fmax / fmin (NaN-ignoring), atan2, hypot, copysign, var_mean, addbmm, and the
window functions (constants, computed once by torch at export)."""

from __future__ import annotations

import math

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import as_operand, broadcastable, out_dtype
from t2n_core.ops.registry import register

aten = torch.ops.aten
F32 = torch.float32


class _Ops:
    """Elementwise emission at the node's output shape, in f32."""

    def __init__(self, ctx: EmitContext, hint: str) -> None:
        self.ctx, self.hint = ctx, hint
        self.shape = ctx.out_shape(ctx.meta())

    def __call__(self, op: str, *args, dtype: torch.dtype = F32) -> Ref:
        operands = broadcastable(self.ctx, *args)
        return self.ctx.emit(op, operands, dtype=dtype, shape=self.shape, hint=self.hint)


def _floats(ctx: EmitContext, n: int) -> list:
    return [as_operand(ctx, ctx.arg(i), F32) for i in range(n)]


@register(aten.erfc.default)
def erfc(ctx: EmitContext, node: torch.fx.Node):
    """erfc(Tensor self) -> Tensor"""
    (x,) = _floats(ctx, 1)
    e = _Ops(ctx, "erfc")
    return ctx.cast(e("sub", 1.0, e("tract_core_erf", x)), out_dtype(ctx))


@register(aten.exp2.default)
def exp2(ctx: EmitContext, node: torch.fx.Node):
    """exp2(Tensor self) -> Tensor"""
    (x,) = _floats(ctx, 1)
    e = _Ops(ctx, "exp2")
    return ctx.cast(e("exp", e("mul", x, math.log(2.0))), out_dtype(ctx))


def _negative_sign(e: _Ops, x) -> Ref:
    """``x < 0``, and true for -0.0 (``1 / x`` is -inf)."""
    return e("or", e("lt", x, 0.0, dtype=torch.bool),
             e("lt", e("div", 1.0, x), 0.0, dtype=torch.bool), dtype=torch.bool)  # fmt: skip


@register(aten.signbit.default)
def signbit(ctx: EmitContext, node: torch.fx.Node):
    """signbit(Tensor self) -> Tensor"""
    (x,) = _floats(ctx, 1)
    return _negative_sign(_Ops(ctx, "signbit"), x)


@register(aten.fmax.default, aten.fmin.default)
def fmax_fmin(ctx: EmitContext, node: torch.fx.Node):
    """fmax(Tensor self, Tensor other) -> Tensor; fmin: NaN only where both are NaN."""
    dtype = out_dtype(ctx)
    a, b = (as_operand(ctx, ctx.arg(i), dtype) for i in range(2))
    e = _Ops(ctx, "fmax")
    m = e("max" if node.target is aten.fmax.default else "min", a, b, dtype=dtype)
    m = e("select", e("ne", a, a, dtype=torch.bool), b, m, dtype=dtype)
    return e("select", e("ne", b, b, dtype=torch.bool), a, m, dtype=dtype)


@register(aten.atan2.default)
def atan2(ctx: EmitContext, node: torch.fx.Node):
    """atan2(Tensor self, Tensor other) -> Tensor: the angle of (other, self)."""
    y, x = _floats(ctx, 2)
    e = _Ops(ctx, "atan2")
    base = e("atan", e("div", y, x))
    shift = e("select", e("lt", y, 0.0, dtype=torch.bool), -math.pi, math.pi)
    left = e("lt", x, 0.0, dtype=torch.bool)
    angle = e("select", left, e("add", base, shift), base)
    at_zero = e("mul", e("sign", y), math.pi / 2)  # x == 0: ±pi/2 (0 when y == 0)
    angle = e("select", e("eq", x, 0.0, dtype=torch.bool), at_zero, angle)
    return ctx.cast(angle, out_dtype(ctx))


@register(aten.hypot.default)
def hypot(ctx: EmitContext, node: torch.fx.Node):
    """hypot(Tensor self, Tensor other) -> Tensor"""
    a, b = _floats(ctx, 2)
    e = _Ops(ctx, "hypot")
    return ctx.cast(e("sqrt", e("add", e("mul", a, a), e("mul", b, b))), out_dtype(ctx))


@register(aten.copysign.Tensor, aten.copysign.Scalar)
def copysign(ctx: EmitContext, node: torch.fx.Node):
    """copysign.Tensor(Tensor self, Tensor other) -> Tensor"""
    a, b = _floats(ctx, 2)
    e = _Ops(ctx, "copysign")
    magnitude = e("abs", a)
    return ctx.cast(e("select", _negative_sign(e, b), e("neg", magnitude), magnitude),
                    out_dtype(ctx))  # fmt: skip


@register(aten.var_mean.correction)
def var_mean(ctx: EmitContext, node: torch.fx.Node):
    """var_mean.correction(Tensor self, int[1]? dim=None, *, Scalar? correction=None,
    bool keepdim=False) -> (Tensor, Tensor)"""
    x = as_operand(ctx, ctx.arg(0), F32)
    rank = ctx.rank(x)
    dims = ctx.arg(1)
    axes = sorted(range(rank)) if not dims else sorted(d % rank for d in dims)
    correction = ctx.arg("correction", 1)
    correction = 1 if correction is None else correction
    keep = bool(ctx.arg("keepdim", False))
    shape = list(ctx.shape(x))
    red = [1 if i in axes else d for i, d in enumerate(shape)]
    n = math.prod(shape[a] for a in axes)
    if not isinstance(n, int):
        raise ctx.error("var_mean over a dynamic axis is not supported")
    mean = ctx.emit("mean_reduce", [x], {"axes": axes}, dtype=F32, shape=red, hint="var_mean")
    diff = ctx.emit("sub", [x, mean], dtype=F32, shape=shape, hint="var_mean")
    sq = ctx.emit("sum_reduce", [ctx.emit("mul", [diff, diff], dtype=F32, shape=shape)],
                  {"axes": axes}, dtype=F32, shape=red, hint="var_mean")  # fmt: skip
    var = ctx.emit("div", [sq, float(max(n - correction, 0))], dtype=F32, shape=red)
    out = ctx.out_shape(ctx.meta()[0])
    if not keep:
        var, mean = (ctx.emit("squeeze", [t], {"axes": axes}, dtype=F32, shape=out)
                     for t in (var, mean))  # fmt: skip
    return var, mean


@register(aten.addbmm.default)
def addbmm(ctx: EmitContext, node: torch.fx.Node):
    """addbmm(Tensor self, Tensor batch1, Tensor batch2, *, Scalar beta=1, Scalar alpha=1)
    -> Tensor: ``beta * self + alpha * sum_b batch1[b] @ batch2[b]``"""
    dtype = out_dtype(ctx)
    bias, b1, b2 = (as_operand(ctx, ctx.arg(i), dtype) for i in range(3))
    beta, alpha = ctx.arg("beta", 1), ctx.arg("alpha", 1)
    out = list(ctx.out_shape())
    prod = ctx.emit("tract_core_einsum", [[b1, b2]], {"expr": "bij,bjk->ik", "acc": "f32"},
                    dtype=dtype, shape=out, hint="addbmm")  # fmt: skip
    if alpha != 1:
        prod = ctx.emit("mul", [prod, float(alpha)], dtype=dtype, shape=out, hint="addbmm")
    if beta == 0:
        return prod
    if beta != 1:
        bias = ctx.emit("mul", [bias, float(beta)], dtype=dtype, shape=ctx.shape(bias))
    return ctx.emit_like("add", broadcastable(ctx, prod, bias))


@register(
    aten.hamming_window.default, aten.hamming_window.periodic, aten.hamming_window.periodic_alpha,
    aten.hamming_window.periodic_alpha_beta, aten.blackman_window.default,
    aten.blackman_window.periodic, aten.bartlett_window.default, aten.bartlett_window.periodic,
    aten.kaiser_window.default, aten.kaiser_window.periodic, aten.kaiser_window.beta,
)  # fmt: skip
def window(ctx: EmitContext, node: torch.fx.Node):
    """hamming / blackman / bartlett / kaiser windows: static sizes, so computed by torch."""
    args = [ctx.arg(i) for i in range(len(node.args))]
    if not all(isinstance(a, (int, float, bool)) for a in args):
        raise ctx.error("a window function needs a static length")
    kwargs = {k: v for k, v in node.kwargs.items() if k == "dtype"}
    return ctx.constant(node.target(*args, **kwargs), hint="window")
