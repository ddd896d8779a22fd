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


class BmmExperts(nn.Module):
    """Llama 4's ``Llama4TextExperts``: every expert on its slice of the tokens at once,
    ``torch.bmm`` on weights stored ``[experts, in, out]``."""

    def __init__(self, experts: int = 3, hidden: int = 64, inner: int = 32) -> None:
        super().__init__()
        self.gate_up_proj = nn.Parameter(torch.randn(experts, hidden, 2 * inner) / hidden**0.5)
        self.down_proj = nn.Parameter(torch.randn(experts, inner, hidden) / inner**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.view(self.gate_up_proj.shape[0], -1, x.shape[-1])
        gate, up = torch.bmm(x, self.gate_up_proj).chunk(2, dim=-1)
        return torch.bmm(up * nn.functional.silu(gate), self.down_proj).view(-1, x.shape[-1])


def test_bmm_experts_are_quantized_and_run_per_expert_in_tract(tmp_path) -> None:
    """3-D weights fed to ``bmm`` as ``[experts, in, out]`` are stored ``[experts, out, in]``
    (read transposed: same values) and quantized; in tract each expert's matrix is a 2-D q4_0
    tensor of its own feeding a quantized matmul, and no float matrix is left."""
    from t2n_core import export
    from t2n_core.nnef.archive import read_archive_files
    from t2n_core.nnef.dat import DatHeader
    from tests.llm.test_families import float_matrices

    torch.manual_seed(0)
    model = BmmExperts().eval()
    x = torch.randn(6, 64)  # 3 experts x 2 tokens
    with torch.no_grad():
        ref = model(x)
    summary = quantize_model(model, "q4_0", progress=False)
    assert not summary.skipped
    assert {(q.name, q.shape) for q in summary.quantized} == {
        ("parametrizations.gate_up_proj.original", (3, 64, 64)),
        ("parametrizations.down_proj.original", (3, 64, 32)),
    }
    assert tuple(model.gate_up_proj.shape) == (3, 64, 64)  # still read [experts, in, out]
    with torch.no_grad():
        err = (model(x) - ref).norm() / ref.norm()
    assert 0 < err < 0.15  # q4_0's error along the input axis
    result = export(model, (x,), tmp_path / "bmm.nnef.tgz", check=True, progress=False)
    assert result.check is not None and result.check.passed, str(result.check)
    assert not float_matrices(result.path)
    headers = {
        name: DatHeader.unpack(raw)
        for name, raw in read_archive_files(result.path, dat_headers_only=True).items()
        if name.endswith(".dat")
    }
    per_expert = {n: h.shape for n, h in headers.items() if h.type_name() == "q4_0"}
    assert per_expert["parametrizations.down_proj.original.rows_2_3.dat"] == (64, 32)
    assert len(per_expert) == 6
