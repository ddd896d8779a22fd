"""Dense bit packing of small unsigned codes into uint8, least significant bits first.

Codes of ``bits`` bits form a little-endian bit stream: code ``i`` of a row occupies
stream bits ``[i * bits, (i + 1) * bits)``, its bit ``j`` at stream bit ``i * bits + j``,
and stream bit ``n`` is bit ``n % 8`` of byte ``n // 8``. The stream is cut into
*chunks*, the smallest whole number of bytes that holds whole codes:

====  ===========  ===============
bits  chunk bytes  codes per chunk
====  ===========  ===============
2     1            4
3     3            8
4     1            2
5     5            8
6     3            4
8     1            1
====  ===========  ===============

Read as a little-endian integer, a chunk holds code ``i`` at ``(chunk >> (i * bits)) & mask``,
which is all the NNEF unpacking fragment has to compute. A row whose length is not a
multiple of the codes per chunk is padded with zero codes.
"""

from __future__ import annotations

import torch

from t2n_quant.errors import UnsupportedCodecOptionError

CHUNK_BYTES: dict[int, int] = {2: 1, 3: 3, 4: 1, 5: 5, 6: 3, 8: 1}
SUPPORTED_BITS: tuple[int, ...] = tuple(sorted(CHUNK_BYTES))


def check_bits(bits: int, codec: str = "this codec") -> None:
    """Raise :class:`UnsupportedCodecOptionError` unless ``bits`` can be packed.

    >>> check_bits(4)
    """
    if bits not in CHUNK_BYTES:
        raise UnsupportedCodecOptionError(
            f"{codec} does not support bits={bits!r}; allowed values: {list(SUPPORTED_BITS)}"
        )


def codes_per_chunk(bits: int) -> int:
    """How many codes one chunk holds (``codes_per_chunk(3) == 8``).

    >>> codes_per_chunk(6)
    4
    """
    check_bits(bits)
    return CHUNK_BYTES[bits] * 8 // bits


def packed_row_bytes(bits: int, n_codes: int) -> int:
    """Bytes taken by a row of ``n_codes`` codes, padding included.

    >>> packed_row_bytes(3, 32)
    12
    """
    per = codes_per_chunk(bits)
    return -(-n_codes // per) * CHUNK_BYTES[bits]


def _wide_dtype(bits: int) -> torch.dtype:
    return torch.int64 if CHUNK_BYTES[bits] * 8 > 31 else torch.int32


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack ``(n, m)`` codes below ``2**bits`` into ``(n, packed_row_bytes(bits, m))`` uint8.

    >>> pack_bits(torch.tensor([[1, 2]], dtype=torch.uint8), 4)
    tensor([[33]], dtype=torch.uint8)
    """
    n, m = codes.shape
    per, nbytes = codes_per_chunk(bits), CHUNK_BYTES[bits]
    pad = -m % per
    if pad:
        codes = torch.cat([codes, codes.new_zeros(n, pad)], dim=1)
    codes = codes.to(torch.uint8)
    if bits == 8:
        return codes.contiguous()
    c = codes.reshape(n, -1, per)
    if nbytes == 1:
        acc = c[..., 0].clone()
        for i in range(1, per):
            acc |= c[..., i] << (i * bits)
        return acc.reshape(n, -1)
    wide = _wide_dtype(bits)
    word = c[..., 0].to(wide)
    for i in range(1, per):
        word |= c[..., i].to(wide) << (i * bits)
    out = torch.empty(n, c.shape[1], nbytes, dtype=torch.uint8, device=codes.device)
    for j in range(nbytes):
        out[..., j] = (word >> (8 * j)) & 0xFF
    return out.reshape(n, -1)


def unpack_bits(packed: torch.Tensor, bits: int, n_codes: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: ``(n, bytes)`` uint8 -> ``(n, n_codes)`` uint8 codes.

    >>> unpack_bits(torch.tensor([[33]], dtype=torch.uint8), 4, 2)
    tensor([[1, 2]], dtype=torch.uint8)
    """
    n = packed.shape[0]
    per, nbytes = codes_per_chunk(bits), CHUNK_BYTES[bits]
    if bits == 8:
        return packed[:, :n_codes]
    mask = (1 << bits) - 1
    chunks = packed.reshape(n, -1, nbytes)
    if nbytes == 1:
        word = chunks[..., 0]
        parts = [(word >> (i * bits)) & mask for i in range(per)]
        return torch.stack(parts, dim=-1).reshape(n, -1)[:, :n_codes]
    wide = _wide_dtype(bits)
    word = chunks[..., 0].to(wide)
    for j in range(1, nbytes):
        word |= chunks[..., j].to(wide) << (8 * j)
    parts = [(word >> (i * bits)) & mask for i in range(per)]
    return torch.stack(parts, dim=-1).reshape(n, -1)[:, :n_codes].to(torch.uint8)
