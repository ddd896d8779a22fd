"""Normalization layers: layer, batch, group, instance and RMS norm.

Statistics are computed in f32 (the ``t2n_normalize`` / ``t2n_rms_normalize`` fragments);
per-channel parameters are reshaped to ``[1, C, 1, ...]`` since NNEF broadcasts from the front.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import as_operand, broadcastable, per_channel
from t2n_core.ops.registry import register

aten = torch.ops.aten
F32 = torch.float32


def _out_dtype(ctx: EmitContext) -> torch.dtype:
    """The dtype of the (first) output."""
    meta = ctx.meta()
    return (meta[0] if isinstance(meta, (tuple, list)) else meta).dtype


def _float_input(ctx: EmitContext) -> Ref:
    dtype = _out_dtype(ctx)
    if not dtype.is_floating_point:
        raise ctx.error(f"{ctx.node.target} needs a floating-point input, got {dtype}")
    return as_operand(ctx, ctx.arg(0), F32)


def _normalize(ctx: EmitContext, x: Ref, axes: list[int], eps: float, shape=None) -> Ref:
    """``(x - mean) / sqrt(var + eps)`` over ``axes`` (biased variance), in f32."""
    return ctx.emit(
        ctx.fragment("t2n_normalize"), [x], {"axes": axes, "eps": float(eps)},
        dtype=F32, shape=ctx.shape(x) if shape is None else shape, hint="normalize",
    )  # fmt: skip


def _affine(ctx: EmitContext, y: Ref, weight: Any, bias: Any, *, channel_axis: int | None) -> Ref:
    """``y * weight + bias`` (either may be None); per-channel on ``channel_axis``, or trailing."""
    rank = ctx.rank(y)
    for param, op in ((weight, "mul"), (bias, "add")):
        if param is None:
            continue
        param = as_operand(ctx, param, F32)
        if channel_axis is not None:
            param = per_channel(ctx, param, rank, channel_axis)
        y = ctx.emit(op, broadcastable(ctx, y, param), dtype=F32, shape=ctx.shape(y), hint=op)
    return y


def _finish(ctx: EmitContext, y: Ref) -> Ref:
    return ctx.cast(y, _out_dtype(ctx))


@register(aten.layer_norm.default)
def layer_norm(ctx: EmitContext, node: torch.fx.Node):
    """layer_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight=None,
    Tensor? bias=None, float eps=1e-05, bool cudnn_enable=True) -> Tensor"""
    x = _float_input(ctx)
    rank = ctx.rank(x)
    count = len(ctx.arg(1))
    axes = list(range(rank - count, rank))
    eps = ctx.arg(4, ctx.arg("eps", 1e-5))
    y = _normalize(ctx, x, axes, eps)
    y = _affine(ctx, y, ctx.arg(2, ctx.arg("weight")), ctx.arg(3, ctx.arg("bias")),
                channel_axis=None)  # fmt: skip
    return _finish(ctx, y)


def _channel_axes(rank: int) -> list[int]:
    """Every axis but the channel axis 1: the batch-statistics axes of batch norm."""
    return [a for a in range(rank) if a != 1]


def _batch_norm_running(ctx: EmitContext, x: Ref, weight, bias, mean, var, eps: float) -> Ref:
    """Inference batch norm: ``x * scale + shift`` with per-channel scale and shift."""
    rank = ctx.rank(x)
    channels = ctx.shape(x)[1] if rank > 1 else ctx.shape(x)[0]
    axis = 1 if rank > 1 else 0
    vec = (channels,)
    var = as_operand(ctx, var, F32)
    std = ctx.emit("add", [var, float(eps)], dtype=F32, shape=vec, hint="bn_var")
    scale = ctx.emit("rsqrt", [std], dtype=F32, shape=vec, hint="bn_scale")
    if weight is not None:
        scale = ctx.emit("mul", [scale, as_operand(ctx, weight, F32)], dtype=F32, shape=vec,
                         hint="bn_scale")  # fmt: skip
    shift = ctx.emit("mul", [as_operand(ctx, mean, F32), scale], dtype=F32, shape=vec,
                     hint="bn_shift")  # fmt: skip
    shift = ctx.emit("neg", [shift], dtype=F32, shape=vec, hint="bn_shift")
    if bias is not None:
        shift = ctx.emit("add", [shift, as_operand(ctx, bias, F32)], dtype=F32, shape=vec,
                         hint="bn_shift")  # fmt: skip
    shape = ctx.shape(x)
    y = ctx.emit("mul", [x, per_channel(ctx, scale, rank, axis)], dtype=F32, shape=shape)
    return ctx.emit("add", [y, per_channel(ctx, shift, rank, axis)], dtype=F32, shape=shape)


def _batch_norm(ctx: EmitContext, weight, bias, mean, var, training: bool, eps: float) -> Ref:
    x = _float_input(ctx)
    if training or mean is None or var is None:
        # batch statistics (train mode, or track_running_stats=False)
        y = _normalize(ctx, x, _channel_axes(ctx.rank(x)), eps)
        return _finish(ctx, _affine(ctx, y, weight, bias, channel_axis=1))
    return _finish(ctx, _batch_norm_running(ctx, x, weight, bias, mean, var, eps))


@register(aten.batch_norm.default)
def batch_norm(ctx: EmitContext, node: torch.fx.Node):
    """batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean,
    Tensor? running_var, bool training, float momentum, float eps, bool cudnn_enabled) -> Tensor"""
    w, b, mean, var, training, _momentum, eps = (ctx.arg(i) for i in range(1, 8))
    return _batch_norm(ctx, w, b, mean, var, bool(training), eps)


@register(aten._native_batch_norm_legit_no_training.default)
def native_batch_norm_no_training(ctx: EmitContext, node: torch.fx.Node):
    """_native_batch_norm_legit_no_training(Tensor input, Tensor? weight, Tensor? bias,
    Tensor running_mean, Tensor running_var, float momentum, float eps) -> (Tensor, Tensor, Tensor)

    Only the first output (the normalized tensor) is translated; the saved statistics are
    training-only outputs.
    """
    w, b, mean, var, _momentum, eps = (ctx.arg(i) for i in range(1, 7))
    return (_batch_norm(ctx, w, b, mean, var, False, eps), None, None)


@register(aten._native_batch_norm_legit.default, aten.native_batch_norm.default)
def native_batch_norm(ctx: EmitContext, node: torch.fx.Node):
    """_native_batch_norm_legit(Tensor input, Tensor? weight, Tensor? bias,
    Tensor(a!) running_mean, Tensor(b!) running_var, bool training, float momentum, float eps)
    -> (Tensor, Tensor, Tensor); also native_batch_norm (same arguments)

    Only the normalized tensor is translated; running statistics are not updated.
    """
    w, b, mean, var, training, _momentum, eps = (ctx.arg(i) for i in range(1, 8))
    return (_batch_norm(ctx, w, b, mean, var, bool(training), eps), None, None)


@register(aten._native_batch_norm_legit.no_stats)
def native_batch_norm_no_stats(ctx: EmitContext, node: torch.fx.Node):
    """_native_batch_norm_legit.no_stats(Tensor input, Tensor? weight, Tensor? bias,
    bool training, float momentum, float eps) -> (Tensor, Tensor, Tensor)

    Batch statistics (a BatchNorm with ``track_running_stats=False``); first output only.
    """
    w, b, _training, _momentum, eps = (ctx.arg(i) for i in range(1, 6))
    return (_batch_norm(ctx, w, b, None, None, True, eps), None, None)


@register(aten.instance_norm.default)
def instance_norm(ctx: EmitContext, node: torch.fx.Node):
    """instance_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean,
    Tensor? running_var, bool use_input_stats, float momentum, float eps, bool cudnn_enabled)
    -> Tensor"""
    w, b, mean, var, use_input_stats, _momentum, eps = (ctx.arg(i) for i in range(1, 8))
    if not use_input_stats:
        return _batch_norm(ctx, w, b, mean, var, False, eps)
    x = _float_input(ctx)
    rank = ctx.rank(x)
    if rank < 3:
        raise ctx.error("instance_norm needs an input of rank 3 or more ([N, C, *spatial])")
    y = _normalize(ctx, x, list(range(2, rank)), eps)
    return _finish(ctx, _affine(ctx, y, w, b, channel_axis=1))


@register(aten.group_norm.default)
def group_norm(ctx: EmitContext, node: torch.fx.Node):
    """group_norm(Tensor input, int num_groups, Tensor? weight=None, Tensor? bias=None,
    float eps=1e-05, bool cudnn_enabled=True) -> Tensor"""
    x = _float_input(ctx)
    groups = int(ctx.arg(1))
    eps = ctx.arg(4, ctx.arg("eps", 1e-5))
    shape = ctx.shape(x)
    rank = len(shape)
    channels = shape[1]
    if not isinstance(channels, int):
        raise ctx.error("group_norm needs a static channel axis (axis 1)")
    # [N, C, *S] -> [N, G, C/G, *S]: normalize over all axes from 2 on, then back to [N, C, *S]
    grouped = (shape[0], groups, channels // groups, *shape[2:])
    y = ctx.emit(
        "reshape", [x], {"shape": [groups, channels // groups], "axis_start": 1, "axis_count": 1},
        dtype=F32, shape=grouped, hint="group",
    )  # fmt: skip
    y = _normalize(ctx, y, list(range(2, rank + 1)), eps)
    y = ctx.emit(
        "reshape", [y], {"shape": [channels], "axis_start": 1, "axis_count": 2},
        dtype=F32, shape=shape, hint="ungroup",
    )  # fmt: skip
    w, b = ctx.arg(2, ctx.arg("weight")), ctx.arg(3, ctx.arg("bias"))
    return _finish(ctx, _affine(ctx, y, w, b, channel_axis=1))


@register(aten.rms_norm.default)
def rms_norm(ctx: EmitContext, node: torch.fx.Node):
    """rms_norm(Tensor input, SymInt[] normalized_shape, Tensor? weight=None, float? eps=None)
    -> Tensor"""
    x = _float_input(ctx)
    rank = ctx.rank(x)
    count = len(ctx.arg(1))
    eps = ctx.arg(3, ctx.arg("eps"))
    if eps is None:
        eps = torch.finfo(_out_dtype(ctx)).eps
    if count == 1:
        y = ctx.emit("tract_core_rms_norm", [x], {"axis": rank - 1, "eps": float(eps)},
                     dtype=F32, shape=ctx.shape(x), hint="rms_norm")  # fmt: skip
    else:
        axes = list(range(rank - count, rank))
        y = ctx.emit(ctx.fragment("t2n_rms_normalize"), [x], {"axes": axes, "eps": float(eps)},
                     dtype=F32, shape=ctx.shape(x), hint="rms_norm")  # fmt: skip
    y = _affine(ctx, y, ctx.arg(2, ctx.arg("weight")), None, channel_axis=None)
    return _finish(ctx, y)
