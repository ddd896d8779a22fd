"""Tests on float values: isnan, isinf (``nan_to_num`` decomposes to these and ``where``).

``x != x`` holds exactly for NaN; ``|x| == inf`` for ±inf (the literal made exact by
:func:`t2n_core.ops._common.exact_scalar`).
"""

from __future__ import annotations

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ops._common import exact_scalar
from t2n_core.ops.registry import register

aten = torch.ops.aten


@register(aten.isnan.default)
def isnan(ctx: EmitContext, node: torch.fx.Node):
    """isnan(Tensor self) -> Tensor"""
    x = ctx.arg(0)
    return ctx.emit_like("ne", [x, x])


@register(aten.isinf.default)
def isinf(ctx: EmitContext, node: torch.fx.Node):
    """isinf(Tensor self) -> Tensor"""
    x = ctx.arg(0)
    dtype = ctx.dtype(x)
    if not dtype.is_floating_point:
        return ctx.emit_like("ne", [x, x])  # integers are never infinite
    magnitude = ctx.emit("abs", [x], dtype=dtype, shape=ctx.shape(x), hint="isinf")
    return ctx.emit_like("eq", [magnitude, exact_scalar(ctx, float("inf"), dtype)])
