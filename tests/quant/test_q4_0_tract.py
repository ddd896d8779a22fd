"""tract reads our Q4_0 bytes as the weights QTensor.dequantize() gives."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tract  # noqa: F401  a runtime dependency: missing must fail, not skip

from t2n_quant import quantize_tensor
from tests.quant.qhelpers import run_tract, write_weight_graph


@pytest.fixture
def qt() -> torch.Tensor:
    w = torch.randn(48, 96, generator=torch.Generator().manual_seed(0))
    w[0] = 0.0
    w[1] = -w[1].abs()
    return quantize_tensor(w, "q4_0", calibration="mse")


def test_gather_rows_bit_exact(qt: torch.Tensor, tmp_path: Path) -> None:
    body = (
        "idx = tract_core_external(shape = [48], datum_type = 'i64');\n"
        "y = tract_core_gather(w, idx, axis = 0, datum_type = 'f32');"
    )
    write_weight_graph(qt.nnef_encoding("emb"), "emb", tmp_path, body, inputs=("idx",))
    (out,) = run_tract(tmp_path, [np.arange(48, dtype=np.int64)[::-1].copy()])
    assert np.array_equal(out, qt.dequantize().numpy()[::-1])


def test_matmul_with_identity_bit_exact(qt: torch.Tensor, tmp_path: Path) -> None:
    body = (
        "x = tract_core_external(shape = [96, 96], datum_type = 'f32');\n"
        "y = matmul(x, w, transposeB = true);"
    )
    write_weight_graph(qt.nnef_encoding("fc"), "fc", tmp_path, body, inputs=("x",))
    (out,) = run_tract(tmp_path, [np.eye(96, dtype=np.float32)])
    assert np.array_equal(out, qt.dequantize().numpy().T)
