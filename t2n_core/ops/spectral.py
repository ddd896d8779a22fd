"""Spectral ops: FFTs, the STFT (``torch.stft`` once captured), ``unfold``, complex values.

A complex tensor is stored as a real one with a last axis of 2 (real, imaginary), the
convention of tract's ``tract_core_fft`` / ``tract_core_stft``; its IR value keeps the complex
dtype, and a node with a complex input goes to the handlers registered here with
``register_complex`` (any other op on a complex tensor is reported as unsupported).

``torch.stft`` reaches us decomposed: ``unfold`` of the (padded) signal into frames, ``mul``
by the window, ``_fft_r2c`` over the frame axis, ``transpose``. ``_fft_r2c`` recognises the
frames of an ``unfold`` along the signal's last axis (times a stored window) and emits one
``tract_core_stft`` on the signal instead, which tract can also pulse (stream); the gather
that ``unfold`` emitted is then dead code. tract's STFT and FFT are full complex transforms,
so a one-sided ``rfft`` is a slice of the first ``n // 2 + 1`` bins, and ``irfft`` rebuilds
the mirrored half (conjugated) before an inverse FFT. tract's inverse FFT is not normalised.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import dim_attr, norm_axis
from t2n_core.ops.registry import register, register_complex

aten = torch.ops.aten


# ---- framing -----------------------------------------------------------------------------
@register(aten.unfold.default)
def unfold(ctx: EmitContext, node: torch.fx.Node):
    """unfold(Tensor(a) self, int dimension, int size, int step) -> Tensor(a)"""
    x, size, step = ctx.arg(0), int(ctx.arg(2)), int(ctx.arg(3))
    rank = ctx.rank(x)
    axis = norm_axis(int(ctx.arg(1)), max(rank, 1))
    out_shape = ctx.out_shape()
    frames = out_shape[axis]
    # index of value j of frame f: f * step + j, as an [frames, size] i64 tensor
    starts = ctx.emit("tract_core_range", [0, dim_attr(frames), 1], dtype=torch.int64,
                      shape=(frames,), hint="frame_starts")  # fmt: skip
    starts = ctx.emit("tract_core_bitand", [starts, ctx.scalar(-1, torch.int64)],
                      dtype=torch.int64, shape=(frames,), hint="frame_starts")  # fmt: skip
    if step != 1:
        starts = ctx.emit("mul", [starts, ctx.scalar(step, torch.int64)], dtype=torch.int64,
                          shape=(frames,), hint="frame_starts")  # fmt: skip
    starts = ctx.emit("unsqueeze", [starts], {"axes": [1]}, dtype=torch.int64,
                      shape=(frames, 1), hint="frame_starts")  # fmt: skip
    offsets = ctx.constant(torch.arange(size).unsqueeze(0), "frame_offsets")
    index = ctx.emit("add", [starts, offsets], dtype=torch.int64, shape=(frames, size),
                     hint="frame_index")  # fmt: skip
    shape = list(ctx.shape(x))
    gathered = [*shape[:axis], frames, size, *shape[axis + 1 :]]
    y = ctx.emit("tract_core_gather", [x, index], {"axis": axis}, dtype=ctx.dtype(x),
                 shape=tuple(gathered), hint="unfold")  # fmt: skip
    if axis == rank - 1:
        return y
    axes = [*range(axis + 1), *range(axis + 2, rank + 1), axis + 1]  # the window axis last
    return ctx.emit_like("transpose", [y], {"axes": axes})


# ---- FFTs ---------------------------------------------------------------------------------
@register(aten._fft_r2c.default)
def fft_r2c(ctx: EmitContext, node: torch.fx.Node):
    """_fft_r2c(Tensor self, int[] dim, int normalization, bool onesided) -> Tensor"""
    x = ctx.arg(0)
    rank = ctx.rank(x)
    dims = [norm_axis(int(d), rank) for d in ctx.arg(1)]
    normalization, onesided = int(ctx.arg(2)), bool(ctx.arg(3))
    stft = _stft_of_frames(ctx, node, dims)
    if stft is not None:
        z = stft
    else:
        z = _as_complex(ctx, x)
        for d in dims:
            z = _fft(ctx, z, d, inverse=False)
    n_last = ctx.shape(z)[dims[-1]]
    if onesided:
        z = _slice(ctx, z, dims[-1], 0, int(n_last) // 2 + 1, "onesided")
    return _normalize(ctx, z, dims, ctx.meta(0).shape, normalization)


@register_complex(aten._fft_c2c.default)
def fft_c2c(ctx: EmitContext, node: torch.fx.Node):
    """_fft_c2c(Tensor self, SymInt[] dim, int normalization, bool forward) -> Tensor"""
    z = ctx.arg(0)
    rank = ctx.meta(0).dim()
    dims = [norm_axis(int(d), rank) for d in ctx.arg(1)]
    for d in dims:
        z = _fft(ctx, z, d, inverse=not bool(ctx.arg(3)))
    return _normalize(ctx, z, dims, ctx.meta(0).shape, int(ctx.arg(2)))


@register_complex(aten._fft_c2r.default)
def fft_c2r(ctx: EmitContext, node: torch.fx.Node):
    """_fft_c2r(Tensor self, int[] dim, int normalization, SymInt last_dim_size) -> Tensor"""
    z = ctx.arg(0)
    rank = ctx.meta(0).dim()
    dims = [norm_axis(int(d), rank) for d in ctx.arg(1)]
    n = ctx.arg(3)
    if not isinstance(n, int):
        raise ctx.error("irfft needs a static output length along its last axis")
    for d in dims[:-1]:
        z = _fft(ctx, z, d, inverse=True)
    last = dims[-1]
    half = ctx.shape(z)[last]
    if not isinstance(half, int) or half < n // 2 + 1:
        raise ctx.error(f"irfft to {n} values needs {n // 2 + 1} bins, got {half}")
    z = _slice(ctx, z, last, 0, n // 2 + 1, "bins")
    if n - (n // 2 + 1) > 0:
        # the mirrored half: bins n - k for k = n // 2 + 1 .. n - 1, conjugated
        mirror = ctx.constant(torch.tensor([n - k for k in range(n // 2 + 1, n)]), "mirror")
        shape = list(ctx.shape(z))
        shape[last] = n - (n // 2 + 1)
        upper = ctx.emit("tract_core_gather", [z, mirror], {"axis": last}, dtype=ctx.dtype(z),
                         shape=tuple(shape), hint="mirror")  # fmt: skip
        upper = _conjugate(ctx, upper)
        full = list(shape)
        full[last] = n
        z = ctx.emit("concat", [[z, upper]], {"axis": last}, dtype=ctx.dtype(z),
                     shape=tuple(full), hint="hermitian")  # fmt: skip
    z = _fft(ctx, z, last, inverse=True)
    real = _part(ctx, z, 0, "real")
    sizes = list(ctx.meta(0).shape)
    sizes[last] = n
    return _normalize(ctx, real, dims, sizes, int(ctx.arg(2)))


# ---- complex values -----------------------------------------------------------------------
@register_complex(aten.view_as_real.default)
def view_as_real(ctx: EmitContext, node: torch.fx.Node):
    """view_as_real(Tensor(a) self) -> Tensor(a)"""
    return ctx.emit_like("copy", [ctx.arg(0)], hint="view_as_real")


@register(aten.view_as_complex.default)
def view_as_complex(ctx: EmitContext, node: torch.fx.Node):
    """view_as_complex(Tensor(a) self) -> Tensor(a)"""
    return ctx.emit_like("copy", [ctx.arg(0)], hint="view_as_complex")


@register_complex(aten.abs.default)
def complex_abs(ctx: EmitContext, node: torch.fx.Node):
    """abs(Tensor self) -> Tensor, of a complex tensor: its magnitude."""
    return _magnitude(ctx, ctx.arg(0))


@register_complex(aten.angle.default)
def complex_angle(ctx: EmitContext, node: torch.fx.Node):
    """angle(Tensor self) -> Tensor, of a complex tensor: atan2(imag, real), 0 at 0."""
    return _angle(ctx, ctx.arg(0))


@register_complex(aten.pow.Tensor_Scalar)
def complex_pow(ctx: EmitContext, node: torch.fx.Node):
    """pow.Tensor_Scalar(Tensor self, Scalar exponent) -> Tensor, of a complex tensor:
    ``|z|^p (cos p*angle(z), sin p*angle(z))``, the principal value torch computes."""
    z, p = ctx.arg(0), ctx.arg(1)
    if not isinstance(p, (int, float)) or isinstance(p, bool):
        raise ctx.error(f"a complex power needs a real exponent, got {p!r}")
    shape = ctx.shape(z)[:-1]

    def emit(op: str, args: list[Any]) -> Ref:
        return ctx.emit(op, args, dtype=torch.float32, shape=shape, hint=f"cpow_{op}")

    radius = emit("pow", [_magnitude(ctx, z), float(p)])
    turned = emit("mul", [_angle(ctx, z), float(p)])
    re = emit("mul", [radius, emit("cos", [turned])])
    im = emit("mul", [radius, emit("sin", [turned])])
    return _stack_parts(ctx, re, im)


@register_complex(aten.transpose.int)
def complex_transpose(ctx: EmitContext, node: torch.fx.Node):
    """transpose.int(Tensor(a) self, int dim0, int dim1) -> Tensor(a), complex"""
    rank = ctx.meta(0).dim()
    a, b = norm_axis(ctx.arg(1), rank), norm_axis(ctx.arg(2), rank)
    axes = list(range(rank + 1))
    axes[a], axes[b] = b, a
    return ctx.emit_like("transpose", [ctx.arg(0)], {"axes": axes})


@register_complex(aten.permute.default)
def complex_permute(ctx: EmitContext, node: torch.fx.Node):
    """permute(Tensor(a) self, int[] dims) -> Tensor(a), complex"""
    rank = ctx.meta(0).dim()
    axes = [norm_axis(a, rank) for a in ctx.arg(1)] + [rank]
    return ctx.emit_like("transpose", [ctx.arg(0)], {"axes": axes})


@register_complex(aten.slice.Tensor)
def complex_slice(ctx: EmitContext, node: torch.fx.Node):
    """slice.Tensor(Tensor(a) self, int dim=0, SymInt? start=None, SymInt? end=None, SymInt step=1) -> Tensor(a), complex"""  # noqa: E501
    from t2n_core.ops import shape as shape_ops

    x = ctx.arg(0)
    axis = norm_axis(ctx.arg(1, 0), ctx.meta(0).dim())
    size = ctx.shape(x)[axis]
    step = ctx.arg(4, 1)
    if not isinstance(step, int) or step < 1:
        raise ctx.error(f"slice step must be a positive integer, got {step!r}")
    begin = shape_ops._bound(ctx.arg(2), size, 0)
    end = shape_ops._bound(ctx.arg(3), size, size)
    return shape_ops._slice(ctx, x, axis, begin, end, step, shape=(*ctx.out_shape(), 2))


@register(aten.polar.default)
def polar(ctx: EmitContext, node: torch.fx.Node):
    """polar(Tensor abs, Tensor angle) -> Tensor, the complex ``abs * (cos angle, sin angle)``
    (Llama 4's rotary embedding)."""
    radius, angle = ctx.arg(0), ctx.arg(1)
    shape = ctx.out_shape()

    def emit(op: str, args: list[Any]) -> Ref:
        return ctx.emit(op, args, dtype=torch.float32, shape=shape, hint=f"polar_{op}")

    radius, angle = ctx.cast(radius, torch.float32), ctx.cast(angle, torch.float32)
    re = emit("mul", [radius, emit("cos", [angle])])
    im = emit("mul", [radius, emit("sin", [angle])])
    return _stack_parts(ctx, re, im)


@register_complex(aten.unsqueeze.default)
def complex_unsqueeze(ctx: EmitContext, node: torch.fx.Node):
    """unsqueeze(Tensor(a) self, int dim) -> Tensor(a), complex"""
    axis = norm_axis(ctx.arg(1), ctx.meta().dim())
    return ctx.emit_like("unsqueeze", [ctx.arg(0)], {"axes": [axis]})


@register_complex(aten.mul.Tensor)
def complex_mul(ctx: EmitContext, node: torch.fx.Node):
    """mul.Tensor(Tensor self, Tensor other) -> Tensor, a complex one by a real or complex one"""
    a, b = ctx.arg(0), ctx.arg(1)
    metas = [ctx.meta(0), ctx.meta(1) if isinstance(ctx.raw(1), torch.fx.Node) else None]
    is_complex = [m is not None and m.dtype.is_complex for m in metas]
    if all(is_complex):
        shape = ctx.out_shape()
        re = ctx.emit("sub", [_times(ctx, a, b, 0, 0), _times(ctx, a, b, 1, 1)],
                      dtype=torch.float32, shape=shape, hint="real")  # fmt: skip
        im = ctx.emit("add", [_times(ctx, a, b, 0, 1), _times(ctx, a, b, 1, 0)],
                      dtype=torch.float32, shape=shape, hint="imag")  # fmt: skip
        return _stack_parts(ctx, re, im)
    z, other = (a, b) if is_complex[0] else (b, a)
    if isinstance(other, Ref):
        if ctx.dtype(other).is_complex:
            raise ctx.error("complex operands of different layouts")
        other = ctx.emit("unsqueeze", [other], {"axes": [ctx.rank(other)]},
                         dtype=ctx.dtype(other), shape=(*ctx.shape(other), 1),
                         hint="real_factor")  # fmt: skip
        other = ctx.cast(other, torch.float32)
    elif isinstance(other, complex):
        raise ctx.error("multiplying by a complex python number is not supported")
    rank = ctx.meta().dim()
    from t2n_core.ops._common import unsqueeze_front

    return ctx.emit_like("mul", [z, unsqueeze_front(ctx, other, rank + 1)])


# ---- helpers ------------------------------------------------------------------------------
def _stft_of_frames(ctx: EmitContext, node: torch.fx.Node, dims: list[int]) -> Ref | None:
    """``tract_core_stft`` when ``node`` transforms the last axis of ``unfold(signal, -1, n, s)``
    (times a stored window of ``n`` values), else ``None``."""
    source = node.args[0]
    window = None
    if getattr(source, "target", None) == aten.mul.Tensor:
        frames, window = source.args
        if getattr(window, "target", None) == aten.unfold.default:
            frames, window = window, frames
        source = frames
    if getattr(source, "target", None) != aten.unfold.default or len(source.args) < 4:
        return None
    signal_node, dim, size, step = source.args[:4]
    signal = ctx.convert(signal_node)
    rank = ctx.rank(signal)
    if not isinstance(signal, Ref) or norm_axis(int(dim), rank) != rank - 1:
        return None
    if dims != [rank]:  # the transform must run over the frame values (the last axis)
        return None
    attrs: dict[str, Any] = {"axis": rank - 1, "frame": int(size), "stride": int(step)}
    if window is not None:
        w = _stored_window(ctx, ctx.convert(window), int(size))
        if w is None:
            return None
        attrs["window"] = w
    z = _as_complex(ctx, signal)
    frames = ctx.out_shape(source.meta["val"])[rank - 1]
    shape = (*ctx.shape(signal)[:-1], frames, int(size), 2)
    return ctx.emit("tract_core_stft", [z], attrs, dtype=torch.complex64, shape=shape,
                    hint="stft")  # fmt: skip


def _stored_window(ctx: EmitContext, w: Any, size: int) -> Ref | None:
    """The stored window of ``size`` values (or a shorter one that torch centred in ``size``
    with zeros, which is how tract's STFT applies a short window), else ``None``."""
    if not isinstance(w, Ref) or ctx.rank(w) != 1:
        return None
    op = ctx.graph.producer(w.name)
    if op is not None and op.op == "pad" and isinstance(op.args[0], Ref):
        inner = op.args[0]
        length = ctx.shape(inner)[0] if ctx.rank(inner) == 1 else None
        left = (size - length) // 2 if isinstance(length, int) else None
        padding = [list(pair) for pair in op.attrs.get("padding", [])]
        zeros = op.attrs.get("border") == "constant" and op.attrs.get("value") == 0.0
        if zeros and left is not None and padding == [[left, size - length - left]]:
            w = inner
    if w.name not in ctx.graph.variables or not 0 < int(ctx.shape(w)[0]) <= size:
        return None
    return w


def _as_complex(ctx: EmitContext, x: Ref) -> Ref:
    """A real tensor as a complex one: a last axis of (x, 0)."""
    shape = ctx.shape(x)
    rank = len(shape)
    x = ctx.cast(x, torch.float32)
    y = ctx.emit("unsqueeze", [x], {"axes": [rank]}, dtype=torch.float32, shape=(*shape, 1),
                 hint="complex")  # fmt: skip
    pairs = [(0, 0)] * rank + [(0, 1)]
    return ctx.emit("pad", [y], {"padding": pairs, "border": "constant", "value": 0.0},
                    dtype=torch.complex64, shape=(*shape, 2), hint="complex")  # fmt: skip


def _fft(ctx: EmitContext, z: Ref, axis: int, *, inverse: bool) -> Ref:
    return ctx.emit("tract_core_fft", [z], {"axis": axis, "inverse": inverse},
                    dtype=torch.complex64, shape=ctx.shape(z), hint="fft")  # fmt: skip


def _slice(ctx: EmitContext, z: Ref, axis: int, begin: int, end: int, hint: str) -> Ref:
    shape = list(ctx.shape(z))
    if shape[axis] == end and begin == 0:
        return z
    shape[axis] = end - begin
    return ctx.emit("slice", [z], {"axes": [axis], "begin": [begin], "end": [end]},
                    dtype=ctx.dtype(z), shape=tuple(shape), hint=hint)  # fmt: skip


def _part(ctx: EmitContext, z: Ref, index: int, hint: str) -> Ref:
    """The real (0) or imaginary (1) part of a complex tensor."""
    last = ctx.rank(z) - 1
    part = _slice(ctx, z, last, index, index + 1, hint)
    return ctx.emit("squeeze", [part], {"axes": [last]}, dtype=torch.float32,
                    shape=ctx.shape(z)[:-1], hint=hint)  # fmt: skip


def _magnitude(ctx: EmitContext, z: Ref) -> Ref:
    rank, shape = ctx.rank(z), ctx.shape(z)
    square = ctx.emit("sqr", [z], dtype=torch.float32, shape=shape, hint="abs_sqr")
    total = ctx.emit("sum_reduce", [square], {"axes": [rank - 1]}, dtype=torch.float32,
                     shape=(*shape[:-1], 1), hint="abs_sum")  # fmt: skip
    total = ctx.emit("squeeze", [total], {"axes": [rank - 1]}, dtype=torch.float32,
                     shape=shape[:-1], hint="abs_sum")  # fmt: skip
    return ctx.emit("sqrt", [total], dtype=torch.float32, shape=shape[:-1], hint="abs")


def _angle(ctx: EmitContext, z: Ref) -> Ref:
    """atan2(imag, real), 0 at 0 (as torch.angle)."""
    re, im = _part(ctx, z, 0, "real"), _part(ctx, z, 1, "imag")
    shape = ctx.shape(re)

    def emit(op: str, args: list[Any], dtype: torch.dtype = torch.float32) -> Ref:
        return ctx.emit(op, args, dtype=dtype, shape=shape, hint=f"angle_{op}")

    base = emit("atan", [emit("div", [im, re])])  # +-pi/2 where re == 0 (im / 0 = +-inf)
    left = emit("lt", [re, 0.0], torch.bool)
    below = emit("lt", [im, 0.0], torch.bool)
    turn = emit("select", [left, emit("select", [below, -math.pi, math.pi]), 0.0])
    angle = emit("add", [base, turn])
    origin = emit("and", [emit("eq", [re, 0.0], torch.bool), emit("eq", [im, 0.0], torch.bool)],
                  torch.bool)  # fmt: skip
    return emit("select", [origin, 0.0, angle])


def _times(ctx: EmitContext, a: Ref, b: Ref, i: int, j: int) -> Ref:
    """Part ``i`` of ``a`` times part ``j`` of ``b``, broadcast to the node's shape."""
    return ctx.emit("mul", [_part(ctx, a, i, "part"), _part(ctx, b, j, "part")],
                    dtype=torch.float32, shape=ctx.out_shape(), hint="complex_mul")  # fmt: skip


def _stack_parts(ctx: EmitContext, re: Ref, im: Ref) -> Ref:
    rank = ctx.rank(re)
    parts = [
        ctx.emit(
            "unsqueeze",
            [p],
            {"axes": [rank]},
            dtype=torch.float32,
            shape=(*ctx.shape(p), 1),
            hint="complex",
        )
        for p in (re, im)
    ]
    return ctx.emit_like("concat", [parts], {"axis": rank})


def _conjugate(ctx: EmitContext, z: Ref) -> Ref:
    sign = torch.tensor([1.0, -1.0]).reshape([1] * (ctx.rank(z) - 1) + [2])
    sign = ctx.constant(sign, "conjugate")
    return ctx.emit("mul", [z, sign], dtype=ctx.dtype(z), shape=ctx.shape(z), hint="conjugate")


def _normalize(ctx: EmitContext, z: Ref, dims: list[int], sizes: Any, normalization: int) -> Ref:
    """torch's ``normalization``: 0 none, 1 by 1/sqrt(n), 2 by 1/n (n: the signal sizes)."""
    if normalization == 0:
        return z
    n = 1
    for d in dims:
        size = sizes[d]
        if not isinstance(size, int):
            raise ctx.error("a normalized FFT needs static sizes along its axes")
        n *= size
    scale = 1.0 / math.sqrt(n) if normalization == 1 else 1.0 / n
    return ctx.emit("mul", [z, scale], dtype=ctx.dtype(z), shape=ctx.shape(z), hint="fft_norm")
