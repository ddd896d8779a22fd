"""A tiny Hugging Face Llama (random weights, built from a config) exports and matches in tract.

f32, no KV cache, the sequence length dynamic; transformers builds the causal mask with its
masking utilities (``create_causal_mask``: index with two tensors, ``arange`` comparisons),
rotary embeddings from ``cos``/``sin`` of a position product, and grouped-query attention
through ``scaled_dot_product_attention``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import LlamaConfig, LlamaForCausalLM

from tests.helpers import export_and_check

VOCAB = 128


class Logits(nn.Module):
    """``input_ids -> logits`` without a cache."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, use_cache=False).logits


def tiny_llama(*, tied: bool = False, attn: str = "sdpa") -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        tie_word_embeddings=tied, attn_implementation=attn,
    )  # fmt: skip
    return LlamaForCausalLM(config).eval()


def export_llama(model: nn.Module, tmp_path, **kwargs):
    """Export on length 7, check in tract at lengths 7 and 12."""
    torch.manual_seed(1)
    return export_and_check(
        Logits(model), (torch.randint(0, VOCAB, (1, 7)),), tmp_path,
        dynamic_axes={"input_ids": {1: "T"}},
        check_inputs=[(torch.randint(0, VOCAB, (1, 12)),)], **kwargs,
    )  # fmt: skip


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_tiny_llama_f32_dynamic_length(attn, tmp_path):
    model = tiny_llama(attn=attn)
    assert model.config._attn_implementation == attn
    result = export_llama(model, tmp_path)
    hist = result.op_histogram
    assert hist.get("tract_core_gather_nd", 0) >= 1  # the mask's two-tensor indexing
    assert hist.get("tract_transformers_sdpa", 0) == (2 if attn == "sdpa" else 0)
