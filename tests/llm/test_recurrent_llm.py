"""Models whose cache holds a recurrent or convolution state (Mamba, hybrids with attention):
the step carries every tensor of the cache, one token per call, from a zero state.

The generation tests of each such architecture (export, tract check, ``model.generate``'s
greedy tokens in tract, after q4_0) are those of ``tests/llm/test_families.py`` (``GENERIC``);
here: the zero state is a fresh start, the io names, the refusals, and a checkpoint directory
exported, checked and generated from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from t2n_core.errors import ExportInputError
from t2n_core.llm import export_prefill_decode
from t2n_core.llm.export import example_inputs
from t2n_core.llm.wrapper import CausalLMWithCache, cache_fields_of, input_names_of, is_stateful
from tests.llm.generic_config import tiny_model


@pytest.mark.parametrize(
    "model_type",
    ["mamba", *(pytest.param(t, marks=pytest.mark.slow) for t in (
        "mamba2", "jamba", "falcon_h1", "qwen3_next", "granitemoehybrid", "lfm3",
        "inkling_text"))],
)  # fmt: skip
def test_token_by_token_from_a_zero_state_is_the_prompt_path(model_type):
    """The step (transformers' decode path, the state said to be there) fed a prompt one token
    at a time from zeros gives the logits of the model's own prompt path on the whole prompt:
    a zero convolution window is the causal padding, a zero recurrent state the scan's start.
    LFM3's sliding-window attention layer (window 4) runs on a full cache, past its window, and
    so do Inkling's layers of linear attention with a sliding window."""
    model = tiny_model(model_type)
    assert is_stateful(model)
    ids = torch.randint(0, 256, (2, 8), generator=torch.Generator().manual_seed(0))
    step = CausalLMWithCache(model).eval()
    past = list(example_inputs(model, batch=2, past=0, new=1, dtype=torch.float32)[1:])
    assert all(p.abs().sum() == 0 for p in past)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
        for t in range(ids.shape[1]):
            logits, *past = step(ids[:, t : t + 1], *past)
            torch.testing.assert_close(logits[:, 0], expected[:, t], atol=1e-4, rtol=1e-4)


def test_every_state_tensor_is_an_io_of_its_own_and_the_step_takes_one_token():
    model = tiny_model("mamba")
    assert input_names_of(model) == [
        "input_ids", "past_conv_state_0", "past_recurrent_state_0",
        "past_conv_state_1", "past_recurrent_state_1",
    ]  # fmt: skip
    assert all(f.seq_axis is None for f in cache_fields_of(model))
    args = example_inputs(model, batch=1, past=0, new=2, dtype=torch.float32)
    with pytest.raises(ExportInputError, match="one token per call"):
        CausalLMWithCache(model)(*args)
    with pytest.raises(ExportInputError, match=r"recurrent state.*graphs='step'"):
        export_prefill_decode(model, "unused.nnef.tgz", progress=False)


def test_hybrid_carries_keys_values_and_states():
    """Jamba: a Mamba layer (conv and recurrent state, fixed sizes) and an attention layer
    (keys and values growing along the past axis P)."""
    fields = cache_fields_of(tiny_model("jamba"))
    assert [(f.input_name(), f.seq_axis) for f in fields] == [
        ("past_conv_state_0", None), ("past_recurrent_state_0", None),
        ("past_key_1", 2), ("past_value_1", 2),
    ]  # fmt: skip


@pytest.mark.slow
def test_checkpoint_of_a_recurrent_model_exports_checks_and_generates(tmp_path, capsys):
    """``export_checkpoint`` on a saved Mamba: io samples named per state tensor (the first
    token on a zero state, the last after the others), replayed by ``t2n check DIR``;
    ``t2n generate`` feeds the prompt one token at a time and gives tract's greedy tokens."""
    from t2n_core.cli import main
    from t2n_core.llm import export_checkpoint, generate_text
    from tests.llm.test_families import torch_greedy

    model = tiny_model("mamba")
    model.save_pretrained(tmp_path / "ckpt")
    shipped = export_checkpoint(tmp_path / "ckpt", tmp_path / "out", progress=False)
    assert shipped.check is not None and shipped.check.passed
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["samples"] == ["prompt", "step"] and manifest["one_token_per_step"]
    assert "present_recurrent_state_1" in {s.split(":")[0] for s in manifest["outputs"]}
    with np.load(tmp_path / "out" / "step_inputs.npz") as step:
        assert step["input_ids"].shape == (1, 1) and step["past_conv_state_0"].any()
    assert main(["check", str(tmp_path / "out")]) == 0
    prompt = [5, 17, 42, 8]
    gen = generate_text(tmp_path / "out", prompt_ids=prompt, max_new_tokens=4)
    tokens, _ = torch_greedy(model, torch.tensor([prompt]), 4)
    assert gen.tokens == tokens[0].tolist()
    capsys.readouterr()
    assert main(["generate", str(tmp_path / "out"), "--prompt-ids", "5,17,42,8",
                 "--max-new-tokens", "4"]) == 0  # fmt: skip
    assert str(tokens[0].tolist()[0]) in capsys.readouterr().out
