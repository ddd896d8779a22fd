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


class _OffsetNorm(torch.nn.Module):
    """RMS norm scaling by ``offset + weight`` (Gemma: 1), or by ``weight ** 2``."""

    def __init__(self, k: int, offset: float, squared: bool = False) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.rand(k) + 0.5)
        self.offset, self.squared = offset, squared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight**2 if self.squared else self.offset + self.weight
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * scale


def test_awq_folds_into_norms_scaling_by_an_offset_plus_their_weight():
    from t2n_quant.awq_fold import fold

    torch.manual_seed(0)
    x = torch.randn(3, 5, 16)
    s = torch.rand(16) + 0.5
    for offset in (0.0, 1.0, 2.5):
        norm = _OffsetNorm(16, offset)
        ref = norm(x).detach()
        with torch.no_grad():
            undo, why = fold(norm, s, ((x,), {}))
            assert undo is not None, why
            assert torch.allclose(norm(x), ref / s, rtol=1e-4, atol=1e-6), offset
            undo()
            assert torch.allclose(norm(x), ref)
    norm = _OffsetNorm(16, 0.0, squared=True)
    ref = norm(x).detach()
    with torch.no_grad():
        undo, why = fold(norm, s, ((x,), {}))
    assert undo is None and "not its weight" in why
    assert torch.equal(norm(x), ref)  # left as it was


def test_awq_folds_into_gemma_norms_and_finds_the_final_norm_under_a_sliced_lm_head():
    """Gemma's ``(1 + weight)`` RMS norms take the q/k/v scales; Llama's LM head reads a
    view of the final norm's output (``logits_to_keep``): that norm is its producer."""
    s = quantize_model(tiny("gemma"), "q4_0", calibration="awq", data=_data(), progress=False)
    assert any("folded into 'model.layers.1.input_layernorm'" in n for n in s.notes), s.notes
    s = quantize_model(tiny("llama"), "q4_0", calibration="awq", data=_data(), progress=False)
    head = [n for n in s.notes if n.startswith("awq: lm_head.weight")]
    assert head and "no module produces" not in head[0], head


def test_awq_scales_the_router_and_experts_reading_the_same_norm():
    """DeepSeek-V3's MoE layer: the shared experts' gate/up (the AWQ group), the router and
    the routed experts (weights no AWQ group holds) all read the norm's output; the fold
    into the norm is compensated in the router's and experts' matrices, not refused."""
    s = quantize_model(tiny("deepseek_v3"), "q4_0", calibration="awq", data=_data(),
                       progress=False)  # fmt: skip
    folded = [n for n in s.notes if "folded into 'model.layers.1.post_attention_layernorm'" in n]
    assert folded and "mlp.gate" in folded[0] and "mlp.experts" in folded[0], s.notes
    assert not any("other users" in n for n in s.notes), s.notes


class _TwoTowers(torch.nn.Module):
    """A tower of 3 blocks that text-only inputs do not run (GIT's image encoder), then the
    2 blocks they do."""

    def __init__(self) -> None:
        super().__init__()
        block = lambda: torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.GELU())  # noqa: E731
        self.vision = torch.nn.ModuleList(block() for _ in range(3))
        self.layers = torch.nn.ModuleList(block() for _ in range(2))

    def forward(self, x: torch.Tensor, image: torch.Tensor | None = None) -> torch.Tensor:
        for b in self.vision if image is not None else ():
            image = b(image)
        for b in self.layers:
            x = b(x)
        return x


def test_blocks_the_data_does_not_run_are_passed_over():
    torch.manual_seed(0)
    s = quantize_model(_TwoTowers(), "q4_0", calibration="gptq",
                       data=[torch.randn(4, 32) for _ in range(2)], progress=False)  # fmt: skip
    assert any("block by block (layers, 2 blocks)" in n for n in s.notes), s.notes
    unreached = [n for n in s.notes if "never reached" in n]
    assert len(unreached) == 3 and all(n.startswith("vision.") for n in unreached), s.notes


class _BmmBlock(torch.nn.Module):
    """A Linear, then experts stored ``[experts, in, out]`` and run by ``torch.bmm`` (Llama
    4's layout: quantize_model stores them ``[experts, out, in]`` behind a parametrization)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = torch.nn.Linear(32, 32)
        self.up_proj = torch.nn.Parameter(torch.randn(2, 32, 64) / 6)
        self.down_proj = torch.nn.Parameter(torch.randn(2, 64, 32) / 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj(x).expand(2, *x.shape)
        return x + torch.bmm(torch.relu(torch.bmm(h, self.up_proj)), self.down_proj).sum(0)


class _BmmModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_BmmBlock() for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_gptq_and_compare_on_experts_behind_a_parametrization():
    from t2n_quant.compare import compare

    torch.manual_seed(0)
    model = _BmmModel().eval()
    data = [torch.randn(8, 32) for _ in range(2)]
    s = quantize_model(copy.deepcopy(model), "q4_0", calibration="gptq", data=data,
                       progress=False)  # fmt: skip
    assert any("block by block" in n for n in s.notes), s.notes
    shapes = [tuple(p.shape) for p in model.parameters()]
    c = compare(model, torch.randn(8, 32), ["q4_0"], calibrations=["gptq"], data=data,
                progress=False).results[0]  # fmt: skip
    assert [tuple(p.shape) for p in model.parameters()] == shapes  # the model left as it was
    experts = [r for r in c.layers if "proj" in r.name and r.quantized and r.shape[0] == 2]
    assert len(experts) == 4 and all(r.weight_sqnr > 15 for r in experts), c.layers


def test_awq_folds_a_gated_mlp_down_proj_into_up_proj():
    """``down_proj(act(gate_proj(x)) * up_proj(x))``: no module outputs the input of
    down_proj; up_proj's rows take its scales (the fold's check keeps the output)."""
    model = tiny("llama")
    ids = _data(1)[0]
    with torch.no_grad():
        ref = model(ids).logits
    folded = copy.deepcopy(model)
    s = quantize_model(folded, "minmax:8:g32", calibration="awq", data=_data(), progress=False)
    down = [n for n in s.notes if n.startswith("awq: model.layers.0.mlp.down_proj")]
    assert down and "folded into 'model.layers.0.mlp.up_proj'" in down[0], s.notes
    with torch.no_grad():  # 8 bits: the output stays that of the float model
        err = (folded(ids).logits - ref).norm() / ref.norm()
    assert err < 0.02


def test_no_kv_cache_reaches_the_text_config():
    """Fuyu's language model reads ``config.text_config.use_cache``: a cache passed to the
    blocks grows each time a block is rerun (and made block 1's arguments differ)."""
    from transformers import FuyuConfig

    model = torch.nn.Module()
    model.config = FuyuConfig()
    model.config.use_cache = model.config.text_config.use_cache = True
    with no_kv_cache(model):
        assert model.config.text_config.use_cache is False and model.config.use_cache is False
    assert model.config.text_config.use_cache is True and model.config.use_cache is True


class _ParallelBlock(torch.nn.Module):
    """Cohere-style: attention and a MoE layer read one norm's output, the MoE layer
    flattened to ``(tokens, channels)`` (a view)."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = torch.nn.LayerNorm(32)
        self.attn = torch.nn.Linear(32, 32)
        self.moe = torch.nn.Linear(32, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return x + self.attn(h) + self.moe(h.view(-1, 32)).view_as(x)


class _ParallelModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList(_ParallelBlock() for _ in range(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def test_awq_groups_the_linears_reading_a_flattened_view_with_the_others():
    torch.manual_seed(0)
    data = [torch.randn(2, 8, 32) * torch.linspace(0.1, 4, 32) for _ in range(2)]
    s = quantize_model(_ParallelModel().eval(), "q4_0", calibration="awq", data=data,
                       progress=False)  # fmt: skip
    groups = [n for n in s.notes if n.startswith("awq: layers.")]
    assert len(groups) == 2 and all("attn.weight, layers." in n for n in groups), s.notes
    assert not any("other users" in n for n in s.notes), s.notes
