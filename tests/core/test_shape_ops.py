"""Shape ops (view, permute, squeeze, cat, split, slice, select, expand, ...) run in tract."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import t2n_core
from t2n_core.errors import TranslationError
from tests.helpers import Fn, Fn2, export_and_check


def x_of(t: int) -> torch.Tensor:
    return torch.randn(2, t, 8)


# (id, function of x [2, T, 8] with T dynamic)
DYNAMIC_T = [
    ("view-split-last", lambda x: x.view(x.shape[0], x.shape[1], 2, 4)),
    ("view-minus-one", lambda x: x.view(2, -1, 4)),
    ("view-merge-dynamic", lambda x: x.reshape(2, -1)),
    ("view-heads", lambda x: x.view(2, x.shape[1], 2, 4).transpose(1, 2)),
    ("flatten", lambda x: x.flatten(1)),
    ("flatten-all", lambda x: x.flatten()),
    ("permute", lambda x: x.permute(2, 0, 1)),
    ("transpose", lambda x: x.transpose(0, 2)),
    ("mT", lambda x: x.mT),
    ("unsqueeze-squeeze", lambda x: x.unsqueeze(1).unsqueeze(-1).squeeze(1) * 2),
    ("squeeze-noop", lambda x: x.squeeze(1) + 1),
    ("squeeze-all", lambda x: x[:1, :, :1].squeeze()),
    ("cat-dynamic-axis", lambda x: torch.cat([x, x * 2], 1)),
    ("cat-last-axis", lambda x: torch.cat([x, x[..., :3]], -1)),
    ("stack", lambda x: torch.stack([x, x + 1], 1)),
    ("split-equal", lambda x: x.split(4, -1)),
    ("split-unequal", lambda x: x.split([3, 5], -1)),
    ("chunk", lambda x: x.chunk(2, -1)),
    ("slice-static-strided", lambda x: x[:, :, 1:7:2]),
    ("slice-static-negative", lambda x: x[..., -3:]),
    ("slice-static-negative-end", lambda x: x[..., 1:-2]),
    ("slice-ellipsis-n", lambda x: x[..., :3]),
    ("slice-dynamic-from", lambda x: x[:, 1:]),
    ("slice-dynamic-drop-last", lambda x: x[:, :-1]),
    ("slice-dynamic-strided", lambda x: x[:, 1::2]),
    ("slice-dynamic-last-three", lambda x: x[:, -3:]),
    ("slice-dynamic-shift-diff", lambda x: x[:, 1:] - x[:, :-1]),
    ("select-dynamic-first", lambda x: x[:, 0]),
    ("select-dynamic-last", lambda x: x[:, -1]),
    ("select-dynamic-second-last", lambda x: x[:, -2]),
    ("select-static", lambda x: x[:, :, 0]),
    ("select-static-negative", lambda x: x[..., -1]),
    ("select-batch", lambda x: x[1]),
    ("none-index", lambda x: x[:, None, :, 2:4]),
    ("unbind", lambda x: x.unbind(2)),
    ("expand", lambda x: x[:, :, :1].expand(-1, -1, 5)),
    ("expand-leading", lambda x: x.expand(3, -1, -1, -1)),
    ("broadcast-to", lambda x: torch.broadcast_to(x[:, :1], (2, 4, 8))),
    ("repeat", lambda x: x.repeat(1, 2, 1)),
    ("repeat-leading", lambda x: x.repeat(2, 1, 1, 3)),
    ("flip-dynamic", lambda x: x.flip(1)),
    ("flip-two", lambda x: x.flip(0, 2)),
    ("roll-static", lambda x: x.roll(3, 2)),
    ("roll-negative", lambda x: x.roll(-2, -1)),
    ("roll-dynamic", lambda x: x.roll(1, 1)),
    ("diagonal", lambda x: torch.diagonal(x, dim1=0, dim2=2)),
    ("diagonal-offset", lambda x: torch.diagonal(x, 1, 2, 0)),
    ("diagonal-negative-offset", lambda x: torch.diagonal(x, -1, 0, 2)),
    ("diagonal-dynamic-square", lambda x: torch.diagonal(x @ x.mT, dim1=1, dim2=2)),
    ("unflatten-dynamic", lambda x: x.flatten(1).unflatten(1, (-1, 8))),
    ("tril", lambda x: torch.tril(x)),
    ("triu-offset", lambda x: torch.triu(x, 1)),
    ("tril-negative", lambda x: torch.tril(x, -1)),
]


@pytest.mark.parametrize("fn", [c[1] for c in DYNAMIC_T], ids=[c[0] for c in DYNAMIC_T])
def test_shape_op_dynamic_length(fn, tmp_path):
    export_and_check(
        Fn(fn), (x_of(6),), tmp_path, input_names=["x"], dynamic_axes={"x": {1: "T"}},
        check_inputs=[(x_of(9),)],
    )  # fmt: skip


def test_slice_to_dynamic_end(tmp_path):
    """``x[:, :n]`` where ``n`` is the length of another input."""
    model = Fn2(lambda x, y: x[:, : y.shape[1]] * y.unsqueeze(-1))
    export_and_check(
        model, (torch.randn(2, 7, 3), torch.randn(2, 4)), tmp_path,
        dynamic_axes={"x": {1: "T"}, "y": {1: "S"}},
        check_inputs=[(torch.randn(2, 9, 3), torch.randn(2, 5))],
    )  # fmt: skip


class _TableTail(nn.Module):
    """MPT's ALiBi slice: the last ``P + T`` columns of a table of ``limit`` positions, as
    ``table[:, max(0, limit - (P + T)):]``, and ``max(0, 1 - (P + T))`` rows of one."""

    def __init__(self, limit: int, facts: tuple[str, ...]):
        super().__init__()
        self.table = nn.Buffer(torch.randn(1, limit))
        self.size_facts = facts

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        seen = past.shape[1] + x.shape[1]
        row = max(0, self.table.size(0) - seen)  # 0 for every P, T the axes allow
        column = max(0, self.table.size(1) - seen)  # limit - (P + T) given the fact
        return self.table[row:, column:] * torch.cat([past, x], 1)


def test_max_of_sizes_decided_by_ranges_and_facts(tmp_path):
    """A ``Max`` of sizes (tract has none) is written as the argument the axes' ranges or the
    caller's facts (``size_facts``) decide; without the fact, the error names the max."""
    args, other = (torch.randn(1, 3), torch.randn(1, 5)), (torch.randn(1, 6), torch.randn(1, 10))
    axes = {"x": {1: "T"}, "past": {1: "P"}}
    with pytest.raises(TranslationError, match=r"Max\(0, .*needs max"):
        t2n_core.export(_TableTail(16, ()), args, tmp_path / "no_fact.nnef.tgz",
                        dynamic_axes=axes, progress=False)  # fmt: skip
    export_and_check(
        _TableTail(16, ("P + T <= 16",)), args, tmp_path, dynamic_axes=axes, check_inputs=[other]
    )


INTEGER_CASES = [
    ("slice", lambda x: x[:, 1:]),
    ("flip", lambda x: x.flip(1)),
    ("expand", lambda x: x.unsqueeze(1).expand(-1, 3, -1)),
    ("cat", lambda x: torch.cat([x, x], 1)),
    ("view", lambda x: x.reshape(-1)),
    ("roll", lambda x: x.roll(1, 1)),
    ("repeat", lambda x: x.repeat(2, 1)),
    ("split", lambda x: x.split([1, 2], 0)),
    ("bool-tril", lambda x: torch.tril((x > 0).unsqueeze(-1).expand(-1, -1, x.shape[1]))),
]


@pytest.mark.parametrize("fn", [c[1] for c in INTEGER_CASES], ids=[c[0] for c in INTEGER_CASES])
def test_shape_op_on_integers(fn, tmp_path):
    def tokens(t):
        return torch.randint(-5, 5, (3, t))

    export_and_check(
        Fn(fn), (tokens(6),), tmp_path, dynamic_axes={"x": {1: "T"}}, check_inputs=[(tokens(4),)]
    )


@pytest.mark.parametrize(
    "fn",
    [
        lambda x: x.reshape(x.shape[0], -1)[:, 1:-1:2],  # tract's declutter failed on this
        lambda x: torch.relu(x.reshape(x.shape[0], -1))[:, ::3] * 2,
        lambda x: x[:, 1::2, :],
    ],
    ids=["reshape-then-strided", "through-relu", "static-axis"],
)
def test_strided_slice_after_reshape_loads_in_tract(fn, tmp_path):
    x = torch.randn(6, 4, 5)
    export_and_check(Fn(fn), x, tmp_path, dynamic_axes={"x": {0: "B"}},
                     check_inputs=[(torch.randn(3, 4, 5),)])  # fmt: skip


def test_strided_slice_on_a_dynamic_axis(tmp_path):
    x = torch.randn(2, 9, 3)
    export_and_check(Fn(lambda x: x[:, 1::2]), x, tmp_path, dynamic_axes={"x": {1: "T"}},
                     check_inputs=[(torch.randn(2, 12, 3),)])  # fmt: skip


class _FirstK(nn.Module):
    """The first ``min(2048, P + T)`` positions (DeepSeek-V3.2's indexer keeps so many)."""

    size_facts = ("P + T <= 16",)

    def forward(self, x: torch.Tensor, past: torch.Tensor) -> torch.Tensor:
        seen = torch.cat([past, x], 1)
        return torch.ones(min(2048, seen.shape[1])) * seen


def test_min_of_sizes_decided_by_a_weaker_bound_than_the_fact(tmp_path):
    """``Min(2048, P + T)`` is ``P + T`` since the fact ``P + T <= 16`` implies ``<= 2048``."""
    args, other = (torch.randn(1, 3), torch.randn(1, 5)), (torch.randn(1, 6), torch.randn(1, 10))
    axes = {"x": {1: "T"}, "past": {1: "P"}}
    export_and_check(_FirstK(), args, tmp_path, dynamic_axes=axes, check_inputs=[other])
