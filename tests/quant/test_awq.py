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
    with pytest.raises(TypeError, match="known: inner, grid"):
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
