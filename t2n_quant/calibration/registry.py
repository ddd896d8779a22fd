"""The registry of calibrations by name."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch

from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.errors import UnknownCodecError

Calibration = Callable[[Codec, torch.Tensor], QParams]
CALIBRATIONS: dict[str, Calibration] = {}
_F = TypeVar("_F", bound=Calibration)


def register(name: str) -> Callable[[_F], _F]:
    """Register a calibration function under ``name``.

    >>> @register("zeros-doc")
    ... def zeros(codec, blocks):
    ...     return QParams(torch.zeros(blocks.shape[0], 1))
    >>> "zeros-doc" in CALIBRATIONS
    True
    >>> del CALIBRATIONS["zeros-doc"]
    """

    def deco(fn: _F) -> _F:
        if name in CALIBRATIONS:
            raise TypeError(f"calibration {name!r} is already registered")
        CALIBRATIONS[name] = fn
        return fn

    return deco


#: the calibrations that need data (t2n_quant.layerwise runs them, given a model and data)
DATA_AWARE = ("gptq", "awq")


def is_data_aware(calibration: object) -> bool:
    """Whether ``calibration`` names a data-aware method (``"gptq"``, ``"gptq:mse"``).

    >>> is_data_aware("gptq:mse"), is_data_aware("mse")
    (True, False)
    """
    return isinstance(calibration, str) and calibration.split(":")[0] in DATA_AWARE


def get_calibration(method: str | Calibration) -> Calibration:
    """The calibration registered as ``method`` (a callable is returned as is).

    >>> get_calibration("minmax").__name__
    'minmax_params'
    """
    if callable(method):
        return method
    try:
        return CALIBRATIONS[method]
    except KeyError:
        if is_data_aware(method):
            raise UnknownCodecError(
                f"calibration {method!r} needs calibration data, so it quantizes a model "
                "(quantize_model(..., data=...), t2n export-llm --calibration-text), not a "
                f"tensor alone; weight-only calibrations: {', '.join(sorted(CALIBRATIONS))}"
            ) from None
        raise UnknownCodecError(
            f"unknown calibration {method!r}; weight-only: {', '.join(sorted(CALIBRATIONS))}; "
            f"data-aware (with data): {', '.join(DATA_AWARE)} (gptq:mse = mse group scales)"
        ) from None
