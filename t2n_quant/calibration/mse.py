"""MSE calibration: least-squares refinement of min-max parameters, block by block.

Vectorised over all blocks and cheap: a handful of candidates, each scored by its codes,
its residual and two fused norms (:class:`BlockFit`), which also give the per-block sums
the next candidate is fitted from, instead of a grid of fake-quantized copies.

1. Starts: the min-max parameters (so the result is never worse than min-max); for
   codecs without a zero point (q4_0 included) also the other orientation of the signed
   value of largest magnitude ``m``: ``m`` on the lowest level (ggml's choice) and ``m`` on
   the highest (:meth:`~t2n_quant.codecs.Codec.levels`). The best start is kept per block.
2. Up to ``iters`` Lloyd steps: with the codes fixed, the scale (and zero point) with the
   least squared error has a closed form (linear least squares); the codes are then
   re-taken with the codec's own rounding rule, which is optimal for the new parameters.
   Each block keeps the best iterate, scored with the f16 values that are stored, so what is
   measured is what gets stored. A step that takes less than ``tol`` (:data:`STOP_GAIN`) of
   the error off is the last: fine grids (8-bit) converge at once.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

import torch

from t2n_quant.calibration import fused
from t2n_quant.calibration.minmax import minmax_from_stats, signed_max
from t2n_quant.calibration.registry import register
from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.codecs.masks import both_masks, less_mask, pick, positive_mask

#: values fitted at a time, in buffers kept between chunks and calls (:func:`scratch_for`);
#: on CPU a chunk costs ~250 torch calls (~0.5 ms on a busy machine) besides its passes:
#: 256K-value chunks cost ~25% more than 1M-value ones, 512K-value ones ~5% (a fit's
#: working set, the chunk and 1-4 buffers like it, stays within a shared L3 cache)
CHUNK_VALUES = 1 << 20


class Scratch:
    """``count`` buffers for blocks of up to ``rows`` rows like ``like``, lent to every chunk
    a calibration fits.

    >>> s = Scratch(2, torch.zeros(8, 4), rows=8)
    >>> [tuple(b.shape) for b in s.lend(torch.zeros(3, 4))]
    [(3, 4), (3, 4)]
    """

    def __init__(self, count: int, like: torch.Tensor, rows: int) -> None:
        self.size = rows * like.shape[-1]
        self.dtype, self.device = like.dtype, like.device
        self.flat = torch.empty(count, self.size, dtype=like.dtype, device=like.device).unbind(0)

    def fits(self, blocks: torch.Tensor) -> bool:
        """Whether :meth:`lend` can view its buffers as ``blocks``."""
        return (
            blocks.numel() <= self.size
            and blocks.dtype == self.dtype
            and blocks.device == self.device
        )

    def lend(self, blocks: torch.Tensor) -> list[torch.Tensor]:
        """The buffers, each viewed as a tensor of ``blocks``' shape."""
        return [f[: blocks.numel()].view(blocks.shape) for f in self.flat]


#: buffers a :class:`BlockFit` borrows: residual, scratch, and two for the codes
FIT_BUFFERS = 4
#: each thread's last :class:`Scratch`, kept between calls: fresh buffers of a chunk's size
#: cost page faults on first touch, on CPU about as much as the fit itself
_kept = threading.local()


def scratch_for(blocks: torch.Tensor, rows: int) -> Scratch:
    """This thread's kept :class:`Scratch` if it fits ``rows`` rows like ``blocks``, else a
    new one, kept instead (at most :data:`FIT_BUFFERS` x :data:`CHUNK_VALUES` values)."""
    like = blocks[:rows]
    kept: Scratch | None = getattr(_kept, "scratch", None)
    if kept is None or not kept.fits(like):
        kept = _kept.scratch = Scratch(FIT_BUFFERS, blocks, like.shape[0])
    return kept


def in_chunks(
    fit: Callable[[torch.Tensor, torch.Tensor | None, Scratch], QParams],
    blocks: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> QParams:
    """``fit(blocks, weights, scratch)`` on runs of about :data:`CHUNK_VALUES` values (blocks
    are fitted independently, so the parameters are the same), all with this thread's
    :class:`Scratch` (:func:`scratch_for`); ``weights`` with one row per block are cut with
    the blocks, others (one row for all) are passed whole.

    >>> p = in_chunks(lambda b, w, s: QParams(b[:, :1]), torch.arange(2.0**19).reshape(-1, 2))
    >>> p.scale.shape, p.scale[-1].item()
    (torch.Size([262144, 1]), 524286.0)
    """
    rows = max(1, CHUNK_VALUES // blocks.shape[-1])
    scratch = scratch_for(blocks, rows)
    if blocks.shape[0] <= rows:
        return fit(blocks, weights, scratch)
    per_block = weights is not None and weights.dim() == 2 and weights.shape[0] == blocks.shape[0]
    parts = [
        fit(blocks[i : i + rows], weights[i : i + rows] if per_block else weights, scratch)  # type: ignore[index]
        for i in range(0, blocks.shape[0], rows)
    ]
    zeros = [p.zero for p in parts if p.zero is not None]
    return QParams(
        torch.cat([p.scale for p in parts]), torch.cat(zeros) if len(zeros) == len(parts) else None
    )


def rowsum(x: torch.Tensor) -> torch.Tensor:
    """``x.sum(-1, keepdim=True)`` for an ``(n, k)`` tensor; a matrix-vector product for short
    rows, where it is faster on CPU.

    >>> rowsum(torch.ones(2, 3)).tolist()
    [[3.0], [3.0]]
    """
    if x.shape[-1] > 32:
        return x.sum(dim=-1, keepdim=True)
    return torch.mm(x, torch.ones(x.shape[-1], 1, dtype=x.dtype, device=x.device))


def rowdot(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """``(a * b).sum(-1, keepdim=True)`` for ``(n, k)`` tensors; ``out`` (``(n, k)``) takes
    the product, so a caller that reuses it allocates nothing of the tensor's size.

    >>> rowdot(torch.ones(2, 3), torch.ones(2, 3)).tolist()
    [[3.0], [3.0]]
    """
    return rowsum(torch.mul(a, b, out=out) if out is not None else a * b)


def squared_norm(x: torch.Tensor) -> torch.Tensor:
    """``(x * x).sum(-1, keepdim=True)`` in one fused pass, as float32.

    >>> squared_norm(torch.tensor([[3.0, 4.0]])).tolist()
    [[25.0]]
    """
    return torch.linalg.vector_norm(x, dim=-1, keepdim=True).square_()


def block_error(codec: Codec, blocks: torch.Tensor, params: QParams, norm: float) -> torch.Tensor:
    """``sum |fake_quantize(blocks) - blocks| ** norm`` per block, shape ``(n_blocks, 1)``."""
    diff = codec.fake_quantize(blocks, params).sub_(blocks)
    diff = diff.square_() if norm == 2.0 else diff.abs_().pow_(norm)
    return diff.sum(dim=-1, keepdim=True)


@dataclass
class Scored:
    """Parameters, the codes they give, their error, and the sums a fit needs.

    ``u`` are the codes less the zero point, so a block's values are ``u * scale``; the sums
    are per block: ``sxu = sum w x u``, ``suu = sum w u u``, ``su = sum w u`` (``w``
    the weights, 1 unweighted; ``su`` only for codecs with a zero point).
    """

    params: QParams
    u: torch.Tensor | None
    error: torch.Tensor
    #: ``None`` when scored with ``sums=False`` (the last iterate, which nothing is fitted from)
    sxu: torch.Tensor | None
    suu: torch.Tensor | None
    su: torch.Tensor | None
    #: ``blocks - values`` (unweighted), valid until the next :meth:`BlockFit.score`
    residual: torch.Tensor | None = None


class BlockFit:
    """Per-block squared errors and the sums that fit parameters (see the module docstring).

    A candidate costs its codes (:meth:`Codec.float_codes`), the residual ``x - u * s`` (one
    ``addcmul``) and two fused norms: its error ``sum w r r`` and ``sum w u u``. ``sum w x u``
    is not summed but solved from ``error = sum w x x - 2 s sum w x u + s**2 sum w u u``
    (the error is exact, so no candidate is ranked on a cancelling difference).
    ``weights`` (broadcastable to the blocks, >= 0) weigh each value's squared error (GPTQ
    passes each column's importance).
    """

    def __init__(
        self,
        codec: Codec,
        blocks: torch.Tensor,
        weights: torch.Tensor | None = None,
        scale_sums: bool = True,
        scratch: Scratch | None = None,
        keep_codes: bool = True,
        keep_residual: bool = True,
    ) -> None:
        self.codec, self.blocks = codec, blocks
        #: whether a :class:`Scored` keeps its residual (a half-quadratic step reads it)
        self.keep_residual = keep_residual or keep_codes
        #: whether candidates are scored by the compiled pass (:mod:`.fused`), which gives
        #: the eager ops' results bit for bit
        self.fused = weights is None and fused.usable(codec, blocks)
        #: whether a :class:`Scored` keeps its codes and residual apart (a half-quadratic step
        #: reads both); without, the residual is written over the codes once they are summed,
        #: so a fit works in one buffer of the blocks' size (less memory traffic)
        self.keep_codes = keep_codes
        #: whether :meth:`score` takes ``sum x*u`` and ``sum u*u`` (a fit of the scale needs them)
        self.scale_sums = scale_sums
        self.w = None if weights is None else weights.float().expand_as(blocks)
        self.root_w = None if self.w is None else self.w.sqrt()
        xw = blocks if self.w is None else blocks * self.w
        xr = blocks if self.root_w is None else blocks * self.root_w
        self.xx = squared_norm(xr) if scale_sums else None
        self.n: float | torch.Tensor = (
            float(blocks.shape[-1]) if self.w is None else self.w.sum(-1, keepdim=True)
        )
        self.sx = rowsum(xw) if codec.has_zero else None
        # buffers of the blocks' size, reused by every candidate (fresh tensors of that size
        # cost page faults): the residual, a scratch one, and the codes, alternating between
        # two, since a step reads the last candidate's codes
        if scratch is None:
            scratch = Scratch(FIT_BUFFERS, blocks, blocks.shape[0])
        self.work, self.tmp, *codes = scratch.lend(blocks)
        self.codes = (codes[0], codes[1]) if keep_codes else (self.work, self.work)
        self.scored = 0
        #: when set, the next :meth:`score` also collects the residual's values over its
        #: threshold (a half-quadratic step shrinks them)
        self.taken: fused.Taken | None = None

    def score(self, params: QParams, sums: bool = True) -> Scored:
        """``params``' codes and error; with ``sums``, also the sums the next fit needs."""
        codec = self.codec
        if self.fused:
            return self._score_fused(params, sums)
        u = codec.float_codes(self.blocks, params, out=self.codes[self.scored % 2])
        self.scored += 1
        stored = codec.store(params)
        scale = stored.scale.float()
        if stored.zero is not None:
            u.sub_(stored.zero.float())
        su = suu = None
        if sums and codec.has_zero:
            su = rowsum(u) if self.w is None else rowdot(u, self.w, out=self.tmp)
        if sums and self.scale_sums:
            w_u = u if self.root_w is None else torch.mul(u, self.root_w, out=self.tmp)
            suu = squared_norm(w_u)
        residual = torch.addcmul(
            self.blocks, u, scale, value=-1.0, out=self.work if self.keep_codes else u
        )
        weighted = residual if self.root_w is None else residual * self.root_w
        error = squared_norm(weighted)
        if self.taken is not None:
            self.taken.take_eager(residual, u if self.keep_codes else None)
        kept = u if self.keep_codes else None
        return self._scored(params, kept, error, suu, su, residual, scale)

    def _score_fused(self, params: QParams, sums: bool) -> Scored:
        """:meth:`score` in one compiled pass (unweighted; same results)."""
        codec = self.codec
        stored = codec.store(params)
        scale = stored.scale.float()
        zero = None if stored.zero is None else stored.zero.float()
        su_needed = sums and codec.has_zero
        u_out = self.codes[self.scored % 2] if self.keep_codes else None
        if su_needed and u_out is None:
            u_out = self.tmp
        self.scored += 1
        r_out = self.work if self.keep_residual else None
        error, suu = fused.score(
            codec, self.blocks, fused.reciprocal(codec, params, stored), scale, zero,
            u_out, r_out, sums and self.scale_sums, taken=self.taken,
        )  # fmt: skip
        su = rowsum(u_out) if su_needed and u_out is not None else None
        kept = u_out if self.keep_codes else None
        return self._scored(params, kept, error, suu, su, r_out, scale)

    def _scored(
        self,
        params: QParams,
        kept: torch.Tensor | None,
        error: torch.Tensor,
        suu: torch.Tensor | None,
        su: torch.Tensor | None,
        residual: torch.Tensor | None,
        scale: torch.Tensor,
    ) -> Scored:
        if suu is None:
            return Scored(params, kept, error, None, None, su, residual)
        # error = xx - 2 s sxu + s^2 suu: no term cancels (they are about xx, xx and 2 xx
        # where the error is small), so float32 keeps sxu to about 1e-7
        assert self.xx is not None
        sxu = (self.xx - error).addcmul_(scale * scale, suu).div_(2.0 * scale)
        return Scored(params, kept, error, sxu.nan_to_num_(0.0, 0.0, 0.0), suu, su, residual)

    def spare_codes(self) -> torch.Tensor:
        """The codes buffer the next :meth:`score` writes: free between two scores."""
        return self.codes[self.scored % 2]

    def least_squares(self, cur: Scored) -> QParams:
        """The parameters with the least squared error for ``cur``'s codes."""
        assert cur.sxu is not None and cur.suu is not None
        codec, old = self.codec, cur.params.scale
        if not codec.has_zero:
            s = pick(positive_mask(cur.suu), cur.sxu / cur.suu, old)
            return QParams(s.to(codec.storage_dtype).float())
        # values (q - z) s' + c fitted as a * u + b (u = q - z): s' = a, zero' = z - b / a
        assert cur.su is not None and self.sx is not None and cur.params.zero is not None
        mean_u = cur.su / self.n
        var = cur.suu - cur.su * mean_u  # n times the variance of u
        a = (cur.sxu - self.sx * mean_u).div_(var)
        fitted = both_masks(positive_mask(var), positive_mask(a))
        a = pick(fitted, a, old).to(codec.storage_dtype).float()
        z = cur.params.zero.to(codec.storage_dtype).float()
        zero = (mean_u - self.sx / (self.n * a)).add_(z).clamp_(0.0, float(codec.qmax))
        return QParams(a, pick(positive_mask(a), zero, cur.params.zero))


def keep_better(best: Scored, cand: Scored, sums: bool = True) -> Scored:
    """Block by block, the candidate with the smaller error; without ``sums``, its parameters
    and error only (nothing is fitted from the result: a choice per block is not free)."""
    b = less_mask(cand.error, best.error)

    def sum_of(new: torch.Tensor | None, old: torch.Tensor | None) -> torch.Tensor | None:
        return None if new is None or old is None or not sums else pick(b, new, old)

    zero = None
    if cand.params.zero is not None and best.params.zero is not None:
        zero = pick(b, cand.params.zero, best.params.zero)
    return Scored(
        QParams(pick(b, cand.params.scale, best.params.scale), zero), None,
        pick(b, cand.error, best.error), sum_of(cand.sxu, best.sxu),
        sum_of(cand.suu, best.suu), sum_of(cand.su, best.su),
    )  # fmt: skip


def starts(codec: Codec, blocks: torch.Tensor) -> tuple[QParams, QParams | None]:
    """The min-max parameters (as :func:`~t2n_quant.calibration.minmax.minmax_params`) and,
    for codecs without a zero point, the other orientation of the signed max ``m``, from one
    pass of block minima / maxima.

    >>> from t2n_quant.codecs import Q4_0Codec
    >>> mm, other = starts(Q4_0Codec(), torch.tensor([[1.0, -4.0] * 16]))
    >>> mm.scale.item(), other.scale.item()  # -4 / -8, and -4 / 7 in f16
    (0.5, -0.5712890625)
    """
    lo = blocks.amin(dim=-1, keepdim=True)
    hi = blocks.amax(dim=-1, keepdim=True)
    if codec.has_zero:
        return minmax_from_stats(codec, lo, hi, None), None
    m = signed_max(blocks, lo, hi)
    signed = codec.scale_rule == "signed_max"
    mm = minmax_from_stats(codec, m, m, m) if signed else minmax_from_stats(codec, lo, hi, None)
    levels = codec.levels()
    top = float(levels.max() if signed else levels.min())
    return mm, QParams((m / top).to(codec.storage_dtype).float())


def gained_little(before: torch.Tensor, after: torch.Tensor, tol: float) -> bool:
    """Whether a step took less than ``tol`` of the blocks' total error ``before`` off it.

    >>> gained_little(torch.tensor([[1.0], [1.0]]), torch.tensor([[1.0], [0.995]]), 0.005)
    True
    """
    total = before.sum()
    return bool(total - after.sum() <= tol * total)


#: a step that takes less than this share off the error is the last (:func:`gained_little`):
#: each step gains less than the one before (on a normal 1024 x 1024: 2- to 4-bit codecs 3-25%
#: then 1-8%, symmetric:8:pc 0.16% then 0.08%), so the next would gain less still
STOP_GAIN = 0.005


@register("mse")
def mse_search(
    codec: Codec,
    blocks: torch.Tensor,
    *,
    iters: int = 2,
    weights: torch.Tensor | None = None,
    tol: float = STOP_GAIN,
) -> QParams:
    """Per-block parameters with the least squared error (see the module docstring),
    each value's error weighted by ``weights`` when given.

    >>> from t2n_quant.codecs import Q4_0Codec
    >>> x = torch.randn(64, 32)
    >>> mse_search(Q4_0Codec(), x).scale.shape
    torch.Size([64, 1])
    """
    return in_chunks(lambda b, w, s: _mse_search(codec, b, iters, w, s, tol), blocks, weights)


def _mse_search(
    codec: Codec,
    blocks: torch.Tensor,
    iters: int,
    weights: torch.Tensor | None,
    scratch: Scratch | None = None,
    tol: float = STOP_GAIN,
) -> QParams:
    fit = BlockFit(codec, blocks, weights, scratch=scratch, keep_codes=False, keep_residual=False)
    mm, other = starts(codec, blocks)
    best = fit.score(mm)
    if other is not None:
        best = keep_better(best, fit.score(other))
    cur = best
    for i in range(iters):
        last = i == iters - 1
        cur = fit.score(fit.least_squares(cur), sums=not last)
        before, best = best, keep_better(best, cur, sums=False)
        if not last and gained_little(before.error, best.error, tol):
            break
    return best.params
