"""Writes at indices: scatter / scatter_add / scatter_reduce (``tract_core_scatter_elements``)
and index_put (``tract_core_scatter_nd``), which ``index_add``, ``index_copy``,
``x[idx] = v`` and ``max_unpool`` decompose to.

tract 0.23.9's scatters take a ``reduction`` of ``'none'`` (overwrite), ``'add'``, ``'mul'``,
``'min'`` or ``'max'``, always combined with the value already in place (torch's
``include_self=True``); indices must be in range and non-negative.
"""

from __future__ import annotations

import sys

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import dim_attr, norm_axis, stacked_indices, wrap_negative
from t2n_core.ops.registry import register

aten = torch.ops.aten

_REDUCTIONS = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min"}


def _scatter_elements(ctx: EmitContext, reduction: str, src=None):
    x, axis_arg, index = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    src = ctx.arg(3) if src is None else src
    dtype = ctx.meta().dtype
    axis = norm_axis(axis_arg, max(ctx.rank(x), 1))
    index = wrap_negative(ctx, ctx.cast(index, torch.int64), ctx.shape(x)[axis])
    idx_shape = list(ctx.shape(index))
    if isinstance(src, Ref):
        src = ctx.cast(src, dtype)
        if list(ctx.shape(src)) != idx_shape:  # torch reads only the index's extent of src
            src = ctx.emit(
                "slice", [src], {"axes": list(range(len(idx_shape))), "begin": [0] * len(idx_shape),
                                 "end": [dim_attr(d) for d in idx_shape]},
                dtype=dtype, shape=idx_shape, hint="scatter_src",
            )  # fmt: skip
    else:  # a scalar value, spread over the index's shape
        src = ctx.emit(
            "tract_core_broadcast", [ctx.cast(ctx.scalar(src, dtype), dtype)],
            {"shape": [dim_attr(d) for d in idx_shape]}, dtype=dtype, shape=idx_shape,
            hint="scatter_value",
        )  # fmt: skip
    return ctx.emit_like(
        "tract_core_scatter_elements", [x, index, src], {"axis": axis, "reduction": reduction}
    )


@register(aten.scatter.src, aten.scatter.value)
def scatter(ctx: EmitContext, node: torch.fx.Node):
    """scatter.src(Tensor self, int dim, Tensor index, Tensor src) -> Tensor;
    scatter.value(Tensor self, int dim, Tensor index, Scalar value) -> Tensor"""
    return _scatter_elements(ctx, "none")


@register(aten.scatter_add.default)
def scatter_add(ctx: EmitContext, node: torch.fx.Node):
    """scatter_add(Tensor self, int dim, Tensor index, Tensor src) -> Tensor"""
    return _scatter_elements(ctx, "add")


@register(aten.scatter_reduce.two)
def scatter_reduce(ctx: EmitContext, node: torch.fx.Node):
    """scatter_reduce.two(Tensor self, int dim, Tensor index, Tensor src, str reduce, *,
    bool include_self=True) -> Tensor"""
    reduce = ctx.arg(4)
    if reduce not in _REDUCTIONS:
        raise ctx.error(
            f"scatter_reduce(reduce={reduce!r}) has no tract equivalent (tract has sum, prod, "
            "amax, amin); compute a mean as scatter_add of values / scatter_add of ones"
        )
    if not ctx.arg("include_self", ctx.arg(5, True)):
        raise ctx.error(
            "scatter_reduce(include_self=False) is not supported: tract always combines with "
            "the value in place; scatter into a tensor filled with the reduction's identity"
        )
    return _scatter_elements(ctx, _REDUCTIONS[reduce])


@register(aten.index_put.default)
def index_put(ctx: EmitContext, node: torch.fx.Node):
    """index_put(Tensor self, Tensor?[] indices, Tensor values, bool accumulate=False) -> Tensor

    As in :func:`t2n_core.ops.index._index_nd`, the indexed axes are moved to the front, the
    index tensors broadcast and stacked on a last axis, and the values laid out as
    ``[*B, *other axes]``; then ``tract_core_scatter_nd`` and the inverse transpose.
    """
    x, raw, values = ctx.arg(0), ctx.raw(1), ctx.arg(2)
    accumulate = bool(ctx.arg(3, ctx.arg("accumulate", False)))
    dtype = ctx.meta().dtype
    axes = [i for i, item in enumerate(raw) if item is not None]
    for position in axes:
        meta = raw[position].meta.get("val")
        if isinstance(meta, torch.Tensor) and meta.dtype == torch.bool:
            raise ctx.error(
                "x[mask] = v with a bool mask is data-dependent in shape; use "
                "torch.where(mask, v, x) or masked_fill instead"
            )
    indices = [ctx.convert(raw[a]) for a in axes]
    rank = ctx.rank(x)
    x_shape = list(ctx.shape(x))
    n_b = max(ctx.rank(i) for i in indices)
    b_shape = _broadcast_shape([list(ctx.shape(i)) for i in indices])
    adjacent = axes == list(range(axes[0], axes[-1] + 1))
    start = axes[0] if adjacent else 0
    others = [a for a in range(rank) if a not in axes]
    perm = axes + others
    moved = perm != list(range(rank))
    if moved:
        x = ctx.emit("transpose", [x], {"axes": perm}, dtype=ctx.dtype(x),
                     shape=[x_shape[a] for a in perm], hint="index_put")  # fmt: skip
    stacked = stacked_indices(ctx, indices, [x_shape[a] for a in axes], b_shape, "index_put")
    # torch's layout of x[indices]: B in place of adjacent indexed axes, else B first
    torch_shape = [*x_shape[:start], *b_shape,
                   *(x_shape[a] for a in others if a >= start)]  # fmt: skip
    if not adjacent:
        torch_shape = [*b_shape, *(x_shape[a] for a in others)]
    upd = ctx.cast(values, dtype) if isinstance(values, Ref) else ctx.scalar(values, dtype)
    upd = _broadcast_to(ctx, upd, torch_shape, dtype)
    if start:
        to_front = [
            *range(start, start + n_b),
            *range(start),
            *range(start + n_b, len(torch_shape)),
        ]
        upd = ctx.emit("transpose", [upd], {"axes": to_front}, dtype=dtype,
                       shape=[torch_shape[a] for a in to_front], hint="index_put")  # fmt: skip
    out_shape = [x_shape[a] for a in perm]
    y = ctx.emit(
        "tract_core_scatter_nd", [x, stacked, upd], {"reduction": "add" if accumulate else "none"},
        dtype=dtype, shape=out_shape, hint="index_put",
    )  # fmt: skip
    if not moved:
        return y
    inverse = [perm.index(a) for a in range(rank)]
    return ctx.emit_like("transpose", [y], {"axes": inverse})


def _broadcast_shape(shapes: list[list]) -> list:
    rank = max(len(s) for s in shapes)
    out: list = []
    for k in range(rank):
        dims = [s[len(s) - rank + k] for s in shapes if len(s) - rank + k >= 0]
        sized = [d for d in dims if d != 1]
        out.append(sized[0] if sized else 1)
    return out


def _broadcast_to(ctx: EmitContext, operand, shape: list, dtype: torch.dtype) -> Ref:
    if isinstance(operand, Ref) and list(ctx.shape(operand)) == shape:
        return operand
    if isinstance(operand, Ref) and ctx.rank(operand) < len(shape):
        have = ctx.rank(operand)
        operand = ctx.emit(
            "unsqueeze", [operand], {"axes": list(range(len(shape) - have))}, dtype=dtype,
            shape=[1] * (len(shape) - have) + list(ctx.shape(operand)), hint="index_put",
        )  # fmt: skip
    return ctx.emit("tract_core_broadcast", [operand], {"shape": [dim_attr(d) for d in shape]},
                    dtype=dtype, shape=shape, hint="index_put")  # fmt: skip


def _slice_scatter(ctx: EmitContext, x: Ref, src: Ref, axis: int, start, end, step: int) -> Ref:
    """``x`` with ``x[..., start:end:step, ...] = src`` on ``axis``."""
    shape = list(ctx.shape(x))
    size = shape[axis]
    dtype = ctx.meta().dtype
    src = ctx.cast(src, dtype)
    if step == 1:
        pieces = []
        if start != 0:
            head = [*shape[:axis], start, *shape[axis + 1 :]]
            pieces.append(ctx.emit("slice", [x], {"axes": [axis], "begin": [0], "end": [start]},
                                   dtype=dtype, shape=head, hint="slice_scatter"))  # fmt: skip
        pieces.append(src)
        if end is not size and not (isinstance(size, int) and isinstance(end, int) and end >= size):
            tail_len = size - end if isinstance(size, int) else f"({size} - {end})"
            tail = [*shape[:axis], tail_len, *shape[axis + 1 :]]
            pieces.append(ctx.emit(
                "slice", [x], {"axes": [axis], "begin": [dim_attr(end)], "end": [dim_attr(size)]},
                dtype=dtype, shape=tail, hint="slice_scatter",
            ))  # fmt: skip
        if len(pieces) == 1:
            return src
        return ctx.emit_like("concat", [pieces], {"axis": axis})
    n = ctx.shape(src)[axis]
    if not isinstance(n, int):
        raise ctx.error("a strided slice assignment needs a static length")
    positions = (start + step * torch.arange(n)).reshape(
        *([1] * axis), n, *([1] * (len(shape) - axis - 1))
    )
    index = ctx.emit(
        "tract_core_broadcast", [ctx.constant(positions, hint="slice_scatter_index")],
        {"shape": [dim_attr(d) for d in ctx.shape(src)]}, dtype=torch.int64,
        shape=ctx.shape(src), hint="slice_scatter",
    )  # fmt: skip
    return ctx.emit_like(
        "tract_core_scatter_elements", [x, index, src], {"axis": axis, "reduction": "none"}
    )


@register(aten.slice_scatter.default)
def slice_scatter(ctx: EmitContext, node: torch.fx.Node):
    """slice_scatter(Tensor self, Tensor src, int dim=0, SymInt? start=None, SymInt? end=None,
    SymInt step=1) -> Tensor"""
    x, src = ctx.arg(0), ctx.arg(1)
    axis = norm_axis(ctx.arg(2, 0), ctx.rank(x))
    size = ctx.shape(x)[axis]
    start, end, step = ctx.arg(3), ctx.arg(4), int(ctx.arg(5, 1))
    start = 0 if start is None else start
    # None or torch's "to the end" (sys.maxsize, from ``x[:, :, i] = ...``): the whole axis,
    # also where its size is a symbol
    end = size if end is None or (isinstance(end, int) and end >= sys.maxsize) else end
    if isinstance(size, int) and isinstance(end, int):
        end = min(end, size)
    if not isinstance(start, int) or start < 0:
        raise ctx.error("slice assignment needs a static, non-negative start")
    return _slice_scatter(ctx, x, src, axis, start, end, step)


@register(aten.select_scatter.default)
def select_scatter(ctx: EmitContext, node: torch.fx.Node):
    """select_scatter(Tensor self, Tensor src, int dim, SymInt index) -> Tensor"""
    x, src = ctx.arg(0), ctx.arg(1)
    axis = norm_axis(ctx.arg(2), ctx.rank(x))
    index = ctx.arg(3)
    size = ctx.shape(x)[axis]
    if isinstance(index, int) and index < 0 and isinstance(size, int):
        index += size
    if not isinstance(index, int) or index < 0:
        raise ctx.error("select assignment needs a static index")
    src_shape = list(ctx.shape(src)) if isinstance(src, Ref) else []
    src = ctx.emit(
        "unsqueeze", [src], {"axes": [axis]}, dtype=ctx.dtype(src),
        shape=[*src_shape[:axis], 1, *src_shape[axis:]], hint="select_scatter",
    )  # fmt: skip
    return _slice_scatter(ctx, x, src, axis, index, index + 1, 1)


@register(aten.copy.default)
def copy(ctx: EmitContext, node: torch.fx.Node):
    """copy(Tensor self, Tensor src, bool non_blocking=False) -> Tensor: ``src`` broadcast to
    ``self``'s shape, in ``self``'s dtype."""
    src = ctx.arg(1)
    dtype = ctx.meta().dtype
    src = ctx.cast(src, dtype) if isinstance(src, Ref) else ctx.scalar(src, dtype)
    shape = list(ctx.out_shape())
    if isinstance(src, Ref) and list(ctx.shape(src)) == shape:
        return src
    return _broadcast_to(ctx, src, shape, dtype)
