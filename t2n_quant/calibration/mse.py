"""MSE calibration: least-squares refinement of min-max parameters, block by block.

Vectorised over all blocks and cheap: a handful of candidates, each scored with one pass
that also takes the per-block sums (``sum x*q``, ``sum q*q``, ...) the next candidate is
fitted from, instead of a grid of fake-quantized copies.

1. Starts: the min-max parameters (so the result is never worse than min-max); for
   codecs without a zero point (q4_0 included) also the other orientation of the signed
   value of largest magnitude ``m``: ``m`` on the lowest level (ggml's choice) and ``m`` on
   the highest (:meth:`~t2n_quant.codecs.Codec.levels`). The best start is kept per block.
2. ``iters`` Lloyd steps: with the codes fixed, the scale (and zero point) with the least
   squared error has a closed form (linear least squares); the codes are then re-taken with
   the codec's own rounding rule, which is optimal for the new parameters. Each block keeps
   the best iterate, scored with the f16 values that are stored, so what is measured is
   what gets stored.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from t2n_quant.calibration.minmax import minmax_params, signed_max
from t2n_quant.calibration.registry import register
from t2n_quant.codecs.base import Codec, QParams

#: values fitted at a time: the few buffers of that size a fit sweeps then stay in cache,
#: which on CPU makes mse / hqq about twice as fast as one sweep over a 1M-value slab
CHUNK_VALUES = 1 << 18


def in_chunks(
    fit: Callable[[torch.Tensor, torch.Tensor | None], QParams],
    blocks: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> QParams:
    """``fit(blocks, weights)`` on runs of about :data:`CHUNK_VALUES` values (blocks are
    fitted independently, so the parameters are the same); ``weights`` with one row per
    block are cut with the blocks, others (one row for all) are passed whole.

    >>> p = in_chunks(lambda b, w: QParams(b[:, :1]), torch.arange(2.0**19).reshape(-1, 2))
    >>> p.scale.shape, p.scale[-1].item()
    (torch.Size([262144, 1]), 524286.0)
    """
    rows = max(1, CHUNK_VALUES // blocks.shape[-1])
    if blocks.shape[0] <= rows:
        return fit(blocks, weights)
    per_block = weights is not None and weights.dim() == 2 and weights.shape[0] == blocks.shape[0]
    parts = [
        fit(blocks[i : i + rows], weights[i : i + rows] if per_block else weights)  # type: ignore[index]
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


def block_error(codec: Codec, blocks: torch.Tensor, params: QParams, norm: float) -> torch.Tensor:
    """``sum |fake_quantize(blocks) - blocks| ** norm`` per block, shape ``(n_blocks, 1)``."""
    diff = codec.fake_quantize(blocks, params).sub_(blocks)
    diff = diff.square_() if norm == 2.0 else diff.abs_().pow_(norm)
    return diff.sum(dim=-1, keepdim=True)


@dataclass
class Scored:
    """Parameters, the codes they give, the sums that score them, and their error."""

    params: QParams
    q: torch.Tensor | None
    error: torch.Tensor
    #: ``None`` when scored with ``sums=False`` (the last iterate, which nothing is fitted from)
    sxq: torch.Tensor | None
    sqq: torch.Tensor | None
    sq: torch.Tensor | None
    #: ``dequantized - blocks`` (unweighted fits), valid until the next :meth:`BlockFit.score`
    residual: torch.Tensor | None = None


class BlockFit:
    """Per-block squared errors and the sums that fit parameters (see the module docstring).

    ``q`` are the codes as the dequantization sees them (:meth:`Codec.float_codes`):
    ``value = (q - zero) * scale``. ``weights`` (broadcastable to the blocks, >= 0) weigh
    each value's squared error (GPTQ passes each column's importance); all sums are then
    weighted sums.
    """

    def __init__(
        self,
        codec: Codec,
        blocks: torch.Tensor,
        weights: torch.Tensor | None = None,
        scale_sums: bool = True,
    ) -> None:
        self.codec, self.blocks = codec, blocks
        #: whether :meth:`score` takes ``sum x*q`` and ``sum q*q`` (a fit of the scale needs them)
        self.scale_sums = scale_sums
        self.w = None if weights is None else weights.float().expand_as(blocks)
        self.xw = blocks if self.w is None else blocks * self.w
        self.root_w = None if self.w is None else self.w.sqrt()
        self.n: float | torch.Tensor = (
            blocks.shape[-1] if self.w is None else self.w.sum(dim=-1, keepdim=True)
        )
        self.sx = rowsum(self.xw) if codec.has_zero else None
        # two buffers of the blocks' size, reused by every candidate: the residual and the
        # products summed (fresh tensors of that size cost page faults on every candidate)
        self.work = torch.empty_like(blocks)
        self.tmp = torch.empty_like(blocks)
        #: codes alternate between two buffers: a step reads the last candidate's codes
        self.codes = (torch.empty_like(blocks), torch.empty_like(blocks))
        self.scored = 0

    def score(self, params: QParams, sums: bool = True) -> Scored:
        """``params``' codes and error; with ``sums``, also the sums the next fit needs."""
        codec = self.codec
        q = codec.float_codes(self.blocks, params, out=self.codes[self.scored % 2])
        self.scored += 1
        stored = codec.store(params)
        scale = stored.scale.float()
        if stored.zero is not None:
            residual = torch.sub(q, stored.zero.float(), out=self.work).mul_(scale)
        else:
            residual = torch.mul(q, scale, out=self.work)
        residual.sub_(self.blocks)
        if self.w is not None:
            residual.mul_(self.root_w)
        # one fused pass; sqrt and square are monotonic, so no candidate is ranked above a
        # better one
        error = torch.linalg.vector_norm(residual, dim=-1, keepdim=True).square_()
        kept = residual if self.w is None else None
        if not sums:
            return Scored(params, q, error, None, None, None, kept)
        qw = q if self.w is None else q * self.w
        sq = rowsum(qw) if codec.has_zero else None
        if not self.scale_sums:
            return Scored(params, q, error, None, None, sq, kept)
        sxq, sqq = rowdot(self.xw, q, out=self.tmp), rowdot(qw, q, out=self.tmp)
        return Scored(params, q, error, sxq, sqq, sq, kept)

    def least_squares(self, cur: Scored) -> QParams:
        """The parameters with the least squared error for ``cur``'s codes."""
        assert cur.sxq is not None and cur.sqq is not None
        if not self.codec.has_zero:
            s = torch.where(cur.sqq > 0, cur.sxq / cur.sqq.clamp(min=1e-30), cur.params.scale)
            return QParams(s.to(self.codec.storage_dtype).float())
        assert cur.sq is not None and self.sx is not None and cur.params.zero is not None
        n = self.n
        var = cur.sqq - cur.sq * cur.sq / n
        cov = cur.sxq - self.sx * cur.sq / n
        s = torch.where(var > 0, cov / var.clamp(min=1e-30), cur.params.scale)
        s = torch.where(s > 0, s, cur.params.scale).to(self.codec.storage_dtype).float()
        safe = torch.where(s > 0, s, torch.ones_like(s))
        zero = ((cur.sq * s - self.sx) / (n * safe)).clamp(0.0, float(self.codec.qmax))
        return QParams(s, torch.where(s > 0, zero, cur.params.zero))


def keep_better(best: Scored, cand: Scored) -> Scored:
    """Block by block, the candidate with the smaller error."""
    b = cand.error < best.error

    def pick(new: torch.Tensor | None, old: torch.Tensor | None) -> torch.Tensor | None:
        return None if new is None or old is None else torch.where(b, new, old)

    zero = pick(cand.params.zero, best.params.zero)
    return Scored(
        QParams(torch.where(b, cand.params.scale, best.params.scale), zero), None,
        torch.where(b, cand.error, best.error), pick(cand.sxq, best.sxq),
        pick(cand.sqq, best.sqq), pick(cand.sq, best.sq),
    )  # fmt: skip


def _other_orientation(codec: Codec, blocks: torch.Tensor) -> QParams:
    m = signed_max(blocks)
    levels = codec.levels()
    top = float(levels.max() if codec.scale_rule == "signed_max" else levels.min())
    return QParams((m / top).to(codec.storage_dtype).float())


@register("mse")
def mse_search(
    codec: Codec, blocks: torch.Tensor, *, iters: int = 2, weights: torch.Tensor | None = None
) -> QParams:
    """Per-block parameters with the least squared error (see the module docstring),
    each value's error weighted by ``weights`` when given.

    >>> from t2n_quant.codecs import Q4_0Codec
    >>> x = torch.randn(64, 32)
    >>> mse_search(Q4_0Codec(), x).scale.shape
    torch.Size([64, 1])
    """
    return in_chunks(lambda b, w: _mse_search(codec, b, iters, w), blocks, weights)


def _mse_search(
    codec: Codec, blocks: torch.Tensor, iters: int, weights: torch.Tensor | None
) -> QParams:
    fit = BlockFit(codec, blocks, weights)
    best = fit.score(minmax_params(codec, blocks))
    if not codec.has_zero:
        best = keep_better(best, fit.score(_other_orientation(codec, blocks)))
    cur = best
    for i in range(iters):
        cur = fit.score(fit.least_squares(cur), sums=i < iters - 1)
        best = keep_better(best, cur)
    return best.params
