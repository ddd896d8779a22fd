"""Helpers shared by op families."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from t2n_core.ir import Expr, Ref
from t2n_core.translate import EmitContext


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
