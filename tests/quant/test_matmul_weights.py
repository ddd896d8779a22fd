"""Matmul weights outside Linear / Embedding / Conv: transformers ``Conv1D`` (stored
transposed) becomes an equivalent ``nn.Linear`` and is quantized; 3-D expert weights are
quantized when every expert's rows hold whole groups; any other float matrix is listed as
skipped with its reason."""

from __future__ import annotations

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from t2n_core.deferred import DeferredTensor
from t2n_quant import QTensor, quantize_model, quantize_tensor
from t2n_quant.matmul_weights import untranspose_experts
from tests.llm.families import tiny


class WithConv1D(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = Conv1D(96, 64)  # weight [64, 96]: in, out
        self.extra = nn.Parameter(torch.randn(64, 64))  # a custom matmul weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_attn(x @ self.extra)


def test_conv1d_becomes_linear_and_is_quantized() -> None:
    torch.manual_seed(0)
    model = WithConv1D()
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        ref = model(x)
    summary = quantize_model(model, "q4_0", progress=False)
    assert isinstance(model.c_attn, nn.Linear) and isinstance(model.c_attn.weight, QTensor)
    assert [(q.name, q.shape) for q in summary.quantized] == [("c_attn.weight", (96, 64))]
    with torch.no_grad():
        err = (model(x) - ref).norm() / ref.norm()
    assert 0 < err < 0.15  # q4_0's error; a transposed weight would give ~1.4
    (skipped,) = summary.skipped
    assert skipped.name == "extra" and "a WithConv1D parameter" in skipped.reason


def test_expert_weights_need_whole_groups_per_expert_row() -> None:
    model = tiny("mixtral")
    summary = quantize_model(model, "minmax", bits=4, group_size=-1, progress=False)
    reasons = {s.name: s.reason for s in summary.skipped}
    assert "one group per row of dim 0" in reasons["model.layers.0.mlp.experts.gate_up_proj"]
    assert not isinstance(model.model.layers[0].mlp.experts.down_proj, QTensor)
    assert isinstance(model.model.layers[0].self_attn.q_proj.weight, QTensor)


def test_transposed_experts_are_transposed_then_quantized() -> None:
    """GPT-OSS stores its experts [experts, in, out]: they become [experts, out, in]
    (is_transposed cleared), the model computes the same, and q4_0 takes them."""
    model = tiny("gpt_oss")
    ids = torch.randint(0, 256, (1, 7), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        before = model(ids).logits
    assert untranspose_experts(model) == [f"model.layers.{i}.mlp.experts" for i in range(2)]
    experts = model.model.layers[0].mlp.experts
    assert not experts.is_transposed
    assert tuple(experts.gate_up_proj.shape) == (4, 256, 64)  # [experts, 2 * intermediate, in]
    assert tuple(experts.down_proj.shape) == (4, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, before, rtol=1e-5, atol=1e-5)
    summary = quantize_model(model, "q4_0", progress=False)
    assert {"model.layers.1.mlp.experts.gate_up_proj", "model.layers.1.mlp.experts.down_proj"} <= {
        q.name for q in summary.quantized
    }


def test_transposed_experts_under_their_eager_forward_stay_float_with_reason() -> None:
    """The module's own eager forward hard-codes [in, out]: left as it is, and q4_0 (blocks
    along the output axis) lists them as skipped; a grouped codec still takes them."""
    model = tiny("gpt_oss")
    model.config._experts_implementation = "eager"
    summary = quantize_model(model, "q4_0", progress=False)
    assert model.model.layers[0].mlp.experts.is_transposed
    reasons = {s.name: s.reason for s in summary.skipped}
    assert "eager forward" in reasons["model.layers.1.mlp.experts.down_proj"]
    model = tiny("gpt_oss")
    model.config._experts_implementation = "eager"
    summary = quantize_model(model, "minmax:4:g32", progress=False)
    assert "model.layers.1.mlp.experts.down_proj" in {q.name for q in summary.quantized}


def test_transposed_deferred_experts_are_read_transposed() -> None:
    source = torch.randn(4, 64, 96)  # [experts, in, out], as stored in the checkpoint
    model = tiny("gpt_oss")
    experts = model.model.layers[0].mlp.experts
    experts._parameters["down_proj"] = DeferredTensor(
        lambda b, e: source[b:e], (4, 64, 96), torch.float32, name="down_proj"
    )
    experts._parameters["gate_up_proj"] = nn.Parameter(torch.randn(4, 64, 256))
    untranspose_experts(model)
    weight = experts.down_proj
    assert isinstance(weight, DeferredTensor) and tuple(weight.shape) == (4, 96, 64)
    assert torch.equal(weight.materialize(), source.transpose(1, 2))


def test_conv1d_with_a_deferred_weight_is_read_transposed() -> None:
    """A streamed checkpoint's Conv1D weight (not read yet) becomes a deferred [out, in]
    Linear weight, quantized when read: the same codes as quantizing the transposed weight."""
    torch.manual_seed(0)
    source = torch.randn(64, 96)  # Conv1D layout [in, out]
    conv = Conv1D(96, 64)
    conv._parameters["weight"] = DeferredTensor(
        lambda b, e: source[b:e], (64, 96), torch.float32, name="c_attn.weight"
    )
    model = nn.Sequential(conv)
    summary = quantize_model(model, "q4_0", progress=False)
    weight = model[0].weight
    assert isinstance(model[0], nn.Linear) and isinstance(weight, DeferredTensor)
    assert [(q.name, q.shape) for q in summary.quantized] == [("0.weight", (96, 64))]
    expected = quantize_tensor(source.t().contiguous(), "q4_0").dequantize()
    assert torch.equal(weight.materialize().dequantize(), expected)
