"""Convolutions: conv1d/2d/3d (incl. grouped and depthwise) and transposed convolutions.

Every ``conv1d``/``conv2d``/``conv_transpose*`` call reaches ``aten.convolution`` after
decomposition (``padding='same'`` with an even receptive field becomes ``constant_pad_nd`` +
``convolution``).

A convolution's weight goes to NNEF ``conv`` as its ``filter`` argument unchanged: tract runs
block-quantized (Q4_0) convolutions only when the weight variable is the filter input itself.
A transposed convolution's weight must be re-laid out for tract's ``deconv`` (see
:func:`_deconv_filter`), so Q4_0 does not apply to it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import as_operand, int_list, out_dtype, per_channel
from t2n_core.ops.linear import split_concat_product
from t2n_core.ops.registry import register

aten = torch.ops.aten


def _bias(ctx: EmitContext, bias: Any, dtype: torch.dtype) -> Any:
    """NNEF conv bias: ``[1, C]``, or the scalar 0.0 when there is none."""
    if bias is None:
        return 0.0
    bias = as_operand(ctx, bias, dtype)
    return per_channel(ctx, bias, 2, axis=1)


@register(aten.convolution.default)
def convolution(ctx: EmitContext, node: torch.fx.Node):
    """convolution(Tensor input, Tensor weight, Tensor? bias, SymInt[] stride, SymInt[] padding,
    SymInt[] dilation, bool transposed, SymInt[] output_padding, SymInt groups) -> Tensor"""
    dtype = out_dtype(ctx)
    if not dtype.is_floating_point:
        raise ctx.error(f"convolution on {dtype} tensors is not supported (float only)")
    x, weight, bias = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    x = as_operand(ctx, x, dtype)
    rank = ctx.rank(x)
    if rank < 3:
        raise ctx.error("convolution needs a batched input [N, C, *spatial]")
    if not isinstance(weight, Ref):
        raise ctx.error("the convolution weight must be a tensor")
    if not all(isinstance(d, int) for d in ctx.shape(weight)):
        raise ctx.error("the convolution weight must have a static shape (tract needs it)")
    n = rank - 2
    stride = _static_ints(ctx, ctx.arg(3), n, "stride")
    padding = _static_ints(ctx, ctx.arg(4), n, "padding")
    dilation = _static_ints(ctx, ctx.arg(5), n, "dilation")
    transposed = bool(ctx.arg(6))
    output_padding = _static_ints(ctx, ctx.arg(7), n, "output_padding")
    groups = int(ctx.arg(8))
    weight = as_operand(ctx, weight, dtype)
    if transposed:
        return _deconv(ctx, x, weight, bias, stride, padding, dilation, output_padding, groups)
    attrs = {
        "padding": [(p, p) for p in padding],
        "stride": stride,
        "dilation": dilation,
        "groups": groups,
    }
    if groups == 1 and all(k == 1 for k in ctx.shape(weight)[2:]):
        # a 1x1 conv of a channel concat: tract makes it an einsum and splits its filter per
        # piece, which aborts on Q4_0; one conv per piece, summed. (A larger kernel is left
        # whole: tract keeps it a conv, and a sum of such convs trips its axis pass.)
        biases = [_bias(ctx, bias, dtype)]

        def piece_conv(piece: Ref, w_piece: Ref) -> Ref:
            b = biases.pop() if biases else 0.0
            return ctx.emit_like("conv", [piece, w_piece, b], attrs)

        split = split_concat_product(ctx, x, 1, weight, 1, piece_conv)
        if split is not None:
            return split
    return ctx.emit_like("conv", [x, weight, _bias(ctx, bias, dtype)], attrs)


def _static_ints(ctx: EmitContext, value: Any, n: int, what: str) -> list[int]:
    try:
        return int_list(value, n)
    except TypeError:
        raise ctx.error(f"convolution {what} must be static integers, got {value!r}") from None


def _deconv_filter(ctx: EmitContext, weight: Ref, groups: int) -> Ref:
    """PyTorch's ``[C_in, C_out/g, *k]`` transposed-conv weight as tract's ``[C_out, C_in/g, *k]``.

    With groups, the output channels of group ``i`` are rows ``i*C_out/g ...`` of tract's
    filter: ``[g, C_in/g, C_out/g, *k] -> [g, C_out/g, C_in/g, *k] -> [C_out, C_in/g, *k]``.
    """
    shape = ctx.shape(weight)
    c_in, c_out_g, kernel = shape[0], shape[1], tuple(shape[2:])
    dtype = ctx.dtype(weight)
    if groups == 1:
        perm = [1, 0, *range(2, len(shape))]
        return ctx.emit("transpose", [weight], {"axes": perm}, dtype=dtype,
                        shape=(c_out_g, c_in, *kernel), hint="deconv_filter")  # fmt: skip
    c_in_g = c_in // groups
    w = ctx.emit(
        "reshape", [weight], {"shape": [groups, c_in_g], "axis_start": 0, "axis_count": 1},
        dtype=dtype, shape=(groups, c_in_g, c_out_g, *kernel), hint="deconv_filter",
    )  # fmt: skip
    perm = [0, 2, 1, *range(3, len(shape) + 1)]
    w = ctx.emit("transpose", [w], {"axes": perm}, dtype=dtype,
                 shape=(groups, c_out_g, c_in_g, *kernel), hint="deconv_filter")  # fmt: skip
    return ctx.emit(
        "reshape", [w], {"shape": [groups * c_out_g], "axis_start": 0, "axis_count": 2},
        dtype=dtype, shape=(groups * c_out_g, c_in_g, *kernel), hint="deconv_filter",
    )  # fmt: skip


def _deconv(ctx, x, weight, bias, stride, padding, dilation, output_padding, groups):
    """Transposed convolution as NNEF ``deconv`` with explicit asymmetric padding.

    ``output_padding`` extends the output at the end: it is the same as cropping
    ``padding - output_padding`` instead of ``padding`` there. Where ``output_padding`` exceeds
    ``padding``, the deconvolution (without bias) is zero-padded at the end, then biased.
    """
    dtype = out_dtype(ctx)
    filt = _deconv_filter(ctx, weight, groups)
    extra = [max(op - p, 0) for p, op in zip(padding, output_padding)]
    pads = [(p, max(p - op, 0)) for p, op in zip(padding, output_padding)]
    attrs = {"padding": pads, "stride": stride, "dilation": dilation, "groups": groups}
    if not any(extra):
        return ctx.emit_like("deconv", [x, filt, _bias(ctx, bias, dtype)], attrs)
    out_shape = ctx.out_shape()
    inner_shape = (*out_shape[:2], *(_sub(d, e) for d, e in zip(out_shape[2:], extra)))
    y = ctx.emit("deconv", [x, filt, 0.0], attrs, dtype=dtype, shape=inner_shape)
    pad = [(0, 0), (0, 0), *((0, e) for e in extra)]
    y = ctx.emit("pad", [y], {"padding": pad, "border": "constant", "value": 0.0},
                 dtype=dtype, shape=out_shape, hint="output_padding")  # fmt: skip
    if bias is None:
        return y
    b = per_channel(ctx, as_operand(ctx, bias, dtype), len(out_shape), axis=1)
    return ctx.emit_like("add", [y, b], hint="deconv_bias")


def _sub(dim: int | str, k: int) -> int | str:
    return dim - k if isinstance(dim, int) else f"({dim} - {k})"
