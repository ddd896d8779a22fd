"""``t2n export-llm --adapter DIR``: a PEFT LoRA adapter on a checkpoint, q4_0 base with the
adapter apart (then swapped for another), or merged; generation in tract equals PyTorch's."""

from __future__ import annotations

import copy
import shutil

import peft  # noqa: F401  a test dependency: missing must fail, not skip
import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model

from t2n_core.cli import main
from t2n_core.inspect import inspect_archive
from t2n_quant import quantize_model
from tests.llm.checkpoints import save_tiny_llama
from tests.llm.test_export_llm import assert_same_generation


def save_adapter(model: torch.nn.Module, path, seed: int, alpha: int) -> None:
    torch.manual_seed(seed)
    config = LoraConfig(r=4, lora_alpha=alpha, target_modules=["q_proj", "v_proj", "up_proj"],
                        init_lora_weights=False)  # fmt: skip
    tuned = get_peft_model(copy.deepcopy(model), config)
    for name, p in tuned.named_parameters():
        if "lora_" in name:
            p.data *= 4  # large enough to change the greedy tokens
    tuned.save_pretrained(path)


def with_adapter(model: torch.nn.Module, path, codec: str | None) -> torch.nn.Module:
    tuned = PeftModel.from_pretrained(copy.deepcopy(model), path).base_model.model.eval()
    if codec is not None:
        quantize_model(tuned, codec, progress=False)
    return tuned


@pytest.mark.slow
def test_adapter_apart_from_a_q4_0_base_then_swapped(tmp_path, capsys):
    model = save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    save_adapter(model, tmp_path / "a1", 1, 8)
    save_adapter(model, tmp_path / "a2", 2, 16)
    out = tmp_path / "out"
    argv = ["export-llm", str(tmp_path / "ckpt"), "-o", str(out), "--codec", "q4_0",
            "--adapter", str(tmp_path / "a1"), "--quiet"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "passed" in printed
    info = inspect_archive(out / "model.nnef.tgz")
    assert info.properties["lora.mode"] == "separate" and info.tensor_bytes["f32"] > 0
    first = with_adapter(model, tmp_path / "a1", "q4_0")
    assert_same_generation(out, first)

    other = tmp_path / "other"
    shutil.copytree(out, other, ignore=shutil.ignore_patterns("model.nnef.tgz"))
    swap = ["adapter", "swap", str(out / "model.nnef.tgz"), str(tmp_path / "a2"),
            "-o", str(other / "model.nnef.tgz")]  # fmt: skip
    assert main(swap) == 0
    assert "18 changed" in capsys.readouterr().out  # A, B, scale of 3 projections x 2 layers
    second = with_adapter(model, tmp_path / "a2", "q4_0")
    assert_same_generation(other, second)


@pytest.mark.slow
def test_adapter_merged(tmp_path):
    model = save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    save_adapter(model, tmp_path / "a1", 1, 8)
    argv = ["export-llm", str(tmp_path / "ckpt"), "-o", str(tmp_path / "out"), "--quiet",
            "--adapter", str(tmp_path / "a1"), "--lora", "merged", "--codec", "q4_0"]  # fmt: skip
    assert main(argv) == 0
    info = inspect_archive(tmp_path / "out" / "model.nnef.tgz")
    assert info.properties.get("lora.mode") is None and set(info.tensor_bytes) == {"f32", "q4_0"}
    merged = with_adapter(model, tmp_path / "a1", None)
    quantize_model(merged, "q4_0", lora="merged", progress=False)
    assert_same_generation(tmp_path / "out", merged)
