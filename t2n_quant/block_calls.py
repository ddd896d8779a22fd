"""A block's call as calibration runs it: the tensor its output leads with, and its arguments or
output with that tensor replaced (the hidden states handed from one block to the next)."""

from __future__ import annotations

from typing import Any

import torch

from t2n_quant.errors import CalibrationDataError


def first_tensor(out: Any) -> torch.Tensor:
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
        return out[0]
    raise CalibrationDataError(f"a block returned {type(out).__name__}, not a tensor first")


def with_first(args: tuple[Any, ...], first: torch.Tensor) -> tuple[Any, ...]:
    return (first, *args[1:])


def out_with_first(out: Any, first: torch.Tensor) -> Any:
    """A block's output ``out`` (a tensor, or a tuple / list with a tensor first) with
    ``first`` in place of that tensor."""
    if isinstance(out, torch.Tensor):
        return first
    return type(out)([first, *out[1:]]) if isinstance(out, list) else (first, *out[1:])
