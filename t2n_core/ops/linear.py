"""Matrix products: linear, mm, addmm, bmm, matmul (with broadcasting and 1-D operands), einsum.

tract facts these translations rely on (0.23.9):

- NNEF ``matmul`` needs operands of equal rank (``Cond`` error otherwise); batch axes of
  size 1 broadcast. Lower-rank operands get unit axes at the front.
- NNEF ``linear`` accepts rank-2 inputs only, so ``Linear`` is
  ``matmul(x, weight, transposeB = true)`` with the input's leading axes folded into one
  (``reshape`` before and after). Unsqueezing the weight instead also runs, but tract then
  holds an f32 weight twice (measured: 2x the weight bytes of peak memory).
- ``tract_core_einsum(inputs = [...], expr = 'bij,bjk->bik', acc = 'f32')`` takes any number
  of operands, repeated letters in one operand (a diagonal), upper-case letters and size-1
  broadcasting, but no ``...``: an ellipsis in ``expr`` aborts the tract process, so we spell
  it out with fresh letters.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import (
    as_operand,
    broadcastable,
    dim_attr,
    dim_mul,
    out_dtype,
    unsqueeze_front,
)
from t2n_core.ops.registry import register

aten = torch.ops.aten


def _unsqueeze(ctx: EmitContext, ref, axis: int):
    shape = list(ctx.shape(ref))
    shape.insert(axis, 1)
    return ctx.emit(
        "unsqueeze", [ref], {"axes": [axis]}, dtype=ctx.dtype(ref), shape=shape, hint="unsqueeze"
    )


@register(aten.linear.default)
def linear(ctx: EmitContext, node: torch.fx.Node):
    """linear(Tensor input, Tensor weight, Tensor? bias=None) -> Tensor"""
    dtype = out_dtype(ctx)
    x, w, b = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    x = as_operand(ctx, x, dtype)
    if ctx.rank(w) != 2:
        raise ctx.error("linear needs a 2-D weight [out_features, in_features]")
    rank = ctx.rank(x)
    out_shape = list(ctx.out_shape())
    vector = rank == 1
    if vector:
        x, rank = _unsqueeze(ctx, x, 0), 2
        out_shape = [1, *out_shape]
    y = times_matrix(ctx, x, w, dtype, out_shape, transpose_b=True, hint="linear")
    if b is not None:
        y = ctx.emit(
            "add", broadcastable(ctx, y, b, dtype=dtype), dtype=dtype, shape=out_shape,
            hint="linear_bias",
        )  # fmt: skip
    if vector:
        y = ctx.emit_like("squeeze", [y], {"axes": [0]})
    return y


def times_matrix(ctx: EmitContext, x, w, dtype, out_shape, *, transpose_b: bool, hint: str | None):
    """``x @ w`` (or ``x @ w.T``) for a rank-2 ``w``, the leading axes of ``x`` folded into one.

    The matrix then reaches ``matmul`` untouched: tract keeps a Q4_0 weight compressed, and
    holds an f32 weight once (an ``unsqueeze`` of it would be a second copy).
    An ``x`` that is a concat along its features is split (:func:`split_concat_product`).
    """
    axis = 1 if transpose_b else 0
    split = split_concat_product(
        ctx, x, ctx.rank(x) - 1, w, axis,
        lambda piece, w_piece: times_matrix(
            ctx, piece, w_piece, dtype, [*ctx.shape(piece)[:-1], out_shape[-1]],
            transpose_b=transpose_b, hint=hint,
        ),
        pointwise=True,
    )  # fmt: skip
    if split is not None:
        return split
    rank = ctx.rank(x)
    lead = list(out_shape[:-1])
    if rank > 2:
        x = ctx.emit(
            "reshape", [x], {"axis_start": 0, "axis_count": rank - 1, "shape": [-1]},
            dtype=dtype, shape=(dim_mul(*lead), ctx.shape(x)[-1]), hint="flatten",
        )  # fmt: skip
    y = ctx.emit(
        "matmul", [x, w], {"transposeA": False, "transposeB": transpose_b},
        dtype=dtype, shape=(dim_mul(*lead), out_shape[-1]), hint=hint,
    )  # fmt: skip
    if rank > 2:
        unflat = {"axis_start": 0, "axis_count": 1, "shape": [dim_attr(d) for d in lead]}
        y = ctx.emit("reshape", [y], unflat, dtype=dtype, shape=out_shape, hint="unflatten")
    return y


def split_concat_product(
    ctx: EmitContext,
    x: Any,
    x_axis: int,
    w: Any,
    w_axis: int,
    product: Callable[[Ref, Ref], Ref],
    *,
    pointwise: bool = False,
) -> Ref | None:
    """``sum_i product(piece_i, slice_i(w))`` when ``x`` is a concat along ``x_axis``, the
    axis that the product contracts with dim ``w_axis`` of a stored ``w``; else ``None``.

    tract rewrites ``matmul(concat(a, b), W)`` into a sum over slices of ``W`` itself while
    optimising; on a Q4_0 ``W`` that aborts the process, and with a broadcast piece
    (``cat(h, cls.expand_as(h))``) it fails to load. Emitting the sum directly avoids both;
    the writer stores each ``slice`` of a quantized weight as its own encoded range
    (:func:`t2n_core.fold.fold_row_slices`). When the product acts on each position of the
    other axes alone (``pointwise``: a matmul, not a conv), a broadcast piece is multiplied
    before its broadcast (tract cannot load a matmul of a reshaped broadcast).
    """
    if not isinstance(x, Ref) or not isinstance(w, Ref) or w.name not in ctx.graph.variables:
        return None
    op = ctx.graph.producer(x.name)
    if op is None or op.op != "concat" or op.attrs.get("axis") != x_axis:
        return None
    pieces = op.args[0]
    sizes = [ctx.shape(p)[x_axis] for p in pieces]
    if not all(isinstance(n, int) for n in sizes) or sum(sizes) != ctx.shape(w)[w_axis]:
        return None
    total, begin = None, 0
    w_shape = list(ctx.shape(w))
    for piece, size in zip(pieces, sizes):
        if size == 0:
            continue
        shape = [*w_shape[:w_axis], size, *w_shape[w_axis + 1 :]]
        w_piece = w if size == w_shape[w_axis] else ctx.emit(
            "slice", [w], {"axes": [w_axis], "begin": [begin], "end": [begin + size]},
            dtype=ctx.dtype(w), shape=shape, hint="concat_split",
        )  # fmt: skip
        y = _broadcast_product(ctx, piece, x_axis, w_piece, product) if pointwise else None
        y = product(piece, w_piece) if y is None else y
        total = y if total is None else ctx.emit(
            "add", [total, y], dtype=ctx.dtype(y), shape=ctx.shape(y), hint="concat_split_sum"
        )  # fmt: skip
        begin += size
    return total


def _broadcast_product(
    ctx: EmitContext, piece: Ref, axis: int, w: Ref, product: Callable[[Ref, Ref], Ref]
) -> Ref | None:
    """``broadcast(product(src))`` for a ``piece = broadcast(src)`` that keeps ``axis``."""
    op = ctx.graph.producer(piece.name)
    if op is None or op.op != "tract_core_broadcast" or not isinstance(op.args[0], Ref):
        return None
    src = op.args[0]
    if ctx.rank(src) != ctx.rank(piece) or ctx.shape(src)[axis] != ctx.shape(piece)[axis]:
        return None
    y = product(src, w)
    shape = list(ctx.shape(piece))
    shape[axis] = ctx.shape(y)[axis]
    return ctx.emit(
        "tract_core_broadcast", [y], {"shape": [dim_attr(d) for d in shape]},
        dtype=ctx.dtype(y), shape=shape, hint="concat_split_broadcast",
    )  # fmt: skip


def _stored_transpose(ctx: EmitContext, ref) -> Ref | None:
    """The stored matrix ``w`` when ``ref`` is ``transpose(w, axes = [1, 0])`` (``w.T``)."""
    if not isinstance(ref, Ref) or ctx.rank(ref) != 2:
        return None
    op = ctx.graph.producer(ref.name)
    if op is None or op.op != "transpose" or op.attrs.get("axes") != [1, 0]:
        return None
    src = op.args[0]
    return src if isinstance(src, Ref) and src.name in ctx.graph.variables else None


def _matmul(ctx: EmitContext, a, b, dtype: torch.dtype, hint: str | None = None):
    """torch.matmul semantics: 1-D operands, broadcast batch axes, result of the node's shape."""
    a, b = as_operand(ctx, a, dtype), as_operand(ctx, b, dtype)
    out_shape = list(ctx.out_shape())
    if ctx.rank(a) >= 2 and ctx.rank(b) == 2 and isinstance(b, Ref):
        # x @ W or x @ W.T with a stored W: keep W as matmul's direct operand
        stored = _stored_transpose(ctx, b)
        w, transpose_b = (stored, True) if stored is not None else (b, False)
        return times_matrix(ctx, a, w, dtype, out_shape, transpose_b=transpose_b, hint=hint)
    a_vec, b_vec = ctx.rank(a) == 1, ctx.rank(b) == 1
    inner = list(out_shape)
    if a_vec:
        a = _unsqueeze(ctx, a, 0)
        inner.insert(len(inner) - (0 if b_vec else 1), 1)
    if b_vec:
        b = _unsqueeze(ctx, b, 1)
        inner.append(1)
    rank = max(ctx.rank(a), ctx.rank(b))
    a, b = unsqueeze_front(ctx, a, rank), unsqueeze_front(ctx, b, rank)
    y = ctx.emit(
        "matmul", [a, b], {"transposeA": False, "transposeB": False},
        dtype=dtype, shape=inner, hint=hint,
    )  # fmt: skip
    axes = ([rank - 2] if a_vec else []) + ([rank - 1] if b_vec else [])
    if axes:
        y = ctx.emit("squeeze", [y], {"axes": axes}, dtype=dtype, shape=out_shape)
    return y


@register(aten.mm.default, aten.bmm.default, aten.matmul.default)
def matmul(ctx: EmitContext, node: torch.fx.Node):
    """matmul(Tensor self, Tensor other) -> Tensor; also mm and bmm."""
    return _matmul(ctx, ctx.arg(0), ctx.arg(1), out_dtype(ctx))


@register(aten.addmm.default)
def addmm(ctx: EmitContext, node: torch.fx.Node):
    """addmm(Tensor self, Tensor mat1, Tensor mat2, *, Scalar beta=1, Scalar alpha=1) -> Tensor"""
    dtype = out_dtype(ctx)
    beta, alpha = ctx.arg("beta", 1), ctx.arg("alpha", 1)
    shape = list(ctx.out_shape())
    y = _matmul(ctx, ctx.arg(1), ctx.arg(2), dtype, hint="addmm_mm")
    if alpha != 1:
        y = ctx.emit("mul", [y, ctx.scalar(alpha, dtype)], dtype=dtype, shape=shape, hint="alpha")
    if beta == 0:  # torch ignores `self` entirely (even NaN) when beta is 0
        return y
    bias = as_operand(ctx, ctx.arg(0), dtype)
    if beta != 1:
        bias_shape = ctx.shape(bias) if isinstance(bias, Ref) else ()
        bias = ctx.emit(
            "mul", [bias, ctx.scalar(beta, dtype)], dtype=dtype, shape=bias_shape, hint="beta"
        )
    return ctx.emit_like("add", broadcastable(ctx, y, bias))


def einsum_expr(equation: str, ranks: list[int]) -> str:
    """An explicit einsum expression without ``...`` (tract cannot parse it).

    >>> einsum_expr("...ij,...jk", [3, 2])
    'aij,jk->aik'
    """
    eq = equation.replace(" ", "")
    lhs, arrow, out = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        raise ValueError(f"einsum '{equation}' names {len(terms)} operands, got {len(ranks)}")
    used = {c for c in eq if c.isalpha()}
    n_ell = max((r - (len(t) - 3) for t, r in zip(terms, ranks) if "..." in t), default=0)
    fresh = "".join(c for c in string.ascii_letters if c not in used)[:n_ell]
    if len(fresh) < n_ell:
        raise ValueError(f"einsum '{equation}' has too many axes")
    expanded = []
    for term, rank in zip(terms, ranks):
        if "..." in term:
            k = rank - (len(term) - 3)
            term = term.replace("...", fresh[n_ell - k :] if k else "")
        if len(term) != rank:
            raise ValueError(f"einsum term '{term}' does not match an operand of rank {rank}")
        expanded.append(term)
    if arrow:
        out = out.replace("...", fresh)
    else:
        counts = {c: lhs.count(c) for c in used}
        out = fresh + "".join(sorted(c for c, n in counts.items() if n == 1))
    return ",".join(expanded) + "->" + out


@register(aten.einsum.default)
def einsum(ctx: EmitContext, node: torch.fx.Node):
    """einsum(str equation, Tensor[] tensors, *, int[]? path=None) -> Tensor"""
    from t2n_core.nnef.text import tract_dtype_name

    dtype = out_dtype(ctx)
    operands = [as_operand(ctx, t, dtype) for t in ctx.arg(1)]
    try:
        expr = einsum_expr(ctx.arg(0), [ctx.rank(o) for o in operands])
    except ValueError as exc:
        raise ctx.error(str(exc)) from None
    return ctx.emit_like(
        "tract_core_einsum", [operands], {"expr": expr, "acc": tract_dtype_name(dtype)}
    )
