"""Mixture-of-experts layers in forms tract runs (static shapes), chosen with ``experts=``.

transformers' default experts implementation (``grouped_mm``) sorts the tokens by expert and
multiplies groups of data-dependent sizes (``aten.sort``, ``aten.histc``, ``index_put``,
a grouped-matmul custom op), and ``eager`` loops over the experts hit (``nonzero``): neither
has a static graph. Two forms compute the same sum over the router's top-k experts:

- ``"dense"`` (:func:`dense_experts_forward`): every expert on every token, weighted by the
  router (zero for the experts it did not pick). Plain matmuls on each expert's matrices
  (``weight[e]``, which the writer stores as a 2-D tensor of its own, so quantized experts
  stay compressed and feed tract's quantized matmul). Costs experts / top-k times the expert
  FLOPs; memory does not grow with the prompt.
- ``"gather"`` (:func:`gather_experts_forward`): per token, only the k chosen experts' weights
  are read: their rows are gathered from the ``[experts * out, in]`` matrix
  (``tract_core_gather``, which reads q4_0 rows straight from the compressed tensor), then
  multiplied. Decoding multiplies k experts' weights instead of all of them; but the
  gathered matrices are float, ``tokens x k`` of them at once (a prompt of T tokens holds
  ``T * k`` dequantized expert matrices), and tract 0.23.9 gathers (dequantizes) rows at
  several ns per value, then repacks them for its matmul: at the sizes measured
  (``python -m benchmarks.bench_moe_experts``) gather decodes slower than dense.

:func:`experts_implementation` switches a model to one of them for the time of a capture.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import torch
from torch import nn

from t2n_core.errors import ExportInputError
from t2n_core.llm.scatter_experts import static_scatter_experts

logger = logging.getLogger(__name__)

#: the name of the dense implementation in transformers' experts interface
DENSE = "t2n_dense"
#: the name of the gather implementation in transformers' experts interface
GATHER = "t2n_gather"
#: ``experts=`` values -> names registered in transformers' experts interface
IMPLEMENTATIONS = {"dense": DENSE, "gather": GATHER}
DEFAULT_EXPERTS = "dense"


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


def gather_experts_forward(
    self: nn.Module,
    hidden_states: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
) -> torch.Tensor:
    """``sum_j top_k_weights[:, j] * expert_{top_k_index[:, j]}(hidden_states)``, each of the
    ``tokens * k`` (token, expert) pairs multiplying the gathered weights of its expert."""
    tokens, hidden = hidden_states.shape
    k = top_k_index.shape[-1]
    ids = top_k_index.reshape(-1)  # [tokens * k], token-major
    x = hidden_states.unsqueeze(1).expand(tokens, k, hidden).reshape(tokens * k, hidden)
    prefix = "gate_up_proj" if self.has_gate else "up_proj"
    up_bias = getattr(self, f"{prefix}_bias") if self.has_bias else None
    h = _gathered_linear(x, getattr(self, prefix), ids, up_bias, self.is_transposed)
    h = self._apply_gate(h) if self.has_gate else self.act_fn(h)
    down_bias = self.down_proj_bias if self.has_bias else None
    h = _gathered_linear(h, self.down_proj, ids, down_bias, self.is_transposed)
    if self.has_post_expert_norm:
        h = self.post_expert_norm(h)
    h = h.reshape(tokens, k, -1) * top_k_weights.unsqueeze(-1).to(h.dtype)
    return h.sum(dim=1).to(hidden_states.dtype)


def _gathered_linear(
    x: torch.Tensor, w: torch.Tensor, ids: torch.Tensor, b: torch.Tensor | None, transposed: bool
) -> torch.Tensor:
    """``x[s] @ w[ids[s]]ᵀ (+ b[ids[s]])`` for every row ``s``: the rows of ``w[ids[s]]`` are
    an embedding lookup in ``w`` seen as one ``[experts * rows, cols]`` matrix (tract gathers
    rows of a 2-D quantized tensor only, and the writer stores the reshaped weight as such)."""
    experts, rows, cols = w.shape
    index = ids.unsqueeze(-1) * rows + torch.arange(rows, device=ids.device)  # [S, rows]
    # one flat lookup, then [S, rows, cols]: tract 0.23.9 pushes a slice of the product's
    # rows (a gate/up split) up into a gather on quantized data and aborts; the reshape stops it
    picked = nn.functional.embedding(index.reshape(-1), w.reshape(experts * rows, cols))
    picked = picked.reshape(ids.shape[0], rows, cols)
    if transposed:  # stored [in, out]
        y = torch.matmul(x.unsqueeze(1), picked).squeeze(1)
    else:
        y = torch.matmul(picked, x.unsqueeze(-1)).squeeze(-1)
    return y if b is None else y + b[ids]


def _linear(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, transposed: bool):
    if transposed:  # stored [in, out]
        y = x @ w
        return y if b is None else y + b
    return nn.functional.linear(x, w, b)


_FORWARDS: dict[str, Callable[..., torch.Tensor]] = {
    DENSE: dense_experts_forward,
    GATHER: gather_experts_forward,
}


def _experts_modules(model: nn.Module) -> list[nn.Module]:
    """Modules whose forward dispatches on ``config._experts_implementation``."""
    return [m for m in model.modules() if hasattr(m, "has_gate") and hasattr(m, "is_transposed")]


def check_experts(experts: str) -> str:
    """The transformers implementation name of ``experts`` (``"dense"`` or ``"gather"``);
    raises :class:`~t2n_core.errors.ExportInputError` for anything else."""
    if experts not in IMPLEMENTATIONS:
        raise ExportInputError(f"experts must be one of {sorted(IMPLEMENTATIONS)}, got {experts!r}")
    return IMPLEMENTATIONS[experts]


@contextlib.contextmanager
def experts_implementation(model: nn.Module, experts: str = DEFAULT_EXPERTS) -> Iterator[bool]:
    """Run ``model``'s transformers experts layers with the ``experts`` form (``"dense"`` or
    ``"gather"``, see the module docstring) inside the block, and its ScatterMoE-style experts
    (JetMoE: :mod:`t2n_core.llm.scatter_experts`) in their static form (yields whether the
    model has any of either), restoring the implementation afterwards."""
    name = check_experts(experts)
    with static_scatter_experts(model) as scattered, _interface_experts(model, name) as has:
        yield has or scattered > 0


@contextlib.contextmanager
def _interface_experts(model: nn.Module, name: str) -> Iterator[bool]:
    modules = _experts_modules(model)
    configs = {id(m.config): m.config for m in modules if hasattr(m, "config")}
    if not configs:
        yield False
        return
    from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS

    ALL_EXPERTS_FUNCTIONS.register(name, _FORWARDS[name])
    before = {key: c._experts_implementation for key, c in configs.items()}
    changed = sorted({v for v in before.values() if v != name}, key=str)
    if changed:
        logger.info(
            "capturing %d experts layer(s) with the %r implementation instead of %s (%s)",
            len(modules), name, ", ".join(map(str, changed)),
            "every expert on every token, weighted by the router" if name == DENSE else
            "the top-k experts' weight rows gathered per token",
        )  # fmt: skip
    try:
        for c in configs.values():
            c._experts_implementation_internal = name
        yield True
    finally:
        for key, c in configs.items():
            c._experts_implementation_internal = before[key]


def dense_experts(model: nn.Module) -> contextlib.AbstractContextManager[bool]:
    """:func:`experts_implementation` with the dense form."""
    return experts_implementation(model, "dense")
