"""Models with random weights used by the benchmarks (built from code, no downloads)."""

from __future__ import annotations

import torch
from torch import nn


class TransformerLM(nn.Module):
    """Token embedding -> pre-norm transformer encoder (causal) -> LM head."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, ff: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        layer = nn.TransformerEncoderLayer(
            dim, heads, ff, dropout=0.0, activation="gelu", batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.encoder(self.embed(tokens), is_causal=True, mask=_causal(tokens.shape[1]))
        return self.lm_head(self.norm(h))


def _causal(t: int) -> torch.Tensor:
    return nn.Transformer.generate_square_subsequent_mask(t)


def transformer_120m() -> TransformerLM:
    """~122M parameters: 12 layers of width 768, vocab 24000, untied head."""
    return TransformerLM(vocab=24000, dim=768, layers=12, heads=12, ff=3072)


def weight_bytes(model: nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())
