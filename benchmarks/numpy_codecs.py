"""Plain-numpy implementations of the min-max and symmetric codecs, as speed baselines.

The same steps as t2n_quant (f16 scale and zero point per group, codes packed least significant
bit first), though not bit-identical in rounding; only used to time t2n against plain numpy.
"""

from __future__ import annotations

import numpy as np


def _pack_lsb(codes: np.ndarray, bits: int) -> np.ndarray:
    stream = (codes[..., None] >> np.arange(bits, dtype=np.uint8)) & 1
    return np.packbits(stream.reshape(codes.shape[0], -1), axis=-1, bitorder="little")


def minmax_numpy(w: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, ...]:
    blocks = w.reshape(-1, group)
    lo = np.minimum(blocks.min(axis=1, keepdims=True), 0)
    hi = np.maximum(blocks.max(axis=1, keepdims=True), 0)
    scale = ((hi - lo) / (2**bits - 1)).astype(np.float16).astype(np.float32)
    scale[scale == 0] = 1.0
    zero = np.round(-lo / scale).astype(np.float16)
    codes = np.clip(np.round(blocks / scale) + zero.astype(np.float32), 0, 2**bits - 1)
    return _pack_lsb(codes.astype(np.uint8), bits), scale.astype(np.float16), zero


def symmetric_numpy(w: np.ndarray, bits: int, group: int) -> tuple[np.ndarray, ...]:
    blocks = w.reshape(-1, group)
    qmax = 2 ** (bits - 1) - 1
    scale = (np.abs(blocks).max(axis=1, keepdims=True) / qmax).astype(np.float16)
    s32 = scale.astype(np.float32)
    s32[s32 == 0] = 1.0
    codes = np.clip(np.round(blocks / s32), -qmax - 1, qmax) + 2 ** (bits - 1)
    return _pack_lsb(codes.astype(np.uint8), bits), scale
