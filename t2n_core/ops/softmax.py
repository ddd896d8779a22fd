"""softmax and log_softmax over one axis (tract's native ops)."""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ops._common import as_operand, norm_axis, out_dtype
from t2n_core.ops.registry import register

aten = torch.ops.aten


@register(aten._softmax.default, aten._log_softmax.default)
def softmax(ctx: EmitContext, node: torch.fx.Node):
    """_softmax(Tensor self, int dim, bool half_to_float) -> Tensor; _log_softmax."""
    dtype = out_dtype(ctx)
    x = as_operand(ctx, ctx.arg(0), dtype)
    if ctx.rank(x) == 0:
        raise ctx.error("softmax of a 0-d tensor is not supported; unsqueeze it first")
    axis = norm_axis(ctx.arg(1), ctx.rank(x))
    op = "softmax" if node.target == aten._softmax.default else "tract_core_log_softmax"
    return ctx.emit_like(op, [x], {"axes": [axis]})
