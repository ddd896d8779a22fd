"""Tiny checkpoint directories as Hugging Face writes them (``save_pretrained``), built here."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

VOCAB = 128
WORDS = (
    "once upon a time there was little girl who lived in village near the forest she liked "
    "to walk with her dog and read books about stars sea cats birds"
).split()


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: ids 0-2 special (unk, bos, eos), then lower-case words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for word in WORDS:
        vocab.setdefault(word, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece(prefix="##")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


def tiny_llama_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=2, tie_word_embeddings=False,
    )  # fmt: skip
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def save_tiny_llama(
    path: Path,
    *,
    dtype: torch.dtype = torch.bfloat16,
    shard_size: str | None = None,
    tokenizer: bool = True,
    seed: int = 0,
    **config,
) -> LlamaForCausalLM:
    """Save a random tiny Llama (weights scaled up so logits are not flat) and return it, in
    f32, with the values the checkpoint holds (rounded to ``dtype``)."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(tiny_llama_config(**config)).eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.normal_(0, 0.15)
    model = model.to(dtype)
    kwargs = {"max_shard_size": shard_size} if shard_size else {}
    model.save_pretrained(path, **kwargs)
    if tokenizer:
        tiny_tokenizer().save_pretrained(path)
    return model.float()
