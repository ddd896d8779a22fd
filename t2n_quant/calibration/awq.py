"""AWQ: activation-aware per-input-channel scales, searched on calibration data.

After Lin et al., "AWQ: Activation-aware Weight Quantization for LLM Compression and
Acceleration" (2023). The Linears that read the same input ``X`` (``q``/``k``/``v`` after a
norm; also an attention's packed input projection, or a Conv1d / Conv2d, whose input
channels each cover ``kernel`` columns of its ``rows x k`` view) are quantized as
``Q(W diag(s)) diag(1/s)``: channels with large activations get
finer steps. ``s = mean|X|^alpha`` (normalised), with ``alpha`` searched on a grid for the
least output error ``sum_L ||(Q(W_L diag(s)) diag(1/s) - W_L) X^T||^2``, computed from
``H = X^T X`` (no pass over the data per candidate). ``diag(1/s)`` is then folded into the
operation producing ``X`` (:mod:`t2n_quant.awq_fold` does it and checks it), so the
exported graph gains no op.
"""

from __future__ import annotations

import torch

from t2n_quant.calibration.registry import Calibration, get_calibration
from t2n_quant.codecs.base import Codec


def fake_quantize_weight(
    weight: torch.Tensor, codec: Codec, calibrate: Calibration
) -> torch.Tensor:
    """``weight`` as ``codec`` with ``calibrate``'s parameters stores it (rows x k view)."""
    rows = weight.shape[0]
    w = weight.reshape(rows, -1).float()
    blocks = w.reshape(-1, codec.block_size(w.shape[1]))
    return codec.fake_quantize(blocks, calibrate(codec, blocks)).reshape(w.shape)


def output_error(delta: torch.Tensor, hessian: torch.Tensor) -> float:
    """``||delta X^T||^2`` from ``H = X^T X``: ``sum((delta H) * delta)``."""
    return float(((delta @ hessian) * delta).sum())


def search_scales(
    weights: list[torch.Tensor],
    codecs: list[Codec],
    hessian: torch.Tensor,
    act: torch.Tensor,
    *,
    inner: str | Calibration = "minmax",
    grid: int = 20,
    repeat: int = 1,
) -> tuple[torch.Tensor, float, float]:
    """``(s, alpha, error ratio)``: the per-input-channel scales with the least output error
    for the Linears ``weights`` reading one input, ``act`` its mean ``|x|`` per channel.
    ``alpha = 0`` (``s = 1``, plain rounding) is a candidate, so the ratio is at most 1.
    ``repeat``: columns of the weights' ``rows x k`` view (and of ``hessian``) per channel,
    channel-major (a convolution's kernel positions; 1 for a Linear).

    >>> torch.manual_seed(0); x = torch.randn(512, 64) * torch.linspace(0.1, 4, 64)
    <torch._C.Generator object at ...>
    >>> w = torch.randn(32, 64)
    >>> s, alpha, ratio = search_scales([w], [Codec.from_spec("q4_0")], x.T @ x, x.abs().mean(0))
    >>> s.shape, alpha > 0, ratio < 1
    (torch.Size([64]), True, True)
    """
    calibrate = get_calibration(inner)
    h = hessian.float()
    a = act.float().clamp(min=1e-8)
    best = (torch.ones_like(a), 0.0, float("inf"))
    base = None
    for i in range(grid + 1):
        alpha = i / grid
        s = a.pow(alpha)
        s = s / (s.max() * s.min()).sqrt()
        cols = s.repeat_interleave(repeat) if repeat > 1 else s
        err = 0.0
        for w, codec in zip(weights, codecs):
            w2 = w.reshape(w.shape[0], -1).float()
            q = fake_quantize_weight(w2 * cols, codec, calibrate) / cols
            err += output_error(q - w2, h)
        if base is None:
            base = err
        if err < best[2]:
            best = (s, alpha, err)
    return best[0], best[1], best[2] / base if base else 1.0
