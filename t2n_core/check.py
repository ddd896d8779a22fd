"""Run an NNEF archive in tract (the ``tract`` package from PyPI) and compare with references."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from t2n_core.errors import CheckMismatchError, TractRunError

logger = logging.getLogger(__name__)


@dataclass
class OutputComparison:
    name: str
    shape: tuple[int, ...]
    dtype: str
    max_abs_error: float
    max_rel_error: float  # max |a - b| / max |b|
    passed: bool

    def __str__(self) -> str:
        mark = "ok" if self.passed else "MISMATCH"
        return (
            f"{self.name}: {mark}  shape={list(self.shape)} dtype={self.dtype} "
            f"max_abs={self.max_abs_error:.3g} max_rel={self.max_rel_error:.3g}"
        )


@dataclass
class CheckReport:
    outputs: list[OutputComparison] = field(default_factory=list)
    atol: float = 0.0
    rtol: float = 0.0

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        head = f"tract check {verdict} (atol={self.atol}, rtol={self.rtol})"
        return "\n".join([head, *("  " + str(o) for o in self.outputs)])


def tract_message(exc: BaseException) -> str:
    """tract's error text without its Rust stack backtrace."""
    return str(exc).split("Stack backtrace:")[0].strip()


def load_runnable(path: str | os.PathLike):
    """Load an archive with every tract registry we may emit, ready to run."""
    import tract

    try:
        return (
            tract.nnef()
            .with_tract_transformers()
            .with_tract_extra()
            .load(str(path))
            .into_runnable()
        )
    except Exception as exc:
        raise TractRunError(
            f"tract could not load {os.fspath(path)}: {tract_message(exc)}"
        ) from exc


def run_tract(path: str | os.PathLike, inputs: Sequence[np.ndarray]) -> list[np.ndarray]:
    runnable = load_runnable(path)
    try:
        outputs = runnable.run([np.asarray(x, order="C") for x in inputs])  # keeps 0-d
    except Exception as exc:
        raise TractRunError(f"tract could not run {os.fspath(path)}: {tract_message(exc)}") from exc
    return [o.to_numpy() for o in outputs]


def compare(
    names: Sequence[str],
    actual: Sequence[np.ndarray],
    expected: Sequence[np.ndarray],
    *,
    atol: float,
    rtol: float,
) -> CheckReport:
    """Compare outputs; floats pass when ``max|a-b| <= atol + rtol * max|b|``, others exactly."""
    report = CheckReport(atol=atol, rtol=rtol)
    if len(actual) != len(expected):
        raise CheckMismatchError(
            f"tract returned {len(actual)} outputs, PyTorch {len(expected)}", report
        )
    for name, a, b in zip(names, actual, expected):
        b = np.asarray(b)
        a = np.asarray(a)
        if a.shape != b.shape:
            report.outputs.append(
                OutputComparison(name, a.shape, str(a.dtype), float("inf"), float("inf"), False)
            )
            continue
        if b.dtype.kind in "fc":
            finite = np.isfinite(b)
            diff = np.abs(a[finite].astype(np.float64) - b[finite].astype(np.float64))
            same_nonfinite = np.array_equal(np.isfinite(a), finite) and np.array_equal(
                a[~finite], b[~finite], equal_nan=True
            )
            max_abs = float(np.nan_to_num(diff, nan=np.inf).max()) if finite.any() else 0.0
            scale = float(np.abs(b[finite]).max()) if finite.any() else 0.0
            max_rel = max_abs / scale if scale > 0 else max_abs
            ok = same_nonfinite and max_abs <= atol + rtol * scale
        else:
            mismatch = a != b.astype(a.dtype, copy=False)
            max_abs = float(mismatch.sum())
            max_rel = max_abs / max(b.size, 1)
            ok = not mismatch.any()
        report.outputs.append(
            OutputComparison(name, tuple(b.shape), str(b.dtype), max_abs, max_rel, bool(ok))
        )
    return report


def check_archive(
    path: str | os.PathLike,
    inputs: Sequence[np.ndarray],
    expected: Sequence[np.ndarray],
    *,
    names: Sequence[str] | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-4,
    raise_on_mismatch: bool = True,
) -> CheckReport:
    """Run ``path`` in tract on ``inputs`` and compare with ``expected``.

    >>> report = check_archive("model.nnef.tgz", [x], [y])   # doctest: +SKIP
    >>> report.passed                                        # doctest: +SKIP
    True
    """
    actual = run_tract(path, inputs)
    names = list(names) if names is not None else [f"output_{i}" for i in range(len(actual))]
    report = compare(names, actual, expected, atol=atol, rtol=rtol)
    logger.info("%s", report)
    if raise_on_mismatch and not report.passed:
        raise CheckMismatchError(
            f"tract's outputs of {os.fspath(path)} differ from the reference:\n{report}", report
        )
    return report
