"""The tiny Hugging Face Llama, quantized, exports and matches in tract (dynamic length)."""

from __future__ import annotations

import pytest

from t2n_quant import quantize_model
from tests.core.test_hf_llama import export_llama, tiny_llama

# 2 layers x (q, k, v, o, gate, up, down) + embedding (+ an untied LM head)
LINEAR_WEIGHTS = 64 * 64 * 2 + 32 * 64 * 2 + 128 * 64 * 3
EMBED = 128 * 64


@pytest.mark.parametrize("spec", ["q4_0", "minmax:4:g32"])
@pytest.mark.parametrize("tied", [False, True], ids=["untied-head", "tied-head"])
def test_tiny_llama_quantized(spec, tied, tmp_path):
    model = tiny_llama(tied=tied)
    summary = quantize_model(model, spec, progress=False)
    assert not summary.skipped
    assert len(summary.quantized) == 2 * 7 + (1 if tied else 2)
    result = export_llama(model, tmp_path)
    weights = 2 * LINEAR_WEIGHTS + EMBED * (1 if tied else 2)
    if spec == "q4_0":  # every weight stays Q4_0 in the archive; a tied table once
        assert result.tensor_bytes["q4_0"] == weights // 32 * 18
    else:  # 4-bit codes, two per byte, and an f16 scale + zero point per group of 32
        assert result.tensor_bytes["u8"] == weights // 2
