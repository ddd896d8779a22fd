"""Every architecture family, every weight: a tiny random model of each exports with its KV
cache, passes the tract check (a P=5/T=3 step and a P=0 prompt) and generates in tract the
greedy tokens of ``model.generate`` (prefill, then decode steps feeding tract's own k/v back,
running past the sliding windows), in f32, in f16 and after q4_0.

After q4_0 every float matrix of the model is either quantized or listed in the summary's
skipped weights with a reason, and the archive holds no float matrix other than those (GPT-2's
transposed ``Conv1D`` and the 3-D MoE expert weights are quantized too).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import pytest
import torch
from torch import nn

from t2n_core.export import ExportResult
from t2n_core.llm import export_causal_lm, greedy_generate
from t2n_core.nnef.archive import read_archive_files
from t2n_core.nnef.dat import DatHeader
from t2n_quant import QTensor, QuantizationSummary, quantize_model
from tests.llm.families import FAMILIES, GENERIC, VOCAB, WINDOW, tiny

MODES = ("f32", "f16", "q4_0")
#: tract vs PyTorch on the logits of each step: max|a - b| <= tol + tol * max|b|
LOGIT_TOL = {"f32": 1e-4, "f16": 1e-2, "q4_0": 1e-4}
PROMPT = 6
STEPS = 3 * WINDOW  # prompt + steps runs well past the sliding windows
#: sliding-window families whose f32 case generates 40 steps with a window of 4: the mask
#: keeps attending to the last 4 positions only, the cache grows with every step, and tract
#: follows PyTorch all the way
LONG_GENERATION = {(name, "f32"): 40 for name in ("mistral", "gemma2", "gemma3")}
#: a few cases stay in the fast edit loop; the rest are slow (each is an export: seconds)
FAST = {("gpt2", "q4_0"), ("falcon_multi_query", "f32")}
#: f16 on a few families of different layouts only, to bound the suite's time; every family
#: in f16: ``python -m benchmarks.bench_families`` (same checks, a table)
#: the architectures the sweep found working (``GENERIC``) are tested after q4_0 only (the
#: same export, check and generation on quantized weights); f32 too in the sweep:
#: ``python -m benchmarks.bench_architectures``
GENERIC_MODE = "q4_0"
F16 = ("llama", "gemma3", "gpt2", "falcon_multi_query", "phi3", "mixtral")
#: the export that :func:`test_moe_experts_quantized_per_expert` reads too: both tests run on
#: one pytest-xdist worker, so that it is exported once
SHARED = ("qwen3_moe", "q4_0")
SHARES_EXPORT = pytest.mark.xdist_group("families-qwen3_moe-q4_0")


def _cases():
    for name in [*FAMILIES, *GENERIC]:
        for mode in MODES:
            if (mode == "f16" and name not in F16) or (name in GENERIC and mode != GENERIC_MODE):
                continue
            marks = [] if (name, mode) in FAST else [pytest.mark.slow]
            if (name, mode) == SHARED:
                marks.append(SHARES_EXPORT)
            yield pytest.param(name, mode, id=f"{name}-{mode}", marks=marks)


def torch_greedy(model: nn.Module, prompt: torch.Tensor, steps: int):
    """Tokens and last-position logits of ``model.generate(do_sample=False)``, without an EOS
    token (a minimum length would mask the EOS logit, which plain greedy decoding keeps)."""
    config = copy.deepcopy(model.generation_config)
    config.update(
        eos_token_id=None, max_new_tokens=steps, do_sample=False, output_logits=True,
        return_dict_in_generate=True, pad_token_id=0,
    )  # fmt: skip
    # generate fills a None of the given config from the model's own: unset the EOS there too
    eos, model.generation_config.eos_token_id = model.generation_config.eos_token_id, None
    try:
        with torch.no_grad():
            out = model.generate(prompt, generation_config=config)
    finally:
        model.generation_config.eos_token_id = eos
    assert out.sequences.shape[1] == prompt.shape[1] + steps
    return out.sequences[:, prompt.shape[1] :].numpy(), [x.float().numpy() for x in out.logits]


def check_generation(model: nn.Module, path, mode: str, steps: int = STEPS) -> np.ndarray:
    """tract's greedy loop on the archive gives ``model.generate``'s tokens and logits (up to
    a tie between two logits closer than the tolerance, after which the sequences part)."""
    prompt = torch.randint(0, VOCAB, (1, PROMPT), generator=torch.Generator().manual_seed(2))
    gen = greedy_generate(path, prompt.numpy(), steps)
    tokens, logits = torch_greedy(model, prompt, steps)
    first, last = logits[0], logits[-1]
    spread = first.std() / np.abs(first).max()  # relative: Cohere scales its logits by 1/16
    assert spread > 0.1, f"near-uniform logits (std / max = {spread:.3g})"
    moved = np.abs(last - first).max() / np.abs(first).max()
    assert moved > 0.05, f"logits barely depend on the context ({moved:.3g})"
    tol = LOGIT_TOL[mode]
    for step, (ours, ref) in enumerate(zip(gen.logits, logits)):
        bound = tol + tol * np.abs(ref).max()
        err = np.abs(ours.astype(np.float64) - ref).max()
        assert err <= bound, f"step {step}: max|tract - torch| = {err:.3g}"
        theirs, mine = tokens[0, step], gen.tokens[0, step]
        if mine != theirs:  # only a tie within the tolerance may pick another token
            margin = ref[0, theirs] - ref[0, mine]
            assert margin <= 2 * bound, (
                f"step {step}: tract picked {mine}, torch {theirs} (margin {margin:.3g} > "
                f"{2 * bound:.3g}): {gen.tokens} vs {tokens}"
            )
            break  # the two sequences go different ways from here
    return tokens


def float_matrices(path) -> dict[str, tuple[int, ...]]:
    """Labels and shapes of the f32/f16 tensors of rank >= 2 stored in the archive."""
    found = {}
    for name, raw in read_archive_files(path, dat_headers_only=True).items():
        if name.endswith(".dat"):
            header = DatHeader.unpack(raw)
            if header.type_name() in ("f32", "f16") and len(header.shape) >= 2:
                found[name.removesuffix(".dat")] = header.shape
    return found


class Checked(NamedTuple):
    summary: QuantizationSummary | None  # of q4_0
    result: ExportResult


@pytest.fixture(scope="module")
def checked_family(tmp_path_factory) -> Callable[[str, str], Checked]:
    """``(name, mode) ->`` :func:`check_family`'s outcome, each family and mode exported and
    checked once for the tests of this file (a test of one property of an export reuses it)."""
    done: dict[tuple[str, str], Checked] = {}

    def get(name: str, mode: str) -> Checked:
        if (name, mode) not in done:
            directory = tmp_path_factory.mktemp(f"{name}-{mode}")
            steps = LONG_GENERATION.get((name, mode), STEPS)
            done[(name, mode)] = check_family(name, mode, directory, steps=steps)
        return done[(name, mode)]

    return get


@pytest.mark.parametrize(("name", "mode"), list(_cases()))
def test_family(name: str, mode: str, checked_family) -> None:
    checked_family(name, mode)


def check_family(
    name: str, mode: str, tmp_path, experts: str = "dense", steps: int = STEPS
) -> Checked:
    """Quantize (q4_0) or convert (f16), export with the tract check, generate ``steps``
    tokens in tract; returns the quantization summary (q4_0) and the export's result."""
    model = tiny(name)
    skipped: set[str] = set()
    summary = None
    if mode == "q4_0":
        summary = quantize_model(model, "q4_0", progress=False)
        skipped = {s.name for s in summary.skipped}
        left = [
            n for n, p in model.named_parameters()
            if p.dim() >= 2 and not isinstance(p, QTensor) and n not in skipped
        ]  # fmt: skip
        assert not left, f"float matrices neither quantized nor listed as skipped: {left}"
        assert all(s.reason for s in summary.skipped)
    elif mode == "f16":
        model = model.to(torch.float16)
    result = export_causal_lm(model, tmp_path / "llm.nnef.tgz", progress=False, experts=experts)
    assert result.check is not None and result.check.passed, str(result.check)
    if mode == "q4_0":
        assert result.tensor_bytes.get("q4_0", 0) > 0
        params = {n for n, _ in model.named_parameters()}
        stray = {k: s for k, s in float_matrices(result.path).items()
                 if k.removeprefix("model.") in params - skipped}  # fmt: skip
        assert not stray, f"float weights in the archive that the summary does not list: {stray}"
    check_generation(model, result.path, mode, steps)
    return Checked(summary, result)


@SHARES_EXPORT
def test_moe_experts_quantized_per_expert(checked_family) -> None:
    """Each expert's matrices reach tract as 2-D q4_0 tensors of their own; the router is
    listed as skipped with its reason (the export of ``test_family[qwen3_moe-q4_0]``)."""
    summary, result = checked_family(*SHARED)
    assert summary is not None
    quantized = {q.name: q.shape for q in summary.quantized}
    assert quantized["model.layers.0.mlp.experts.gate_up_proj"] == (4, 128, 64)
    assert quantized["model.layers.1.mlp.experts.down_proj"] == (4, 64, 64)
    reasons = {s.name: s.reason for s in summary.skipped}
    assert set(reasons) == {f"model.layers.{i}.mlp.gate.weight" for i in range(2)}
    assert "quantize_model takes the weights of" in reasons["model.layers.0.mlp.gate.weight"]
    files = read_archive_files(result.path, dat_headers_only=True)
    expert = DatHeader.unpack(files["model.model.layers.0.mlp.experts.gate_up_proj.rows_3_4.dat"])
    assert expert.type_name() == "q4_0" and expert.shape == (128, 64)

