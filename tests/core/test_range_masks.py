"""Masks built by comparing ``torch.arange`` on a dynamic length (causal, sliding, padding).

tract 0.23.9 tracks ``tract_core_range`` outputs as functions of their coordinates and,
for a ``select``/``mul``/``and`` on a comparison of two of them, splits the op at a coordinate
symbol, which fails at run time; the export hides the range's coordinates (see ``arange``).
Every model runs with the length dynamic, on two lengths.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.helpers import Fn, export_and_check


def _positions(x: torch.Tensor, axis: int = -1) -> torch.Tensor:
    return torch.arange(x.shape[axis])


def _where_lower(x):
    i = _positions(x)
    return torch.where(i[:, None] >= i[None, :], x, -1.0)


def _where_upper(x):
    i = _positions(x)
    return torch.where(i[None, :] <= i[:, None], x, -1.0)


def _mul_mask(x):
    i = _positions(x)
    return x * (i[:, None] >= i[None, :]).to(x.dtype)


def _and_masks(x):
    i = _positions(x)
    return torch.where((i[:, None] >= i[None, :]) & (i[:, None] - i[None, :] < 3), x, 0.0)


def _flipped(x):
    i = _positions(x)
    return torch.where(i.flip(0)[:, None] >= i[None, :], x, -1.0)


def _broadcast_values(x):  # x [B, T, 1]: the mask makes the output [B, T, T]
    i = _positions(x, 1)
    return torch.where(i[:, None] >= i[None, :], x, -1.0)


# (id, function, example shape with T = 5, dynamic axes of x)
WHERE = [
    ("where-rank2", _where_lower, (5, 5), {0: "T", 1: "T"}),
    ("where-rank3", _where_lower, (2, 5, 5), {1: "T", 2: "T"}),
    ("where-upper-form", _where_upper, (2, 5, 5), {1: "T", 2: "T"}),
    ("mul-float-mask", _mul_mask, (2, 5, 5), {1: "T", 2: "T"}),
    ("and-of-masks", _and_masks, (5, 5), {0: "T", 1: "T"}),
    ("flipped-positions", _flipped, (5, 5), {0: "T", 1: "T"}),
    ("values-broadcast", _broadcast_values, (2, 5, 1), {1: "T"}),
]  # fmt: skip


def _other_length(shape, axes, t: int = 8):
    return tuple(t if a in axes else s for a, s in enumerate(shape))


@pytest.mark.parametrize(("fn", "shape", "axes"), [w[1:] for w in WHERE], ids=[w[0] for w in WHERE])
def test_mask_from_arange_comparison(fn, shape, axes, tmp_path):
    export_and_check(
        Fn(fn), (torch.randn(shape),), tmp_path, dynamic_axes={"x": axes},
        check_inputs=[(torch.randn(_other_length(shape, axes)),)],
    )  # fmt: skip


class CausalSoftmax(nn.Module):
    """Scores ``[B, H, T, T]`` masked above the diagonal, then softmax (as in HF attention)."""

    def __init__(self, fill: float, keys_first: bool):
        super().__init__()
        self.fill = fill
        self.keys_first = keys_first

    def forward(self, q, k):
        scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
        i = torch.arange(q.shape[2])
        if self.keys_first:
            future = i[None, :] > i[:, None]
        else:
            future = i[:, None] < i[None, :]
        return scores.masked_fill(future, self.fill).softmax(-1)


@pytest.mark.parametrize("keys_first", [True, False], ids=["j-gt-i", "i-lt-j"])
@pytest.mark.parametrize("fill", [float("-inf"), torch.finfo(torch.float32).min],
                         ids=["minus-inf", "finfo-min"])  # fmt: skip
def test_causal_masked_fill_softmax(fill, keys_first, tmp_path):
    def qk(t):
        return torch.randn(2, 3, t, 4), torch.randn(2, 3, t, 4)

    axes = {"q": {2: "T"}, "k": {2: "T"}}
    export_and_check(CausalSoftmax(fill, keys_first), qk(5), tmp_path, dynamic_axes=axes,
                     check_inputs=[qk(8)])  # fmt: skip


class SlidingWindow(nn.Module):
    """Causal sliding window of ``w`` positions: query i sees keys j with 0 <= i - j < w."""

    def __init__(self, window: int, hf_form: bool):
        super().__init__()
        self.window = window
        self.hf_form = hf_form

    def forward(self, scores):
        q = torch.arange(scores.shape[-2])[:, None]
        k = torch.arange(scores.shape[-1])[None, :]
        if self.hf_form:  # transformers' sliding_window_overlay: kv > q - w, and causal
            keep = (k <= q) & (k > q - self.window)
        else:
            keep = ((q - k) >= 0) & ((q - k) < self.window)
        return scores.masked_fill(~keep, float("-inf")).softmax(-1)


@pytest.mark.parametrize("hf_form", [True, False], ids=["kv-gt-q-minus-w", "distance-lt-w"])
@pytest.mark.parametrize("window", [1, 3], ids=["window-1", "window-3"])
def test_sliding_window(window, hf_form, tmp_path):
    export_and_check(
        SlidingWindow(window, hf_form), (torch.randn(2, 2, 6, 6),), tmp_path,
        dynamic_axes={"scores": {2: "T", 3: "T"}}, check_inputs=[(torch.randn(2, 2, 9, 9),)],
    )  # fmt: skip


class Padding(nn.Module):
    """Positions at or after each sequence's length are zeroed (``lengths`` is i64 [B])."""

    def forward(self, x, lengths):
        valid = torch.arange(x.shape[1])[None, :] < lengths[:, None]
        return torch.where(valid[..., None], x, 0.0)


class PaddedAttention(nn.Module):
    """Key padding as an additive mask on ``[B, H, T, T]`` scores, then softmax."""

    def forward(self, scores, lengths):
        valid = torch.arange(scores.shape[-1])[None, :] < lengths[:, None]
        return scores.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(-1)


def test_padding_mask_from_lengths(tmp_path):
    def inputs(t):
        return torch.randn(3, t, 4), torch.tensor([1, t, t - 2])

    export_and_check(Padding(), inputs(5), tmp_path, dynamic_axes={"x": {1: "T"}},
                     check_inputs=[inputs(8)])  # fmt: skip


def test_padding_mask_on_scores(tmp_path):
    def inputs(t):
        return torch.randn(3, 2, t, t), torch.tensor([1, t, t - 2])

    export_and_check(
        PaddedAttention(), inputs(5), tmp_path, dynamic_axes={"scores": {2: "T", 3: "T"}},
        check_inputs=[inputs(8)],
    )  # fmt: skip


class CachePositions(nn.Module):
    """HF-style: new positions ``past .. past + T`` against all ``past + T`` key positions."""

    def forward(self, x, past):
        p, t = past.shape[1], x.shape[1]
        cache_position = torch.arange(p, p + t)
        keys = torch.arange(p + t)
        allowed = keys[None, :] <= cache_position[:, None]
        scores = x @ torch.cat([past, x], 1).transpose(1, 2)
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1)


def test_cache_position_mask(tmp_path):
    def inputs(t, p):
        return torch.randn(2, t, 4), torch.randn(2, p, 4)

    export_and_check(
        CachePositions(), inputs(3, 4), tmp_path,
        dynamic_axes={"x": {1: "T"}, "past": {1: "P"}}, check_inputs=[inputs(5, 2)],
    )  # fmt: skip


class InputOffset(nn.Module):
    """Positions offset by an i64 scalar input (``start``), compared with key positions."""

    def forward(self, x, start):
        queries = torch.arange(x.shape[1]) + start
        keys = torch.arange(x.shape[2])
        return torch.where(keys[None, :] <= queries[:, None], x, -1.0)


def test_positions_offset_by_input(tmp_path):
    def inputs(t, s, start):
        return torch.randn(2, t, s), torch.tensor(start)

    export_and_check(
        InputOffset(), inputs(3, 6, 2), tmp_path, dynamic_axes={"x": {1: "T", 2: "S"}},
        check_inputs=[inputs(4, 9, 5), inputs(5, 5, 0)],
    )  # fmt: skip
