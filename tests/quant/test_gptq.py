"""GPTQ: data-aware rounding lowers the output error of every codec, keeps each codec's
format, works block by block on a Hugging Face Llama (exported and checked in tract), and
fails clearly on bad calibration data."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from t2n_core.inspect import inspect_archive
from t2n_quant import quantize_model, quantize_tensor
from t2n_quant.calibration.gptq import gptq
from t2n_quant.calibration_data import text_batches
from t2n_quant.codecs import Codec, Q4_0Codec
from t2n_quant.errors import CalibrationDataError
from tests.core.test_hf_llama import VOCAB, export_llama, tiny_llama

SPECS = ["q4_0", "minmax:4:g32", "symmetric:4:g32", "minmax:3:g64", "minmax:2:g16",
         "symmetric:8:pc", "minmax:4:pc"]  # fmt: skip


def correlated_inputs(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(k) + torch.randn(k, k, generator=g) / k**0.5
    return torch.randn(n, k, generator=g) @ mix


@pytest.mark.parametrize("act_order", [False, True], ids=["in-order", "act-order"])
@pytest.mark.parametrize("spec", SPECS)
def test_gptq_lowers_output_error(spec, act_order):
    codec = Codec.from_spec(spec)
    x = correlated_inputs(2048, 128) * torch.linspace(0.2, 3.0, 128)  # uneven input energy
    w = torch.randn(96, 128, generator=torch.Generator().manual_seed(1)) * 0.05
    new_w, params = gptq(w, x.T @ x, codec, act_order=act_order)
    q = quantize_tensor(new_w, codec, params=params)
    plain = quantize_tensor(w, codec)
    assert q.codec == codec and q.packed.shape == plain.packed.shape
    assert q.scale.dtype == plain.scale.dtype
    err = ((w - q.dequantize()) @ x.T).square().mean()
    err_plain = ((w - plain.dequantize()) @ x.T).square().mean()
    assert err < 0.9 * err_plain


def test_q4_0_codes_follow_ggml_rounding():
    x = correlated_inputs(512, 64)
    w = torch.randn(8, 64, generator=torch.Generator().manual_seed(2))
    new_w, params = gptq(w, x.T @ x, Q4_0Codec())
    q = quantize_tensor(new_w, Q4_0Codec(), params=params)
    blocks = new_w.reshape(-1, 32)
    d = params.scale
    want = torch.clamp(torch.trunc(blocks * torch.where(d == 0, 0, 1 / d) + 8.5), 0, 15)
    assert torch.equal(Q4_0Codec().unpack(q.packed, 32).float(), want)
    assert torch.equal(q.scale, d.half())


def test_dead_inputs_and_unfactorable_hessian_are_handled():
    x = correlated_inputs(256, 64)
    x[:, 5] = 0.0  # an input that never fires
    w = torch.randn(4, 64)
    new_w, params = gptq(w, x.T @ x, Q4_0Codec())
    assert torch.isfinite(new_w).all() and torch.isfinite(params.scale).all()


def _logit_error(model, qmodel, ids):
    with torch.no_grad():
        ref, got = model(ids).logits, qmodel(ids).logits
    return ((ref - got).square().mean() / ref.square().mean()).item()


@pytest.mark.slow  # exports and runs in tract
def test_tiny_llama_gptq_block_by_block_and_in_tract(tmp_path):
    model = tiny_llama()
    g = torch.Generator().manual_seed(3)
    data = [torch.randint(0, VOCAB, (2, 16), generator=g) for _ in range(4)]
    test_ids = torch.randint(0, VOCAB, (2, 16), generator=g)
    plain, gq = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(plain, "minmax:3:g32", progress=False)
    summary = quantize_model(gq, "minmax:3:g32", calibration="gptq", data=data, progress=False)
    assert any("block by block (model.layers, 2 blocks)" in n for n in summary.notes)
    assert any("model.embed_tokens.weight" in n and "does not apply" in n
               for n in summary.notes)  # fmt: skip
    assert summary.data_hash and "gptq" in summary.headline()
    assert len(summary.quantized) == 2 * 7 + 2
    # random weights and tokens give near-isotropic inputs, where GPTQ gains least
    assert _logit_error(model, gq, test_ids) < _logit_error(model, plain, test_ids)
    result = export_llama(gq, tmp_path)  # compared with the quantized model in tract
    props = inspect_archive(result.path).properties
    assert props["quantization.calibration"] == "gptq"
    assert props["quantization.codec"] == "minmax:3:g32"
    assert props["quantization.calibration_data_sha256"] == summary.data_hash


def test_all_at_once_without_blocks():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
    data = correlated_inputs(256, 32)
    options = {"inner": "mse", "damp": 0.02}
    s = quantize_model(model, "q4_0", calibration="gptq", data=data,
                       calibration_options=options, progress=False)  # fmt: skip
    assert len(s.quantized) == 2 and any("all at once" in n for n in s.notes)
    assert s.provenance["calibration_options"] == "damp=0.02,inner=mse"


def test_text_batches_with_a_tokenizer_like_callable():
    ids = text_batches(lambda s: [ord(c) % 97 for c in s], "hello world " * 100, seq_len=32,
                       n_sequences=5, batch_size=2)  # fmt: skip
    assert [tuple(b.shape) for b in ids] == [(2, 32), (2, 32), (1, 32)]


def test_bad_data():
    model = tiny_llama()
    with pytest.raises(CalibrationDataError, match="empty"):
        quantize_model(copy.deepcopy(model), "q4_0", calibration="gptq", data=[], progress=False)
    with pytest.raises(CalibrationDataError, match="needs data"):
        quantize_model(copy.deepcopy(model), "q4_0", calibration="gptq", progress=False)
    bad = [torch.randn(2, 16)]  # floats where token ids are expected
    with pytest.raises(CalibrationDataError, match=r"rejected calibration batch 0.*gptq.*q4_0"):
        quantize_model(copy.deepcopy(model), "q4_0", calibration="gptq", data=bad,
                       progress=False)  # fmt: skip
    with pytest.raises(CalibrationDataError, match="text"):
        quantize_model(copy.deepcopy(model), "q4_0", calibration="gptq", data="some text",
                       progress=False)  # fmt: skip


def test_weight_only_calibration_says_data_is_ignored():
    model = nn.Sequential(nn.Linear(32, 32))
    s = quantize_model(model, "q4_0", data=torch.randn(4, 32), progress=False)
    assert any("data ignored" in n for n in s.notes)


def test_torch_transformer_encoder_blocks_reach_every_linear():
    from benchmarks.models import TransformerLM

    torch.manual_seed(0)
    model = TransformerLM(vocab=64, dim=32, layers=2, heads=2, ff=64).eval()
    data = [torch.randint(0, 64, (2, 8)) for _ in range(2)]
    s = quantize_model(model, "q4_0", calibration="gptq", data=data, progress=False)
    assert any("block by block (encoder.layers, 2 blocks)" in n for n in s.notes)
    # the fused fast path is off, so linear1/linear2 are seen; MultiheadAttention reads
    # out_proj.weight without calling out_proj: its input is recomputed
    weight_only = [n.split(":")[0] for n in s.notes if "weight-only" in n]
    assert weight_only == ["embed.weight"], s.notes


class CrossAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(64, 2, batch_first=True)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        return self.attn(x, memory, memory, need_weights=False)[0]


def test_attention_projections_take_their_own_inputs():
    from t2n_quant.layerwise import input_hessians
    from t2n_quant.weights import collect_weights

    torch.manual_seed(0)
    model = CrossAttention().eval()
    x = correlated_inputs(40 * 8, 64).reshape(40, 8, 64) * torch.linspace(0.2, 3, 64)
    mem = correlated_inputs(40 * 5, 64, seed=1).reshape(40, 5, 64)
    from t2n_quant.calibration_data import batches

    found = input_hessians(model, collect_weights(model), batches([(x, mem)]))
    t = found["attn.in_proj_weight"]
    assert t.parts is not None and len(t.parts) == 3
    xs, ms = x.reshape(-1, 64), mem.reshape(-1, 64)
    assert torch.allclose(t.parts[0].hessian, xs.T @ xs, rtol=1e-4, atol=1e-3)
    assert torch.allclose(t.parts[2].hessian, ms.T @ ms, rtol=1e-4, atol=1e-3)
    plain, gq = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(plain, "minmax:3:g32", progress=False)
    s = quantize_model(gq, "minmax:3:g32", calibration="gptq", data=[(x[:32], mem[:32])],
                       progress=False)  # fmt: skip
    assert not any("in_proj_weight" in n for n in s.notes)
    with torch.no_grad():
        ref = model(x[32:], mem[32:])
        err = (gq(x[32:], mem[32:]) - ref).square().mean()
        assert err < (plain(x[32:], mem[32:]) - ref).square().mean()


@pytest.mark.parametrize("batch_first", [True, False])
def test_attention_output_is_what_out_proj_multiplies(batch_first):
    from t2n_quant.layerwise import attention_output

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, kdim=8, vdim=12, batch_first=batch_first).eval()
    with torch.no_grad():
        mha.out_proj.bias.normal_()  # zero at init
    q = torch.randn(3, 5, 16) if batch_first else torch.randn(5, 3, 16)
    k = torch.randn(3, 7, 8) if batch_first else torch.randn(7, 3, 8)
    v = torch.randn(3, 7, 12) if batch_first else torch.randn(7, 3, 12)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    with torch.no_grad():
        want = mha(q, k, v, key_padding_mask=pad)[0]
        x = attention_output(mha, (q, k, v), {"key_padding_mask": pad})  # batch first
        got = mha.out_proj(x if batch_first else x.transpose(0, 1))
    assert x.shape == (3, 5, 16) and torch.allclose(got, want, atol=1e-6)
    assert isinstance(mha.out_proj.weight, nn.Parameter) and mha.out_proj.bias.abs().sum() > 0


def test_attention_out_proj_takes_gptq_and_exports(tmp_path):
    from tests.helpers import export_and_check

    torch.manual_seed(0)
    model = CrossAttention().eval()
    x = correlated_inputs(40 * 8, 64).reshape(40, 8, 64) * torch.linspace(0.2, 3, 64)
    mem = correlated_inputs(40 * 5, 64, seed=1).reshape(40, 5, 64)
    plain, gq = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(plain, "minmax:3:g32", include="*out_proj", progress=False)
    s = quantize_model(gq, "minmax:3:g32", calibration="gptq", data=[(x[:32], mem[:32])],
                       include="*out_proj", progress=False)  # fmt: skip
    assert [q.name for q in s.quantized] == ["attn.out_proj.weight"]
    assert not any("out_proj" in n for n in s.notes), s.notes  # not weight-only
    with torch.no_grad():
        ref = model(x[32:], mem[32:])
        err = (gq(x[32:], mem[32:]) - ref).square().mean()
        assert err < 0.8 * (plain(x[32:], mem[32:]) - ref).square().mean()
    export_and_check(gq, (x[32:34], mem[32:34]), tmp_path, name="m.nnef")


def test_padded_tokens_stay_out_of_the_hessian():
    from t2n_quant.calibration_data import batches
    from t2n_quant.layerwise import input_hessians
    from t2n_quant.weights import collect_weights

    class Tagger(nn.Module):  # a Hugging Face-like encoder: ids and attention_mask keywords
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(16, 32)
            self.proj = nn.Linear(32, 32)

        def forward(self, input_ids, attention_mask):
            return self.proj(self.emb(input_ids))

    torch.manual_seed(0)
    model = Tagger()
    ids = torch.randint(1, 16, (2, 6))
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    padded = ids.masked_fill(mask == 0, 0)
    got = input_hessians(model, collect_weights(model),
                         batches({"input_ids": padded, "attention_mask": mask}))  # fmt: skip
    x = model.emb(ids)[mask.bool()].detach()
    assert list(got) == ["proj.weight"] and got["proj.weight"].rows == 10
    assert torch.allclose(got["proj.weight"].hessian, x.T @ x, atol=1e-4)


class ConvNet(nn.Module):
    """Conv1d and Conv2d feeding a Linear: GPTQ rounds all three on their input patches."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv1d(32, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 16, 2, stride=2, padding=1, dilation=2)
        self.head = nn.Linear(64, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.c1(x))  # (n, 32, 16)
        y = torch.relu(self.c2(y.reshape(-1, 32, 4, 4)))  # (n, 16, 2, 2)
        return self.head(y.flatten(1))


def test_conv_layers_gptq_lowers_error_and_exports(tmp_path):
    from t2n_quant.layerwise import conv_columns
    from tests.helpers import export_and_check

    torch.manual_seed(0)
    model = ConvNet().eval()
    x = correlated_inputs(64 * 16, 32).reshape(64, 16, 32).transpose(1, 2).contiguous()
    conv = model.c2
    cols = conv_columns(conv, x[:2, :, :16].reshape(2, 32, 4, 4))  # as torch's conv sees them
    want = conv(x[:2, :, :16].reshape(2, 32, 4, 4)) - conv.bias[:, None, None]
    got = (cols @ conv.weight.reshape(16, -1).T).reshape(2, 4, 16).transpose(1, 2)
    assert torch.allclose(got.reshape(want.shape), want, atol=1e-5)
    plain, gq = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(plain, "minmax:3:g32", progress=False)
    s = quantize_model(gq, "minmax:3:g32", calibration="gptq", data=x[:48], progress=False)
    assert not any("does not apply" in n for n in s.notes) and len(s.quantized) == 3
    with torch.no_grad():
        ref = model(x[48:])
        assert (gq(x[48:]) - ref).square().mean() < (plain(x[48:]) - ref).square().mean()
    export_and_check(gq, (x[48:50],), tmp_path, name="m.nnef")


class _Residual(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.down(nn.functional.gelu(self.up(x)))


class _Stack(nn.Module):
    def __init__(self, d: int = 32, n: int = 4) -> None:
        super().__init__()
        self.layers = nn.ModuleList(_Residual(d) for _ in range(n))
        self.head = nn.Linear(d, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.layers:
            x = block(x)
        return self.head(x)


def test_float_target_lowers_the_error_left_by_earlier_layers():
    torch.manual_seed(3)
    model = _Stack().eval()
    mix = torch.eye(32) + torch.randn(32, 32) / 32**0.5
    calib = [torch.randn(64, 32) @ mix for _ in range(16)]
    held_out = torch.randn(256, 32) @ mix
    with torch.no_grad():
        ref = model(held_out)
    errors, notes = [], []
    for float_target in (False, True):
        q = copy.deepcopy(model)
        s = quantize_model(q, "minmax:2:g16", calibration="gptq", data=calib, progress=False,
                           calibration_options={"float_target": float_target})  # fmt: skip
        with torch.no_grad():
            errors.append(float((q(held_out) - ref).square().mean() / ref.square().mean()))
        notes += s.notes
    assert errors[1] < 0.85 * errors[0], errors
    assert not any("float_target" in n for n in notes)  # applied to every weight


def test_float_target_says_when_it_has_no_effect():
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    s = quantize_model(model, "q4_0", calibration="gptq", data=torch.randn(64, 32),
                       progress=False)  # fmt: skip
    assert any("float_target has no effect" in n and "all at once" in n for n in s.notes)
