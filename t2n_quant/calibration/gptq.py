"""GPTQ: data-aware rounding with second-order error compensation, column by column.

After Frantar et al., "GPTQ: Accurate Post-Training Quantization for Generative
Pre-trained Transformers" (2022). For a weight ``W`` (rows x k) whose module sees inputs
``X`` (k features), the goal is the quantized ``Q`` with the least ``||W X - Q X||^2``.
With ``H = X^T X`` (plus a small damping on its diagonal), the input columns are quantized
left to right; each column's rounding error is spread over the columns not yet quantized,
weighted by the upper Cholesky factor of ``H^-1`` (lazily, ``block`` columns at a time).

The codec and its rounding rule are untouched: each group's scale (and zero point) is
chosen by a weight-only calibration (``inner``: ``"minmax"``, ``"mse"``, ...) on the
*updated* values of the group when its first column is reached (per-channel codecs: on the
whole row, up front), and every value is quantized by the codec's own rule (ggml's for
q4_0). With ``inner="mse"`` each column's squared error is weighted by what it costs at
the output, ``1 / U_jj^2`` (``U`` the factor above; the weight GPTQ's own update uses),
so the scale fits the columns that matter.

:func:`gptq` returns the updated weight and those parameters; quantizing the one
with the other (``quantize_tensor(w, codec, params=p)``) gives exactly the codes GPTQ chose,
in the codec's unchanged byte layout.
"""

from __future__ import annotations

import torch

from t2n_quant.calibration.mse import mse_search
from t2n_quant.calibration.registry import Calibration, get_calibration
from t2n_quant.codecs.base import Codec, QParams


def inverse_hessian_factor(hessian: torch.Tensor, damp: float = 0.01) -> torch.Tensor:
    """The upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, damping more if
    ``H`` is too ill-conditioned to factor (a few tries, then an error)."""
    h = hessian.double()
    mean_diag = float(h.diagonal().mean()) or 1.0
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    for attempt in range(6):
        chol, info = torch.linalg.cholesky_ex(h + (damp * 10**attempt) * mean_diag * eye)
        if int(info) == 0:
            inv = torch.cholesky_inverse(chol)
            return torch.linalg.cholesky(inv, upper=True).float()
    raise ValueError("the input Hessian cannot be factored even with 10000x damping")


def float_target_weight(
    weight: torch.Tensor, hessian: torch.Tensor, cross: torch.Tensor, damp: float = 0.01
) -> torch.Tensor:
    """The weight ``W'`` whose output on the inputs ``X`` a layer receives in the partly
    quantized model comes closest to the float model's output ``X_f W^T`` (``X_f``: the
    inputs it receives in the float model, row for row): ridge least squares towards ``W``,
    ``W'^T = (H + l I)^-1 (C^T + l I) W^T`` with ``H = X^T X``, ``C = X_f^T X`` and
    ``l = damp * mean(diag H)``. As ``||X_f W^T - X Q^T||^2 + l ||W - Q||^2`` equals
    ``||X (W' - Q)^T||^2 + l ||W' - Q||^2`` plus a constant, GPTQ run on ``W'`` (with the same
    damping) rounds towards the float model's output, compensating the error of the layers
    quantized before (as GPTAQ, Li et al. 2025). ``X_f = X`` gives ``W`` back.

    >>> _ = torch.manual_seed(0); x = torch.randn(64, 8); w = torch.randn(3, 8)
    >>> torch.allclose(float_target_weight(w, x.T @ x, x.T @ x), w, atol=1e-5)
    True
    >>> xf = x + 0.1 * torch.randn(64, 8)  # what the float model fed the layer
    >>> w2 = float_target_weight(w, x.T @ x, xf.T @ x, damp=0.0)
    >>> bool((x @ w2.T - xf @ w.T).norm() < (x @ w.T - xf @ w.T).norm())
    True
    """
    w = weight.detach().reshape(weight.shape[0], -1).double()
    h, c = hessian.double(), cross.double()
    lam = damp * (float(h.diagonal().mean()) or 1.0)
    eye = torch.eye(h.shape[0], dtype=h.dtype, device=h.device)
    fitted = torch.linalg.solve(h + lam * eye, (c.T + lam * eye) @ w.T).T
    return fitted.to(weight.dtype).reshape(weight.shape)


def gptq(
    weight: torch.Tensor,
    hessian: torch.Tensor,
    codec: Codec,
    *,
    inner: str | Calibration = "minmax",
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = False,
) -> tuple[torch.Tensor, QParams]:
    """``(w, params)``: the error-compensated weight (rows x k, float32) as it stood when
    each column was quantized, and the per-block parameters, row-major (see the module
    docstring). ``hessian`` is ``X^T X`` over the module's inputs, ``k x k``.
    ``act_order``: quantize the columns with the largest input energy first; the group
    parameters are then taken up front from the original weight ("static groups"), so the
    blocks and their layout are unchanged.

    >>> _ = torch.manual_seed(0); x = torch.randn(256, 64); w = torch.randn(8, 64)
    >>> from t2n_quant.codecs import Q4_0Codec
    >>> from t2n_quant.quantize import quantize_tensor
    >>> w2, p = gptq(w, x.T @ x, Q4_0Codec())
    >>> q = quantize_tensor(w2, Q4_0Codec(), params=p).dequantize()
    >>> plain = quantize_tensor(w, Q4_0Codec()).dequantize()
    >>> bool(((w - q) @ x.T).norm() < ((w - plain) @ x.T).norm())
    True
    """
    calibrate = get_calibration(inner)
    weighted = calibrate is mse_search
    w = weight.detach().reshape(weight.shape[0], -1).float().clone()
    rows, k = w.shape
    if hessian.shape != (k, k):
        raise ValueError(f"Hessian of shape {tuple(hessian.shape)} for a weight with k = {k}")
    h = hessian.float().clone()
    dead = h.diagonal() == 0  # inputs that were always zero: their columns do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    bs = codec.block_size(k)
    n_groups = k // bs
    scale = torch.zeros(rows, n_groups, device=w.device)
    zero = torch.zeros(rows, n_groups, device=w.device) if codec.has_zero else None
    taken = torch.empty_like(w)  # each column as it stood when quantized
    static = n_groups == 1 or act_order
    order = torch.arange(k, device=w.device)
    if act_order:
        order = torch.argsort(h.diagonal(), descending=True)
    hinv = inverse_hessian_factor(h[order][:, order], damp)
    importance = hinv.diagonal().square().reciprocal()  # in the quantization order
    if static:  # every group's parameters from the original weight, up front
        blocks = w.reshape(-1, bs)
        if weighted:
            cost = torch.empty_like(importance)
            cost[order] = importance
            p = mse_search(codec, blocks, weights=cost.reshape(n_groups, bs).repeat(rows, 1))
        else:
            p = calibrate(codec, blocks)
        scale.copy_(p.scale.reshape(rows, n_groups))
        if zero is not None:
            zero.copy_(p.zero.reshape(rows, n_groups))  # type: ignore[union-attr]
    if act_order:
        w = w[:, order]
    columns = order.tolist()
    step = bs * -(-block // bs) if not static else block
    for i1 in range(0, k, step):
        i2 = min(i1 + step, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        hinv1 = hinv[i1:i2, i1:i2]
        params = QParams(scale[:, :1], None if zero is None else zero[:, :1])
        for i in range(i2 - i1):
            col = columns[i1 + i]
            g = col // bs
            if not static and col % bs == 0:
                cols = w1[:, i : i + bs].contiguous()
                if weighted:
                    p = mse_search(codec, cols, weights=importance[i1 + i : i1 + i + bs][None])
                else:
                    p = calibrate(codec, cols)
                scale[:, g : g + 1] = p.scale
                if zero is not None:
                    zero[:, g : g + 1] = p.zero  # type: ignore[index]
            params = QParams(scale[:, g : g + 1], None if zero is None else zero[:, g : g + 1])
            column = w1[:, i : i + 1]
            taken[:, col : col + 1] = column
            q = codec.fake_quantize(column, params)
            e = (column - q) / hinv1[i, i]
            w1[:, i:] -= e * hinv1[i : i + 1, i:]
            err1[:, i : i + 1] = e
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    flat_zero = None if zero is None else zero.reshape(-1, 1)
    return taken, QParams(scale.reshape(-1, 1), flat_zero)
