"""Q4_0 with min-max scales produces exactly ggml's bytes (gguf-py's reference)."""

from __future__ import annotations

import gguf  # a dev dependency: missing must fail, not skip
import numpy as np
import pytest
import torch

from t2n_quant import QParams, quantize_tensor
from t2n_quant.codecs import Q4_0Codec


def ggml_bytes(w: torch.Tensor) -> np.ndarray:
    flat = w.reshape(w.shape[0], -1).numpy()
    return gguf.quants.quantize(flat, gguf.GGMLQuantizationType.Q4_0).reshape(-1, 18)


def our_bytes(w: torch.Tensor) -> np.ndarray:
    qt = quantize_tensor(w, "q4_0")
    return Q4_0Codec.to_block_bytes(qt.packed, qt.params).numpy()


def special_blocks() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    rows = [
        torch.zeros(32),  # all zero: d = -0.0, every code 8
        -torch.rand(32, generator=g) - 0.1,  # all negative
        torch.rand(32, generator=g) + 0.1,  # all positive
        torch.full((32,), 3.0),  # constant
        torch.cat([torch.tensor([2.0, -2.0]), torch.zeros(30)]),  # tie, positive first
        torch.cat([torch.tensor([-2.0, 2.0]), torch.zeros(30)]),  # tie, negative first
        torch.cat([torch.tensor([-0.0, 0.0]), torch.zeros(30)]),  # signed zeros
        torch.randn(32, generator=g) * 1e-6,  # subnormal f16 scale
        torch.randn(32, generator=g) * 1e4,  # large values
        torch.tensor([0.5, -0.5] * 16),  # exact half steps
    ]
    return torch.stack(rows)


@pytest.mark.parametrize(
    "shape", [(16, 64), (3, 32), (8, 4, 8), (4, 2, 4, 4)], ids=["2d", "one-block", "3d", "4d"]
)
def test_random_equals_ggml(shape: tuple[int, ...]) -> None:
    w = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    assert np.array_equal(our_bytes(w), ggml_bytes(w))


def test_special_blocks_equal_ggml() -> None:
    w = special_blocks()
    ours, ref = our_bytes(w), ggml_bytes(w)
    for i in range(w.shape[0]):
        assert np.array_equal(ours[i], ref[i]), f"block {i} differs"


def test_many_blocks_equal_ggml() -> None:
    g = torch.Generator().manual_seed(2)
    w = torch.randn(256, 1024, generator=g) * torch.rand(256, 1, generator=g) * 3
    assert np.array_equal(our_bytes(w), ggml_bytes(w))


def test_dequantize_equals_ggml() -> None:
    w = torch.cat([special_blocks(), torch.randn(6, 32)]).reshape(8, 64)
    qt = quantize_tensor(w, "q4_0")
    ref = gguf.quants.dequantize(ggml_bytes(w).reshape(8, -1), gguf.GGMLQuantizationType.Q4_0)
    assert np.array_equal(qt.dequantize().numpy(), ref)


def test_block_bytes_round_trip() -> None:
    qt = quantize_tensor(torch.randn(4, 64), "q4_0")
    raw = Q4_0Codec.to_block_bytes(qt.packed, qt.params)
    packed, params = Q4_0Codec.from_block_bytes(raw)
    assert torch.equal(packed, qt.packed)
    assert torch.equal(params.scale, qt.scale)


def test_nibble_layout() -> None:
    codes = torch.arange(32, dtype=torch.uint8).reshape(1, 32) % 16
    packed = Q4_0Codec().pack(codes)
    assert packed[0, 0].item() == (codes[0, 0] | codes[0, 16] << 4).item()
    raw = Q4_0Codec.to_block_bytes(packed, QParams(torch.ones(1, 1, dtype=torch.float16)))
    assert raw[0, :2].tolist() == [0x00, 0x3C]  # f16 1.0, little endian
    assert torch.equal(Q4_0Codec().unpack(packed), codes)
