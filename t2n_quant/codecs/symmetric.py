"""``symmetric``: signed codes with one f16 scale per group and no stored zero point.

``value = (code - 2**(bits-1)) * scale``: the signed code ``c`` in
``-2**(bits-1) .. 2**(bits-1) - 1`` is stored as ``c + 2**(bits-1)``, so stored codes are
unsigned ``0 .. 2**bits - 1``. The product is taken in f32 after converting ``scale`` from
f16. Layout of one tensor (rows = dim 0, k = the other dims, ``G`` groups of ``g`` values):

- codes: ``(rows * G, packed_row_bytes(bits, g))`` uint8, each group's codes packed densely,
  least significant bits first (:mod:`t2n_quant.codecs.bitpack`);
- scale: ``(rows * G, 1)`` f16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from t2n_quant.codecs.base import QParams
from t2n_quant.codecs.grouped import GroupedCodec
from t2n_quant.codecs.masks import reciprocal_or_zero


@dataclass(frozen=True)
class SymmetricCodec(GroupedCodec, name="symmetric", aliases=("sym",)):
    """Symmetric ``bits``-bit codes per group of ``group_size`` (``None``: per row).

    >>> SymmetricCodec(bits=4, group_size=None).offset
    8
    """

    bits: int = 4
    group_size: int | None = 32

    def _codes_float(self, blocks: torch.Tensor, params: QParams) -> tuple[torch.Tensor, ...]:
        scale = self.store(params).scale.float()
        inv = reciprocal_or_zero(scale)
        t = blocks * inv
        return t.round_().add_(float(self.offset)).clamp_(0.0, float(self.qmax)), scale

    @property
    def offset(self) -> int:
        return 1 << (self.bits - 1)

    def quantize_blocks(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        return self._codes_float(blocks, params)[0].to(torch.int32).to(torch.uint8)

    def dequantize_blocks(self, codes: torch.Tensor, stored: QParams) -> torch.Tensor:
        return (codes.float() - float(self.offset)) * stored.scale.float()

    def float_codes(
        self, blocks: torch.Tensor, params: QParams, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        # the signed codes directly: the clamp of _codes_float shifted by -offset (3 passes, not 5)
        scale = self.store(params).scale.float()
        inv = reciprocal_or_zero(scale)
        low = -float(self.offset)
        t = torch.mul(blocks, inv, out=out) if out is not None else blocks * inv
        return t.round_().clamp_(low, low + self.qmax)

    def fake_quantize(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        codes, scale = self._codes_float(blocks, params)
        return codes.sub_(float(self.offset)).mul_(scale)
