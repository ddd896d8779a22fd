"""Reductions, cumsum, softmax/log_softmax, argmax/argmin and topk in tract."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import Fn, export_and_check


def _x(t: int = 5) -> torch.Tensor:
    return torch.randn(2, t, 6)


# (id, function of x [2, T, 6]); every case also runs with T dynamic on a second length
REDUCTIONS = [
    ("sum-dim", lambda x: x.sum(1)),
    ("sum-keepdim", lambda x: x.sum(-1, keepdim=True)),
    ("sum-dims", lambda x: x.sum((0, 2))),
    ("sum-all", lambda x: x.sum()),
    ("sum-dtype", lambda x: x.sum(1, dtype=torch.float32)),
    ("mean-dim", lambda x: x.mean(1)),
    ("mean-dims-keepdim", lambda x: x.mean((1, 2), keepdim=True)),
    ("mean-all", lambda x: x.mean()),
    ("amax", lambda x: x.amax(1)),
    ("amax-dims-keepdim", lambda x: x.amax((0, 1), keepdim=True)),
    ("amin", lambda x: x.amin(-1)),
    ("amin-all", lambda x: x.amin()),
    ("max-all", lambda x: x.max()),
    ("min-all", lambda x: x.min()),
    ("max-dim", lambda x: x.max(1)),
    ("max-dim-keepdim", lambda x: x.max(-1, keepdim=True)),
    ("min-dim", lambda x: x.min(2)),
    ("min-dim-values-only", lambda x: x.min(1).values * 2),
    ("aminmax", lambda x: torch.aminmax(x, dim=1)),
    ("aminmax-all", lambda x: torch.aminmax(x)),
    ("var-unbiased", lambda x: x.var(1)),
    ("var-correction0", lambda x: x.var(-1, correction=0)),
    ("var-dims-keepdim", lambda x: x.var((1, 2), keepdim=True)),
    ("var-all", lambda x: x.var()),
    ("std-unbiased", lambda x: x.std(1)),
    ("std-correction0", lambda x: x.std(-1, correction=0, keepdim=True)),
    ("std-all", lambda x: x.std()),
    ("norm-p2", lambda x: x.norm(dim=-1)),
    ("norm-p1", lambda x: x.norm(p=1, dim=1)),
    ("norm-fro", lambda x: torch.norm(x, p="fro", dim=(1, 2))),
    ("norm-all", lambda x: x.norm()),
    ("linalg_vector_norm-keepdim", lambda x: torch.linalg.vector_norm(x, dim=-1, keepdim=True)),
    ("linalg_vector_norm-p3", lambda x: torch.linalg.vector_norm(x, ord=3, dim=1)),
    ("linalg_vector_norm-inf", lambda x: torch.linalg.vector_norm(x, ord=float("inf"), dim=2)),
    ("linalg_vector_norm-ninf", lambda x: torch.linalg.vector_norm(x, ord=-float("inf"), dim=2)),
    ("linalg_norm-fro", lambda x: torch.linalg.norm(x[0])),
    ("normalize", lambda x: torch.nn.functional.normalize(x, dim=-1)),
    ("logsumexp", lambda x: torch.logsumexp(x * 10, 1)),
    ("logsumexp-dims-keepdim", lambda x: torch.logsumexp(x, (0, 2), keepdim=True)),
    (
        "logsumexp-minus-inf-row",
        lambda x: torch.logsumexp(x.masked_fill(x[:, :, :1] > 0, float("-inf")), -1),
    ),
    ("prod", lambda x: (x * 0.5 + 1).prod(-1)),
    ("prod-keepdim", lambda x: (x * 0.5 + 1).prod(0, keepdim=True)),
    ("prod-all", lambda x: (x[:, :, :2] * 0.5 + 1).prod()),
    ("cumsum", lambda x: x.cumsum(-1)),
    ("cumsum-dynamic-axis", lambda x: x.cumsum(1)),
    ("cumsum-bool-to-int", lambda x: (x > 0).cumsum(1)),
    ("softmax-last", lambda x: x.softmax(-1)),
    ("softmax-dynamic-axis", lambda x: torch.softmax(x, 1)),
    ("softmax-first", lambda x: torch.nn.functional.softmax(x, dim=0)),
    ("log_softmax-last", lambda x: x.log_softmax(-1)),
    ("log_softmax-dynamic-axis", lambda x: torch.log_softmax(x, 1)),
    ("argmax-dim", lambda x: x.argmax(1)),
    ("argmax-keepdim", lambda x: x.argmax(-1, keepdim=True)),
    ("argmax-all", lambda x: x.argmax()),
    ("argmax-all-keepdim", lambda x: torch.argmax(x, keepdim=True)),
    ("argmin-dim", lambda x: x.argmin(0)),
    ("argmin-all", lambda x: x.argmin()),
    ("argmax-ties-first", lambda x: torch.round(x).clamp(0, 1).argmax(-1)),
]


@pytest.mark.parametrize("fn", [f for _, f in REDUCTIONS], ids=[i for i, _ in REDUCTIONS])
def test_reduction_dynamic_length(fn, tmp_path):
    export_and_check(
        Fn(fn), (_x(),), tmp_path, dynamic_axes={"x": {1: "T"}}, check_inputs=[(_x(9),)]
    )


BOOL_REDUCTIONS = [
    ("any-all", lambda x: (x > 1).any()),
    ("any-dim", lambda x: (x > 1).any(1)),
    ("any-dims-keepdim", lambda x: torch.any(x > 1, dim=(0, 2), keepdim=True)),
    ("all-all", lambda x: (x > -2).all()),
    ("all-dim", lambda x: (x > -1).all(-1)),
    ("all-dim-keepdim", lambda x: (x > -1).all(1, keepdim=True)),
    ("any-float-input", lambda x: torch.round(x).any(-1)),
    ("sum-bool", lambda x: (x > 0).sum(1)),
]


@pytest.mark.parametrize("fn", [f for _, f in BOOL_REDUCTIONS], ids=[i for i, _ in BOOL_REDUCTIONS])
def test_bool_reduction(fn, tmp_path):
    export_and_check(Fn(fn), (_x(),), tmp_path)


TOPK = [
    ("largest-sorted", lambda x: x.topk(3, -1)),
    ("smallest-sorted", lambda x: x.topk(2, -1, largest=False)),
    ("dim1", lambda x: torch.topk(x, 2, dim=0)),
    ("k1", lambda x: x.topk(1)),
    ("values-only", lambda x: x.topk(3).values.sum(-1)),
]


@pytest.mark.parametrize("fn", [f for _, f in TOPK], ids=[i for i, _ in TOPK])
def test_topk(fn, tmp_path):
    export_and_check(Fn(fn), (_x(),), tmp_path)


def test_topk_dynamic_batch(tmp_path):
    export_and_check(
        Fn(lambda x: x.topk(2, -1)), (_x(),), tmp_path,
        dynamic_axes={"x": {1: "T"}}, check_inputs=[(_x(3),)],
    )  # fmt: skip


@pytest.mark.parametrize(
    "fn",
    [lambda x: x.topk(x.shape[1], 1), lambda x: x.sort(1, descending=True),
     lambda x: x + x.topk(x.shape[1], 1, largest=False).indices.float()],
    ids=["topk-whole-axis", "sort", "indices-used"],
)  # fmt: skip
def test_topk_with_k_from_a_dynamic_axis(fn, tmp_path):
    """k = the dynamic axis' size (DeepSeek-V3.2's indexer: ``min(index_topk, P + T)``, decided
    to ``P + T``): tract gets k computed in the graph, on several lengths."""
    export_and_check(
        Fn(fn), (_x(),), tmp_path, dynamic_axes={"x": {1: "T"}}, check_inputs=[(_x(2),), (_x(7),)],
    )  # fmt: skip


def test_standardize_dynamic_length(tmp_path):
    """mean (a normalized sum_reduce) and std over a dynamic axis, on several lengths."""
    export_and_check(
        Fn(lambda x: x - x.mean(1, keepdim=True) / x.std(1, keepdim=True)), (_x(),), tmp_path,
        dynamic_axes={"x": {1: "T"}}, check_inputs=[(_x(2),), (_x(17),)],
    )  # fmt: skip
