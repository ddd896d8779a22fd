"""Causal LMs exported with their KV cache: one generation step per call."""

import t2n_core.llm.cache_state  # noqa: F401  (registers the KV cache as block state)
from t2n_core.llm.export import (
    DEFAULT_TOLERANCE,
    example_inputs,
    export_causal_lm,
    export_prefill_decode,
)
from t2n_core.llm.generate import Generation, TextGeneration, generate_text, greedy_generate
from t2n_core.llm.ship import ShippedModel, export_checkpoint
from t2n_core.llm.wrapper import (
    CausalLMWithCache,
    input_names_for,
    kv_shape_of,
    num_layers_of,
    output_names_for,
    past_shapes_of,
)

__all__ = [
    "DEFAULT_TOLERANCE",
    "CausalLMWithCache",
    "Generation",
    "ShippedModel",
    "TextGeneration",
    "example_inputs",
    "export_causal_lm",
    "export_checkpoint",
    "export_prefill_decode",
    "generate_text",
    "greedy_generate",
    "input_names_for",
    "kv_shape_of",
    "num_layers_of",
    "output_names_for",
    "past_shapes_of",
]
