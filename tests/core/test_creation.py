"""arange / full / zeros / ones / *_like created inside forward, static and dynamic sizes."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import Fn, export_and_check


def _x(t: int = 5) -> torch.Tensor:
    return torch.randn(2, t, 3)


# (id, function of x [2, T, 3]); each runs with T dynamic on two lengths
CREATION = [
    ("arange-dynamic", lambda x: torch.arange(x.shape[1])),
    ("arange-dynamic-float", lambda x: torch.arange(x.shape[1], dtype=torch.float32) * 0.5),
    ("arange-start-step-dynamic", lambda x: torch.arange(1, x.shape[1] + 1, 2)),
    ("arange-positions-plus-input", lambda x: x + torch.arange(x.shape[1])[:, None]),
    ("arange-static", lambda x: x + torch.arange(3)),
    ("arange-static-float-step", lambda x: x + torch.arange(0.0, 0.75, 0.25)),
    ("arange-negative-step", lambda x: x + torch.arange(6, 0, -2)),
    ("full-static", lambda x: x + torch.full((2, 1, 3), 1.5)),
    ("full-dynamic", lambda x: x + torch.full((x.shape[1], 3), -2.0)),
    ("full-minus-inf-causal-mask", lambda x: torch.full((x.shape[1], x.shape[1]),
                                                        float("-inf")).triu(1)),
    ("full-int", lambda x: torch.full((x.shape[1],), 7, dtype=torch.int64)),
    ("full-bool", lambda x: torch.full((2, x.shape[1]), True) & (x[..., 0] > 0)),
    ("zeros-dynamic", lambda x: torch.zeros(x.shape[0], x.shape[1]) + x[..., 0]),
    ("ones-dynamic", lambda x: torch.ones(x.shape[1], 3) * x),
    ("zeros_like", lambda x: torch.zeros_like(x) + 1),
    ("ones_like-int", lambda x: torch.ones_like(x, dtype=torch.int32)),
    ("full_like", lambda x: torch.full_like(x, 0.25) * x),
    ("new_zeros", lambda x: x.new_zeros(x.shape[1], 2)),
    ("new_ones", lambda x: x.new_ones(3)),
    ("empty-filled", lambda x: torch.empty(x.shape[1], 3).fill_(2.0) * x),
    ("tensor-constant", lambda x: x * torch.tensor(3.0)),
    ("scalar_tensor", lambda x: x * torch.scalar_tensor(3.0)),
    ("causal-mask-from-arange", lambda x: torch.arange(x.shape[1])[None, :]
     <= torch.arange(x.shape[1])[:, None]),
]  # fmt: skip


@pytest.mark.parametrize("fn", [f for _, f in CREATION], ids=[i for i, _ in CREATION])
def test_creation_dynamic_length(fn, tmp_path):
    export_and_check(
        Fn(fn), (_x(),), tmp_path, dynamic_axes={"x": {1: "T"}}, check_inputs=[(_x(8),)]
    )
