"""Pooling: max/avg pooling (1d/2d/3d) and adaptive avg/max pooling.

tract facts this relies on (tract 0.23.9):

- ``max_pool`` / ``box`` take ``size``/``stride``/``padding``/``dilation`` over *all* axes
  (``[1, 1, kh, kw]``); an empty ``padding`` means SAME_UPPER, so padding is always explicit.
- ``max_pool`` ignores padded cells (``border = 'ignore'``), whatever the border.
- ``box(normalize = true)`` divides by the full window size, padding included: PyTorch's
  ``count_include_pad=True``. Other divisors (``count_include_pad=False``, ``ceil_mode``) are
  a second ``box`` over a tensor of ones.
- Pools have no ``ceil_mode``: it becomes extra padding at the end of each axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Expr, Ref
from t2n_core.ops._common import int_list
from t2n_core.ops.registry import register
from t2n_core.shape_rules import register_shape_rule

aten = torch.ops.aten


def _dim_text(d: int | str) -> int | Expr:
    return d if isinstance(d, int) else Expr(d)


def _add(d: int | str, k: int) -> int | str:
    if k == 0:
        return d
    return d + k if isinstance(d, int) else f"({d} + {k})"


class _Window:
    """Kernel, stride, padding, dilation of an n-d pool, with ceil_mode folded into padding."""

    def __init__(self, ctx: EmitContext, n: int, kernel, stride, padding, dilation, ceil_mode):
        self.n = n
        self.kernel = int_list(kernel, n)
        self.stride = int_list(stride, n) if stride else list(self.kernel)
        self.padding = int_list(padding, n)
        self.dilation = int_list(dilation, n)
        self.extra = [0] * n
        if ceil_mode:
            self.extra = self._ceil_extra(ctx)

    def _ceil_extra(self, ctx: EmitContext) -> list[int]:
        """End padding that makes tract's floor output size PyTorch's ceil_mode size."""
        in_dims = ctx.out_shape(ctx.meta(0))[-self.n :]
        out_dims = ctx.out_shape()[-self.n :]
        extra = []
        for i in range(self.n):
            k, s, p, d = self.kernel[i], self.stride[i], self.padding[i], self.dilation[i]
            span = d * (k - 1) + 1
            size, out = in_dims[i], out_dims[i]
            if isinstance(size, int) and isinstance(out, int):
                extra.append(max(0, (out - 1) * s + span - (size + 2 * p)))
            elif p + s - 1 <= d * (k - 1):
                # PyTorch's ceil size never drops its last window here: s - 1 fits every size
                extra.append(s - 1)
            else:
                raise ctx.error(
                    "ceil_mode=True on a dynamic axis with this kernel/stride/padding gives a "
                    "size tract cannot express; use ceil_mode=False or a static size"
                )
        return extra

    def attrs(self, lead: int, *, dilation: bool = True) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "size": [1] * lead + self.kernel,
            "padding": [(0, 0)] * lead + [(p, p + e) for p, e in zip(self.padding, self.extra)],
            "stride": [1] * lead + self.stride,
        }
        if dilation:
            attrs["dilation"] = [1] * lead + self.dilation
        return attrs


def _batched(ctx: EmitContext, n: int) -> tuple[Ref, int, bool]:
    """The input with a batch axis (tract pools want [N, C, *spatial]); lead axes; unsqueezed."""
    x = ctx.arg(0)
    rank = ctx.rank(x)
    if rank == n + 2:
        return x, 2, False
    if rank != n + 1:
        raise ctx.error(f"a {n}-d pool needs an input of rank {n + 1} or {n + 2}")
    shape = (1, *ctx.shape(x))
    x = ctx.emit("unsqueeze", [x], {"axes": [0]}, dtype=ctx.dtype(x), shape=shape, hint="batch")
    return x, 2, True


def _unbatched(ctx: EmitContext, y: Ref, squeeze: bool) -> Ref:
    if not squeeze:
        return y
    meta = _out_meta(ctx)
    return ctx.emit("squeeze", [y], {"axes": [0]}, dtype=meta.dtype, shape=ctx.out_shape(meta))


def _batched_out_shape(ctx: EmitContext, squeeze: bool) -> tuple:
    shape = ctx.out_shape()
    return (1, *shape) if squeeze else shape


def _out_meta(ctx: EmitContext) -> Any:
    """The FakeTensor of the (first) output."""
    meta = ctx.meta()
    return meta[0] if isinstance(meta, (tuple, list)) else meta


def _check_float(ctx: EmitContext) -> torch.dtype:
    dtype = _out_meta(ctx).dtype
    if not dtype.is_floating_point:
        raise ctx.error(f"pooling on {dtype} tensors is not supported (float only)")
    return dtype


_MAX_POOL = {aten.max_pool1d.default: 1, aten.max_pool2d.default: 2, aten.max_pool3d.default: 3}


def _max_pool_window(ctx: EmitContext, n: int) -> _Window:
    """The window of a max_pool{n}d[_with_indices] node (same arguments in both)."""
    return _Window(
        ctx, n, ctx.arg(1), ctx.arg(2, ctx.arg("stride", [])), ctx.arg(3, ctx.arg("padding", 0)),
        ctx.arg(4, ctx.arg("dilation", 1)), ctx.arg(5, ctx.arg("ceil_mode", False)),
    )  # fmt: skip


@register(*_MAX_POOL)
def max_pool(ctx: EmitContext, node: torch.fx.Node):
    """max_pool2d(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0,
    int[2] dilation=1, bool ceil_mode=False) -> Tensor (and the 1d/3d variants)"""
    dtype = _check_float(ctx)
    n = _MAX_POOL[node.target]
    window = _max_pool_window(ctx, n)
    x, lead, squeeze = _batched(ctx, n)
    attrs = {**window.attrs(lead), "border": "ignore"}
    y = ctx.emit("max_pool", [x], attrs, dtype=dtype, shape=_batched_out_shape(ctx, squeeze))
    return _unbatched(ctx, y, squeeze)


_MAX_POOL_INDICES = {
    aten.max_pool2d_with_indices.default: 2, aten.max_pool3d_with_indices.default: 3,
}  # fmt: skip


@register(*_MAX_POOL_INDICES)
def max_pool_with_indices(ctx: EmitContext, node: torch.fx.Node):
    """max_pool2d_with_indices(Tensor self, int[2] kernel_size, int[2] stride=[],
    int[2] padding=0, int[2] dilation=1, bool ceil_mode=False) -> (Tensor, Tensor) (and 3d):
    NNEF ``max_pool_with_index``, whose indices count positions in each input plane as
    torch's do (checked against torch, padding included)."""
    dtype = _check_float(ctx)
    n = _MAX_POOL_INDICES[node.target]
    window = _max_pool_window(ctx, n)
    x, lead, squeeze = _batched(ctx, n)
    attrs = {**window.attrs(lead), "border": "ignore"}
    out = ctx.out_shape(_out_meta(ctx))
    shape = (1, *out) if squeeze else out
    pair = ctx.emit_multi("max_pool_with_index", [x], attrs, [(dtype, shape), (torch.int64, shape)])
    if not squeeze:
        return tuple(pair)
    return tuple(
        ctx.emit("squeeze", [r], {"axes": [0]}, dtype=ctx.dtype(r), shape=out) for r in pair
    )


@register_shape_rule(aten.max_pool1d.default)
def _max_pool1d_shape(x, kernel_size, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    """Output size of max_pool1d without specialising the length (PyTorch's own kernel does)."""
    k = kernel_size[0]
    s = stride[0] if stride else k
    p, d = padding[0], dilation[0]
    size = x.shape[-1]
    span = d * (k - 1) + 1
    if not ceil_mode:
        out = (size + 2 * p - span) // s + 1
    else:
        out = (size + 2 * p - span + s - 1) // s + 1
        if p + s - 1 > d * (k - 1) and (out - 1) * s >= size + p:
            out = out - 1  # PyTorch drops a last window that starts in the end padding
    return x.new_empty((*x.shape[:-1], out))


_AVG_POOL = {aten.avg_pool1d.default: 1, aten.avg_pool2d.default: 2, aten.avg_pool3d.default: 3}


@register(*_AVG_POOL)
def avg_pool(ctx: EmitContext, node: torch.fx.Node):
    """avg_pool2d(Tensor self, int[2] kernel_size, int[2] stride=[], int[2] padding=0,
    bool ceil_mode=False, bool count_include_pad=True, int? divisor_override=None) -> Tensor
    (and the 1d/3d variants)"""
    dtype = _check_float(ctx)
    n = _AVG_POOL[node.target]
    window = _Window(
        ctx, n, ctx.arg(1), ctx.arg(2, ctx.arg("stride", [])), ctx.arg(3, ctx.arg("padding", 0)),
        1, ctx.arg(4, ctx.arg("ceil_mode", False)),
    )  # fmt: skip
    include_pad = ctx.arg(5, ctx.arg("count_include_pad", True))
    divisor = ctx.arg(6, ctx.arg("divisor_override")) if n > 1 else None
    x, lead, squeeze = _batched(ctx, n)
    out_shape = _batched_out_shape(ctx, squeeze)
    attrs = window.attrs(lead, dilation=False)
    plain = not any(window.extra) and (include_pad or not any(window.padding))
    if divisor is None and plain:
        y = ctx.emit("box", [x], {**attrs, "normalize": True}, dtype=dtype, shape=out_shape)
        return _unbatched(ctx, y, squeeze)
    total = ctx.emit("box", [x], {**attrs, "normalize": False}, dtype=dtype, shape=out_shape)
    if divisor is not None:
        y = ctx.emit("div", [total, float(divisor)], dtype=dtype, shape=out_shape)
    else:
        count = _window_counts(ctx, window, ctx.shape(x), include_pad, dtype)
        y = ctx.emit("div", [total, count], dtype=dtype, shape=out_shape)
    return _unbatched(ctx, y, squeeze)


def _window_counts(ctx, window: _Window, in_shape: Sequence, include_pad: bool, dtype) -> Ref:
    """PyTorch's divisor of each output cell: a sum pool over a tensor of ones ``[1, 1, *S]``.

    With ``count_include_pad`` the ones cover the padded input (the cells added by ceil_mode
    excluded); without, only the input.
    """
    n = window.n
    rank = n + 2
    spatial = list(in_shape[2:])
    if include_pad:
        spatial = [_add(d, 2 * p) for d, p in zip(spatial, window.padding)]
        padding = [(0, e) for e in window.extra]
    else:
        padding = [(p, p + e) for p, e in zip(window.padding, window.extra)]
    one = ctx.constant(torch.ones([1] * rank, dtype=dtype), hint="pool_one")
    ones = ctx.emit(
        "tile", [one], {"repeats": [1, 1, *(_dim_text(d) for d in spatial)]},
        dtype=dtype, shape=(1, 1, *spatial), hint="pool_ones",
    )  # fmt: skip
    attrs = {
        "size": [1, 1, *window.kernel],
        "padding": [(0, 0), (0, 0), *padding],
        "stride": [1, 1, *window.stride],
        "normalize": False,
    }
    out = ctx.out_shape()[-n:]
    return ctx.emit("box", [ones], attrs, dtype=dtype, shape=(1, 1, *out), hint="pool_count")


# ---- adaptive pools: axis by axis ---------------------------------------------------------

_ADAPTIVE_AVG = {
    aten.adaptive_avg_pool1d.default: 1, aten.adaptive_avg_pool2d.default: 2,
    aten.adaptive_avg_pool3d.default: 3, aten._adaptive_avg_pool2d.default: 2,
    aten._adaptive_avg_pool3d.default: 3,
}  # fmt: skip
_ADAPTIVE_MAX = {
    aten.adaptive_max_pool1d.default: 1, aten.adaptive_max_pool2d.default: 2,
    aten.adaptive_max_pool3d.default: 3,
}  # fmt: skip


@register(*_ADAPTIVE_AVG)
def adaptive_avg_pool(ctx: EmitContext, node: torch.fx.Node):
    """adaptive_avg_pool2d(Tensor self, SymInt[2] output_size) -> Tensor (and 1d/3d)"""
    return _adaptive(ctx, _ADAPTIVE_AVG[node.target], "avg")


@register(*_ADAPTIVE_MAX)
def adaptive_max_pool(ctx: EmitContext, node: torch.fx.Node):
    """adaptive_max_pool2d(Tensor self, int[2] output_size) -> (Tensor, Tensor) (and 1d/3d)

    Only the values are translated; the indices output is not supported.
    """
    return (_adaptive(ctx, _ADAPTIVE_MAX[node.target], "max"), None)


def _adaptive(ctx: EmitContext, n: int, kind: str) -> Ref:
    """Pool each spatial axis on its own (both pools are separable over axes).

    Per axis: output 1 -> a reduction (any size, dynamic too); input a multiple of the output
    -> a pool with kernel = stride = ratio; otherwise (static sizes) one reduction per output
    cell over PyTorch's window ``[floor(i*L/out), ceil((i+1)*L/out))``, concatenated.
    """
    dtype = _check_float(ctx)
    x, _lead, squeeze = _batched(ctx, n)
    rank = n + 2
    out_sizes = ctx.out_shape(_out_meta(ctx))[-n:]
    shape = list(ctx.shape(x))
    for i in range(n):
        axis = rank - n + i
        size, out = shape[axis], out_sizes[i]
        if size == out:
            continue
        new_shape = list(shape)
        new_shape[axis] = out
        x = _adaptive_axis(ctx, x, axis, size, out, kind, dtype, tuple(new_shape))
        shape = new_shape
    if x == ctx.arg(0):
        return x
    return _unbatched(ctx, x, squeeze)


def _adaptive_axis(ctx, x, axis, size, out, kind, dtype, new_shape) -> Ref:
    reducer = "mean_reduce" if kind == "avg" else "max_reduce"
    if out == 1:
        return ctx.emit(reducer, [x], {"axes": [axis]}, dtype=dtype, shape=new_shape)
    if not isinstance(size, int) or not isinstance(out, int):
        raise ctx.error(
            "adaptive pooling to a size other than 1 needs static input and output sizes on the "
            "pooled axes"
        )
    rank = len(new_shape)
    if size % out == 0:
        k = size // out
        size_attr = [1] * rank
        size_attr[axis] = k
        attrs = {"size": size_attr, "stride": size_attr, "padding": [(0, 0)] * rank}
        if kind == "avg":
            return ctx.emit("box", [x], {**attrs, "normalize": True}, dtype=dtype,
                            shape=new_shape)  # fmt: skip
        return ctx.emit("max_pool", [x], {**attrs, "border": "ignore"}, dtype=dtype,
                        shape=new_shape)  # fmt: skip
    parts = []
    for i in range(out):
        start, end = (i * size) // out, -((-(i + 1) * size) // out)
        cell = list(new_shape)
        cell[axis] = end - start
        part = ctx.emit("slice", [x], {"axes": [axis], "begin": [start], "end": [end]},
                        dtype=dtype, shape=tuple(cell), hint="adaptive_window")  # fmt: skip
        cell[axis] = 1
        parts.append(ctx.emit(reducer, [part], {"axes": [axis]}, dtype=dtype, shape=tuple(cell)))
    return ctx.emit("concat", [parts], {"axis": axis}, dtype=dtype, shape=new_shape)
