"""The ATen ops :class:`~t2n_quant.qtensor.QTensor` implements itself, and the fallback.

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
from torch.utils._pytree import tree_map_only

from t2n_quant.errors import ImmutableTensorError
from t2n_quant.qtensor import QTensor

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


def written_qtensors(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[QTensor]:
    """The QTensor arguments that ``func`` would write into, from its schema."""
    written = []
    for i, arg in enumerate(func._schema.arguments):
        info = arg.alias_info
        if info is None or not info.is_write:
            continue
        value = args[i] if i < len(args) and not arg.kwarg_only else kwargs.get(arg.name)
        values = value if isinstance(value, (list, tuple)) else [value]
        written += [v for v in values if isinstance(v, QTensor)]
    return written


def fallback(func: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Run ``func`` on dequantized copies of the QTensor arguments."""
    written = written_qtensors(func, args, kwargs)
    if written:
        raise ImmutableTensorError(
            f"{written[0].label()} is immutable: {func} would modify it in place. "
            "Work on qtensor.dequantize() or quantize a new weight instead (to load a "
            "state dict into a quantized model, use load_state_dict(..., assign=True))."
        )
    logger.debug("QTensor fallback: %s runs on dequantized weights", func)
    args, kwargs = tree_map_only(QTensor, lambda t: t.dequantize(), (args, kwargs))
    return func(*args, **kwargs)
