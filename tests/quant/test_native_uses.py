"""Q4_0 weights where tract cannot take them as they are: split concat inputs, dequantized
views for non-matmul uses. The patterns that used to abort tract run in a child process,
so a panic fails the test instead of killing pytest."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from t2n_quant import QTensor, quantize_model
from tests.helpers import export_and_check

ROOT = Path(__file__).resolve().parents[2]

_CHILD = """
import torch
from torch import nn
from t2n_quant import QTensor, quantize_model
from tests.helpers import export_and_check
from tests.core.test_concat_product import ClsConcat, ConvFuse
from tests.quant.test_native_uses import LinearCat
torch.manual_seed(0)
model, x = {model}, {x}
summary = quantize_model(model, "q4_0", progress=False)
assert any(isinstance(p, QTensor) for p in model.parameters())
result = export_and_check(model, x, __import__("pathlib").Path({tmp!r}), atol=1e-3)
print("NOTES", result.notes)
print("FILES", result.files)
"""


class LinearCat(nn.Module):
    """A Linear over a feature concat whose pieces do (32 + 96) or do not (48 + 80) cut
    whole Q4_0 blocks."""

    def __init__(self, first: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(16, first), nn.Linear(16, 128 - first)
        self.out = nn.Linear(128, 32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.cat([self.a(x), torch.relu(self.b(x))], -1))


def _in_child(model: str, x: str, tmp_path: Path) -> str:
    code = textwrap.dedent(_CHILD).format(model=model, x=x, tmp=str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"child exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    return proc.stdout


@pytest.mark.parametrize(
    ("model", "x", "stored"),
    [
        ("ClsConcat()", "torch.randn(2, 9, 64)", ["proj.weight.cols_0_64"]),
        ("ConvFuse(1)", "torch.randn(1, 8, 4, 4)", ["fuse.weight.cols_64_96"]),
        ("ConvFuse(3)", "torch.randn(1, 8, 5, 5)", ["fuse.weight"]),
        ("LinearCat(32)", "torch.randn(3, 16)", ["out.weight.cols_0_32", "out.weight.cols_32_128"]),
        ("LinearCat(48)", "torch.randn(3, 16)", ["out.weight.view"]),
    ],
    ids=["dpt-readout", "segformer-fuse-1x1", "fuse-3x3", "blocks-aligned", "blocks-unaligned"],
)  # fmt: skip
def test_q4_0_product_of_a_concat_runs_in_tract(model, x, stored, tmp_path) -> None:
    out = _in_child(model, x, tmp_path)
    files = next(line for line in out.splitlines() if line.startswith("FILES"))
    for label in stored:
        assert f"{label}.dat" in files or f"{label}_codes.dat" in files, out


class RelEmbeddingNorm(nn.Module):
    """DeBERTa-v2: an Embedding table gathered by ids and also fed whole to a LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.rel = nn.Embedding(16, 64)
        self.norm = nn.LayerNorm(64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        table = self.norm(self.rel.weight)  # [16, 64]
        return self.rel(ids) @ table.T


def test_q4_0_weight_also_used_by_layer_norm_gets_a_view(tmp_path) -> None:
    torch.manual_seed(0)
    model = RelEmbeddingNorm().eval()
    quantize_model(model, "q4_0", progress=False)
    assert isinstance(model.rel.weight, QTensor)
    ids = torch.randint(0, 16, (2, 5))
    result = export_and_check(model, (ids,), tmp_path, atol=1e-3)
    assert "rel.weight.dat" in result.files  # the gather stays native (Q4_0)
    assert "rel.weight.view_codes.dat" in result.files
    assert "q4_0" in result.tensor_bytes
    (note,) = result.notes
    assert "'rel.weight'" in note and "'rel.weight.view'" in note
