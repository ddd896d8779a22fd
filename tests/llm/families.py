"""Tiny random Hugging Face causal LMs, one per architecture family, for the family tests.

Each is 2 decoder layers, hidden 64, a 256-token vocabulary; :func:`randomize` gives every
weight a scale that keeps activations O(1), so that the logits spread and the greedy tokens
depend on the context (transformers' default init, std 0.02, gives near-uniform logits).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import transformers
from torch import nn

VOCAB = 256
#: window of the sliding-window layers: short, so that the generation tests run past it
WINDOW = 4
_DECODER = dict(
    vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
    pad_token_id=0, bos_token_id=1, eos_token_id=2,
)  # fmt: skip
_IDS = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
_MOE = dict(num_experts_per_tok=2)

#: name -> (config class, model class, config arguments), all in ``transformers``
FAMILIES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", _DECODER),
    # LFM2 as real checkpoints have it (its default config has attention layers only): a
    # convolution layer, whose cache keeps a convolution state, and an attention layer
    "lfm2_conv": (
        "Lfm2Config", "Lfm2ForCausalLM",
        {**_DECODER, "layer_types": ["conv", "full_attention"], "full_attn_idxs": [1]},
    ),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**_DECODER, "sliding_window": WINDOW}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", _DECODER),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {**_DECODER, "head_dim": 16}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", _DECODER),
    "gemma": ("GemmaConfig", "GemmaForCausalLM", {**_DECODER, "head_dim": 16}),
    "gemma2": (
        "Gemma2Config", "Gemma2ForCausalLM",
        {**_DECODER, "head_dim": 16, "sliding_window": WINDOW},
    ),
    "gemma3": (
        "Gemma3TextConfig", "Gemma3ForCausalLM",
        {**_DECODER, "head_dim": 16, "sliding_window": WINDOW,
         "layer_types": ["sliding_attention", "full_attention"]},
    ),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel",
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128, **_IDS)),
    "gpt_neox": (
        "GPTNeoXConfig", "GPTNeoXForCausalLM",
        dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=128, **_IDS),
    ),
    "opt": (
        "OPTConfig", "OPTForCausalLM",
        dict(vocab_size=VOCAB, hidden_size=64, ffn_dim=128, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=128, word_embed_proj_dim=64, **_IDS),
    ),
    "falcon": (
        "FalconConfig", "FalconForCausalLM",
        dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
             new_decoder_architecture=True, num_kv_heads=2, **_IDS),
    ),
    "falcon_multi_query": (  # FalconConfig's defaults: one kv head, whatever num_kv_heads says
        "FalconConfig", "FalconForCausalLM",
        dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, **_IDS),
    ),
    "stablelm": ("StableLmConfig", "StableLmForCausalLM", _DECODER),
    "smollm3": ("SmolLM3Config", "SmolLM3ForCausalLM", _DECODER),
    "granite": ("GraniteConfig", "GraniteForCausalLM", _DECODER),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", _DECODER),
    "cohere": ("CohereConfig", "CohereForCausalLM", _DECODER),
    "starcoder2": ("Starcoder2Config", "Starcoder2ForCausalLM", _DECODER),
    "gptj": ("GPTJConfig", "GPTJForCausalLM",
             dict(vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, rotary_dim=8,
                  n_positions=128, **_IDS)),
    "bloom": ("BloomConfig", "BloomForCausalLM",
              dict(vocab_size=VOCAB, hidden_size=64, n_layer=2, n_head=4, **_IDS)),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {**_DECODER, **_MOE, "num_local_experts": 4}),
    "qwen3_moe": (
        "Qwen3MoeConfig", "Qwen3MoeForCausalLM",
        {**_DECODER, **_MOE, "head_dim": 16, "num_experts": 4, "moe_intermediate_size": 64},
    ),
    # beyond the list: a parallel block, shared experts, experts stored transposed
    "phi": ("PhiConfig", "PhiForCausalLM", _DECODER),
    "qwen2_moe": (
        "Qwen2MoeConfig", "Qwen2MoeForCausalLM",
        {**_DECODER, **_MOE, "num_experts": 4, "moe_intermediate_size": 64,
         "shared_expert_intermediate_size": 64},
    ),
    "gpt_oss": (
        "GptOssConfig", "GptOssForCausalLM",
        {**_DECODER, **_MOE, "num_local_experts": 4, "head_dim": 16, "sliding_window": WINDOW,
         "layer_types": ["sliding_attention", "full_attention"]},
    ),
    "deepseek_v3": (  # multi-head latent attention (keys and values of different widths), a
        "DeepseekV3Config", "DeepseekV3ForCausalLM",  # dense first layer, then routed experts
        {**_DECODER, **_MOE, "num_key_value_heads": 4, "moe_intermediate_size": 32,
         "n_routed_experts": 4, "n_shared_experts": 1, "first_k_dense_replace": 1,
         "kv_lora_rank": 16, "q_lora_rank": 16, "qk_rope_head_dim": 8, "qk_nope_head_dim": 8,
         "v_head_dim": 16, "n_group": 1, "topk_group": 1},
    ),
}  # fmt: skip


#: architectures the sweep (``benchmarks/bench_architectures.py``) found working, each built by
#: its generic tiny config: model_type -> config variant (``tests/llm/generic_config.py``)
GENERIC: dict[str, int] = {
    "afmoe": 0, "apertus": 0, "arcee": 0, "aria_text": 0, "biogpt": 0, "bitnet": 0,
    "codegen": 0, "cohere2": 0, "glm": 0, "gpt_bigcode": 0, "granitemoe": 0, "llama4_text": 0,
    "olmo": 0, "olmo3": 0, "olmoe": 0, "persimmon": 0, "glm4": 0, "helium": 0, "ministral": 0,
    "exaone4": 0, "hunyuan_v1_dense": 0, "hunyuan_v1_moe": 0, "granitemoeshared": 0,
    "phimoe": 0, "seed_oss": 0, "ctrl": 0, "xglm": 0, "doge": 0, "jetmoe": 0,
    # a window kept by its sliding cache only (its mask is causal): `cache_window`
    "moshi": 0,
    # a recurrent state in the cache: one token per step (tests/llm/test_recurrent_llm.py)
    "mamba": 0, "jamba": 0, "mamba2": 0, "qwen3_next": 0,
}  # fmt: skip


def tiny(name: str, seed: int = 0) -> nn.Module:
    """The tiny model of family ``name``, randomized (:func:`randomize`), in eval mode."""
    if name in GENERIC:
        from tests.llm.generic_config import tiny_model

        return tiny_model(name, seed, variant=GENERIC[name])
    config_cls, model_cls, kwargs = FAMILIES[name]
    config = getattr(transformers, config_cls)(**kwargs)
    torch.manual_seed(seed)
    model = getattr(transformers, model_cls)(config)
    randomize(model, seed)
    return model.eval()


def randomize(model: nn.Module, seed: int = 0) -> None:
    """Matrices ~ N(0, 1/fan_in) (fan_in: the last axis), vectors (norm scales, biases)
    1 + N(0, 0.1) or N(0, 0.1): what a trained model roughly looks like in scale."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.dim() >= 2:
                p.copy_(noise / math.sqrt(p.shape[-1]))
            elif name.endswith("bias"):
                p.copy_(0.1 * noise)
            else:  # a norm's scale; Gemma-style norms use (1 + w), both are fine around 1
                p.copy_(1 + 0.1 * noise)
