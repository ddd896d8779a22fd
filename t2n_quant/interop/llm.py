"""A Hugging Face causal LM filled from a quantized safetensors file, ready for
:func:`t2n_core.llm.export_causal_lm`, without ever holding its float weights."""

from __future__ import annotations

import logging
import os

import torch
from torch import nn

from t2n_quant.interop.safetensors import load_quantized

logger = logging.getLogger(__name__)


def causal_lm_from_quantized(
    config_dir: str | os.PathLike,
    quantized: str | os.PathLike,
    *,
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """The causal LM of ``config_dir/config.json`` with the weights of ``quantized`` (written
    by :func:`~t2n_quant.interop.safetensors.quantize_safetensors`, ``save_quantized`` or an
    import), in eval mode.

    The model is built without initialising its weights (transformers' ``no_init_weights``):
    the empty float tensors are never written, so they take no resident memory before the
    file's tensors replace them. ``dtype``: the float dtype of the rest (norms, biases,
    activations); by default the config's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    config = AutoConfig.from_pretrained(config_dir, local_files_only=True)
    dtype = dtype or getattr(config, "dtype", None) or torch.float32
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype)
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.tie_weights()  # init_weights, which ties them, was skipped
    load_quantized(quantized, model)
    logger.info("built %s from %s", type(model).__name__, quantized)
    return model.eval()
