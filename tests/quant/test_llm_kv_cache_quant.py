"""The tiny Llama, quantized, exported with its KV cache: tract follows the quantized PyTorch
model step by step (one P=5/T=3 step, then prefill + greedy decode feeding its own k/v back)."""

from __future__ import annotations

import pytest
import torch

from t2n_core.llm import export_causal_lm
from t2n_quant import quantize_model
from tests.core.test_hf_llama import tiny_llama
from tests.core.test_llm_kv_cache import check_generation


#: q4_0 (tract's own matmul on the stored blocks) on a tiny Llama, with the KV cache and
#: generation in tract: ``tests/llm/test_families.py::test_family[llama-q4_0]`` (and
#: ``[gpt2-q4_0]`` in the fast subset); here the codec weights dequantized by fragments
@pytest.mark.parametrize("spec", ["minmax:4:g32"])
def test_quantized_llm_with_kv_cache(spec, tmp_path):
    model = tiny_llama()
    summary = quantize_model(model, spec, progress=False)
    assert len(summary.quantized) == 2 * 7 + 2 and not summary.skipped
    result = export_causal_lm(model, tmp_path / "llm.nnef.tgz", progress=False)
    assert result.check is not None and result.check.passed, str(result.check)
    assert ("q4_0" if spec == "q4_0" else "u8") in result.tensor_bytes
    check_generation(model, result.path, torch.float32)
