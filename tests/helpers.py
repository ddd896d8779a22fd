"""Shared test helpers: export a model, run it in tract, compare with PyTorch."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

import t2n_core


class Fn(nn.Module):
    """A module around a function of one input ``x``, for single-op tests."""

    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Fn2(Fn):
    """A module around a function of two inputs ``x`` and ``y``."""

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.fn(x, y)


class FnIndexed(Fn):
    """A module around a function of a tensor ``x`` and an index tensor ``idx``."""

    def forward(self, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.fn(x, idx)


# Tolerances stated once: max|tract - torch| <= ATOL + RTOL * max|torch|.
ATOL = 1e-4
RTOL = 1e-4


def export_and_check(
    model: torch.nn.Module,
    args: Any,
    tmp_path: Path,
    *,
    name: str = "model.nnef.tgz",
    atol: float = ATOL,
    rtol: float = RTOL,
    check_inputs: list[tuple[Any, ...]] | None = None,
    **export_kwargs: Any,
) -> t2n_core.ExportResult:
    """Export ``model`` on ``args`` with ``check=True`` (tract vs PyTorch) and return the result.

    ``check_inputs``: more input tuples (e.g. other lengths on dynamic axes) to run in tract
    against PyTorch with the same archive.
    """
    if isinstance(args, torch.Tensor):
        args = (args,)
    path = tmp_path / name
    result = t2n_core.export(
        model, args, path, check=True, atol=atol, rtol=rtol, progress=False, **export_kwargs
    )
    assert result.check is not None and result.check.passed, str(result.check)
    for other in check_inputs or []:
        run_and_compare(model, other, path, atol=atol, rtol=rtol)
    return result


def run_and_compare(model, args, path, *, atol: float = ATOL, rtol: float = RTOL):
    if isinstance(args, torch.Tensor):
        args = (args,)
    with torch.no_grad():
        model.eval()
        expected = model(*args)
    leaves, _ = torch.utils._pytree.tree_flatten(expected)
    report = t2n_core.check_archive(
        path,
        [a.numpy() for a in args if isinstance(a, torch.Tensor)],
        [e.numpy() for e in leaves],
        atol=atol,
        rtol=rtol,
    )
    assert report.passed, str(report)
    return report
