"""ScatterMoE-style experts (JetMoE's ``JetMoeTopKGating`` + ``JetMoeParallelExperts``) in a
form with static shapes.

Such a router sorts the (token, expert) pairs by expert and returns how many rows each expert
gets as a Python list (``expert_size.tolist()``); the experts module then ``split``s its input
by those sizes and multiplies each piece by its expert's matrix: sizes read from tensor values,
which ``torch.export`` captures as guards tract has no form for. Here the router leaves the
pairs in token order (no sort: the "sorted" order it returns is the identity) and passes each
pair's expert in place of the counts; the experts multiply every row by every expert's matrix
and keep, for each row, its own expert's product. Every expert runs on every row (as
``dense`` in :mod:`t2n_core.llm.experts`); each ``weight[e]`` is a 2-D matrix the writer stores
on its own (quantized experts stay compressed). The router and the experts of one parent
module are switched together (each reads what the other passes).

Modules are recognised by their shape, not their class: a *parallel experts* module has a 3-D
``weight`` ``[experts, out, in]`` and a ``forward(inputs, expert_size)``; a *top-k gating*
module has a linear ``layer`` to ``num_experts`` logits, ``top_k``, and a ``forward`` that
calls ``.tolist()``.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import types
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)


def static_parallel_experts_forward(
    self: nn.Module, inputs: torch.Tensor, expert_of_row: torch.Tensor
) -> torch.Tensor:
    """``inputs [rows, in]``, ``expert_of_row [rows]`` (what the static router passes in place
    of the per-expert row counts): row ``r`` times the matrix of its expert."""
    weight = self.weight
    out = None
    for e in range(weight.shape[0]):
        mask = (expert_of_row == e).to(inputs.dtype).unsqueeze(-1)
        y = nn.functional.linear(inputs, weight[e]) * mask
        out = y if out is None else out + y
    assert out is not None
    return out


def static_topk_gating_forward(
    self: nn.Module, hidden_states: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """JetMoE's ``JetMoeTopKGating.forward`` without the sort: the (token, expert) pairs stay in
    token order (the "sorted" order is the identity), and each pair's expert is passed where
    the per-expert counts were (read by :func:`static_parallel_experts_forward`)."""
    logits = self.layer(hidden_states).float()  # [tokens, experts]
    top_k_logits, top_k_indices = logits.topk(self.top_k, dim=1)
    top_k_gates = torch.softmax(top_k_logits, dim=1).type_as(hidden_states)
    expert_of_pair = top_k_indices.flatten()  # [tokens * k], token-major
    pairs = torch.arange(expert_of_pair.shape[0], device=logits.device)
    batch_index = pairs.div(self.top_k, rounding_mode="trunc")
    return pairs, batch_index, top_k_gates.flatten(), expert_of_pair, logits


def _is_parallel_experts(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    if not isinstance(weight, torch.Tensor) or weight.dim() != 3:
        return False
    return "expert_size" in inspect.signature(module.forward).parameters


def _is_topk_gating(module: nn.Module) -> bool:
    layer = getattr(module, "layer", None)
    if not (isinstance(layer, nn.Linear) and isinstance(getattr(module, "top_k", None), int)):
        return False
    if layer.out_features != getattr(module, "num_experts", None):
        return False
    try:
        source = inspect.getsource(type(module).forward)
    except (OSError, TypeError):
        return False
    return ".tolist()" in source


@contextlib.contextmanager
def static_scatter_experts(model: nn.Module) -> Iterator[int]:
    """Inside the block, ``model``'s ScatterMoE-style routers and experts (see the module
    docstring) run in the static form; yields how many modules were switched."""
    switched: list[nn.Module] = []
    for parent in model.modules():  # a router and its experts, side by side: both or neither
        children = list(parent.children())
        routers = [m for m in children if _is_topk_gating(m)]
        experts = [m for m in children if _is_parallel_experts(m)]
        if len(routers) != 1 or not experts:
            continue
        routers[0].forward = types.MethodType(static_topk_gating_forward, routers[0])
        for module in experts:
            module.forward = types.MethodType(static_parallel_experts_forward, module)
        switched += [*routers, *experts]
    if switched:
        logger.info(
            "capturing %d ScatterMoE-style router / experts module(s) (%s) in a static form: "
            "every expert on every row instead of rows split by data-dependent counts",
            len(switched), ", ".join(sorted({type(m).__name__ for m in switched})),
        )  # fmt: skip
    try:
        yield len(switched)
    finally:
        for module in switched:
            del module.forward
