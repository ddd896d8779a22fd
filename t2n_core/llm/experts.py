"""Mixture-of-experts layers in a form tract runs: every expert on every token, weighted by the
router (zero for the experts it did not pick).

transformers' default experts implementation (``grouped_mm``) sorts the tokens by expert and
multiplies groups of data-dependent sizes (``aten.sort``, ``aten.histc``, ``index_put``,
a grouped-matmul custom op), and ``eager`` loops over the experts hit (``nonzero``): neither
has a static graph. :data:`DENSE` computes the same sum over the chosen experts with static
shapes: plain matmuls on each expert's matrices (``weight[e]``, which the writer stores as a
2-D tensor of its own, so quantized experts stay compressed), at the cost of running all
experts. :func:`dense_experts` switches a model to it for the time of a capture.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

import torch
from torch import nn

logger = logging.getLogger(__name__)

#: the name of the implementation in transformers' experts interface
DENSE = "t2n_dense"


def dense_experts_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """``sum_e routing[:, e] * expert_e(hidden_states)``, routing being ``top_k_weights`` spread
    over all experts (``[tokens, experts]``, zero where not chosen)."""
    num_experts = self.num_experts
    experts = torch.arange(num_experts, device=hidden_states.device)
    chosen = (top_k_index.unsqueeze(-1) == experts).to(top_k_weights.dtype)
    routing = (chosen * top_k_weights.unsqueeze(-1)).sum(dim=1)  # [tokens, experts]
    prefix = "gate_up_proj" if self.has_gate else "up_proj"
    up = getattr(self, prefix)
    up_bias = getattr(self, f"{prefix}_bias") if self.has_bias else None
    out = torch.zeros_like(hidden_states)
    for e in range(num_experts):
        bias = None if up_bias is None else up_bias[e]
        h = _linear(hidden_states, up[e], bias, self.is_transposed)
        h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
        down_bias = self.down_proj_bias[e] if self.has_bias else None
        h = _linear(h, self.down_proj[e], down_bias, self.is_transposed)
        if self.has_post_expert_norm:
            h = self.post_expert_norm(h)
        out = out + h * routing[:, e : e + 1].to(h.dtype)
    return out.to(hidden_states.dtype)


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, transposed: bool):
    if transposed:  # stored [in, out]
        y = x @ w
        return y if b is None else y + b
    return nn.functional.linear(x, w, b)


def _experts_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose forward dispatches on ``config._experts_implementation``."""
    return [m for m in model.modules() if hasattr(m, "has_gate") and hasattr(m, "is_transposed")]


@contextlib.contextmanager
def dense_experts(model: nn.Module) -> Iterator[bool]:
    """Run ``model``'s transformers experts layers with :func:`dense_experts_forward` inside the
    block (yields whether the model has any), restoring the implementation afterwards."""
    modules = _experts_modules(model)
    configs = {id(m.config): m.config for m in modules if hasattr(m, "config")}
    if not configs:
        yield False
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(DENSE, dense_experts_forward)
    before = {key: c._experts_implementation for key, c in configs.items()}
    changed = sorted({v for v in before.values() if v != DENSE}, key=str)
    if changed:
        logger.info(
            "capturing %d experts layer(s) with the %r implementation instead of %s (every "
            "expert on every token, weighted by the router: static shapes tract runs)",
            len(modules), DENSE, ", ".join(map(str, changed)),
        )  # fmt: skip
    try:
        for c in configs.values():
            c._experts_implementation_internal = DENSE
        yield True
    finally:
        for key, c in configs.items():
            c._experts_implementation_internal = before[key]
