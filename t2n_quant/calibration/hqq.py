"""HQQ-style calibration: half-quadratic refinement of min-max parameters.

After Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models"
(2023): starting from min-max, alternate (1) quantizing, (2) a sparse ``l_p`` (p < 1)
estimate ``e`` of the outliers of the residual by generalized soft-thresholding, and
(3) a closed-form update of the zero point (asymmetric codecs) or of the scale
(symmetric codecs) fitting ``x - e``. Vectorised over all blocks; every iterate is scored
by :class:`~t2n_quant.calibration.mse.BlockFit` with the stored f16
values, and each block keeps the best one, so the result is never worse than min-max.
"""

from __future__ import annotations

import math

import torch

from t2n_quant.calibration import fused
from t2n_quant.calibration.minmax import minmax_from_stats, signed_max
from t2n_quant.calibration.mse import (
    STOP_GAIN,
    BlockFit,
    Scored,
    Scratch,
    gained_little,
    in_chunks,
    keep_better,
)
from t2n_quant.calibration.registry import register
from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.codecs.masks import nonzero_mask, pick, positive_mask


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding, the proximal step of the ``l_p`` norm.

    >>> shrink_lp(torch.tensor([0.0, 1.0, -10.0]), beta=1.0, p=1.0).tolist()
    [0.0, 0.0, -9.0]
    """
    a = x.abs()
    return a.sub_(a.pow(p - 1.0).div_(beta)).relu_().copysign_(x)


#: at most this share of the values may pass the threshold for them to be collected while
#: a candidate is scored and shrunk alone; more, and all are shrunk (about where shrinking
#: all costs less)
COLLECT_SHARE = 0.125


def threshold(beta: float, p: float) -> float:
    """``shrink_lp`` is zero where ``|x| <= beta ** (-1 / (2 - p))``."""
    return beta ** (-1.0 / (2.0 - p))


def _shrink_sums(
    fit: BlockFit,
    residual: torch.Tensor,
    u: torch.Tensor | None,
    beta: float,
    p: float,
    taken: fused.Taken | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """Per block ``sum e`` and (when ``u`` is given) ``sum e * u`` for
    ``e = shrink_lp(residual)`` (``None``: all 0). ``taken``, when it holds them, has the
    values over :func:`threshold` (``e`` is 0 elsewhere), which are shrunk alone and added
    per block in column order; else all values are shrunk (``residual`` is overwritten).
    Either way a block's sums do not depend on the threads."""
    n = residual.shape[0]
    if taken is None or taken.values is None:
        e = _shrink(residual, torch.abs(residual, out=fit.tmp), beta, p)
        return fixed_rowsum(e), None if u is None else fixed_rowsum(e.mul_(u))
    r, took_u, rows = taken.values
    if not r.numel():
        return None, None
    e = _shrink(r, r.abs(), beta, p)
    zeros = torch.zeros(n, dtype=r.dtype, device=r.device)
    se = zeros.clone().index_add_(0, rows, e).unsqueeze(1)
    if u is None:
        return se, None
    assert took_u is not None
    return se, zeros.index_add_(0, rows, e.mul_(took_u)).unsqueeze(1)


def fixed_rowsum(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(-1, keepdim=True)``: each row added alone, in an order set by its length
    (unlike :func:`~t2n_quant.calibration.mse.rowsum`'s matrix-vector product for short
    rows, whose result for a row may depend on the others in the call)."""
    return x.sum(dim=-1, keepdim=True)


def _shrink(r: torch.Tensor, magnitude: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """``shrink_lp(r)``, in ``r``; ``magnitude`` (``|r|``) is overwritten."""
    # shrink_lp(r) = sign(r) relu(|r| - |r|**(p-1) / beta) = r - r min(1, |r|**(p-2) / beta)
    # |r|**(p-2) / beta as exp2((p-2) log1p(|r| - 1) / ln 2 - log2(beta)): vectorised, where
    # pow is not, and log1p is ~2x faster than log2 on CPU; 5e-7 relative from pow where
    # |r| > threshold; the scale and the shift in one add (6 passes, not 8)
    log_r = magnitude.sub_(1.0).log1p_()
    shift = torch.tensor(-math.log2(beta), dtype=r.dtype, device=r.device)
    cut = torch.add(shift, log_r, alpha=(p - 2.0) / math.log(2.0), out=log_r).exp2_()
    return r.addcmul_(r, cut.clamp_(max=1.0), value=-1.0)


def _half_quadratic_step(
    fit: BlockFit, cur: Scored, beta: float, p: float, taken: fused.Taken | None
) -> QParams:
    """The next parameters; ``taken``: what scoring ``cur`` collected (see
    :func:`_shrink_sums`)."""
    codec = fit.codec
    assert cur.residual is not None and (codec.has_zero or cur.u is not None)
    u = None if codec.has_zero else cur.u
    se, seu = _shrink_sums(fit, cur.residual, u, beta, p, taken)
    if codec.has_zero:
        # the zero point whose values have the mean of x - e: z + (sum u - sum(x - e) / s) / n
        assert cur.su is not None and fit.sx is not None and cur.params.zero is not None
        stored = codec.store(cur.params)
        s = stored.scale.float()
        safe = pick(nonzero_mask(s), s, torch.ones_like(s))
        sx = fit.sx if se is None else fit.sx - se
        zero = (cur.su - sx / safe).div_(fit.n).add_(stored.zero.float())  # type: ignore[union-attr]
        return QParams(cur.params.scale, zero.clamp_(0.0, float(codec.qmax)))
    assert cur.sxu is not None and cur.suu is not None
    num = cur.sxu if seu is None else cur.sxu - seu
    s = pick(positive_mask(cur.suu), num / cur.suu, cur.params.scale)
    return QParams(s.to(codec.storage_dtype).float())


@register("hqq")
def hqq_params(
    codec: Codec,
    blocks: torch.Tensor,
    *,
    iters: int = 2,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
    tol: float = STOP_GAIN,
) -> QParams:
    """Min-max parameters refined by HQQ iterations (see the module docstring); a step that
    takes less than ``tol`` of the error off is the last (as in ``mse``).

    >>> from t2n_quant.codecs import MinMaxCodec
    >>> hqq_params(MinMaxCodec(bits=3, group_size=64), torch.randn(16, 64)).zero.shape
    torch.Size([16, 1])
    """
    return in_chunks(lambda b, _, s: _hqq(codec, b, iters, p, beta, kappa, s, tol), blocks)


def _hqq(
    codec: Codec,
    blocks: torch.Tensor,
    iters: int,
    p: float,
    beta: float,
    kappa: float,
    scratch: Scratch | None = None,
    tol: float = STOP_GAIN,
) -> QParams:
    # zero-point steps read the residual and sum u only: the residual may take the codes' place
    scale_step = not codec.has_zero
    fit = BlockFit(codec, blocks, scale_sums=scale_step, scratch=scratch, keep_codes=scale_step)
    if codec.scale_rule == "signed_max" and not codec.has_zero:  # as minmax_params
        lo, hi = blocks.amin(dim=-1, keepdim=True), blocks.amax(dim=-1, keepdim=True)
        m = signed_max(blocks, lo, hi)
        start = minmax_from_stats(codec, m, m, m)
    else:
        lo, hi = blocks.amin(dim=-1, keepdim=True), blocks.amax(dim=-1, keepdim=True)
        start = minmax_from_stats(codec, lo, hi, None)
    cap = int(COLLECT_SHARE * blocks.numel())

    def collect(b: float) -> fused.Taken:
        return fused.Taken(threshold(b, p), cap, with_u=scale_step)

    fit.taken = collect(beta)
    best = cur = fit.score(start)
    for i in range(iters):
        last = i == iters - 1
        params = _half_quadratic_step(fit, cur, beta, p, fit.taken)
        # past the cap once, the next residual (as near the same values) would be too
        overflowed = fit.taken is None or fit.taken.values is None
        fit.taken = None if last or overflowed else collect(beta * kappa)
        cur = fit.score(params, sums=not last)
        before, best = best, keep_better(best, cur, sums=False)
        if not last and gained_little(before.error, best.error, tol):
            break
        beta *= kappa
    return best.params
