"""``minmax``: asymmetric codes with an f16 scale and an f16 zero point per group.

``value = (code - zero) * scale`` with ``code`` in ``0 .. 2**bits - 1``, computed in f32
after converting ``scale`` and ``zero`` from f16 (the zero point may be fractional).
Layout of one tensor (rows = dim 0, k = the other dims, ``G`` groups of ``g`` values per row):

- codes: ``(rows * G, packed_row_bytes(bits, g))`` uint8, each group's codes packed densely,
  least significant bits first (:mod:`t2n_quant.codecs.bitpack`);
- scale: ``(rows * G, 1)`` f16;
- zero: ``(rows * G, 1)`` f16.

Codes are ``clamp(round(x / scale + zero), 0, 2**bits - 1)``, taken with the *stored*
(f16) scale and zero, so rounding the parameters to f16 costs no extra clipping.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from t2n_quant.codecs.base import QParams
from t2n_quant.codecs.grouped import GroupedCodec
from t2n_quant.codecs.masks import reciprocal_or_zero


@dataclass(frozen=True)
class MinMaxCodec(GroupedCodec, name="minmax", aliases=("asym",)):
    """Asymmetric ``bits``-bit codes per group of ``group_size`` (``None``: per row).

    >>> MinMaxCodec(bits=3, group_size=32).bytes_per_block(32)
    12
    """

    bits: int = 4
    group_size: int | None = 32
    has_zero: ClassVar[bool] = True

    def _codes_float(
        self, blocks: torch.Tensor, params: QParams, out: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, ...]:
        if params.zero is None:
            raise ValueError("minmax needs zero points; got QParams without zero")
        stored = self.store(params)
        scale, zero = stored.scale.float(), stored.zero.float()  # type: ignore[union-attr]
        inv = reciprocal_or_zero(scale)
        t = torch.mul(blocks, inv, out=out) if out is not None else blocks * inv
        return t.add_(zero).round_().clamp_(0.0, float(self.qmax)), scale, zero

    def quantize_blocks(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        return self._codes_float(blocks, params)[0].to(torch.int32).to(torch.uint8)

    def dequantize_blocks(self, codes: torch.Tensor, stored: QParams) -> torch.Tensor:
        assert stored.zero is not None
        return (codes.float() - stored.zero.float()) * stored.scale.float()

    def float_codes(
        self, blocks: torch.Tensor, params: QParams, out: torch.Tensor | None = None
    ) -> torch.Tensor:
        return self._codes_float(blocks, params, out)[0]

    def fake_quantize(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        codes, scale, zero = self._codes_float(blocks, params)
        return codes.sub_(zero).mul_(scale)
