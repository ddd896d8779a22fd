"""Quantized models exported with t2n_core.export run in tract like in PyTorch."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2n_quant import quantize_model
from tests.helpers import export_and_check
from tests.quant.qhelpers import sqnr_db


class Block(nn.Module):
    """A pre-norm transformer block (causal self-attention + GELU MLP)."""

    def __init__(self, d: int = 64, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, c))
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


def _g() -> torch.Generator:
    return torch.Generator().manual_seed(0)


CASES: dict[str, tuple[Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]] = {
    "linear": (lambda: nn.Linear(64, 32), lambda: (torch.randn(3, 64, generator=_g()),)),
    "embedding": (
        lambda: nn.Embedding(40, 64),
        lambda: (torch.randint(0, 40, (2, 5), generator=_g()),),
    ),
    "conv1d": (
        lambda: nn.Conv1d(16, 8, 4, padding=1),
        lambda: (torch.randn(1, 16, 20, generator=_g()),),
    ),
    "conv2d": (lambda: nn.Conv2d(8, 16, 2), lambda: (torch.randn(1, 8, 10, 10, generator=_g()),)),
    "conv-transpose": (
        lambda: nn.ConvTranspose1d(16, 8, 4, stride=2),
        lambda: (torch.randn(1, 16, 10, generator=_g()),),
    ),
    "block": (Block, lambda: (torch.randn(1, 6, 64, generator=_g()),)),
}
#: each model with each codec costs ~1.5 s of export; this matrix covers every module
#: kind and every encoder (q4_0 native, minmax and symmetric fragments) at least once
MATRIX = [
    ("linear", "q4_0"), ("linear", "minmax:4:g32"), ("linear", "symmetric:3:pc"),
    ("embedding", "q4_0"), ("embedding", "minmax:2:g16"),
    ("conv1d", "q4_0"), ("conv2d", "symmetric:5:g32"),
    ("conv-transpose", "q4_0"), ("conv-transpose", "minmax:6:pc"),
    ("block", "q4_0"), ("block", "minmax:4:g32"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "spec"), MATRIX, ids=[f"{c}-{s}" for c, s in MATRIX])
def test_export_runs_in_tract(case: str, spec: str, tmp_path: Path) -> None:
    make, inputs = CASES[case]
    torch.manual_seed(0)
    model = make().eval()
    float_model = copy.deepcopy(model)
    summary = quantize_model(model, spec, progress=False)
    if case == "conv-transpose" and spec == "q4_0":
        assert summary.quantized == [] and "ConvTranspose" in summary.skipped[0].reason
    else:
        assert summary.skipped == [] and summary.quantized
    args = inputs()
    if not summary.quantized:
        return  # nothing quantized: a plain float export, not this file's business
    # check=True: tract's outputs against the quantized PyTorch model's
    result = export_and_check(model, args, tmp_path, name="m.nnef")
    graph = (tmp_path / "m.nnef" / "graph.nnef").read_text()
    if spec != "q4_0":
        codec = spec.split(":")[0]
        bits = spec.split(":")[1]
        assert f"fragment t2n_{codec}_b{bits}(" in graph
        assert any(p.name.endswith("_codes.dat") for p in (tmp_path / "m.nnef").iterdir())
    else:
        assert result.tensor_bytes.get("q4_0", 0) > 0
    with torch.no_grad():
        assert sqnr_db(float_model(*args), model(*args)) > 5


class AllKinds(nn.Module):
    """Embedding -> Conv1d -> Conv2d -> transformer block -> Linear head: every module kind."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 64)
        self.conv1d = nn.Conv1d(64, 64, 3, padding=1)
        self.conv2d = nn.Conv2d(1, 1, (1, 64), padding=(0, 0))
        self.block = Block()
        self.head = nn.Linear(64, 32)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)  # [B, T, 64]
        x = x + self.conv1d(x.transpose(1, 2)).transpose(1, 2)
        x = x * self.conv2d(x.unsqueeze(1)).squeeze(1)  # [B, T, 1] gate
        return self.head(self.block(x))


#: every codec at every bit width, group sizes rotating through the allowed ones
ALL_SPECS = ["q4_0"] + [
    f"{codec}:{bits}:{group}"
    for codec in ("minmax", "symmetric")
    for bits, group in zip((2, 3, 4, 5, 6, 8), ("g16", "g32", "g64", "pc", "g32", "g16"))
]


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_codec_and_bit_width_on_every_module_kind(spec: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = AllKinds().eval()
    summary = quantize_model(model, spec, progress=False)
    quantized = {q.name for q in summary.quantized}
    skipped = {s.name: s.reason for s in summary.skipped}
    for name in ("embed.weight", "conv1d.weight", "conv2d.weight", "block.qkv.weight"):
        assert name in quantized, skipped
    assert "head.weight" in quantized, skipped
    tokens = torch.randint(0, 50, (2, 7))
    export_and_check(
        model, (tokens,), tmp_path, dynamic_axes={"tokens": {1: "T"}},
        check_inputs=[(torch.randint(0, 50, (2, 4)),)],
    )  # fmt: skip


#: f16 models: tract and PyTorch both compute in f16, so agreement is to f16 rounding
F16_TOL = 1e-2


@pytest.mark.parametrize("spec", ["q4_0", "minmax:4:g32", "symmetric:3:g64"])
def test_f16_model_quantized_exports(spec: str, tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Embedding(50, 64), nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 32)
    ).eval().half()  # fmt: skip
    summary = quantize_model(model, spec, progress=False)
    assert len(summary.quantized) == 3 and not summary.skipped
    tokens = torch.randint(0, 50, (2, 5))
    result = export_and_check(
        model, (tokens,), tmp_path, atol=F16_TOL, rtol=F16_TOL, input_names=["tokens"],
        dynamic_axes={"tokens": {1: "T"}}, check_inputs=[(torch.randint(0, 50, (2, 8)),)],
    )  # fmt: skip
    assert result.outputs[0].dtype == "f16"
