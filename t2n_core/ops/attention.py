"""Attention: ``scaled_dot_product_attention`` kept whole as ``tract_transformers_sdpa``.

``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer`` reach this op (and linear,
view, permute, ...) after decomposition. tract facts (0.23.9) this relies on:

- ``tract_transformers_sdpa(q, k, v, mask = m, scale = s, is_causal = c, datum_type = 'f32',
  acc_datum_type = 'f32')`` takes rank-3 or rank-4 q/k/v of equal ranks, with symbolic
  lengths. With ``is_causal = true`` it aligns the causal mask to the *bottom right* (query i
  sees keys up to ``i + Lk - Lq``) where torch aligns it to the top left; the two agree only
  when ``Lq == Lk``, so for other lengths we build torch's mask in the graph.
- ``mask`` must be floating point (a bool mask fails in codegen: "Mask must be floating
  point"); it is *added* to the scores. Its leading axes broadcast (``[B, 1, L, S]``,
  ``[1, H, L, S]``, ``[L, S]`` all work) but its last two axes must be full
  (``[B, 1, 1, S]`` fails with "incompatible shapes"), so we broadcast those explicitly.
- Fewer key/value heads than query heads (grouped-query attention) work on rank 4.
"""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ir import Ref
from t2n_core.ops._common import as_operand, dim_attr, out_dtype
from t2n_core.ops.registry import register

aten = torch.ops.aten

_NEG_INF = float("-inf")  # written as -f32max; exact after softmax
_F32_MAX = 3.4028234663852886e38


def _arg(ctx: EmitContext, index: int, name: str, default=None):
    """Argument by position or keyword (torch.export keeps either form)."""
    raw = ctx.raw(index, None)
    if raw is None:
        raw = ctx.raw(name, default)
    return ctx.convert(raw)


def causal_mask(ctx: EmitContext, lq, lk, dtype: torch.dtype) -> Ref:
    """torch's top-left causal mask ``[Lq, Lk]``: 0 where key j <= query i, else -inf.

    Built as ``trilu(broadcast(-inf, [Lq, Lk]), k = 1, upper = true)``, which works on symbolic
    lengths. (A ``select`` on a comparison of two ``tract_core_range`` makes tract 0.23.9
    produce a wrong shape.)
    """
    full = ctx.emit(
        "tract_core_broadcast", [ctx.scalar(_NEG_INF, dtype)],
        {"shape": [dim_attr(lq), dim_attr(lk)]}, dtype=dtype, shape=(lq, lk), hint="causal",
    )  # fmt: skip
    return ctx.emit(
        "tract_core_trilu", [full, 1], {"upper": True}, dtype=dtype, shape=(lq, lk),
        hint="causal_mask",
    )  # fmt: skip


def additive_mask(ctx: EmitContext, mask: Ref, dtype: torch.dtype) -> Ref:
    """A bool mask (True = attend) as 0 / -inf of ``dtype``; a float mask cast to ``dtype``.

    Arithmetic, ``(float(mask) - 1) * f32max``, rather than ``select``: a ``select`` on a
    condition computed from ``tract_core_range`` comparisons (masks built from
    ``torch.arange``) gets a wrong shape in tract 0.23.9.
    """
    if ctx.dtype(mask) != torch.bool:
        return as_operand(ctx, mask, dtype)
    shape = ctx.shape(mask)
    m = ctx.cast(mask, torch.float32)
    m = ctx.emit("sub", [m, 1.0], dtype=torch.float32, shape=shape, hint="attn_mask")
    m = ctx.emit("mul", [m, _F32_MAX], dtype=torch.float32, shape=shape, hint="attn_mask")
    return ctx.cast(m, dtype)


def _full_last_axes(ctx: EmitContext, mask: Ref, lq, lk) -> Ref:
    """Broadcast a mask's last two axes to ``[Lq, Lk]`` (tract's sdpa needs them full)."""
    shape = list(ctx.shape(mask))
    while len(shape) < 2:
        mask = ctx.emit(
            "unsqueeze", [mask], {"axes": [0]}, dtype=ctx.dtype(mask), shape=[1, *shape],
            hint="attn_mask",
        )  # fmt: skip
        shape = [1, *shape]
    if shape[-2:] == [lq, lk]:
        return mask
    full = [*shape[:-2], lq, lk]
    return ctx.emit(
        "tract_core_broadcast", [mask], {"shape": [dim_attr(d) for d in full]},
        dtype=ctx.dtype(mask), shape=full, hint="attn_mask",
    )  # fmt: skip


@register(aten.scaled_dot_product_attention.default)
def sdpa(ctx: EmitContext, node: torch.fx.Node):
    """scaled_dot_product_attention(Tensor query, Tensor key, Tensor value, Tensor? attn_mask=None, float dropout_p=0.0, bool is_causal=False, *, float? scale=None, bool enable_gqa=False) -> Tensor"""  # noqa: E501
    from t2n_core.nnef.text import tract_dtype_name

    dtype = out_dtype(ctx)
    q, k, v = (
        as_operand(ctx, _arg(ctx, i, name), dtype)
        for i, name in enumerate(("query", "key", "value"))
    )
    mask = _arg(ctx, 3, "attn_mask")
    dropout = _arg(ctx, 4, "dropout_p", 0.0)
    is_causal = bool(_arg(ctx, 5, "is_causal", False))
    scale = ctx.arg("scale")
    if dropout:
        raise ctx.error(
            f"dropout_p={dropout} in scaled_dot_product_attention: export the model in eval "
            "mode or pass dropout_p=0"
        )
    ranks = {ctx.rank(q), ctx.rank(k), ctx.rank(v)}
    if len(ranks) != 1 or ranks.pop() not in (3, 4):
        raise ctx.error(
            "scaled_dot_product_attention needs query, key and value all 3-D or all 4-D "
            f"(got ranks {ctx.rank(q)}, {ctx.rank(k)}, {ctx.rank(v)}); reshape them first"
        )
    lq, lk = ctx.shape(q)[-2], ctx.shape(k)[-2]
    attrs = {}
    if is_causal and lq != lk:
        mask, is_causal = causal_mask(ctx, lq, lk, dtype), False
    elif isinstance(mask, Ref):
        mask = _full_last_axes(ctx, additive_mask(ctx, mask, dtype), lq, lk)
    if isinstance(mask, Ref):
        attrs["mask"] = mask
    if scale is not None:
        attrs["scale"] = float(scale)
    attrs.update(is_causal=is_causal, datum_type=tract_dtype_name(dtype), acc_datum_type="f32")
    ctx.extension("tract_registry tract_transformers")
    return ctx.emit_like("tract_transformers_sdpa", [q, k, v], attrs)
