"""io samples of export-llm (:mod:`t2n_core.llm.samples`): one PyTorch pass gives what three
give (prompt, step, chunk), a length-dependent model falls back to three passes, and the
samples written replay in tract with ``t2n check OUT``."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import t2n_core.llm.samples as samples_module
from t2n_core.cli import main
from t2n_core.llm import CausalLMWithCache
from t2n_core.llm.samples import (
    SAMPLE_TEXT,
    SAMPLES,
    load_samples,
    one_pass_hazard,
    reference_samples,
    sample_tokens,
)
from t2n_quant import quantize_model
from t2n_quant.llm import export_checkpoint
from tests.llm.checkpoints import save_tiny_llama, tiny_tokenizer
from tests.llm.families import randomize, tiny


def assert_samples_close(got, want, rtol: float) -> None:
    assert list(got) == list(want) == list(SAMPLES)
    for name in want:
        for got_io, want_io in zip(got[name], want[name]):
            assert list(got_io) == list(want_io)
            for key, expected in want_io.items():
                actual = got_io[key]
                assert actual.shape == expected.shape and actual.dtype == expected.dtype, key
                if expected.dtype.kind != "f":
                    np.testing.assert_array_equal(actual, expected)
                elif expected.size:
                    scale = float(np.abs(expected).max())
                    assert float(np.abs(actual - expected).max()) <= rtol * scale, (name, key)


def assert_chained(samples, ids: np.ndarray) -> None:
    """Each sample runs on the cache the one before returned; together they run ``ids``."""
    ran = np.concatenate([inputs["input_ids"] for inputs, _ in samples.values()], axis=1)
    np.testing.assert_array_equal(ran, ids)
    before = None
    for inputs, outputs in samples.values():
        past = [v for k, v in inputs.items() if k.startswith("past_")]
        if before is None:
            assert all(p.shape[2] == 0 for p in past)
        else:
            for p, b in zip(past, before, strict=True):
                np.testing.assert_array_equal(p, b)
        before = [v for k, v in outputs.items() if k.startswith("present_")]


@pytest.mark.parametrize("family", ["llama", "bloom", "mixtral", "deepseek_v3"])
@pytest.mark.parametrize("all_logits", [False, True], ids=["last-logits", "all-logits"])
def test_one_pass_equals_three_passes(family: str, all_logits: bool) -> None:
    """ALiBi, experts, keys and values of different widths: slices of one pass are the
    three passes' samples (to float rounding), the logits of the last position or all."""
    model = tiny(family)
    ids = sample_tokens(None, 256)
    assert one_pass_hazard(model, ids.shape[1]) is None
    one = reference_samples(model, ids, torch.float32, all_logits=all_logits, progress=False)
    three = reference_samples(model, ids, torch.float32, all_logits=all_logits, progress=False,
                              one_pass=False)  # fmt: skip
    assert_samples_close(one, three, rtol=1e-5)
    assert_chained(one, ids)
    logits = [outputs["logits"] for _, outputs in one.values()]
    assert [x.shape[1] for x in logits] == ([ids.shape[1] - 3, 1, 2] if all_logits else [1, 1, 1])


def _dynamic_rope_llama() -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8,
        rope_parameters={"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    randomize(model)
    return model


def test_length_dependent_model_falls_back_to_three_passes(caplog, monkeypatch) -> None:
    """Dynamic RoPE rescales once the sequence outgrows max_position_embeddings: one pass over
    all the samples' tokens gives other outputs than the prompt alone, so three passes run
    (the reason logged). A sliding window shorter than the tokens falls back too."""
    ids = sample_tokens(None, 256)
    hazard = one_pass_hazard(_dynamic_rope_llama(), ids.shape[1])
    assert hazard is not None and "dynamic" in hazard
    assert "sliding_window=4" in one_pass_hazard(tiny("mistral"), ids.shape[1])
    assert one_pass_hazard(tiny("mistral"), 4) is None
    three = reference_samples(_dynamic_rope_llama(), ids, torch.float32, all_logits=False,
                              progress=False, one_pass=False)  # fmt: skip
    with caplog.at_level(logging.INFO, logger="t2n_core.llm.samples"):
        chosen = reference_samples(_dynamic_rope_llama(), ids, torch.float32, all_logits=False,
                                   progress=False)  # fmt: skip
    assert "io samples in 3 PyTorch passes, not one: RoPE scaling 'dynamic'" in caplog.text
    assert_samples_close(chosen, three, rtol=1e-6)
    monkeypatch.setattr(samples_module, "one_pass_hazard", lambda *_: None)
    forced = reference_samples(_dynamic_rope_llama(), ids, torch.float32, all_logits=False,
                               progress=False)  # fmt: skip
    with pytest.raises(AssertionError):
        assert_samples_close(forced, three, rtol=1e-3)


def test_sample_tokens_from_the_tokenizer(tmp_path) -> None:
    tiny_tokenizer().save_pretrained(tmp_path)
    ids = sample_tokens(tmp_path, 128)
    assert ids.tolist() == [tiny_tokenizer()(SAMPLE_TEXT)["input_ids"]] and ids.shape[1] > 5
    random_ids = sample_tokens(None, 128)
    assert random_ids.shape == (1, 11) and random_ids.dtype == np.int64 and random_ids.max() < 128


@pytest.mark.slow
def test_samples_written_equal_pytorch_and_replay_in_tract(tmp_path, capsys) -> None:
    """q4_0 export with the check: each npz pair is what the quantized PyTorch model gives
    on those inputs, ``t2n check OUT`` replays all three in tract, and fails on a wrong one."""
    model = save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    out = tmp_path / "out"
    shipped = export_checkpoint(tmp_path / "ckpt", out, codec="q4_0", progress=False)
    assert shipped.check is not None and shipped.check.passed
    assert {o.name.split("@")[1] for o in shipped.check.outputs} == set(SAMPLES)
    written = load_samples(out, shipped.manifest["samples"])
    quantize_model(model, "q4_0", progress=False)
    step = CausalLMWithCache(model, all_logits=False).eval()
    with torch.no_grad():
        direct = {
            name: (inputs, {k: v.numpy() for k, v in zip(outputs, step(
                *(torch.from_numpy(x) for x in inputs.values())))})
            for name, (inputs, outputs) in written.items()
        }  # fmt: skip
    assert_samples_close(written, direct, rtol=1e-5)
    assert_chained(written, np.array([tiny_tokenizer()(SAMPLE_TEXT)["input_ids"]]))

    assert main(["check", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tract check passed" in printed
    assert all(f"logits@{name}: ok" in printed for name in SAMPLES)
    with np.load(out / "step_outputs.npz") as data:
        wrong = dict(data)
    wrong["logits"] = wrong["logits"] + 1.0
    np.savez(out / "step_outputs.npz", **wrong)
    assert main(["check", str(out)]) == 1
    assert "logits@step: MISMATCH" in capsys.readouterr().out
    assert main(["check", str(out / "model.nnef.tgz")]) == 2
    assert "not a directory written by export-llm" in capsys.readouterr().err


@pytest.mark.slow
def test_prefill_decode_directory_checks_and_generates(tmp_path, capsys) -> None:
    """--graphs prefill-decode: the prompt and chunk samples run on prefill, the step on
    decode, each keyed by its graph's io names; the export's check, `t2n check OUT` and
    `t2n generate` run both graphs in tract, generating as the quantized PyTorch model."""
    from tests.llm.test_export_llm import NEW_TOKENS, PROMPT, assert_same_generation

    model = save_tiny_llama(tmp_path / "ckpt", dtype=torch.float32)
    out = tmp_path / "out"
    args = ["export-llm", str(tmp_path / "ckpt"), "-o", str(out), "--graphs", "prefill-decode",
            "--codec", "q4_0", "--quiet"]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "prefill (T tokens) + decode (1 token)" in printed and "passed on prompt" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graphs"] == ["prefill", "decode"] and manifest["checked"]
    assert manifest["sample_graphs"] == {"prompt": "prefill", "step": "decode", "chunk": "prefill"}
    assert "decode_input_ids: i64[B, 1]" in manifest["inputs"]
    assert manifest["tensors"]["model.lm_head.weight"]["type"] == "q4_0"  # written once
    written = load_samples(out, manifest["samples"])
    for name, graph in manifest["sample_graphs"].items():
        inputs, outputs = written[name]
        assert next(iter(inputs)) == f"{graph}_input_ids"
        assert next(iter(outputs)) == f"{graph}_logits"
    assert main(["check", str(out)]) == 0
    printed = capsys.readouterr().out
    assert all(f"{g}_logits@{n}: ok" in printed for n, g in manifest["sample_graphs"].items())
    assert main(["generate", str(out), "--prompt", PROMPT,
                 "--max-new-tokens", str(NEW_TOKENS)]) == 0  # fmt: skip
    quantize_model(model, "q4_0", progress=False)
    assert_same_generation(out, model)
    bad = ["export-llm", str(tmp_path / "ckpt"), "-o", str(tmp_path / "no"), "--graphs",
           "prefill-decode", "--all-logits"]  # fmt: skip
    assert main(bad) == 2 and "all_logits needs graphs='step'" in capsys.readouterr().err
    assert not (tmp_path / "no").exists()
