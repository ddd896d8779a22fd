"""``export_checkpoint`` with quantization: :func:`t2n_core.llm.export_checkpoint` whose
weights are quantized by :func:`t2n_quant.quantize_model` as they are streamed to the archive."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from t2n_core.llm.ship import ShippedModel
from t2n_core.llm.ship import export_checkpoint as export_float_checkpoint
from t2n_quant.swap import quantize_model


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    codec: str | None = None,
    quantized: str | os.PathLike | None = None,
    calibration: str = "minmax",
    exclude: str | Sequence[str] | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> ShippedModel:
    """Export a checkpoint directory like :func:`t2n_core.llm.export_checkpoint`, every matmul
    weight quantized with ``codec`` (a spec: ``"q4_0"``, ``"minmax:4:g32"``; None: no
    quantization) and ``calibration`` (``"minmax"``, ``"mse"``, ``"hqq"``), except modules
    matching an ``exclude`` glob (``"lm_head"``). Weights left float are listed, with the
    reason, in the manifest and the summary. ``quantized``: instead of quantizing, take the
    QTensors of this file (written by ``quantize_safetensors`` from the same checkpoint, or
    an import), as they are; the other tensors stream from the checkpoint.

    >>> shipped = export_checkpoint("llama-dir", "out/llama-q4", codec="q4_0")  # doctest: +SKIP
    """
    quantize = None
    if quantized is not None:
        if codec is not None:
            from t2n_quant.errors import ConfigSpecError

            raise ConfigSpecError("give codec (quantize now) or quantized (a file), not both")
        from t2n_quant.interop.safetensors import apply_quantized

        def quantize(model: nn.Module) -> Any:
            return apply_quantized(quantized, model)

    elif codec is not None:

        def quantize(model: nn.Module) -> Any:
            return quantize_model(
                model, codec, calibration=calibration, exclude=exclude, progress=progress
            )

    excluded = [exclude] if isinstance(exclude, str) else list(exclude or [])
    return export_float_checkpoint(
        checkpoint, out, quantize=quantize, quantization={"exclude": excluded},
        progress=progress, **kwargs,
    )  # fmt: skip
