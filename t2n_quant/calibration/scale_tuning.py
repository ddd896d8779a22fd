"""End-to-end scale tuning: the codes stay, the per-block scales learn the float model's outputs.

Once every weight is quantized (by any calibration), a weight's values are
``dequantize(codes, scale)``: linear in the scales, so their gradient is exact (no
straight-through estimate). The scales of all the quantized weights are tuned together
(Adam, as a factor ``1 + d`` on each, the learning rate decaying linearly to 0) for the
least KL divergence between the quantized model's next-token distributions (or, for a
model whose output is not logits, the squared error of its output) and the float model's,
on the calibration data (after EfficientQAT's end-to-end step, Chen et al. 2024). So many
parameters overfit a little data: the last quarter of the batches (at least one) is held
out, the loss on it measured ``checks`` times, and the scales of the best point kept (the
start's when none beats it). Codes, zero points and the format are unchanged; only the
stored scales move (still f16). The whole model runs forward and backward, on the device
given, and the float model's outputs on every batch are kept in host memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from t2n_quant.codecs.base import QParams
from t2n_quant.qtensor import QTensor

logger = logging.getLogger(__name__)


def output_loss(got: torch.Tensor, ref: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """KL(ref || got) per position, averaged, when ``ref`` holds logits over a vocabulary
    (``(batch, tokens, V)``); the mean squared error otherwise. ``mask``: positions kept."""
    got, ref = got.float(), ref.float()
    if got.dim() == 3:
        lp, lq = ref.log_softmax(-1), got.log_softmax(-1)
        per = (lp.exp() * (lp - lq)).sum(-1)
    else:
        per = (got - ref).square().reshape(got.shape[0], -1).mean(-1)
    if mask is not None and tuple(per.shape) == tuple(mask.shape):
        per = per[mask.to(per.device)]
    return per.mean()


def tune_scales(
    model: nn.Module,
    weights: list[tuple[str, nn.Module, str]],
    batches: list[tuple[tuple[Any, ...], dict[str, Any]]],
    references: list[torch.Tensor],
    masks: list[torch.Tensor | None],
    main_output: Callable[[Any], torch.Tensor],
    *,
    steps: int = 100,
    lr: float = 1e-3,
    checks: int = 10,
    seed: int = 0,
) -> tuple[float, float, list[QTensor] | None]:
    """Tune the scales of the QTensor weights ``weights`` (``(path.attr, module, attr)``)
    of ``model`` towards ``references`` (the float model's outputs on ``batches``, taken
    by ``main_output``). Returns the held-out loss before and after, and the new QTensors
    in the order of ``weights`` (None when the loss did not fall)."""
    qts: list[QTensor] = [module._parameters[attr] for _, module, attr in weights]  # type: ignore[misc]
    codes = [qt.codec.unpack(qt.packed, qt.block_size) for qt in qts]
    deltas = [torch.zeros(qt.scale.shape, device=qt.packed.device, requires_grad=True)
              for qt in qts]  # fmt: skip
    names = [name for name, _, _ in weights]

    def values() -> dict[str, torch.Tensor]:
        out = {}
        for name, qt, c, d in zip(names, qts, codes, deltas):
            scale = qt.scale.float() * (1 + d)
            zero = None if qt.zero is None else qt.zero.float()
            v = qt.codec.dequantize_blocks(c, QParams(scale, zero))
            out[name] = v.reshape(qt.shape).to(qt.dtype)
        return out

    def loss(b: int, vals: dict[str, torch.Tensor]) -> torch.Tensor:
        args, kwargs = batches[b]
        got = main_output(torch.func.functional_call(model, vals, args, kwargs))
        ref = references[b].to(got.device)
        return output_loss(got, ref, masks[b] if b < len(masks) else None)

    n = len(batches)
    held = list(range(n - max(1, n // 4), n)) if n >= 4 else list(range(n))
    train = [b for b in range(n) if b not in held] or held

    def measured(which: list[int]) -> float:
        with torch.no_grad():
            vals = values()
            return sum(float(loss(b, vals)) for b in which) / len(which)

    frozen = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in frozen:
        p.requires_grad_(False)
    try:
        before = best = measured(held)
        kept = [d.detach().clone() for d in deltas]
        opt = torch.optim.Adam(deltas, lr=lr)
        g = torch.Generator().manual_seed(seed)
        order: list[int] = []
        every = max(1, steps // checks)
        for i in range(steps):
            if not order:
                order = [train[j] for j in torch.randperm(len(train), generator=g).tolist()]
            for group in opt.param_groups:
                group["lr"] = lr * (1 - i / steps)
            with torch.enable_grad():
                opt.zero_grad()
                loss(order.pop(), values()).backward()
                opt.step()
            if (i + 1) % every == 0 or i + 1 == steps:
                now = measured(held)
                if now < best:
                    best, kept = now, [d.detach().clone() for d in deltas]
        after = best
        with torch.no_grad():
            for d, k in zip(deltas, kept):
                d.copy_(k)
    finally:
        for p, flag in frozen:
            p.requires_grad_(flag)
    if after >= before:
        return before, before, None
    tuned = []
    for qt, d in zip(qts, deltas):
        scale = (qt.scale.float() * (1 + d.detach())).to(qt.scale.dtype)
        tuned.append(QTensor(qt.codec, qt.packed, scale, qt.zero, qt.shape, qt.dtype,
                             qt.tensor_name))  # fmt: skip
    return before, after, tuned
