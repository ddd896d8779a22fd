"""``nf4`` and ``fp4``: 4-bit codes indexing a 16-entry code book, one f32 scale per block.

``value = codebook[code] * scale``, the product taken in f32: bitsandbytes' 4-bit formats
(QLoRA's NormalFloat4 and its FP4), with its code books to the bit, so a weight imported
from a bitsandbytes ``Linear4bit`` dequantizes exactly as ``dequantize_4bit`` does
(see :mod:`t2n_quant.interop.bitsandbytes`). The scale is the block's absolute maximum
(every code book spans ``[-1, 1]``), kept in f32 as bitsandbytes keeps it.
Layout of one tensor (rows = dim 0, k = the other dims, ``G`` blocks of ``g`` values per row):

- codes: ``(rows * G, ceil(g / 2))`` uint8, two codes per byte, the first in the low nibble
  (:mod:`t2n_quant.codecs.bitpack`; bitsandbytes puts the first in the high nibble);
- scale: ``(rows * G, 1)`` f32.

Any block size (``group_size``) is allowed, ``None`` for one block per row.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from t2n_quant.codecs import bitpack
from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.errors import UnsupportedCodecOptionError

#: bitsandbytes' NormalFloat4 levels (``bitsandbytes.functional.get_4bit_type("nf4")``), f32
NF4_CODEBOOK: tuple[float, ...] = (
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
)  # fmt: skip
#: bitsandbytes' FP4 levels (``get_4bit_type("fp4")``): sign bit, then 3 bits of magnitude
FP4_CODEBOOK: tuple[float, ...] = (
    0.0, 0.0052083334885537624, 0.6666666865348816, 1.0,
    0.3333333432674408, 0.5, 0.1666666716337204, 0.25,
    0.0, -0.0052083334885537624, -0.6666666865348816, -1.0,
    -0.3333333432674408, -0.5, -0.1666666716337204, -0.25,
)  # fmt: skip


@dataclass(frozen=True)
class CodebookCodec(Codec):
    """Base of the 4-bit code book codecs; subclasses set :attr:`codebook`."""

    bits: ClassVar[int] = 4
    codebook: ClassVar[tuple[float, ...]] = ()
    storage_dtype: ClassVar[torch.dtype] = torch.float32
    group_size: int | None = 64

    def __post_init__(self) -> None:
        gs = self.group_size
        if gs == -1:
            object.__setattr__(self, "group_size", None)
        elif gs is not None and (isinstance(gs, bool) or not isinstance(gs, int) or gs < 1):
            raise UnsupportedCodecOptionError(
                f"{self.name} does not support group_size={gs!r}; allowed values: any "
                "positive block size, or None / -1 for one block per output channel"
            )

    @property
    def spec(self) -> str:
        return f"{self.name}:pc" if self.group_size is None else f"{self.name}:g{self.group_size}"

    def table(self) -> torch.Tensor:
        """The code book as a ``(16,)`` float32 tensor."""
        return torch.tensor(self.codebook, dtype=torch.float32)

    def bytes_per_block(self, block_size: int) -> int:
        return bitpack.packed_row_bytes(self.bits, block_size)

    def quantize_blocks(self, blocks: torch.Tensor, params: QParams) -> torch.Tensor:
        """The code of the nearest level to ``x / scale`` (the lower one on ties)."""
        scale = self.store(params).scale.float()
        inv = torch.where(scale == 0, torch.zeros_like(scale), 1.0 / scale)
        levels, order = torch.sort(self.table(), stable=True)
        mids = (levels[1:] + levels[:-1]) / 2
        idx = torch.bucketize((blocks * inv).clamp_(-1.0, 1.0), mids, right=False)
        return order[idx].to(torch.uint8)

    def dequantize_blocks(self, codes: torch.Tensor, stored: QParams) -> torch.Tensor:
        return self.table().to(codes.device)[codes.long()] * stored.scale.float()

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        return bitpack.pack_bits(codes, self.bits)

    def unpack(self, packed: torch.Tensor, block_size: int) -> torch.Tensor:
        return bitpack.unpack_bits(packed, self.bits, block_size)


@dataclass(frozen=True)
class NF4Codec(CodebookCodec, name="nf4"):
    """QLoRA's NormalFloat4 (bitsandbytes ``quant_type="nf4"``).

    >>> NF4Codec(group_size=64).spec, NF4Codec().levels()[[0, 7, 15]].tolist()
    ('nf4:g64', [-1.0, 0.0, 1.0])
    """

    codebook: ClassVar[tuple[float, ...]] = NF4_CODEBOOK


@dataclass(frozen=True)
class FP4Codec(CodebookCodec, name="fp4"):
    """bitsandbytes' 4-bit float (``quant_type="fp4"``).

    >>> FP4Codec(group_size=128).spec
    'fp4:g128'
    """

    codebook: ClassVar[tuple[float, ...]] = FP4_CODEBOOK
