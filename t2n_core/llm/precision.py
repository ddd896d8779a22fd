"""Parts of an f16 model computed in f32: attention (``f32_attention``) and normalisation
(``f32_norms``), as the reference tool's ``--force-f32-attention`` / ``--force-f32-normalization``.

Both change the model in place; capture then records the casts, so tract computes those parts
in f32 too.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from torch import nn

from t2n_core.errors import ExportInputError

logger = logging.getLogger(__name__)

F32_SDPA = "t2n_f32_sdpa"


def is_norm(module: nn.Module) -> bool:
    """A normalisation layer: torch's own, or any leaf module whose class name ends in Norm."""
    if isinstance(module, (nn.LayerNorm, nn.RMSNorm, nn.GroupNorm)):
        return True
    return type(module).__name__.endswith("Norm") and not any(True for _ in module.children())


def f32_norms(model: nn.Module) -> list[str]:
    """Make every norm layer compute in f32 (inputs cast up, output cast back); their weights
    must already be f32 (``streamed_model(..., keep_f32=is_norm)``). Returns their names."""
    names = []
    for name, module in model.named_modules():
        if is_norm(module):
            module.forward = _upcast(module.forward)  # type: ignore[method-assign]
            names.append(name)
    if not names:
        logger.warning("f32 normalisation asked, but %s has no norm layer", type(model).__name__)
    return names


def _upcast(forward: Any) -> Any:
    @functools.wraps(forward)
    def run(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        out = forward(x.float(), *args, **kwargs)
        return out.to(x.dtype) if isinstance(out, torch.Tensor) else out

    return run


def f32_attention(model: nn.Module) -> None:
    """Run the model's attention (scores, softmax, weighted sum) in f32 through transformers'
    attention interface: queries, keys and values are cast up, the output cast back."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    current = getattr(model.config, "_attn_implementation", None)
    if current not in (None, "sdpa", F32_SDPA):
        logger.info("f32 attention: switching %s from %r to sdpa", type(model).__name__, current)
    if F32_SDPA not in ALL_ATTENTION_FUNCTIONS:
        AttentionInterface.register(F32_SDPA, _f32(ALL_ATTENTION_FUNCTIONS["sdpa"]))
        # the masks sdpa needs; without an entry, transformers passes no mask at all
        AttentionMaskInterface.register(F32_SDPA, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    try:
        model.set_attn_implementation(F32_SDPA)
    except (ValueError, AttributeError) as exc:
        raise ExportInputError(
            f"f32 attention needs a model that runs its attention through transformers' "
            f"attention interface (sdpa); {type(model).__name__} does not: {exc}"
        ) from exc


def _f32(attention: Any) -> Any:
    def run(module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            attention_mask: torch.Tensor | None, *args: Any, **kwargs: Any) -> Any:  # fmt: skip
        if attention_mask is not None and attention_mask.is_floating_point():
            attention_mask = attention_mask.float()
        out, weights = attention(
            module, query.float(), key.float(), value.float(), attention_mask, *args, **kwargs
        )
        return out.to(query.dtype), weights

    return run
