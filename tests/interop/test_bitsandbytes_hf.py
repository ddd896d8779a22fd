"""A tiny Hugging Face causal LM loaded in 4-bit / 8-bit by transformers, converted and
exported with its KV cache: tract follows the bitsandbytes model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import BitsAndBytesConfig, LlamaForCausalLM

from t2n_core.llm import export_causal_lm
from t2n_quant.interop.bitsandbytes import convert_bitsandbytes
from tests.core.test_hf_llama import VOCAB, tiny_llama

CONFIGS = {
    "nf4-dq": dict(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True),
    "fp4": dict(load_in_4bit=True, bnb_4bit_quant_type="fp4"),
    "int8": dict(load_in_8bit=True),
}


@pytest.mark.slow
@pytest.mark.parametrize("kind", list(CONFIGS))
def test_hf_llama_loaded_with_bitsandbytes(kind: str, tmp_path: Path) -> None:
    tiny_llama().save_pretrained(tmp_path / "float")
    config = BitsAndBytesConfig(**CONFIGS[kind], bnb_4bit_compute_dtype=torch.float32)
    model = LlamaForCausalLM.from_pretrained(
        tmp_path / "float", quantization_config=config, dtype=torch.float32
    )
    ids = torch.randint(0, VOCAB, (1, 9), generator=torch.Generator().manual_seed(0))
    model.train()  # bitsandbytes' dequantizing forward (attention dropout is 0)
    with torch.no_grad():
        expected = model(ids, use_cache=False).logits
    model.eval()
    summary = convert_bitsandbytes(model)
    assert len(summary.layers) == 2 * 7  # q k v o gate up down per layer; lm_head stays float
    with torch.no_grad():
        assert torch.equal(model(ids, use_cache=False).logits, expected)
    result = export_causal_lm(model, tmp_path / "llm.nnef.tgz", progress=False)
    assert result.check is not None and result.check.passed, str(result.check)
    graph = result.path.name  # the archive holds the codes and the dequantizing fragment
    assert result.tensor_bytes.get("u8", 0) > 0, graph


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["nf4-dq", "int8"])
def test_checkpoint_saved_by_transformers_imports(kind: str, tmp_path: Path, capsys) -> None:
    """save_pretrained of a bitsandbytes model -> t2n import-bnb -> load_quantized: the same
    QTensors as converting the loaded model."""
    from t2n_core.cli import main as t2n_main
    from t2n_quant.interop.safetensors import load_quantized

    tiny_llama().save_pretrained(tmp_path / "float")
    config = BitsAndBytesConfig(**CONFIGS[kind], bnb_4bit_compute_dtype=torch.float32)
    model = LlamaForCausalLM.from_pretrained(
        tmp_path / "float", quantization_config=config, dtype=torch.float32
    )
    model.save_pretrained(tmp_path / "bnb")
    convert_bitsandbytes(model)
    dst = tmp_path / "t2n.safetensors"
    assert t2n_main(["import-bnb", str(tmp_path / "bnb"), "-o", str(dst)]) == 0
    assert "14 bitsandbytes layer(s) imported" in capsys.readouterr().out
    fresh = tiny_llama()
    load_quantized(dst, fresh)
    for name, t in model.state_dict(keep_vars=True).items():
        got = fresh.state_dict(keep_vars=True)[name]
        assert type(got) is type(t) and torch.equal(got.dequantize() if hasattr(got, "codec")
                                                    else got, t.dequantize() if hasattr(t, "codec")
                                                    else t), name  # fmt: skip
