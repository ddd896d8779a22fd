"""Dense LSB-first bit packing: round trips and the exact bit layout."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from t2n_quant.codecs import bitpack
from t2n_quant.errors import UnsupportedCodecOptionError


def reference_pack(codes: list[int], bits: int) -> bytes:
    """The bit stream written one bit at a time: code i, bit j -> stream bit i*bits + j."""
    per = bitpack.codes_per_chunk(bits)
    codes = codes + [0] * (-len(codes) % per)
    out = bytearray(len(codes) * bits // 8)
    for i, code in enumerate(codes):
        for j in range(bits):
            n = i * bits + j
            out[n // 8] |= ((code >> j) & 1) << (n % 8)
    return bytes(out)


@st.composite
def code_rows(draw: st.DrawFn) -> tuple[int, torch.Tensor]:
    bits = draw(st.sampled_from(bitpack.SUPPORTED_BITS))
    n = draw(st.integers(1, 4))
    m = draw(st.integers(1, 70))
    values = draw(st.lists(st.integers(0, (1 << bits) - 1), min_size=n * m, max_size=n * m))
    return bits, torch.tensor(values, dtype=torch.uint8).reshape(n, m)


@settings(max_examples=80, deadline=None)
@given(code_rows())
def test_round_trip(case: tuple[int, torch.Tensor]) -> None:
    bits, codes = case
    packed = bitpack.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8
    assert packed.shape == (codes.shape[0], bitpack.packed_row_bytes(bits, codes.shape[1]))
    assert torch.equal(bitpack.unpack_bits(packed, bits, codes.shape[1]), codes)


@settings(max_examples=40, deadline=None)
@given(code_rows())
def test_layout_matches_bit_stream(case: tuple[int, torch.Tensor]) -> None:
    bits, codes = case
    packed = bitpack.pack_bits(codes, bits)
    for row, prow in zip(codes.tolist(), packed):
        assert bytes(prow.tolist()) == reference_pack(row, bits)


@pytest.mark.parametrize(
    ("bits", "per_chunk", "chunk_bytes"),
    [(2, 4, 1), (3, 8, 3), (4, 2, 1), (5, 8, 5), (6, 4, 3), (8, 1, 1)],
    ids=lambda v: str(v),
)
def test_chunk_geometry(bits: int, per_chunk: int, chunk_bytes: int) -> None:
    assert bitpack.codes_per_chunk(bits) == per_chunk
    assert bitpack.CHUNK_BYTES[bits] == chunk_bytes
    assert bitpack.packed_row_bytes(bits, 32) == 32 * bits // 8


def test_known_bytes() -> None:
    four = torch.tensor([[0x1, 0x2, 0xF, 0x0]], dtype=torch.uint8)
    assert bitpack.pack_bits(four, 4).tolist() == [[0x21, 0x0F]]
    three = torch.arange(8, dtype=torch.uint8).reshape(1, 8)  # 0b111_110_..._001_000
    assert bitpack.pack_bits(three, 3).tolist() == [[0b10001000, 0b11000110, 0b11111010]]


def test_unsupported_bits_lists_allowed() -> None:
    with pytest.raises(UnsupportedCodecOptionError, match=r"\[2, 3, 4, 5, 6, 8\]"):
        bitpack.pack_bits(torch.zeros(1, 8, dtype=torch.uint8), 7)
