"""Activation functions of CNNs and transformers: gelu, hardswish, relu6, silu, elu, ...

Those with no tract primitive are NNEF fragments kept as data in ``ops/fragments/``. Their
literals are f32, so a non-f32 input is computed in f32 and cast back.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import as_operand, out_dtype, per_channel
from t2n_core.ops.registry import register

aten = torch.ops.aten


def _in_f32(ctx: EmitContext, build: Callable[[Ref], Ref]) -> Ref:
    """Apply ``build`` to argument 0 in f32 (NNEF float literals are f32) and cast back."""
    dtype = out_dtype(ctx)
    if not dtype.is_floating_point:
        raise ctx.error(f"{ctx.node.target} on a {dtype} tensor is not supported")
    x = as_operand(ctx, ctx.arg(0), torch.float32)
    y = build(x)
    return ctx.cast(y, dtype)


def _f32_op(ctx: EmitContext, op: str, x: Ref, attrs: dict | None = None) -> Ref:
    return ctx.emit(op, [x], attrs, dtype=torch.float32, shape=ctx.out_shape())


@register(aten.gelu.default)
def gelu(ctx: EmitContext, node: torch.fx.Node):
    """gelu(Tensor self, *, str approximate="none") -> Tensor"""
    approximate = ctx.arg("approximate", "none")
    if approximate == "tanh":
        return _in_f32(
            ctx, lambda x: _f32_op(ctx, "tract_core_gelu_approx", x, {"fast_impl": False})
        )
    if approximate != "none":
        raise ctx.error(f"gelu approximate={approximate!r} is not supported ('none' or 'tanh')")
    return _in_f32(ctx, lambda x: _f32_op(ctx, ctx.fragment("t2n_gelu"), x))


@register(aten.silu.default)
def silu(ctx: EmitContext, node: torch.fx.Node):
    """silu(Tensor self) -> Tensor"""
    return _in_f32(ctx, lambda x: _f32_op(ctx, "tract_core_silu", x))


@register(aten.hardswish.default)
def hardswish(ctx: EmitContext, node: torch.fx.Node):
    """hardswish(Tensor self) -> Tensor"""
    return _in_f32(ctx, lambda x: _f32_op(ctx, "tract_core_hard_swish", x))


@register(aten.hardsigmoid.default)
def hardsigmoid(ctx: EmitContext, node: torch.fx.Node):
    """hardsigmoid(Tensor self) -> Tensor"""
    return _in_f32(ctx, lambda x: _f32_op(ctx, ctx.fragment("t2n_hard_sigmoid"), x))


@register(aten.mish.default)
def mish(ctx: EmitContext, node: torch.fx.Node):
    """mish(Tensor self) -> Tensor"""
    return _in_f32(ctx, lambda x: _f32_op(ctx, ctx.fragment("t2n_mish"), x))


def _clamp(ctx: EmitContext, low: float, high: float) -> Ref:
    dtype = out_dtype(ctx)
    x = ctx.arg(0)
    lo, hi = as_operand(ctx, low, dtype), as_operand(ctx, high, dtype)
    return ctx.emit_like("clamp", [x, lo, hi])


@register(aten.hardtanh.default)
def hardtanh(ctx: EmitContext, node: torch.fx.Node):
    """hardtanh(Tensor self, Scalar min_val=-1, Scalar max_val=1) -> Tensor"""
    return _clamp(ctx, ctx.arg(1, ctx.arg("min_val", -1)), ctx.arg(2, ctx.arg("max_val", 1)))


@register(aten.relu6.default)
def relu6(ctx: EmitContext, node: torch.fx.Node):
    """relu6(Tensor self) -> Tensor"""
    return _clamp(ctx, 0, 6)


@register(aten.leaky_relu.default)
def leaky_relu(ctx: EmitContext, node: torch.fx.Node):
    """leaky_relu(Tensor self, Scalar negative_slope=0.01) -> Tensor"""
    slope = float(ctx.arg(1, ctx.arg("negative_slope", 0.01)))
    return _in_f32(ctx, lambda x: _f32_op(ctx, "leaky_relu", x, {"alpha": slope}))


@register(aten.elu.default)
def elu(ctx: EmitContext, node: torch.fx.Node):
    """elu(Tensor self, Scalar alpha=1, Scalar scale=1, Scalar input_scale=1) -> Tensor"""
    attrs = {
        name: float(ctx.arg(i, ctx.arg(name, 1.0)))
        for i, name in enumerate(("alpha", "scale", "input_scale"), start=1)
    }
    return _in_f32(ctx, lambda x: _f32_op(ctx, ctx.fragment("t2n_elu"), x, attrs))


@register(aten.softplus.default)
def softplus(ctx: EmitContext, node: torch.fx.Node):
    """softplus(Tensor self, Scalar beta=1, Scalar threshold=20) -> Tensor"""
    attrs = {
        "beta": float(ctx.arg(1, ctx.arg("beta", 1.0))),
        "threshold": float(ctx.arg(2, ctx.arg("threshold", 20.0))),
    }
    return _in_f32(ctx, lambda x: _f32_op(ctx, ctx.fragment("t2n_softplus"), x, attrs))


@register(aten.prelu.default)
def prelu(ctx: EmitContext, node: torch.fx.Node):
    """prelu(Tensor self, Tensor weight) -> Tensor"""
    rank = len(ctx.meta().shape)
    weight = as_operand(ctx, ctx.arg(1), torch.float32)
    if ctx.shape(weight) != (1,):
        # one slope per channel: the channel axis is 1 (0 for a 1-D input)
        weight = per_channel(ctx, weight, rank, axis=1 if rank >= 2 else 0)
    elif rank > 1:
        weight = ctx.emit(
            "reshape", [weight], {"shape": [1] * rank}, dtype=torch.float32, shape=(1,) * rank,
            hint="prelu_weight",
        )  # fmt: skip
    return _in_f32(ctx, lambda x: ctx.emit(
        "prelu", [x, weight], dtype=torch.float32, shape=ctx.out_shape()
    ))  # fmt: skip
