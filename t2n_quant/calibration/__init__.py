"""Calibrations: how scales and zero points are chosen. They never pack or write.

A calibration is a function ``(codec, blocks) -> QParams`` on the ``(n_blocks, block_size)``
float32 view of a weight, registered by name:

- ``"minmax"`` (:mod:`.minmax`): the range of each block (ggml's rule for q4_0);
- ``"mse"`` (:mod:`.mse`): grid search over shrunk ranges for the least squared error;
- ``"hqq"`` (:mod:`.hqq`): half-quadratic (HQQ-style) refinement of the zero point / scale.

>>> from t2n_quant.codecs import MinMaxCodec
>>> calibrate(MinMaxCodec(bits=4, group_size=16), torch.randn(8, 16), "mse").scale.shape
torch.Size([8, 1])
"""

from __future__ import annotations

import torch

from t2n_quant.calibration.registry import CALIBRATIONS, Calibration, get_calibration, register
from t2n_quant.codecs.base import Codec, QParams

# Import for registration side effects.
from t2n_quant.calibration import hqq, minmax, mse  # noqa: F401  isort: skip


def calibrate(codec: Codec, blocks: torch.Tensor, method: str | Calibration = "minmax") -> QParams:
    """Scales (and zero points) for ``blocks`` under ``codec``, by calibration ``method``.

    >>> from t2n_quant.codecs import Q4_0Codec
    >>> calibrate(Q4_0Codec(), torch.ones(1, 32)).scale
    tensor([[-0.1250]])
    """
    return get_calibration(method)(codec, blocks)


__all__ = ["CALIBRATIONS", "Calibration", "calibrate", "get_calibration", "register"]
