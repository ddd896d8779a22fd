"""``export_checkpoint`` with quantization: :func:`t2n_core.llm.export_checkpoint` whose
weights are quantized by :func:`t2n_quant.quantize_model` as they are streamed to the archive."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from t2n_core.llm.ship import ShippedModel
from t2n_core.llm.ship import export_checkpoint as export_float_checkpoint
from t2n_quant.calibration.registry import is_data_aware
from t2n_quant.calibration_data import text_batches
from t2n_quant.errors import CalibrationDataError
from t2n_quant.plan import Plan
from t2n_quant.swap import quantize_model

logger = logging.getLogger(__name__)


def export_checkpoint(
    checkpoint: str | os.PathLike,
    out: str | os.PathLike,
    *,
    codec: str | Mapping[str, str] | None = None,
    quantized: str | os.PathLike | None = None,
    calibration: str = "minmax",
    calibration_options: Mapping[str, Any] | None = None,
    exclude: str | Sequence[str] | None = None,
    calibration_text: str | os.PathLike | Sequence[str] | None = None,
    seq_len: int = 512,
    n_sequences: int = 128,
    progress: bool = True,
    lora: str | None = None,
    device: str | None = None,
    **kwargs: Any,
) -> ShippedModel:
    """Export a checkpoint directory like :func:`t2n_core.llm.export_checkpoint`, every matmul
    weight quantized with ``codec`` (a spec: ``"q4_0"``, ``"minmax:4:g32"``; None: no
    quantization) and ``calibration`` (``"minmax"``, ``"mse"``, ``"hqq"``), except modules
    matching an ``exclude`` glob (``"lm_head"``). Weights left float are listed, with the
    reason, in the manifest and the summary. ``quantized``: instead of quantizing, take the
    QTensors of this file (written by ``quantize_safetensors`` from the same checkpoint, or
    an import), as they are; the other tensors stream from the checkpoint.
    ``codec`` may be a plan (``{glob: spec}``, or the path of a plan's JSON file, see
    :mod:`t2n_quant.plan`). Data-aware calibrations (``"gptq"``, ``"awq"``, ``"gptq:mse"``)
    run on ``calibration_text`` (a file path or strings) tokenized with the checkpoint's
    tokenizer, ``n_sequences`` x ``seq_len`` tokens, with ``calibration_options`` as for
    :func:`~t2n_quant.quantize_model` (``{"act_order": True}``), on ``device`` (``"cuda"``;
    default: where the model is loaded, the CPU). With a LoRA ``adapter`` (a
    PEFT folder), ``lora="separate"`` (default) quantizes the base weights and keeps the
    adapter float and apart; ``lora="merged"`` merges it into the weights before quantizing.

    >>> shipped = export_checkpoint("llama-dir", "out/llama-q4", codec="q4_0")  # doctest: +SKIP
    """
    quantize = None
    if quantized is not None and kwargs.get("adapter") is not None:
        from t2n_quant.errors import ConfigSpecError

        raise ConfigSpecError(
            "an adapter renames the weights it adapts (…base_layer.weight): quantize with "
            "codec, not from a quantized file"
        )
    if quantized is not None:
        if codec is not None:
            from t2n_quant.errors import ConfigSpecError

            raise ConfigSpecError("give codec (quantize now) or quantized (a file), not both")
        from t2n_quant.interop.safetensors import apply_quantized

        def quantize(model: nn.Module) -> Any:
            return apply_quantized(quantized, model)

    if isinstance(codec, (str, os.PathLike)) and str(codec).endswith(".json"):
        codec = Plan.load(codec)
    data = None
    if quantized is None and codec is not None and is_data_aware(calibration):
        if calibration_text is None:
            raise CalibrationDataError(
                f"calibration {calibration!r} needs calibration_text (t2n export-llm "
                "--calibration-text FILE): the text its layer inputs are taken from"
            )
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(checkpoint, local_files_only=True)
        text = calibration_text
        if isinstance(text, os.PathLike):
            text = Path(text)
        data = text_batches(tokenizer, text, seq_len=seq_len, n_sequences=n_sequences)
    ignored = None
    if quantized is not None or codec is None:
        chosen = None if calibration == "minmax" else calibration  # minmax: the default
        given = {"calibration": chosen, "calibration_text": calibration_text, "device": device,
                 "calibration_options": calibration_options}  # fmt: skip
        for name, value in given.items():
            if value is not None:
                why = "the weights come quantized from a file" if quantized else "no codec"
                logger.warning("%s ignored: nothing is quantized here (%s)", name, why)
    elif calibration_text is not None and data is None:
        ignored = (f"calibration_text ignored: calibration {calibration!r} looks at weights "
                   "only (use gptq or awq)")  # fmt: skip
        logger.warning("%s", ignored)
    if quantized is None and codec is not None:

        def quantize(model: nn.Module) -> Any:
            summary = quantize_model(
                model, codec, calibration=calibration, exclude=exclude, data=data,
                progress=progress, lora=lora, calibration_options=calibration_options,
                device=device,
            )  # fmt: skip
            if ignored is not None:
                summary.notes.append(ignored)
            return summary

    excluded = [exclude] if isinstance(exclude, str) else list(exclude or [])
    return export_float_checkpoint(
        checkpoint, out, quantize=quantize, quantization={"exclude": excluded},
        progress=progress, lora=None if quantize is not None and lora == "merged" else lora,
        **kwargs,
    )  # fmt: skip
