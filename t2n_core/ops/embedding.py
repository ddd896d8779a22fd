"""Embedding lookups and one-hot encoding.

``embedding`` becomes ``tract_core_gather(weight, indices, axis = 0, datum_type = 'f32')``
with the weight as the gather's direct data input, so a block-quantized (Q4_0) table stays
compressed: tract gathers rows straight from Q4_0 storage. tract 0.23.9 refuses a gather on
compressed data without the explicit ``datum_type`` of its output (f32 or f16).
"""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.nnef.text import tract_dtype_name
from t2n_core.ops.registry import register
from t2n_core.translate import EmitContext

aten = torch.ops.aten


@register(aten.embedding.default)
def embedding(ctx: EmitContext, node: torch.fx.Node):
    """embedding(Tensor weight, Tensor indices, SymInt padding_idx=-1,
    bool scale_grad_by_freq=False, bool sparse=False) -> Tensor"""
    weight, indices = ctx.arg(0), ctx.arg(1)
    if ctx.meta(1).dtype.is_floating_point:
        raise ctx.error("embedding indices must be an integer tensor")
    attrs = {"axis": 0, "datum_type": tract_dtype_name(ctx.meta().dtype)}
    return ctx.emit_like("tract_core_gather", [weight, indices], attrs, hint="embedding")


@register(aten.one_hot.default)
def one_hot(ctx: EmitContext, node: torch.fx.Node):
    """one_hot(Tensor self, int num_classes=-1) -> Tensor"""
    x = ctx.arg(0)
    classes = ctx.arg(1, ctx.arg("num_classes", -1))
    if not isinstance(classes, int) or classes < 0:
        raise ctx.error(
            "one_hot needs an explicit num_classes (inferring it from the data gives a "
            "data-dependent shape)"
        )
    meta = ctx.meta()
    shape = ctx.out_shape(meta)
    hot = ctx.emit(
        "tract_core_one_hot", [x],
        {"axis": ctx.rank(x), "dim": classes, "value_off": 0.0, "value_on": 1.0},
        dtype=torch.float32, shape=shape,
    )  # fmt: skip
    return ctx.cast(hot, meta.dtype)
