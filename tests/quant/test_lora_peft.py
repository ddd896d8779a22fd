"""PEFT LoRA on a tiny transformers Llama: exported apart from its base (f32 or q4_0) and
swapped with `t2n adapter swap` from a PEFT adapter folder, or merged; tract vs PyTorch."""

from __future__ import annotations

import copy
import hashlib
from pathlib import Path

import numpy as np
import peft  # noqa: F401  a test dependency: missing must fail, not skip
import pytest
import torch
from peft import LoraConfig, get_peft_model, inject_adapter_in_model

import t2n_core
from t2n_core.cli import main
from t2n_core.errors import LoraError
from t2n_core.lora_swap import swap_adapter
from t2n_core.nnef.archive import read_archive_files
from t2n_core.nnef.dat import DatHeader
from t2n_quant import quantize_model
from tests.core.test_hf_llama import VOCAB, Logits, export_llama, tiny_llama

TARGETS = ["q_proj", "v_proj", "down_proj"]


def lora_config(alpha: int = 8, **kwargs) -> LoraConfig:
    return LoraConfig(r=4, lora_alpha=alpha, target_modules=TARGETS, lora_dropout=0.1,
                      init_lora_weights=False, **kwargs)  # fmt: skip


def peft_llama(seed: int, alpha: int = 8, **kwargs) -> torch.nn.Module:
    """The same tiny Llama each time, with an adapter drawn from ``seed`` (B not zero)."""
    base = tiny_llama()
    torch.manual_seed(seed)
    return get_peft_model(base, lora_config(alpha, **kwargs)).eval()


def logits(model: torch.nn.Module, ids: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return Logits(model)(ids).numpy()


@pytest.mark.parametrize("codec", [None, "q4_0"], ids=["f32", "q4_0"])
def test_peft_separate_then_swapped(codec: str | None, tmp_path: Path, capsys) -> None:
    first, second = peft_llama(1), peft_llama(2, alpha=16, alpha_pattern={"down_proj": 4})
    second.save_pretrained(tmp_path / "adapter2")
    if codec is not None:
        for m in (first, second):
            summary = quantize_model(m, codec, progress=False)
            assert sum("LoRA adapter" in k.reason for k in summary.skipped) == 12
    result = export_llama(first, tmp_path)
    assert any("lora_dropout (p=0.1) on 6" in n for n in result.notes)
    files = read_archive_files(result.path)
    site = "model.base_model.model.model.layers.1.mlp.down_proj"
    assert DatHeader.unpack(files[f"{site}.lora_B.dat"]).shape == (64, 4)
    base_type = DatHeader.unpack(files[f"{site}.base_layer.weight.dat"]).type_name()
    assert base_type == ("q4_0" if codec else "f32")

    before = hashlib.sha256(result.path.read_bytes()).hexdigest()
    out = tmp_path / "swapped.nnef.tgz"
    argv = ["adapter", "swap", str(result.path), str(tmp_path / "adapter2"), "-o", str(out)]
    assert main(argv) == 0
    assert "18 adapter file(s) rewritten, 18 changed" in capsys.readouterr().out
    assert hashlib.sha256(result.path.read_bytes()).hexdigest() == before
    for length in (7, 12):
        ids = torch.randint(0, VOCAB, (1, length))
        t2n_core.check_archive(out, [ids.numpy()], [logits(second, ids)])
        assert not np.allclose(logits(first, ids), logits(second, ids), atol=1e-2)


@pytest.mark.slow
def test_peft_merged_q4_0_and_f32(tmp_path: Path) -> None:
    model = peft_llama(1)
    result = export_llama(model, tmp_path / "f32", lora="merged")
    assert not any("lora" in f for f in result.files)
    summary = quantize_model(model, "q4_0", lora="merged", progress=False)
    assert len(summary.quantized) == 16 and not summary.skipped  # q, v, down merged, then q4_0
    result = export_llama(model, tmp_path / "q4_0")
    assert set(result.tensor_bytes) == {"f32", "q4_0"} and result.tensor_bytes["f32"] < 2000


def test_adapter_of_a_peft_model_swaps_into_the_bare_model(tmp_path: Path) -> None:
    """An archive of the model with injected adapters takes a folder saved from a PeftModel."""
    bare = inject_adapter_in_model(lora_config(), tiny_llama()).eval()
    torch.manual_seed(3)
    for name, p in bare.named_parameters():
        if "lora_" in name:
            p.data = torch.randn_like(p) * 0.2
    result = export_llama(bare, tmp_path)
    other = peft_llama(4, alpha=32, use_rslora=True)
    other.save_pretrained(tmp_path / "adapter")
    swapped = swap_adapter(result.path, tmp_path / "adapter", tmp_path / "s")
    ids = torch.randint(0, VOCAB, (1, 9))
    t2n_core.check_archive(swapped.path, [ids.numpy()], [logits(other, ids)])


@pytest.mark.slow
def test_dora_only_merged(tmp_path: Path) -> None:
    model = peft_llama(1, use_dora=True)
    with pytest.raises(LoraError, match=r"(?s)6 LoRA layer\(s\) cannot be exported separate.*DoRA"):
        export_llama(model, tmp_path / "s")
    with pytest.raises(LoraError, match="DoRA"):
        quantize_model(copy.deepcopy(model), "q4_0", lora="separate", progress=False)
    export_llama(model, tmp_path / "m", lora="merged")
    model.save_pretrained(tmp_path / "dora")
    plain = export_llama(peft_llama(1), tmp_path / "plain")
    with pytest.raises(LoraError, match="not a plain LoRA adapter \\(use_dora\\)"):
        swap_adapter(plain.path, tmp_path / "dora", tmp_path / "x")


@pytest.mark.slow
def test_several_adapters(tmp_path: Path) -> None:
    model = peft_llama(1)
    model.add_adapter("other", lora_config(16))
    result = export_llama(model, tmp_path / "one")
    assert any("adapter 'other' is loaded on 6 module(s) but not active" in n for n in result.notes)
    model.base_model.set_adapter(["default", "other"])
    with pytest.raises(LoraError, match=r"2 adapters are active at once \(default, other\)"):
        export_llama(model, tmp_path / "two")
    export_llama(model, tmp_path / "merged", lora="merged")


def test_f16_model_with_the_f32_adapter_peft_keeps(tmp_path: Path) -> None:
    from torch import nn

    from tests.helpers import export_and_check

    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 16)).half().eval()
    config = LoraConfig(r=4, target_modules=["0", "2"], init_lora_weights=False)
    tuned = get_peft_model(net, config).eval()  # PEFT upcasts an f16 model's adapter to f32
    x = torch.randn(3, 64).half()
    result = export_and_check(tuned, x, tmp_path, atol=1e-2, rtol=1e-2)
    files = read_archive_files(result.path)
    site = "base_model.model.0"
    assert DatHeader.unpack(files[f"{site}.base_layer.weight.dat"]).type_name() == "f16"
    assert DatHeader.unpack(files[f"{site}.lora_A.dat"]).type_name() == "f32"
    export_and_check(tuned, x, tmp_path, name="merged", lora="merged", atol=1e-2, rtol=1e-2)
