"""A tiny random config for any causal-LM architecture of transformers, built from its
config class: every size field it has set small (2 layers, hidden 64, vocabulary 256, 4
experts...), the layer-type list cut to one layer of each distinct type. Used by
``benchmarks/bench_architectures.py`` (the sweep) and the family tests of the architectures
it found working (``tests/llm/families.py``).
"""

from __future__ import annotations

from typing import Any

#: size fields set on every config that has them (names as transformers' configs spell them)
SMALL: dict[str, Any] = {
    **dict.fromkeys(("vocab_size",), 256),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "hidden_dim",
                     "attention_hidden_size", "word_embed_proj_dim", "embedding_size"), 64),
    **dict.fromkeys(("intermediate_size", "ffn_dim", "n_inner", "d_ff", "ffn_hidden_size",
                     "dense_intermediate_size", "decoder_ffn_dim", "mlp_dim"), 128),
    **dict.fromkeys(("num_hidden_layers", "n_layer", "n_layers", "num_layers",
                     "decoder_layers"), 2),
    **dict.fromkeys(("num_attention_heads", "n_head", "n_heads", "num_heads",
                     "decoder_attention_heads"), 4),
    **dict.fromkeys(("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_n_heads",
                     "multi_query_group_num", "num_key_value_groups"), 2),
    **dict.fromkeys(("head_dim", "kv_channels", "attention_head_dim", "v_head_dim"), 16),
    **dict.fromkeys(("max_position_embeddings", "n_positions", "max_seq_len", "n_ctx",
                     "context_length", "seq_length", "max_sequence_length"), 128),
    **dict.fromkeys(("moe_intermediate_size", "expert_intermediate_size",
                     "shared_expert_intermediate_size", "moe_ffn_hidden_size",
                     "ffn_hidden_size_moe", "expert_dim"), 64),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts",
                     "ffn_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "moe_top_k", "moe_k", "top_k", "num_selected_experts",
                     "moe_topk"), 2),
    **dict.fromkeys(("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"), 1),
    **dict.fromkeys(("kv_lora_rank", "q_lora_rank"), 16),
    **dict.fromkeys(("qk_rope_head_dim", "qk_nope_head_dim", "rotary_dim"), 8),
    **dict.fromkeys(("n_group", "topk_group", "first_k_dense_replace"), 1),
    **dict.fromkeys(("linear_num_key_heads", "linear_num_value_heads"), 2),
    **dict.fromkeys(("linear_key_head_dim", "linear_value_head_dim"), 16),
    **dict.fromkeys(("sliding_window", "attention_window_size", "window_size"), 4),
    # hybrids placing attention / experts every k-th layer: one of each within 2 layers
    **dict.fromkeys(("attn_layer_period", "expert_layer_period", "full_attention_interval",
                     "attention_period"), 2),
    **dict.fromkeys(("attn_layer_offset", "expert_layer_offset"), 1),
    # Mamba layers: heads x head width = expand (2) x hidden; a small state and chunk
    **dict.fromkeys(("mamba_n_heads", "n_mamba_heads"), 8),
    **dict.fromkeys(("mamba_d_head", "mamba_headdim"), 16),
    **dict.fromkeys(("mamba_d_ssm",), 128),
    **dict.fromkeys(("mamba_d_state", "state_size", "ssm_state_size"), 16),
    **dict.fromkeys(("n_groups", "mamba_n_groups", "mamba_ngroups"), 1),
    **dict.fromkeys(("mamba_chunk_size", "chunk_size"), 16),
}  # fmt: skip


def tiny_config(model_type: str, variant: int = 0) -> Any:
    """The config of ``model_type`` with every size field of :data:`SMALL` it has set small.

    Per-layer type lists keep one layer of each distinct type (a hybrid keeps an attention
    layer). ``variant`` 1: as many kv heads as heads (configs that refuse grouped queries);
    2: besides, ``head_dim`` left to the config (derived from other fields).
    """
    from transformers import AutoConfig

    default = AutoConfig.for_model(model_type)
    present = default.to_dict()
    small = {}
    for key, value in SMALL.items():
        have = present.get(key, "absent")
        if (isinstance(have, int) and not isinstance(have, bool)) or (
            have is None and key == "head_dim"
        ):
            small[key] = value
    if variant == 2:
        small.pop("head_dim", None)
    if variant >= 1:
        for key in ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_n_heads"):
            if key in small:
                small[key] = 4
    types = present.get("layer_types")
    if isinstance(types, list) and types and all(isinstance(t, str) for t in types):
        kept = list(dict.fromkeys(types))
        kept += [types[-1]] * (2 - len(kept))
        small["layer_types"] = kept
        for key in ("num_hidden_layers", "n_layer", "n_layers", "num_layers"):
            if key in small:
                small[key] = len(kept)
    if "expand" in present and {"num_heads", "head_dim"} <= set(small):  # Mamba-2's layout
        small["num_heads"] = present["expand"] * small.get("hidden_size", 64) // small["head_dim"]
    # a hybrid whose default layers are all linear attention keeps one attention layer
    if set(small.get("layer_types", ())) == {"linear_attention"}:
        small["layer_types"] = ["linear_attention", "full_attention"]
    if "attn_layer_indices" in present and not present["attn_layer_indices"]:
        small["attn_layer_indices"] = [1]
    ids = {k: v for k, v in (("pad_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 2))
           if k in present}  # fmt: skip
    return AutoConfig.for_model(model_type, **small, **ids)


def tiny_model(model_type: str, seed: int = 0, variant: int = 0) -> Any:
    """The randomized causal LM of :func:`tiny_config` (``tests.llm.families.randomize``)."""
    import torch
    from transformers import AutoModelForCausalLM

    from tests.llm.families import randomize

    config = tiny_config(model_type, variant)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)
    randomize(model, seed)
    return model.eval()


#: tiny-config variants tried in turn until ``model.generate`` runs (see :func:`tiny_config`)
VARIANTS = (0, 1, 2)
