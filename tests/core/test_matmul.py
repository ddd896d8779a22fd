"""Matrix products (linear, mm, addmm, bmm, matmul with broadcasting, einsum) run in tract."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from t2n_core.ops.linear import einsum_expr
from tests.helpers import export_and_check


class Fn2(nn.Module):
    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, a, b):
        return self.fn(a, b)


# (id, fn(a, b), shape of a with T, shape of b with T, {input: {axis: "T"}})
PRODUCTS = [
    ("mm", torch.mm, ("T", 4), (4, 5), {"a": {0: "T"}}),
    ("bmm", torch.bmm, (2, "T", 4), (2, 4, 5), {"a": {1: "T"}}),
    ("bmm-dynamic-inner", torch.bmm, (2, 3, "T"), (2, "T", 5), {"a": {2: "T"}, "b": {1: "T"}}),
    ("matmul-4d-by-2d", torch.matmul, (2, 3, "T", 4), (4, 5), {"a": {2: "T"}}),
    ("matmul-2d-by-3d", torch.matmul, ("T", 4), (2, 4, 5), {"a": {0: "T"}}),
    ("matmul-batch-broadcast", torch.matmul, (2, 1, "T", 4), (3, 4, 5), {"a": {2: "T"}}),
    ("matmul-attention-scores", lambda q, k: q @ k.transpose(-1, -2), (2, 3, "T", 4),
     (2, 3, "T", 4), {"a": {2: "T"}, "b": {2: "T"}}),
    ("matmul-vector-right", torch.matmul, (2, "T", 4), (4,), {"a": {1: "T"}}),
    ("matmul-vector-left", torch.matmul, (4,), (2, 4, "T"), {"b": {2: "T"}}),
    ("matmul-dot", torch.matmul, ("T",), ("T",), {"a": {0: "T"}, "b": {0: "T"}}),
    ("einsum-bmm", lambda a, b: torch.einsum("bij,bjk->bik", a, b), (2, "T", 4), (2, 4, 5),
     {"a": {1: "T"}}),
    ("einsum-attention", lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k), (2, 3, "T", 4),
     (2, 3, "T", 4), {"a": {2: "T"}, "b": {2: "T"}}),
    ("einsum-outer", lambda a, b: torch.einsum("i,j->ij", a, b), ("T",), (5,), {"a": {0: "T"}}),
    ("einsum-projection", lambda a, b: torch.einsum("bnd,dk->bnk", a, b), (2, "T", 4), (4, 6),
     {"a": {1: "T"}}),
    ("einsum-ellipsis", lambda a, b: torch.einsum("...ij,jk->...ik", a, b), (2, 3, "T", 4),
     (4, 5), {"a": {2: "T"}}),
    ("einsum-implicit-output", lambda a, b: torch.einsum("ij,jk", a, b), ("T", 4), (4, 5),
     {"a": {0: "T"}}),
    ("einsum-reduce-all", lambda a, b: torch.einsum("bij,bij->", a, b), (2, "T", 4), (2, "T", 4),
     {"a": {1: "T"}, "b": {1: "T"}}),
    ("einsum-transpose", lambda a, b: torch.einsum("bij->jbi", a) + b, (2, "T", 4), (1,),
     {"a": {1: "T"}}),
]  # fmt: skip


def _make(shape, t):
    return torch.randn(*[t if d == "T" else d for d in shape])


@pytest.mark.parametrize(
    "fn,a_shape,b_shape,axes", [c[1:] for c in PRODUCTS], ids=[c[0] for c in PRODUCTS]
)
def test_matrix_product(fn, a_shape, b_shape, axes, tmp_path):
    export_and_check(
        Fn2(fn), (_make(a_shape, 6), _make(b_shape, 6)), tmp_path, dynamic_axes=axes,
        check_inputs=[(_make(a_shape, 3), _make(b_shape, 3))],
    )  # fmt: skip


@pytest.mark.parametrize("rank", [1, 2, 3, 4], ids=lambda r: f"{r}d")
def test_linear_input_rank(rank, tmp_path):
    model = nn.Linear(8, 5)
    shape = [2, 3, 6, 8][-rank:]
    axes = {"input": {0: "T"}} if rank > 1 else None
    other = [(torch.randn(4, *shape[1:]),)] if rank > 1 else []
    export_and_check(model, (torch.randn(*shape),), tmp_path, dynamic_axes=axes, check_inputs=other)


def test_linear_without_bias(tmp_path):
    export_and_check(nn.Linear(8, 5, bias=False), (torch.randn(2, 6, 8),), tmp_path)


class AddMM(nn.Module):
    def __init__(self, beta: float, alpha: float, bias_shape):
        super().__init__()
        self.beta, self.alpha = beta, alpha
        self.bias = nn.Parameter(torch.randn(bias_shape))
        self.weight = nn.Parameter(torch.randn(4, 5))

    def forward(self, x):
        return torch.addmm(self.bias, x, self.weight, beta=self.beta, alpha=self.alpha)


@pytest.mark.parametrize(
    "beta,alpha,bias_shape",
    [(1.0, 1.0, (5,)), (0.5, 2.0, (5,)), (0.0, 1.5, (5,)), (2.0, 1.0, (1, 5))],
    ids=["plain", "beta-alpha", "beta-zero", "row-bias"],
)
def test_addmm(beta, alpha, bias_shape, tmp_path):
    export_and_check(
        AddMM(beta, alpha, bias_shape), (torch.randn(6, 4),), tmp_path,
        dynamic_axes={"x": {0: "B"}}, check_inputs=[(torch.randn(3, 4),)],
    )  # fmt: skip


def test_functional_linear_on_4d(tmp_path):
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(6, 4))

        def forward(self, x):
            return F.linear(x, self.w)

    export_and_check(
        M(), (torch.randn(2, 3, 5, 4),), tmp_path, dynamic_axes={"x": {2: "T"}},
        check_inputs=[(torch.randn(2, 3, 7, 4),)],
    )  # fmt: skip


@pytest.mark.parametrize(
    "equation,ranks,expected",
    [
        ("bij,bjk->bik", [3, 3], "bij,bjk->bik"),
        ("ij,jk", [2, 2], "ij,jk->ik"),
        ("...ij,jk->...ik", [4, 2], "abij,jk->abik"),
        ("...ij,...jk", [3, 4], "bij,abjk->abik"),
        ("b i j -> j", [3], "bij->j"),
    ],
    ids=["explicit", "implicit", "ellipsis", "ellipsis-broadcast", "spaces"],
)
def test_einsum_expr(equation, ranks, expected):
    assert einsum_expr(equation, ranks) == expected


def test_einsum_stays_one_op(tmp_path):
    model = Fn2(lambda q, k: torch.einsum("bhqd,bhkd->bhqk", q, k))
    result = export_and_check(model, (torch.randn(2, 3, 5, 4), torch.randn(2, 3, 6, 4)), tmp_path)
    assert result.op_histogram == {"tract_core_einsum": 1}
