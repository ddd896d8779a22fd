"""MSE calibration: search shrunk ranges for the parameters with the least error.

For every block, candidates are the min-max parameters themselves (so the result is
never worse than min-max) and min-max parameters of the range shrunk by factors
``1.0 .. min_shrink`` (``grid`` steps). For symmetric codecs (q4_0 included) each factor
is tried in both orientations: the signed value of largest magnitude on the lowest level
(ggml's choice) or on the highest level (:meth:`~t2n_quant.codecs.Codec.levels`). The
candidate with the least ``sum |fake_quantize(x) - x| ** norm`` wins, block by block.
Candidate scales are f16 values, so what is measured is what gets stored.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from t2n_quant.calibration.minmax import minmax_from_stats, minmax_params, signed_max
from t2n_quant.calibration.registry import register
from t2n_quant.codecs.base import Codec, QParams


def block_error(codec: Codec, blocks: torch.Tensor, params: QParams, norm: float) -> torch.Tensor:
    """``sum |fake_quantize(blocks) - blocks| ** norm`` per block, shape ``(n_blocks, 1)``."""
    diff = codec.fake_quantize(blocks, params).sub_(blocks)
    diff = diff.square_() if norm == 2.0 else diff.abs_().pow_(norm)
    return diff.sum(dim=-1, keepdim=True)


def _candidates(codec: Codec, blocks: torch.Tensor, shrinks: torch.Tensor) -> Iterator[QParams]:
    yield minmax_params(codec, blocks)
    lo = blocks.amin(dim=-1, keepdim=True)
    hi = blocks.amax(dim=-1, keepdim=True)
    if codec.has_zero:
        for s in shrinks.tolist()[1:]:
            yield minmax_from_stats(codec, lo, hi, None, s)
        return
    m = signed_max(blocks)
    levels = codec.levels()
    for s in shrinks.tolist():
        for top in (float(levels.min()), float(levels.max())):
            scale = (m * s / top).to(codec.storage_dtype).float()
            yield QParams(scale)


@register("mse")
def mse_search(
    codec: Codec,
    blocks: torch.Tensor,
    *,
    grid: int = 20,
    min_shrink: float = 0.5,
    norm: float = 2.0,
) -> QParams:
    """Per-block parameters minimizing the quantization error over a shrink grid.

    >>> from t2n_quant.codecs import Q4_0Codec
    >>> x = torch.randn(64, 32)
    >>> mse_search(Q4_0Codec(), x).scale.shape
    torch.Size([64, 1])
    """
    shrinks = torch.linspace(1.0, min_shrink, grid)
    best: QParams | None = None
    best_err = torch.full((blocks.shape[0], 1), float("inf"), device=blocks.device)
    for cand in _candidates(codec, blocks, shrinks):
        err = block_error(codec, blocks, cand, norm)
        if best is None:
            best, best_err = cand, err
            continue
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        zero = None
        if best.zero is not None and cand.zero is not None:
            zero = torch.where(better, cand.zero, best.zero)
        best = QParams(torch.where(better, cand.scale, best.scale), zero)
    assert best is not None
    return best
