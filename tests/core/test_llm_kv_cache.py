"""A tiny Hugging Face Llama (GQA, random weights) exported with its KV cache runs in tract.

One step (P=5 past tokens, T=3 new) matches PyTorch; a greedy generation loop in tract
(prefill with an empty cache, P=0, then decode steps feeding tract's own present k/v back)
gives the tokens and logits of ``model.generate(do_sample=False)``.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

from t2n_core.errors import TractRunError
from t2n_core.llm import (
    CausalLMWithCache,
    example_inputs,
    export_causal_lm,
    export_prefill_decode,
    greedy_generate,
    kv_shape_of,
)
from tests.core.test_hf_llama import VOCAB, tiny_llama

DTYPES = {"f32": torch.float32, "f16": torch.float16}
#: tract vs PyTorch on logits: f32 to 1e-4, f16 (both compute in f16) to 1e-2, of max|logit|
LOGIT_TOL = {torch.float32: 1e-4, torch.float16: 1e-2}
PROMPT = 6
DECODE_STEPS = 4


def torch_greedy(model: nn.Module, prompt: torch.Tensor, steps: int):
    """Tokens and last-position logits of ``model.generate(do_sample=False)``."""
    with torch.no_grad():
        out = model.generate(
            prompt, max_new_tokens=steps, min_new_tokens=steps, do_sample=False,
            output_logits=True, return_dict_in_generate=True, pad_token_id=0,
        )  # fmt: skip
    return out.sequences[:, prompt.shape[1] :].numpy(), [x.float().numpy() for x in out.logits]


def check_generation(model: nn.Module, path, dtype: torch.dtype) -> None:
    """Prefill + ``DECODE_STEPS`` greedy steps in tract (in the worker process) equal the
    same loop in PyTorch, and the same loop with tract in this process."""
    torch.manual_seed(2)
    prompt = torch.randint(0, VOCAB, (1, PROMPT))
    gen = greedy_generate(path, prompt.numpy(), 1 + DECODE_STEPS)
    here = greedy_generate(path, prompt.numpy(), 1 + DECODE_STEPS, in_process=True)
    np.testing.assert_array_equal(gen.tokens, here.tokens)
    assert all(np.array_equal(a, b) for a, b in zip(gen.logits, here.logits, strict=True))
    tokens, logits = torch_greedy(model, prompt, 1 + DECODE_STEPS)
    np.testing.assert_array_equal(gen.tokens, tokens)
    tol = LOGIT_TOL[dtype]
    for step, (ours, ref) in enumerate(zip(gen.logits, logits)):
        err = np.abs(ours.astype(np.float64) - ref).max()
        assert err <= tol + tol * np.abs(ref).max(), f"step {step}: max|tract - torch| = {err:.3g}"


def test_wrapper_matches_full_sequence():
    """The wrapper's step on a real cache gives the logits of the whole sequence (PyTorch)."""
    model = tiny_llama()
    step = CausalLMWithCache(model).eval()
    ids = torch.randint(0, VOCAB, (2, 8))
    kv_heads, head_dim = kv_shape_of(model)
    empty = [torch.zeros(2, kv_heads, 0, head_dim) for _ in range(4)]
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        _, *past = step(ids[:, :5], *empty)
        logits, *present = step(ids[:, 5:], *past)
    torch.testing.assert_close(logits, full[:, 5:], atol=1e-5, rtol=1e-5)
    assert [tuple(p.shape) for p in present] == [(2, kv_heads, 8, head_dim)] * 4


#: the tests sharing :func:`exported` run on one pytest-xdist worker: it exports once
SHARES_EXPORT = pytest.mark.xdist_group("llm_kv_cache-exported")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """dtype name -> (model, export result) of the tiny Llama, each exported (and checked in
    tract) once for the tests of this file: f32 as is, f16 as the copy ``dtype=`` makes of
    the f32 model (an f16 model exported as it is: ``test_families.py``'s f16 cases)."""

    def export_one(name: str):
        model = tiny_llama()
        path = tmp_path_factory.mktemp(name) / "llm.nnef.tgz"
        result = export_causal_lm(model, path, dtype=DTYPES[name], progress=False)
        return model, result

    return {name: export_one(name) for name in DTYPES}


@SHARES_EXPORT
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_one_step_then_generation(dtype, exported):
    model, result = exported["f32" if dtype == torch.float32 else "f16"]
    assert result.check is not None and result.check.passed, str(result.check)
    assert [str(s) for s in result.inputs[:2]] == [
        "input_ids: i64[B, T]", f"past_key_0: {'f32' if dtype == torch.float32 else 'f16'}"
        "[B, 2, P, 16]",
    ]  # fmt: skip
    assert result.outputs[0].shape == ("B", "T", VOCAB) and result.outputs[0].dtype == (
        "f32" if dtype == torch.float32 else "f16"
    )
    assert [o.name for o in result.outputs[1:3]] == ["present_key_0", "present_value_0"]
    assert next(model.parameters()).dtype == torch.float32  # the model itself is unchanged
    check_generation(copy.deepcopy(model).to(dtype), result.path, dtype)


@SHARES_EXPORT
def test_greedy_generate_in_the_worker_survives_a_tract_panic(exported):
    """greedy_generate runs tract in the worker: a batch of two gives the tokens and logits
    of tract in this process, and ids past the vocabulary (tract's gather panics, which
    would abort this process) raise TractRunError; the worker serves the next call."""
    path = exported["f32"][1].path
    prompt = np.random.default_rng(0).integers(0, VOCAB, (2, 5))
    worker = greedy_generate(path, prompt, 3)
    here = greedy_generate(path, prompt, 3, in_process=True)
    np.testing.assert_array_equal(worker.tokens, here.tokens)
    assert worker.tokens.shape == (2, 3) and worker.logits[0].shape == (2, VOCAB)
    assert all(np.array_equal(a, b) for a, b in zip(worker.logits, here.logits, strict=True))
    assert worker.logits[0].std() > 0
    with pytest.raises(TractRunError, match=r"crashed|could not run"):
        greedy_generate(path, prompt + 100 * VOCAB, 2)
    np.testing.assert_array_equal(greedy_generate(path, prompt, 3).tokens, worker.tokens)


def test_example_inputs_shapes():
    model = tiny_llama()
    ids, *kv = example_inputs(model, batch=2, past=0, new=3, dtype=torch.float32)
    assert ids.shape == (2, 3) and len(kv) == 4 and kv[0].shape == (2, 2, 0, 16)


@pytest.mark.slow  # ~20 s: two captures of the LLM, four tract checks, generation
def test_prefill_and_decode_graphs_share_every_weight(tmp_path):
    """Two graphs in one archive: prefill (T free) and decode (T = 1), one copy of the
    weights; generation with prefill then decode gives PyTorch's greedy tokens."""
    from t2n_core.nnef.archive import list_archive

    model = tiny_llama()
    path = tmp_path / "llm.nnef.tgz"
    result = export_prefill_decode(model, path, progress=False)
    assert all(r.check.passed for r in result.graphs.values())
    prefill_checked = [o.name for o in result.graphs["prefill"].check.outputs]
    assert "prefill_present_key_0@P=0" in prefill_checked  # the prompt, on an empty cache
    decode = result.graphs["decode"]
    assert str(decode.inputs[0]) == "decode_input_ids: i64[B, 1]"
    assert decode.outputs[0].shape == ("B", 1, VOCAB)
    weights = sum(p.numel() * 4 for p in model.parameters())
    stored = sum(s for n, s in list_archive(path).items() if n.endswith(".dat"))
    assert result.bytes_read_by_graphs > 1.9 * weights  # each graph reads all the weights
    assert stored < 1.05 * weights  # the archive holds them once
    check_generation(model, path, torch.float32)
