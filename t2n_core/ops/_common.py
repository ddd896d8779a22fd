"""Helpers shared by op families."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from t2n_core.emit import EmitContext
from t2n_core.ir import Expr, Ref


def norm_axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def norm_axes(axes: Sequence[int] | int | None, rank: int) -> list[int]:
    if axes is None:
        return list(range(rank))
    if isinstance(axes, int):
        axes = [axes]
    return sorted(norm_axis(a, rank) for a in axes)


def as_operand(ctx: EmitContext, item: Any, dtype: torch.dtype) -> Any:
    """A Ref or python scalar converted to ``dtype`` (cast op or typed literal)."""
    if isinstance(item, Ref):
        return ctx.cast(item, dtype)
    if isinstance(item, Expr):
        return ctx.cast(item, dtype)
    return ctx.scalar(item, dtype)


def out_dtype(ctx: EmitContext) -> torch.dtype:
    return ctx.meta().dtype


def shape_operand(ctx: EmitContext, sizes: Sequence[Any]) -> list[int | Expr]:
    """A shape list for an attribute: ints and TDim expressions."""
    out: list[int | Expr] = []
    for s in sizes:
        if isinstance(s, (int, Expr)):
            out.append(s)
        elif isinstance(s, torch.SymInt):
            out.append(ctx.dim(s))
        else:
            raise ctx.error(f"size {s!r} depends on tensor values, which tract shapes cannot use")
    return out


def meta_shape(ctx: EmitContext, meta: Any = None) -> list[int | Expr]:
    meta = ctx.meta() if meta is None else meta
    return [ctx.dim(s) for s in meta.shape]


def unsqueeze_front(ctx: EmitContext, operand: Any, rank: int) -> Any:
    """Prepend unit axes so that ``operand`` has ``rank`` (NNEF broadcasts from the front)."""
    if not isinstance(operand, Ref):
        return operand
    have = ctx.rank(operand)
    if have >= rank or have == 0:
        return operand
    axes = list(range(rank - have))
    return ctx.emit(
        "unsqueeze", [operand], {"axes": axes},
        dtype=ctx.dtype(operand), shape=(1,) * len(axes) + tuple(ctx.shape(operand)),
        hint="unsqueeze",
    )  # fmt: skip


def broadcastable(ctx: EmitContext, *operands: Any, dtype: torch.dtype | None = None) -> list[Any]:
    """Operands cast to ``dtype`` (if given) and unsqueezed to a common rank."""
    if dtype is not None:
        operands = tuple(as_operand(ctx, o, dtype) for o in operands)
    rank = max((ctx.rank(o) for o in operands if isinstance(o, Ref)), default=0)
    return [unsqueeze_front(ctx, o, rank) for o in operands]


def exact_scalar(ctx: EmitContext, value: Any, dtype: torch.dtype) -> Any:
    """Like :func:`as_operand`, but ±inf and NaN floats stay exact.

    NNEF literals cannot be infinite (the printer writes ±f32 max), so a non-finite value is
    made as ``div(±1.0, 0.0)`` (or ``div(0.0, 0.0)``), which tract folds at load.
    """
    if isinstance(value, float) and not math.isfinite(value) and dtype.is_floating_point:
        num = 0.0 if math.isnan(value) else math.copysign(1.0, value)
        v = ctx.emit("div", [num, 0.0], dtype=torch.float32, shape=(), hint="nonfinite")
        return ctx.cast(v, dtype)
    return as_operand(ctx, value, dtype)


def per_channel(ctx: EmitContext, operand: Any, rank: int, axis: int = 1) -> Any:
    """A rank-1 ``[C]`` operand reshaped to ``rank`` with ``C`` on ``axis`` (e.g. ``[1, C, 1, 1]``).

    NNEF binary ops broadcast from the front, so a per-channel parameter must carry the unit
    axes around its channel axis explicitly. Scalars and non-Refs pass through.
    """
    if not isinstance(operand, Ref) or ctx.rank(operand) != 1 or rank <= 1:
        return operand
    axes = [a for a in range(rank) if a != axis]
    shape = [1] * rank
    shape[axis] = ctx.shape(operand)[0]
    return ctx.emit(
        "unsqueeze", [operand], {"axes": axes},
        dtype=ctx.dtype(operand), shape=tuple(shape), hint="per_channel",
    )  # fmt: skip


def int_list(value: Any, n: int) -> list[int]:
    """An int or a list of ints (``kernel_size=3``, ``padding=[1]``) as a list of ``n`` ints."""
    if isinstance(value, int):
        return [value] * n
    value = [int(v) for v in value]
    return value * n if len(value) == 1 else value


def dim_text(d: Any) -> int | str:
    """A size as a shape entry: an int, or TDim text (``Expr`` and ``SymInt`` are unwrapped)."""
    if isinstance(d, Expr):
        return d.text
    if isinstance(d, bool) or not isinstance(d, (int, str)):
        raise TypeError(f"not a size: {d!r}")
    return d


def dim_attr(d: Any) -> int | Expr:
    """A size as an attribute value: ints stay ints, TDim text becomes an :class:`Expr`."""
    return Expr(d) if isinstance(d, str) else d


def dim_add(a: Any, b: Any) -> int | str:
    """``a + b`` for sizes that may be TDim text (``"T"``) or Exprs."""
    a, b = dim_text(a), dim_text(b)
    if isinstance(a, int) and isinstance(b, int):
        return a + b
    if b == 0:
        return a
    if a == 0:
        return b
    if isinstance(b, int) and b < 0:
        return f"({a} - {-b})"
    return f"({a} + {b})"


def dim_sub(a: Any, b: Any) -> int | str:
    """``a - b`` for sizes that may be TDim text or Exprs."""
    a, b = dim_text(a), dim_text(b)
    if isinstance(a, int) and isinstance(b, int):
        return a - b
    if a == b:
        return 0
    if b == 0:
        return a
    return f"({a} - {b})"


def dim_mul(*sizes: Any) -> int | str:
    """The product of sizes that may be TDim text or Exprs."""
    const = 1
    syms: list[str] = []
    for s in map(dim_text, sizes):
        if isinstance(s, int):
            const *= s
        else:
            syms.append(s)
    if not syms or const == 0:
        return const
    terms = syms if const == 1 else [*syms, str(const)]
    return terms[0] if len(terms) == 1 else "(" + " * ".join(terms) + ")"


def wrap_negative(ctx: EmitContext, i: Ref, size) -> Ref:
    """``i + size * (i < 0)``: torch counts negative indices from the end."""
    shape = ctx.shape(i)
    negative = ctx.emit(
        "lt", [i, ctx.scalar(0, torch.int64)], dtype=torch.bool, shape=shape, hint="index_neg"
    )
    negative = ctx.cast(negative, torch.int64)
    offset = ctx.emit(
        "mul", [negative, as_operand(ctx, dim_attr(dim_text(size)), torch.int64)],
        dtype=torch.int64, shape=shape, hint="index_neg",
    )  # fmt: skip
    return ctx.emit("add", [i, offset], dtype=torch.int64, shape=shape, hint="index_neg")


def stacked_indices(
    ctx: EmitContext, indices: Sequence[Any], sizes: Sequence[Any], b_shape: list, hint: str
) -> Ref:
    """The index tensors of advanced indexing as ``tract_core_gather_nd`` / ``scatter_nd``
    take them: each cast to i64, negatives wrapped by its axis' size (tract aborts the
    process on a negative index), broadcast to ``b_shape`` and stacked on a new last axis."""
    n_b = len(b_shape)
    columns = []
    for size, item in zip(sizes, indices):
        i = wrap_negative(ctx, ctx.cast(item, torch.int64), size)
        if list(ctx.shape(i)) != list(b_shape):
            i = ctx.emit(
                "tract_core_broadcast", [i], {"shape": [dim_attr(d) for d in b_shape]},
                dtype=torch.int64, shape=b_shape, hint=hint,
            )  # fmt: skip
        columns.append(ctx.emit("unsqueeze", [i], {"axes": [n_b]}, dtype=torch.int64,
                                shape=[*b_shape, 1], hint=hint))  # fmt: skip
    return ctx.emit("concat", [columns], {"axis": n_b}, dtype=torch.int64,
                    shape=[*b_shape, len(indices)], hint=hint)  # fmt: skip
