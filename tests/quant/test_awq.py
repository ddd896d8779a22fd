"""AWQ: per-input-channel scales searched on data and folded into the op before (a norm or a
Linear), never into one whose output has other users; the graph gains no op."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from t2n_quant import quantize_model
from tests.core.test_hf_llama import VOCAB, export_llama, tiny_llama


class NormThenLinears(nn.Module):
    """A norm feeding two Linears only; some input channels are much larger than others."""

    def __init__(self, residual: bool = False) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(64)
        self.a = nn.Linear(64, 64)
        self.b = nn.Linear(64, 32)
        self.residual = residual
        with torch.no_grad():
            self.norm.weight[[3, 17, 40, 60]] = 30.0  # a few outlier channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        out = torch.cat([self.a(h), self.b(h)], dim=-1)
        return out + h.sum(-1, keepdim=True) if self.residual else out


def _err(model, qmodel, x):
    with torch.no_grad():
        ref = model(x)
        return ((qmodel(x) - ref).square().mean() / ref.square().mean()).item()


def test_awq_folds_into_the_norm_and_lowers_the_error():
    torch.manual_seed(0)
    model = NormThenLinears().eval()
    x, test = torch.randn(256, 64), torch.randn(64, 64)
    plain, awq = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(plain, "minmax:3:g32", progress=False)
    s = quantize_model(awq, "minmax:3:g32", calibration="awq", data=x, progress=False)
    assert any("a.weight, b.weight: scales" in n and "folded into 'norm'" in n for n in s.notes)
    assert not torch.equal(awq.norm.weight, model.norm.weight)  # the scales live there
    assert [type(m) for m in awq.modules()] == [type(m) for m in model.modules()]
    assert _err(model, awq, test) < 0.9 * _err(model, plain, test)
    assert s.provenance["calibration"] == "awq"


def test_awq_refuses_a_norm_with_other_users():
    torch.manual_seed(0)
    model = NormThenLinears(residual=True).eval()
    before = model.norm.weight.detach().clone()
    s = quantize_model(model, "q4_0", calibration="awq", data=torch.randn(64, 64), progress=False)
    assert any("would change the model" in n or "no scaling beats" in n for n in s.notes)
    assert torch.equal(model.norm.weight, before)


def test_awq_unknown_option():
    with pytest.raises(TypeError, match=r"awq takes: inner, grid"):
        quantize_model(NormThenLinears(), "q4_0", calibration="awq", data=torch.randn(4, 64),
                       calibration_options={"damp": 0.1}, progress=False)  # fmt: skip


@pytest.mark.slow  # exports and runs in tract
def test_awq_llama_exports_and_matches_in_tract(tmp_path):
    model = tiny_llama()
    g = torch.Generator().manual_seed(3)
    data = [torch.randint(0, VOCAB, (2, 16), generator=g) for _ in range(2)]
    s = quantize_model(model, "q4_0", calibration="awq:mse", data=data, progress=False)
    assert any(n.startswith("awq: model.layers.0.self_attn.q_proj.weight") for n in s.notes)
    export_llama(model, tmp_path)


class ConvChain(nn.Module):
    """Conv2d -> Conv2d (scales fold into the first one's output channels, before the first
    is quantized) -> BatchNorm2d -> Conv2d (into the norm); a few channels of each
    folded-into op are much larger."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(32, 32, 3, padding=1)
        self.c2 = nn.Conv2d(32, 32, 1)
        self.bn = nn.BatchNorm2d(32)
        self.c3 = nn.Conv2d(32, 16, 3, padding=1)
        with torch.no_grad():
            self.c1.weight[[2, 9, 20]] *= 20.0
            self.bn.weight[[1, 7, 30]] = 25.0
            self.bn.running_mean.normal_()
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c3(self.bn(self.c2(self.c1(x))))


class NormAttention(nn.Module):
    """A norm feeding a self-attention's packed q/k/v projection."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(64)
        self.attn = nn.MultiheadAttention(64, 4, batch_first=True)
        with torch.no_grad():
            self.norm.weight[[3, 17, 40, 60]] = 30.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        return self.attn(h, h, h, need_weights=False)[0]


@pytest.mark.parametrize("make, shape, folded", [
    (ConvChain, (48, 32, 6, 6), {"c2.weight": "'c1'", "c3.weight": "'bn'"}),
    (NormAttention, (48, 10, 64), {"attn.in_proj_weight": "'norm'"}),
], ids=["conv", "attention"])  # fmt: skip
def test_awq_beyond_linear_folds_lowers_the_error_and_exports(make, shape, folded, tmp_path):
    from tests.helpers import export_and_check

    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*shape)
    calib, test = x[:40], x[40:]
    plain, awq = copy.deepcopy(model), copy.deepcopy(model)
    quantize_model(plain, "minmax:3:g32", progress=False)
    s = quantize_model(awq, "minmax:3:g32", calibration="awq", data=calib, progress=False)
    for name, into in folded.items():
        note = next(n for n in s.notes if n.startswith(f"awq: {name}:"))
        assert f"folded into {into}" in note, s.notes
    assert not any("does not apply" in n or "never reached" in n for n in s.notes), s.notes
    assert all(any(n.startswith(f"awq: {q.name}:") for n in s.notes) for q in s.quantized)
    assert [type(m) for m in awq.modules()] == [type(m) for m in model.modules()]
    assert _err(model, awq, test) < 0.9 * _err(model, plain, test)
    export_and_check(awq, (test[:2],), tmp_path, name="m.nnef")
