"""The ``calibration_options`` of the data-aware calibrations (``gptq``, ``awq``): which
each method takes, of what type and range, checked before any data is read or any weight
quantized, every problem named at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import torch

from t2n_quant.errors import CalibrationOptionError


def _inner(value: Any) -> str | None:
    if callable(value):
        return None
    if not isinstance(value, str):
        return "a weight-only calibration name (minmax, mse, hqq) or function"
    from t2n_quant.calibration.registry import get_calibration

    try:
        get_calibration(value)
    except ValueError as err:
        return f"a weight-only calibration name ({err})"
    return None


def _bool(value: Any) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def _count(least: int) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= least
        return None if ok else f"an integer >= {least}"

    return check


def _number(positive: bool) -> Callable[[Any], str | None]:
    def check(value: Any) -> str | None:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        ok = ok and math.isfinite(value) and (value > 0 if positive else value >= 0)
        return None if ok else f"a finite number {'> 0' if positive else '>= 0'}"

    return check


#: option -> what it must be; the methods taking each are in :data:`TAKEN_BY`
CHECKS: dict[str, Callable[[Any], str | None]] = {
    "inner": _inner,
    "damp": _number(positive=False),
    "block": _count(1),
    "act_order": _bool,
    "sequential": _bool,
    "float_target": _bool,
    "grid": _count(1),
    "tune_steps": _count(0),
    "tune_lr": _number(positive=True),
}
#: options of the end-to-end scale tuning after either (:mod:`t2n_quant.calibration.scale_tuning`)
TUNING = ("tune_steps", "tune_lr")
TAKEN_BY = {
    "gptq": ("inner", "damp", "block", "act_order", "sequential", "float_target", *TUNING),
    "awq": ("inner", "grid", *TUNING),
}

#: the value of each option a method takes when it is not given (what the archive records)
DEFAULTS: dict[str, dict[str, Any]] = {
    "gptq": {"inner": "minmax", "damp": 0.01, "block": 128, "act_order": False,
             "sequential": True, "float_target": True, "tune_steps": 0, "tune_lr": 1e-3},
    "awq": {"inner": "minmax", "grid": 20, "tune_steps": 0, "tune_lr": 1e-3},
}  # fmt: skip


def parameters(method: str, options: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter ``method`` runs with: ``options`` over the defaults (``tune_lr`` only
    when tuning runs); a function as ``inner`` by its name.

    >>> parameters("awq", {"grid": 8})
    {'inner': 'minmax', 'grid': 8, 'tune_steps': 0}
    """
    out = {**DEFAULTS[method], **options}
    if not out["tune_steps"]:
        del out["tune_lr"]
    if callable(out["inner"]):
        out["inner"] = getattr(out["inner"], "__name__", "custom")
    return out


def check_options(method: str, options: Mapping[str, Any]) -> None:
    """Raise :class:`~t2n_quant.errors.CalibrationOptionError` naming every option of
    ``options`` that ``method`` does not take or whose value is of the wrong type or range.

    >>> check_options("gptq", {"damp": 0.02, "act_order": True})
    >>> check_options("gptq", {"tune_steps": "abc", "grid": 4})
    Traceback (most recent call last):
    t2n_quant.errors.CalibrationOptionError: calibration_options for 'gptq': tune_steps='abc' \
must be an integer >= 0; unknown option 'grid' (gptq takes: inner, damp, block, ...)
    """
    known = TAKEN_BY[method]
    problems = []
    for key, value in options.items():
        if key not in known:
            problems.append(f"unknown option {key!r} ({method} takes: {', '.join(known)})")
            continue
        wanted = CHECKS[key](value)
        if wanted is not None:
            problems.append(f"{key}={value!r} must be {wanted}")
    if problems:
        raise CalibrationOptionError(f"calibration_options for {method!r}: {'; '.join(problems)}")


def check_device(device: str | torch.device | None) -> torch.device | None:
    """``device`` as a :class:`torch.device`, or a
    :class:`~t2n_quant.errors.CalibrationOptionError` when it is not a device name or this
    machine has no such device (before any data is read).

    >>> check_device("cpu")
    device(type='cpu')
    """
    if device is None:
        return None
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, TypeError) as err:
        raise CalibrationOptionError(
            f"device={device!r} is not usable here ({err}); give one this machine has "
            "(cpu, cuda when torch.cuda.is_available())"
        ) from err
    return dev


def as_options(calibration_options: Any) -> dict[str, Any]:
    """``calibration_options`` as a dict (None: none), or a
    :class:`~t2n_quant.errors.CalibrationOptionError` when it is not a mapping.

    >>> as_options(None), as_options({"damp": 0.02})
    ({}, {'damp': 0.02})
    """
    if calibration_options is None:
        return {}
    if not isinstance(calibration_options, Mapping):
        raise CalibrationOptionError(
            f"calibration_options must be a dict such as {{'damp': 0.02}}, not "
            f"{type(calibration_options).__name__} {calibration_options!r}"
        )
    return dict(calibration_options)
