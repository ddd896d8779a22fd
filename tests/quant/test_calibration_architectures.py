"""Data-aware calibration on layouts other than Llama's (see docs/calibration-architectures.md,
measured by benchmarks/bench_calibration_architectures.py)."""

from __future__ import annotations

import copy

import torch

from t2n_quant import quantize_model
from t2n_quant.calibration_data import batches
from t2n_quant.layerwise import _capture_first_block, _same_others, find_blocks, no_kv_cache
from tests.llm.families import tiny


def _data(n: int = 2) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return [torch.randint(3, 256, (2, 12), generator=gen) for _ in range(n)]


def test_blocks_of_different_kinds_take_their_own_arguments():
    """Gemma 3: a sliding-window block then a full-attention one, each with its own mask and
    rotary embedding: still block by block, each block run with the arguments the model
    gives it."""
    model = tiny("gemma3")
    data = _data()
    s = quantize_model(copy.deepcopy(model), "q4_0", calibration="gptq", data=data,
                       progress=False)  # fmt: skip
    assert any("block by block (model.layers, 2 blocks)" in n for n in s.notes), s.notes
    seen = []
    hook = model.model.layers[1].register_forward_pre_hook(
        lambda m, a, k: seen.append(k), with_kwargs=True)  # fmt: skip
    with torch.no_grad(), no_kv_cache(model):
        model(data[1])
        hook.remove()
        found = find_blocks(model, [n for n, _ in model.named_modules()])
        assert found is not None
        captured = _capture_first_block(model, found[1], batches(data), None, "test")
    assert captured is not None and captured[1] is not None
    own = captured[1][0][1]  # block 1, batch 1: its arguments after the first
    assert _same_others(own, ((None,), seen[0]))
    assert not _same_others(own, captured[0][1])  # block 0's differ


def test_compare_measures_weights_stored_in_another_layout():
    """GPT-2's Conv1D ([in, out], quantized as a Linear) and GPT-OSS's experts
    ([experts, in, out], stored [experts, out, in]): every quantized weight is in compare's
    table, measured against its float values in the same layout (q4_0: ~21 dB)."""
    from t2n_quant.compare import compare

    ids = _data(1)[0]
    for name, wanted in (("gpt2", "attn.c_proj.weight"), ("gpt_oss", "experts.down_proj")):
        c = compare(tiny(name), ids, ["q4_0"], progress=False).results[0]
        layers = {r.name: r for r in c.layers if r.quantized}
        assert len(layers) == len(c.summary.quantized), name
        found = [r for n, r in layers.items() if n.endswith(wanted)]
        assert found and all(r.weight_sqnr > 15 for r in found), (name, found)
