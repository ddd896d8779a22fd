"""tract computes exactly QTensor.dequantize() from the exported files, for every layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import tract  # noqa: F401  a runtime dependency: missing must fail, not skip

from t2n_quant import quantize_tensor
from t2n_quant.codecs import SUPPORTED_BITS
from tests.quant.qhelpers import export_weight, run_tract

GROUPS = ["g16", "g32", "g64", "g128", "g256", "pc"]


def weight(group: str, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = 100 if group == "pc" else 256  # per-channel rows of 100 need padding codes
    return torch.randn(3, k, generator=g) * torch.rand(3, 1, generator=g)


def tract_weight(qt: torch.Tensor, tmp: Path) -> np.ndarray:
    (out,) = run_tract(export_weight(qt, tmp / "w"))
    return out


@pytest.mark.parametrize("group", GROUPS)
@pytest.mark.parametrize("bits", SUPPORTED_BITS, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("codec", ["minmax", "symmetric"])
def test_bit_exact(codec: str, bits: int, group: str, tmp_path: Path) -> None:
    qt = quantize_tensor(weight(group, bits), f"{codec}:{bits}:{group}", calibration="mse")
    out = tract_weight(qt, tmp_path)
    expected = qt.dequantize().numpy()
    assert out.dtype == expected.dtype and out.shape == expected.shape
    assert np.array_equal(out.view(np.uint32), expected.view(np.uint32))


@pytest.mark.parametrize("spec", ["minmax:5:g32", "symmetric:6:pc"])
def test_conv_shapes_and_f16(spec: str, tmp_path: Path) -> None:
    w = torch.randn(4, 3, 4, 8, generator=torch.Generator().manual_seed(0)).half()
    qt = quantize_tensor(w, spec)
    out = tract_weight(qt, tmp_path)
    assert out.dtype == np.float16 and out.shape == (4, 3, 4, 8)
    assert np.array_equal(out, qt.dequantize().numpy())


def test_hqq_zero_points_bit_exact(tmp_path: Path) -> None:
    qt = quantize_tensor(weight("g64", 9), "minmax:3:g64", calibration="hqq")
    assert np.array_equal(tract_weight(qt, tmp_path), qt.dequantize().numpy())
