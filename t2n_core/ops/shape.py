"""Shape ops: view/reshape, permute, squeeze/unsqueeze, cat, split, slice, select, expand,
repeat, flip, roll, tril/triu.

Sizes come from torch's symbolic shapes (ints, or TDim text over the axis names such as
``T``), never from tensor values. tract facts these translations rely on (0.23.9):

- ``slice`` takes ``begin``/``end`` as written: a negative literal is *not* counted from
  the end (``end = [-1]`` is an error), and ``end = [0]`` means an empty slice. We always
  write non-negative bounds, ``T - 1`` for a symbolic axis.
- ``slice`` accepts a positive ``stride``; a negative one fails at run time, so ``flip``
  gathers along a reversed ``tract_core_range``.
- ``reshape(x, shape = [...], axis_start = a, axis_count = n)`` rewrites only axes
  ``a .. a+n``; we reshape only the axes that change, so most views never spell out a
  symbolic size.
"""

from __future__ import annotations

import string

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Expr, Ref
from t2n_core.ops._common import (
    as_operand,
    dim_add,
    dim_attr,
    dim_mul,
    dim_sub,
    dim_text,
    norm_axis,
    out_dtype,
)
from t2n_core.ops.registry import register

aten = torch.ops.aten

# slice's "to the end" sentinel: torch writes sys.maxsize
_BIG = 2**62


def _dims(ctx: EmitContext, meta) -> list[int | str]:
    return list(ctx.out_shape(meta))


def reshape_to(ctx: EmitContext, x: Ref, src: list, dst: list, hint: str | None = None):
    """Reshape ``x`` from ``src`` to ``dst`` (dims as ints/text), touching only changed axes."""
    if src == dst:
        return x
    n = min(len(src), len(dst))
    p = 0
    while p < n and src[p] == dst[p]:
        p += 1
    s = 0
    while s < n - p and src[len(src) - 1 - s] == dst[len(dst) - 1 - s]:
        s += 1
    mid_src = src[p : len(src) - s]
    mid_dst = dst[p : len(dst) - s]
    dtype = ctx.dtype(x)
    if not mid_dst and all(d == 1 for d in mid_src):
        axes = list(range(p, p + len(mid_src)))
        return ctx.emit("squeeze", [x], {"axes": axes}, dtype=dtype, shape=dst, hint=hint)
    if not mid_src and all(d == 1 for d in mid_dst):
        axes = list(range(p, p + len(mid_dst)))
        return ctx.emit("unsqueeze", [x], {"axes": axes}, dtype=dtype, shape=dst, hint=hint)
    attrs = {"shape": [dim_attr(d) for d in mid_dst], "axis_start": p, "axis_count": len(mid_src)}
    return ctx.emit("reshape", [x], attrs, dtype=dtype, shape=dst, hint=hint)


@register(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def view(ctx: EmitContext, node: torch.fx.Node):
    """view(Tensor(a) self, SymInt[] size) -> Tensor(a)"""
    x = ctx.arg(0)
    return reshape_to(ctx, x, _dims(ctx, ctx.meta(0)), _dims(ctx, ctx.meta()), hint="view")


@register(aten.permute.default)
def permute(ctx: EmitContext, node: torch.fx.Node):
    """permute(Tensor(a) self, int[] dims) -> Tensor(a)"""
    x = ctx.arg(0)
    rank = ctx.rank(x)
    axes = [norm_axis(a, rank) for a in ctx.arg(1)]
    if axes == list(range(rank)):
        return x
    return ctx.emit_like("transpose", [x], {"axes": axes})


@register(aten.transpose.int)
def transpose(ctx: EmitContext, node: torch.fx.Node):
    """transpose.int(Tensor(a) self, int dim0, int dim1) -> Tensor(a)"""
    x = ctx.arg(0)
    rank = ctx.rank(x)
    a, b = norm_axis(ctx.arg(1), rank), norm_axis(ctx.arg(2), rank)
    if a == b:
        return x
    axes = list(range(rank))
    axes[a], axes[b] = b, a
    return ctx.emit_like("transpose", [x], {"axes": axes})


@register(aten.unsqueeze.default)
def unsqueeze(ctx: EmitContext, node: torch.fx.Node):
    """unsqueeze(Tensor(a) self, int dim) -> Tensor(a)"""
    x = ctx.arg(0)
    axis = norm_axis(ctx.arg(1), ctx.rank(x) + 1)
    return ctx.emit_like("unsqueeze", [x], {"axes": [axis]})


@register(aten.squeeze.dims, aten.squeeze.dim, aten.squeeze.default)
def squeeze(ctx: EmitContext, node: torch.fx.Node):
    """squeeze.dims(Tensor(a) self, int[] dim) -> Tensor(a); a dim not of size 1 is kept."""
    x = ctx.arg(0)
    shape = _dims(ctx, ctx.meta(0))
    dims = ctx.arg(1, None)
    if dims is None:
        dims = list(range(len(shape)))
    elif isinstance(dims, int):
        dims = [dims]
    axes = sorted({norm_axis(d, len(shape)) for d in dims} if shape else set())
    axes = [a for a in axes if shape[a] == 1]
    if not axes:
        return x
    return ctx.emit_like("squeeze", [x], {"axes": axes})


@register(aten.cat.default)
def cat(ctx: EmitContext, node: torch.fx.Node):
    """cat(Tensor[] tensors, int dim=0) -> Tensor"""
    dtype = out_dtype(ctx)
    rank = len(ctx.meta().shape)
    metas = [t.meta.get("val") for t in ctx.raw(0)]
    # torch skips legacy empty 1-D tensors of shape [0] in cat
    values = [
        as_operand(ctx, v, dtype)
        for v, m in zip(ctx.arg(0), metas)
        if not (m.dim() == 1 and rank != 1 and m.shape[0] == 0)
    ]
    axis = norm_axis(ctx.arg(1, 0), rank)
    if len(values) == 1:
        return values[0]
    return ctx.emit_like("concat", [values], {"axis": axis})


def _slice(ctx: EmitContext, x: Ref, axis: int, begin, end, stride: int = 1, **kw):
    shape = list(ctx.shape(x))
    if begin == 0 and end == shape[axis] and stride == 1:
        return x
    if stride != 1 and isinstance(shape[axis], int) and x.name not in ctx.graph.variables:
        # tract turns a strided slice into Downsample, which its declutter pass fails to pull
        # over a Reshape ("Invalid axis"); a gather of the same indices loads and runs. (A
        # dynamic axis keeps the slice: tract can stream Downsample, not this gather; so does
        # a stored tensor: the writer's passes fold slices of those.)
        length = kw["shape"][axis]
        indices = _range(ctx, begin, end, stride, length)
        return ctx.emit("tract_core_gather", [x, indices], {"axis": axis}, dtype=ctx.dtype(x), **kw)
    attrs = {"axes": [axis], "begin": [dim_attr(begin)], "end": [dim_attr(end)]}
    if stride != 1:
        attrs["stride"] = [stride]
    return ctx.emit("slice", [x], attrs, dtype=ctx.dtype(x), **kw)


def _bound(value, size: int | str, default) -> int | str:
    """A torch slice bound as a non-negative tract bound on an axis of ``size``."""
    if value is None:
        return default
    if isinstance(value, Expr):
        return value.text
    value = int(value)
    if isinstance(size, int):
        if value < 0:
            value += size
        return min(max(value, 0), size)
    if value >= _BIG:
        return size
    return dim_sub(size, -value) if value < 0 else value


@register(aten.slice.Tensor)
def slice_(ctx: EmitContext, node: torch.fx.Node):
    """slice.Tensor(Tensor(a) self, int dim=0, SymInt? start=None, SymInt? end=None, SymInt step=1) -> Tensor(a)"""  # noqa: E501
    x = ctx.arg(0)
    rank = ctx.rank(x)
    axis = norm_axis(ctx.arg(1, 0), rank)
    size = ctx.shape(x)[axis]
    step = ctx.arg(4, 1)
    if not isinstance(step, int) or step < 1:
        raise ctx.error(f"slice step must be a positive integer, got {step!r}")
    begin = _bound(ctx.arg(2), size, 0)
    end = _bound(ctx.arg(3), size, size)
    return _slice(ctx, x, axis, begin, end, step, shape=ctx.out_shape())


@register(aten.select.int)
def select(ctx: EmitContext, node: torch.fx.Node):
    """select.int(Tensor(a) self, int dim, SymInt index) -> Tensor(a)"""
    x = ctx.arg(0)
    shape = list(ctx.shape(x))
    axis = norm_axis(ctx.arg(1), len(shape))
    index = ctx.arg(2)
    size = shape[axis]
    if isinstance(index, int) and index < 0:
        begin = _bound(index, size, 0)
        end = size if index == -1 else _bound(index + 1, size, size)
    else:
        begin = dim_text(index)
        end = dim_add(index, 1)
    kept = [*shape[:axis], 1, *shape[axis + 1 :]]
    piece = ctx.emit(
        "slice", [x], {"axes": [axis], "begin": [dim_attr(begin)], "end": [dim_attr(end)]},
        dtype=ctx.dtype(x), shape=kept, hint="select",
    )  # fmt: skip
    return ctx.emit_like("squeeze", [piece], {"axes": [axis]})


@register(aten.split_with_sizes.default, aten.split.Tensor)
def split(ctx: EmitContext, node: torch.fx.Node):
    """split_with_sizes(Tensor(a -> *) self, SymInt[] split_sizes, int dim=0) -> Tensor(a)[]"""
    x = ctx.arg(0)
    axis = norm_axis(ctx.arg(2, 0), ctx.rank(x))
    pieces = []
    begin: int | str = 0
    for meta in ctx.meta():
        shape = ctx.out_shape(meta)
        end = dim_add(begin, shape[axis])
        pieces.append(_slice(ctx, x, axis, begin, end, shape=shape, hint="split"))
        begin = end
    return pieces


@register(aten.expand.default)
def expand(ctx: EmitContext, node: torch.fx.Node):
    """expand(Tensor(a) self, SymInt[] size, *, bool implicit=False) -> Tensor(a)"""
    x = ctx.arg(0)
    out = _dims(ctx, ctx.meta())
    if list(ctx.shape(x)) == out:
        return x
    return ctx.emit_like("tract_core_broadcast", [x], {"shape": [dim_attr(d) for d in out]})


@register(aten.repeat.default)
def repeat(ctx: EmitContext, node: torch.fx.Node):
    """repeat(Tensor self, SymInt[] repeats) -> Tensor"""
    x = ctx.arg(0)
    repeats = [dim_attr(dim_text(r)) for r in ctx.arg(1)]
    have = ctx.rank(x)
    if len(repeats) > have:
        x = reshape_to(ctx, x, list(ctx.shape(x)), [1] * (len(repeats) - have) + list(ctx.shape(x)))
    if all(r == 1 for r in repeats):
        return x
    return ctx.emit_like("tile", [x], {"repeats": repeats})


def _range(ctx: EmitContext, begin, end, step: int, length) -> Ref:
    return ctx.emit(
        "tract_core_range", [dim_attr(begin), dim_attr(end), step],
        dtype=torch.int64, shape=(length,), hint="range",
    )  # fmt: skip


@register(aten.flip.default)
def flip(ctx: EmitContext, node: torch.fx.Node):
    """flip(Tensor self, int[] dims) -> Tensor"""
    x = ctx.arg(0)
    shape = list(ctx.shape(x))
    for axis in sorted({norm_axis(d, len(shape)) for d in ctx.arg(1)}):
        size = shape[axis]
        if size == 1:
            continue
        indices = _range(ctx, dim_sub(size, 1), -1, -1, size)
        x = ctx.emit(
            "tract_core_gather", [x, indices], {"axis": axis},
            dtype=ctx.dtype(x), shape=shape, hint="flip",
        )  # fmt: skip
    return x


@register(aten.roll.default)
def roll(ctx: EmitContext, node: torch.fx.Node):
    """roll(Tensor self, SymInt[1] shifts, int[1] dims=[]) -> Tensor

    Each roll is two slices and a concat. On a symbolic axis the shift must not exceed its
    length (tract sizes cannot take a modulo of a symbol).
    """
    x = ctx.arg(0)
    shifts, dims = list(ctx.arg(1)), list(ctx.arg(2, []))
    full = list(ctx.shape(x))
    if not dims:
        if len(shifts) != 1:
            raise ctx.error("roll without dims takes exactly one shift")
        x = reshape_to(ctx, x, full, [dim_mul(*full)], hint="roll_flat")
        dims = [0]
    if len(shifts) != len(dims):
        raise ctx.error("roll needs as many shifts as dims")
    for shift, dim in zip(shifts, dims):
        shape = list(ctx.shape(x))
        axis = norm_axis(dim, len(shape))
        size = shape[axis]
        if not isinstance(shift, int):
            raise ctx.error("roll by a symbolic shift is not supported")
        if isinstance(size, int):
            shift %= size
            if shift == 0:
                continue
        # the last `shift` items move to the front: [cut, size) then [0, cut)
        cut = dim_sub(size, shift) if shift >= 0 else -shift
        tail_shape = [*shape[:axis], dim_sub(size, cut), *shape[axis + 1 :]]
        head_shape = [*shape[:axis], cut, *shape[axis + 1 :]]
        tail = _slice(ctx, x, axis, cut, size, shape=tail_shape, hint="roll")
        head = _slice(ctx, x, axis, 0, cut, shape=head_shape, hint="roll")
        x = ctx.emit(
            "concat", [[tail, head]], {"axis": axis}, dtype=ctx.dtype(x), shape=shape, hint="roll"
        )
    return reshape_to(ctx, x, list(ctx.shape(x)), _dims(ctx, ctx.meta()), hint="roll")


@register(aten.tril.default, aten.triu.default)
def trilu(ctx: EmitContext, node: torch.fx.Node):
    """tril(Tensor self, SymInt diagonal=0) -> Tensor; triu"""
    x = ctx.arg(0)
    k = ctx.scalar(ctx.arg(1, 0), torch.int64)
    upper = node.target is aten.triu.default
    return ctx.emit_like("tract_core_trilu", [x, k], {"upper": upper})


@register(aten.diagonal.default)
def diagonal(ctx: EmitContext, node: torch.fx.Node):
    """diagonal(Tensor(a) self, int offset=0, int dim1=0, int dim2=1) -> Tensor(a)

    Slices the square block holding the diagonal, then takes it with ``tract_core_einsum``
    (``'bii->bi'``), which puts the diagonal last as torch does.
    """
    from t2n_core.nnef.text import tract_dtype_name

    x = ctx.arg(0)
    shape = list(ctx.shape(x))
    rank = len(shape)
    offset = ctx.arg(1, 0)
    d1, d2 = norm_axis(ctx.arg(2, 0), rank), norm_axis(ctx.arg(3, 1), rank)
    if d1 == d2:
        raise ctx.error("diagonal needs two different dims")
    length = ctx.out_shape()[-1]
    begin1, begin2 = (0, offset) if offset >= 0 else (-offset, 0)
    for axis, begin in ((d1, begin1), (d2, begin2)):
        shape = list(ctx.shape(x))
        shape[axis] = length
        x = _slice(ctx, x, axis, begin, dim_add(begin, length), shape=shape, hint="diagonal")
    letters = string.ascii_letters[:rank]
    term = letters.replace(letters[d2], letters[d1])
    out = "".join(c for i, c in enumerate(letters) if i not in (d1, d2)) + letters[d1]
    dtype = ctx.dtype(x)
    acc = tract_dtype_name(dtype)
    return ctx.emit_like("tract_core_einsum", [[x]], {"expr": f"{term}->{out}", "acc": acc})
