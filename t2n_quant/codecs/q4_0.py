"""Q4_0: ggml's and tract's native 4-bit block format.

Blocks of 32 consecutive values along a row (rows = dim 0, k = the other dims, row-major).
One block is 18 bytes::

    bytes 0-1    d, the scale, as little-endian f16
    bytes 2-17   byte 2 + j holds code j in its low nibble and code j + 16 in its high nibble

and ``value = (code - 8) * d``. tract reads it as item type 0x3040 of vendor 0x5254
and keeps it compressed for matmul, conv and gather.

:meth:`Q4_0Codec.quantize_blocks` follows ggml's reference rounding exactly:
``code = clamp(trunc(x / d + 8.5), 0, 15)`` with ``1 / d`` taken in f32 from the f32 ``d``
(``1 / 0 -> 0``), so with ggml's min-max scale (``d = signed max / -8``) the bytes equal
``gguf.quants.quantize(w, GGMLQuantizationType.Q4_0)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.codecs.masks import reciprocal_or_zero

BLOCK = 32
BLOCK_BYTES = 18


@dataclass(frozen=True)
class Q4_0Codec(Codec, name="q4_0", aliases=("q4",)):
    """Q4_0 with its 4.5 bits per weight (see the module docstring for the layout).

    >>> c = Q4_0Codec()
    >>> c.spec, c.bytes_per_block(32)
    ('q4_0', 16)
    """

    bits: ClassVar[int] = 4
    group_size: ClassVar[int] = BLOCK
    scale_rule: ClassVar[str] = "signed_max"

    @property
    def spec(self) -> str:
        return "q4_0"

    def bytes_per_block(self, block_size: int) -> int:
        return block_size // 2

    def quantize_blocks(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        d = params.scale.float()
        inv = reciprocal_or_zero(d)
        t = blocks * inv
        t.add_(8.5).clamp_(0.0, 15.0)  # the cast below truncates toward zero, like trunc()
        return t.to(torch.uint8)

    def dequantize_blocks(self, codes: torch.Tensor, stored: QParams) -> torch.Tensor:
        return (codes.float() - 8.0) * stored.scale.float()

    def dequantize_packed(
        self, packed: torch.Tensor, stored: QParams, block_size: int, out: torch.Tensor
    ) -> None:
        # the nibbles straight into out's halves, then in place: no codes or temporaries
        half = packed.shape[1]
        out[:, :half] = packed & 0x0F
        out[:, half:] = packed >> 4
        out.sub_(8.0).mul_(stored.scale.float())

    def float_codes(
        self, blocks: torch.Tensor, params: QParams, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        d = params.scale.float()
        inv = reciprocal_or_zero(d)
        t = torch.mul(blocks, inv, out=out) if out is not None else blocks * inv
        # floor = trunc on the clamped, non-negative values, and far faster than trunc on CPU
        return t.add_(8.5).clamp_(0.0, 15.0).floor_().sub_(8.0)

    def fake_quantize(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        return self.float_codes(blocks, params).mul_(self.store(params).scale.float())

    def fragment_twin(self) -> Codec:
        """The fragment codec whose ``(code - 8) * scale`` gives the same values from the same
        codes and f16 scales (``symmetric:4:g32``); it decodes Q4_0 where tract cannot.

        >>> Q4_0Codec().fragment_twin().spec
        'symmetric:4:g32'
        """
        from t2n_quant.codecs.symmetric import SymmetricCodec

        return SymmetricCodec(bits=4, group_size=BLOCK)

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        half = codes.shape[1] // 2
        # low | high << 4 as one uint8 kernel (high < 16, so nothing overflows)
        return torch.add(codes[:, :half], codes[:, half:], alpha=16)

    def unpack(self, packed: torch.Tensor, block_size: int = BLOCK) -> torch.Tensor:
        return torch.cat([packed & 0x0F, packed >> 4], dim=1)

    @staticmethod
    def to_block_bytes(packed: torch.Tensor, stored: QParams) -> torch.Tensor:
        """``(n_blocks, 18)`` uint8: the f16 scale then the 16 nibble bytes of each block.

        >>> Q4_0Codec.to_block_bytes(torch.zeros(1, 16, dtype=torch.uint8),
        ...                          QParams(torch.ones(1, 1, dtype=torch.float16))).shape
        torch.Size([1, 18])
        """
        d = stored.scale.to(torch.float16).contiguous().view(torch.uint8)
        return torch.cat([d, packed], dim=1)

    @staticmethod
    def from_block_bytes(raw: torch.Tensor) -> tuple[torch.Tensor, QParams]:
        """Inverse of :meth:`to_block_bytes`: ``(packed, stored params)``."""
        raw = raw.reshape(-1, BLOCK_BYTES)
        d = raw[:, :2].contiguous().view(torch.float16)
        return raw[:, 2:].contiguous(), QParams(d)
