"""The ATen ops :class:`~t2n_quant.qtensor.QTensor` implements itself (the fallback for the
others, :func:`t2n_quant.qtensor.fallback`, is in that module).

======================  ==============================================================
op                      behaviour
======================  ==============================================================
``detach``, ``alias``   a new QTensor sharing the packed data
``clone``               a new QTensor with copied packed data
``_to_copy``            moves the packed data; a float ``dtype`` changes the logical dtype
``embedding``           dequantizes only the looked-up rows
any op writing into a   :class:`~t2n_quant.errors.ImmutableTensorError`
QTensor (``add_``,
``copy_``, ``out=``)
anything else           runs on the dequantized float tensor (result is a plain tensor)
======================  ==============================================================
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from t2n_quant.qtensor import QTensor, fallback

logger = logging.getLogger(__name__)
aten = torch.ops.aten


@QTensor.implements(aten.detach.default, aten.alias.default)
def _detach(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> QTensor:
    return args[0].with_inner(lambda t: t)


@QTensor.implements(aten.clone.default)
def _clone(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> QTensor:
    return args[0].with_inner(torch.clone)


@QTensor.implements(aten._to_copy.default)
def _to_copy(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    src: QTensor = args[0]
    dtype = kwargs.get("dtype") or src.dtype
    if not dtype.is_floating_point:
        return func(src.dequantize(), **kwargs)
    device = kwargs.get("device") or src.device
    non_blocking = bool(kwargs.get("non_blocking", False))
    return src.with_inner(lambda t: t.to(device, non_blocking=non_blocking), dtype=dtype)


@QTensor.implements(aten.embedding.default)
def _embedding(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    weight, index = args[0], args[1]
    if isinstance(weight, QTensor) and weight.dim() == 2 and not isinstance(index, QTensor):
        return weight.dequantize_rows(index)
    return fallback(func, args, kwargs)
