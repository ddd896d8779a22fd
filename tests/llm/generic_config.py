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
    **dict.fromkeys(("vocab_size", "vocab_size_per_layer_input",
                     "encoder_hash_byte_group_vocab"), 256),
    **dict.fromkeys(("hidden_size", "n_embd", "d_model", "dim", "embed_dim", "hidden_dim",
                     "attention_hidden_size", "word_embed_proj_dim", "embedding_size",
                     "emb_dim"), 64),
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
                     "ffn_hidden_size_moe", "expert_dim", "expert_ffn_hidden_size"), 64),
    **dict.fromkeys(("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts",
                     "ffn_num_experts"), 4),
    **dict.fromkeys(("num_experts_per_tok", "num_experts_per_token", "moe_top_k", "moe_k",
                     "top_k", "num_selected_experts", "moe_topk"), 2),
    **dict.fromkeys(("n_shared_experts", "num_shared_experts", "moe_num_shared_experts"), 1),
    **dict.fromkeys(("kv_lora_rank", "q_lora_rank"), 16),
    **dict.fromkeys(("qk_rope_head_dim", "qk_nope_head_dim", "rotary_dim"), 8),
    **dict.fromkeys(("n_group", "topk_group", "first_k_dense_replace", "num_group",
                     "num_expert_group"), 1),
    **dict.fromkeys(("zero_expert_num",), 2),
    **dict.fromkeys(("qk_head_dim",), 16),  # qk_nope_head_dim + qk_rope_head_dim
    **dict.fromkeys(("hidden_size_per_layer_input", "index_head_dim"), 16),
    **dict.fromkeys(("linear_num_key_heads", "linear_num_value_heads"), 2),
    **dict.fromkeys(("linear_key_head_dim", "linear_value_head_dim", "linear_head_dim"), 16),
    **dict.fromkeys(("linear_num_heads",), 4),
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


#: size fields whose default ``None`` is not "absent" but "derive it" or a crash in the model
#: (Nemotron divides by ``num_key_value_heads``, DeepSeek-V2 / dots1 top-k by ``None``): set too
NONE_IS_A_SIZE = ("head_dim", "num_key_value_heads", "num_experts_per_tok", "n_routed_experts",
                  "n_shared_experts")  # fmt: skip
#: fields naming the layer count, restored to the default when a validator ties other fields to
#: it (GPT-Neo's ``attention_types``, Zamba's ``layers_block_type``)
LAYER_COUNTS = ("num_hidden_layers", "n_layer", "n_layers", "num_layers", "decoder_layers")


def tiny_config(model_type: str, variant: int = 0) -> Any:
    """The config of ``model_type`` with every size field of :data:`SMALL` it has set small.

    Per-layer type lists keep one layer of each distinct type (a hybrid keeps an attention
    layer). Nested sub-configs (a multimodal model's ``text_config``, DBRX's ``attn_config``)
    are shrunk the same way. ``variant`` 1: as many kv heads as heads (configs that refuse
    grouped queries); 2: besides, ``head_dim`` left to the config (derived from other fields);
    3: ``head_dim`` equal to ``qk_rope_head_dim`` (MLA models whose ``head_dim`` is the rotary
    size: LongCat-Flash, Bailing-hybrid).
    """
    from transformers import AutoConfig

    return small_config(type(AutoConfig.for_model(model_type)), variant)


def small_config(config_class: type, variant: int = 0, default: Any = None) -> Any:
    """An instance of ``config_class`` with :data:`SMALL`'s sizes (see :func:`tiny_config`).

    A config whose validators refuse the small sizes (``__post_init__`` / ``validate_*``
    errors) is retried without one of them at a time, then with the default layer count.
    """
    base = {} if default is None else default.to_dict()  # a sub-config: as its parent made it
    default = config_class() if default is None else default
    small = {**base, **_small_fields(default, variant)}
    tries = [small] + [{k: v for k, v in small.items() if k != key} for key in small]
    tries.append({k: v for k, v in small.items() if k not in LAYER_COUNTS and k != "layer_types"})
    errors = []
    for fields in tries:
        try:
            return config_class(**fields)
        except Exception as exc:  # a validator's ValueError, StrictDataclass...Error, ...
            errors.append(exc)
    raise errors[0]


def _small_fields(default: Any, variant: int) -> dict[str, Any]:
    present = default.to_dict()
    small = _small_sizes(present, variant)
    small.update(_one_layer_of_each_kind(present, small, variant))
    _hybrid_layouts(present, small)
    for key, value in present.items():
        sub = getattr(default, key, None) if isinstance(value, dict) else None
        if _is_config(sub):
            small[key] = small_config(type(sub), variant, sub).to_dict()
    ids = {k: v for k, v in (("pad_token_id", 0), ("bos_token_id", 1), ("eos_token_id", 2))
           if k in present}  # fmt: skip
    return {**small, **ids}


def _small_sizes(present: dict[str, Any], variant: int) -> dict[str, Any]:
    small: dict[str, Any] = {}
    for key, value in SMALL.items():
        have = present.get(key, "absent")
        if (isinstance(have, int) and not isinstance(have, bool)) or (
            have is None and key in NONE_IS_A_SIZE
        ):
            small[key] = value
    if variant == 2:
        small.pop("head_dim", None)
    if variant in (1, 2):
        for key in ("num_key_value_heads", "num_kv_heads", "n_kv_heads", "kv_n_heads"):
            if key in small:
                small[key] = 4
    if "kv_lora_rank" in small:  # MLA expands its latent to every head: no grouped queries
        for key in ("num_key_value_heads", "num_kv_heads"):
            if key in small:
                small[key] = small.get("num_attention_heads", 4)
    if variant == 3 and "head_dim" in small and "qk_rope_head_dim" in small:
        small["head_dim"] = small["qk_rope_head_dim"]
    return small


def _hybrid_layouts(present: dict[str, Any], small: dict[str, Any]) -> None:
    if "expand" in present and {"num_heads", "head_dim"} <= set(small):  # Mamba-2's layout
        small["num_heads"] = present["expand"] * small.get("hidden_size", 64) // small["head_dim"]
    # a hybrid whose default layers are all linear attention keeps one attention layer
    if set(small.get("layer_types", ())) == {"linear_attention"}:
        small["layer_types"] = ["linear_attention", "full_attention"]
    if "attn_layer_indices" in present and not present["attn_layer_indices"]:
        small["attn_layer_indices"] = [1]


def _one_layer_of_each_kind(
    present: dict[str, Any], small: dict[str, Any], variant: int
) -> dict[str, Any]:
    """``layer_types`` cut to the first layer of each distinct type (at least 2 layers); a
    per-layer override dict (Gemma 4's ``per_layer_config``, keyed by layer index) follows the
    kept layers, its sizes shrunk too."""
    types = present.get("layer_types")
    if not (isinstance(types, list) and types and all(isinstance(t, str) for t in types)):
        return {}
    kept = sorted({kind: i for i, kind in reversed(list(enumerate(types)))}.values())
    kept += [len(types) - 1] * (2 - len(kept))
    out: dict[str, Any] = {"layer_types": [types[i] for i in kept]}
    for key in LAYER_COUNTS:
        if key in small:
            out[key] = len(kept)
    for key, value in present.items():
        if (
            isinstance(value, dict)
            and value
            and all(str(k).isdigit() and isinstance(v, dict) for k, v in value.items())
        ):
            out[key] = {type(k)(str(j).zfill(len(str(k)))): _small_override(v, present, variant)
                        for j, old in enumerate(kept) for k, v in value.items()
                        if int(k) == old}  # fmt: skip
    return out


def _small_override(override: dict[str, Any], present: dict[str, Any], variant: int) -> Any:
    """A layer's overrides of the global sizes, shrunk: a size that differs from the global
    one stays different (twice the small value), so the layer stays a layer of its own."""
    small = _small_sizes(override, variant)
    return {**override, **{k: v if override[k] == present.get(k) else 2 * v
                           for k, v in small.items()}}  # fmt: skip


def _is_config(value: Any) -> bool:
    from transformers import PretrainedConfig

    return isinstance(value, PretrainedConfig)


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
VARIANTS = (0, 1, 2, 3)
