"""HQQ-style calibration: half-quadratic refinement of min-max parameters.

After Badri & Shaji, "Half-Quadratic Quantization of Large Machine Learning Models"
(2023): starting from min-max, alternate (1) quantizing, (2) a sparse ``l_p`` (p < 1)
estimate ``e`` of the outliers of the residual by generalized soft-thresholding, and
(3) a closed-form update of the zero point (asymmetric codecs) or of the scale
(symmetric codecs) fitting ``x - e``. Each block keeps the iterate with the least
squared error, so the result is never worse than min-max in MSE.
"""

from __future__ import annotations

import torch

from t2n_quant.calibration.minmax import minmax_params
from t2n_quant.calibration.mse import block_error
from t2n_quant.calibration.registry import register
from t2n_quant.codecs.base import Codec, QParams


def shrink_lp(x: torch.Tensor, beta: float, p: float) -> torch.Tensor:
    """Generalized soft-thresholding, the proximal step of the ``l_p`` norm.

    >>> shrink_lp(torch.tensor([0.0, 1.0, -10.0]), beta=1.0, p=1.0).tolist()
    [0.0, 0.0, -9.0]
    """
    a = x.abs()
    return torch.sign(x) * torch.relu(a - a.pow(p - 1.0) / beta)


@register("hqq")
def hqq_params(
    codec: Codec,
    blocks: torch.Tensor,
    *,
    iters: int = 20,
    p: float = 0.7,
    beta: float = 10.0,
    kappa: float = 1.01,
) -> QParams:
    """Min-max parameters refined by HQQ iterations (see the module docstring).

    >>> from t2n_quant.codecs import MinMaxCodec
    >>> hqq_params(MinMaxCodec(bits=3, group_size=64), torch.randn(16, 64)).zero.shape
    torch.Size([16, 1])
    """
    params = minmax_params(codec, blocks)
    best, best_err = params, block_error(codec, blocks, params, 2.0)
    scale, zero = params.scale.clone(), params.zero
    for _ in range(iters):
        codes = codec.quantize_blocks(blocks, params)
        stored = codec.store(params)
        residual = blocks - codec.dequantize_blocks(codes, stored)
        target = blocks - shrink_lp(residual, beta, p)
        q = codes.float()
        if codec.has_zero:
            s = stored.scale.float()
            safe = torch.where(s == 0, torch.ones_like(s), s)
            zero = (q - target / safe).mean(dim=-1, keepdim=True)
        else:
            c = codec.levels()[codes.long()]
            den = (c * c).sum(dim=-1, keepdim=True)
            num = (target * c).sum(dim=-1, keepdim=True)
            scale = torch.where(den > 0, num / den.clamp(min=1e-30), scale)
        params = QParams(scale, zero)
        err = block_error(codec, blocks, params, 2.0)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best_zero = None if zero is None else torch.where(better, zero, best.zero)  # type: ignore[arg-type]
        best = QParams(torch.where(better, scale, best.scale), best_zero)
        beta *= kappa
    return best
