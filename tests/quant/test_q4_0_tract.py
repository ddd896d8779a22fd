"""tract reads our Q4_0 bytes as the weights QTensor.dequantize() gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tract  # noqa: F401  a runtime dependency: missing must fail, not skip
from torch import nn

import t2n_core
from t2n_quant import quantize_tensor
from tests.quant.qhelpers import run_tract


@pytest.fixture
def qt() -> torch.Tensor:
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    w[0] = 0.0
    w[1] = -w[1].abs()
    return quantize_tensor(w, "q4_0", calibration="mse")


def _native_archive(module: nn.Module, args: tuple, directory: Path) -> Path:
    """Export through the real path; the Q4_0 weight must stay one tract-native tensor."""
    result = t2n_core.export(module, args, directory, progress=False)
    assert not result.notes and [f for f in result.files if f.endswith(".dat")] == ["weight.dat"]
    return directory


def test_gather_rows_bit_exact(qt: torch.Tensor, tmp_path: Path) -> None:
    emb = nn.Embedding(48, 96)
    emb.weight = nn.Parameter(qt, requires_grad=False)
    idx = torch.arange(48)
    archive = _native_archive(emb, (idx,), tmp_path / "emb")
    assert "tract_core_gather(" in (archive / "graph.nnef").read_text()
    (out,) = run_tract(archive, [idx.numpy()[::-1].copy()])
    assert np.array_equal(out, qt.dequantize().numpy()[::-1])


def test_matmul_with_identity_bit_exact(qt: torch.Tensor, tmp_path: Path) -> None:
    fc = nn.Linear(96, 48, bias=False)
    fc.weight = nn.Parameter(qt, requires_grad=False)
    archive = _native_archive(fc, (torch.eye(96),), tmp_path / "fc")
    assert "matmul(" in (archive / "graph.nnef").read_text()
    (out,) = run_tract(archive, [np.eye(96, dtype=np.float32)])
    assert np.array_equal(out, qt.dequantize().numpy().T)
