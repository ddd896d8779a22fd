"""Min-max calibration: each block's range sets its scale (and zero point).

- asymmetric codecs (``minmax``): the range ``[min(x, 0), max(x, 0)]`` maps onto codes
  ``0 .. qmax``: ``scale = (hi - lo) / qmax`` rounded *up* to f16, ``zero = -lo / scale``
  (fractional, in ``[0, qmax]``). Rounding up means no value is clipped, so the error is at
  most half a step.
- codecs without a zero point and ``scale_rule == "absmax"``: ``scale = max|x| / top`` with
  ``top`` the codec's largest level (``2**(bits-1) - 1`` for ``symmetric``, 1 for ``nf4``),
  rounded up to the stored dtype.
- ``scale_rule == "signed_max"`` (q4_0): ggml's rule, ``d = m / bottom`` with ``bottom`` the
  codec's most negative level (``-2**(bits-1)``) and ``m`` the signed value of largest
  magnitude (the first one on ties), left in f32.

The levels come from the codec itself (:meth:`t2n_quant.codecs.Codec.levels`).
"""

from __future__ import annotations

import torch

from t2n_quant.calibration.registry import register
from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.codecs.masks import less_mask, nonzero_mask, pick


def f16_ceil(x: torch.Tensor, dtype: torch.dtype = torch.float16) -> torch.Tensor:
    """The smallest ``dtype`` (f16) value ``>= x`` (for ``x >= 0``), returned as float32.

    With ``dtype=torch.float32`` this is ``x`` itself.

    >>> f16_ceil(torch.tensor([1e-9, 1.0, 1.0001])).tolist()
    [5.960464477539063e-08, 1.0, 1.0009765625]
    """
    if dtype == torch.float32:
        return x.float()
    h = x.to(dtype)
    # the next f16 up where h < x: its bits (x >= 0) less the all-ones mask of h < x
    bumped = h.view(torch.int16).to(torch.int32).sub_(less_mask(h.float(), x.float()))
    return bumped.to(torch.int16).view(dtype).float()


def signed_max(
    blocks: torch.Tensor, lo: torch.Tensor | None = None, hi: torch.Tensor | None = None
) -> torch.Tensor:
    """Per block, the signed value of largest magnitude; the first one on ties (as ggml).
    ``lo`` / ``hi``, the blocks' minima / maxima, are taken when not given.

    >>> signed_max(torch.tensor([[1.0, -3.0, 3.0], [-2.0, 2.0, 0.0]])).flatten().tolist()
    [-3.0, -2.0]
    """
    hi = blocks.amax(dim=-1, keepdim=True) if hi is None else hi
    lo = blocks.amin(dim=-1, keepdim=True) if lo is None else lo
    m = pick(less_mask(hi, torch.neg(lo)), lo, hi)
    # both signs reach the largest magnitude, or all zeros: hi + lo == 0 exactly
    if hi.numel() and float(torch.add(hi, lo).abs_().amin()) == 0.0:
        rows = (hi == -lo).squeeze(1).nonzero().squeeze(1)
        sub = blocks[rows]
        m[rows] = sub.gather(-1, sub.abs().argmax(dim=-1, keepdim=True))
    return m


def minmax_from_stats(
    codec: Codec, lo: torch.Tensor, hi: torch.Tensor, m: torch.Tensor | None, shrink: float = 1.0
) -> QParams:
    """Min-max parameters from per-block ``lo``/``hi`` (and signed max ``m``), shrunk."""
    if codec.has_zero:
        lo = lo.clamp(max=0.0) * shrink
        hi = hi.clamp(min=0.0) * shrink
        scale = f16_ceil((hi - lo) / codec.qmax, codec.storage_dtype)
        zero = torch.div(lo, scale).neg_().view(torch.int32).bitwise_and_(nonzero_mask(scale))
        return QParams(scale, zero.view(torch.float32))
    levels = codec.levels()
    if codec.scale_rule == "signed_max":
        assert m is not None
        return QParams((m * shrink if shrink != 1.0 else m) / float(levels.min()))
    absmax = torch.maximum(hi, -lo) * shrink
    return QParams(f16_ceil(absmax / float(levels.max()), codec.storage_dtype))


@register("minmax")
def minmax_params(codec: Codec, blocks: torch.Tensor) -> QParams:
    """Min-max parameters of ``blocks`` for ``codec`` (see the module docstring).

    >>> from t2n_quant.codecs import MinMaxCodec
    >>> p = minmax_params(MinMaxCodec(bits=2, group_size=16), torch.linspace(-1, 2, 16)[None])
    >>> p.scale.item(), p.zero.item()
    (1.0, 1.0)
    """
    if codec.scale_rule == "signed_max" and not codec.has_zero:
        m = signed_max(blocks)
        return minmax_from_stats(codec, m, m, m)
    lo = blocks.amin(dim=-1, keepdim=True)
    hi = blocks.amax(dim=-1, keepdim=True)
    return minmax_from_stats(codec, lo, hi, None)
