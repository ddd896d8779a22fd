"""``int8``: LLM.int8()'s row-wise 8-bit weights (bitsandbytes ``Linear8bitLt``).

``value = (code - 128) * scale`` with one f32 scale per row, the ``symmetric`` codec with
8 bits, per-channel groups and f32 scales: ``code - 128`` is bitsandbytes' int8 ``CB`` and
``scale`` its ``SCB * (1 / 127)``, so an imported ``Linear8bitLt`` dequantizes exactly as
bitsandbytes' dequantizing forward computes its weight. Layout: codes ``(rows, k)`` uint8,
scale ``(rows, 1)`` f32. Written to NNEF by the ``symmetric`` encoder.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from t2n_quant.codecs.symmetric import SymmetricCodec


@dataclass(frozen=True)
class Int8Codec(SymmetricCodec, name="int8"):
    """Row-wise absmax int8 with f32 scales (``group_size`` may also be set).

    >>> Int8Codec().spec, Int8Codec().levels().max().item()
    ('int8:8:pc', 127.0)
    """

    bits: ClassVar[int] = 8  # type: ignore[misc]
    group_size: int | None = None
    storage_dtype: ClassVar[torch.dtype] = torch.float32
