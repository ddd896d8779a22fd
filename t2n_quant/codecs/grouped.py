"""What the ``minmax`` and ``symmetric`` codecs share: bit widths, groups and packing.

Both cut each row into groups of ``group_size`` values (or one group per row when
``group_size`` is ``None``, "per-channel"), keep one f16 scale per group, and pack the
codes of each group densely and least-significant-bit first (see
:mod:`t2n_quant.codecs.bitpack`). A per-channel row whose length is not a multiple of the
codes per chunk is padded with zero codes at its end.
"""

from __future__ import annotations

import torch

from t2n_quant.codecs import bitpack
from t2n_quant.codecs.base import Codec
from t2n_quant.errors import UnsupportedCodecOptionError

GROUP_SIZES: tuple[int, ...] = (16, 32, 64, 128, 256)


def normalize_group_size(group_size: int | None, codec: str) -> int | None:
    """``None`` or ``-1`` -> ``None`` (per-channel); otherwise one of :data:`GROUP_SIZES`.

    >>> normalize_group_size(-1, "minmax") is None
    True
    """
    if group_size is None or group_size == -1:
        return None
    if isinstance(group_size, bool) or group_size not in GROUP_SIZES:
        raise UnsupportedCodecOptionError(
            f"{codec} does not support group_size={group_size!r}; allowed values: "
            f"{list(GROUP_SIZES)}, or None / -1 for one group per output channel"
        )
    return int(group_size)


class GroupedCodec(Codec):
    """Base of codecs with a bit width in {2, 3, 4, 5, 6, 8} and a group size."""

    def __post_init__(self) -> None:
        bitpack.check_bits(self.bits, self.name)
        object.__setattr__(self, "group_size", normalize_group_size(self.group_size, self.name))

    @property
    def spec(self) -> str:
        group = "pc" if self.group_size is None else f"g{self.group_size}"
        return f"{self.name}:{self.bits}:{group}"

    def bytes_per_block(self, block_size: int) -> int:
        return bitpack.packed_row_bytes(self.bits, block_size)

    def pack(self, codes: torch.Tensor) -> torch.Tensor:
        return bitpack.pack_bits(codes, self.bits)

    def unpack(self, packed: torch.Tensor, block_size: int) -> torch.Tensor:
        return bitpack.unpack_bits(packed, self.bits, block_size)
