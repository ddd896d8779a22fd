"""Ops that pass values through: getitem on multi-output ops, clone, aliases, dtype casts."""

from __future__ import annotations

import operator

import torch
import torch.fx

from t2n_core.emit import EmitContext
from t2n_core.ops.registry import register

aten = torch.ops.aten


@register(operator.getitem)
def getitem(ctx: EmitContext, node: torch.fx.Node):
    """operator.getitem(tuple of results, int index)"""
    return ctx.arg(0)[ctx.raw(1)]


@register(aten.clone.default, aten.alias.default, aten.lift_fresh_copy.default,
          aten.contiguous.default, aten.detach.default)  # fmt: skip
def passthrough(ctx: EmitContext, node: torch.fx.Node):
    """clone(Tensor self, *, MemoryFormat? memory_format=None) -> Tensor"""
    return ctx.arg(0)


@register(aten._to_copy.default)
def to_copy(ctx: EmitContext, node: torch.fx.Node):
    """_to_copy(Tensor self, *, ScalarType? dtype=None, ...) -> Tensor"""
    return ctx.cast(ctx.arg(0), ctx.meta().dtype)
