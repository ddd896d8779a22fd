# ruff: noqa: E501, E731  (a table of one-line cases)
"""Op matrix: tiny modules, one public torch call each, exported by t2n and by the reference
exporter (torch-to-nnef), each archive run in tract (the ``tract`` Python package) and
compared with PyTorch.

Usage::

    python -m benchmarks.op_matrix                       # t2n only
    python -m benchmarks.op_matrix --ref /work/refvenv/bin/python   # side by side
    python -m benchmarks.op_matrix --only sort,scatter_add --show-errors

Each tool runs in a worker process that walks the cases in order and prints one JSON line
per case; a case that kills the worker (a tract panic) is recorded as ``crash`` and the
worker restarts after it. The reference needs a ``tract`` binary for ``--version`` only
(it is given a two-line script; its own tract-CLI check is off): its archive is checked
with the same tract package as ours.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

G = torch.Generator().manual_seed(0)


def r(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=G)


def pos(*shape: int) -> torch.Tensor:
    return torch.rand(*shape, generator=G) + 0.5


def ints(high: int, *shape: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=G)


def u(*shape: int) -> torch.Tensor:  # in (-0.9, 0.9)
    return torch.rand(*shape, generator=G) * 1.8 - 0.9


class Call(nn.Module):
    def __init__(self, fn: Callable[..., Any]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, *xs: torch.Tensor) -> Any:
        return self.fn(*xs)


X = (2, 3, 4, 5)
#: name -> (function of the inputs, inputs). One public torch call each.
CASES: dict[str, tuple[Callable[..., Any], Callable[[], tuple[torch.Tensor, ...]]]] = {}


def case(name: str, fn: Callable[..., Any], *inputs: Callable[[], torch.Tensor]) -> None:
    CASES[name] = (fn, lambda: tuple(i() for i in inputs))


def _x() -> torch.Tensor:
    return r(*X)


def _p() -> torch.Tensor:
    return pos(*X)


def _u() -> torch.Tensor:
    return u(*X)


# ---- elementwise, unary ---------------------------------------------------------------------
for _n in ["abs", "ceil", "cos", "cosh", "erf", "erfc", "exp", "exp2", "expm1", "floor", "frac",
           "neg", "reciprocal", "round", "sigmoid", "sign", "sgn", "sin", "sinc", "sinh", "square",
           "tan", "tanh", "trunc", "atan", "asinh", "deg2rad", "rad2deg", "positive", "signbit",
           "relu", "isfinite", "isinf", "isnan", "isneginf", "isposinf", "nan_to_num", "i0",
           "clone", "fliplr", "flipud", "ravel", "angle", "conj"]:  # fmt: skip
    case(_n, getattr(torch, _n), _x)
for _n in ["log", "log10", "log1p", "log2", "rsqrt", "sqrt", "lgamma", "digamma", "acosh"]:
    case(_n, getattr(torch, _n), lambda _n=_n: pos(*X) + (1.0 if _n == "acosh" else 0.0))
for _n in ["acos", "asin", "atanh", "logit", "erfinv"]:
    case(_n, getattr(torch, _n), _u)
for _n in ["special_i0e", "special_i1", "special_i1e", "special_entr", "special_expit",
           "special_ndtr", "special_log_ndtr", "special_sinc", "special_erfcx"]:  # fmt: skip
    case(_n, getattr(torch.special, _n.removeprefix("special_")), _x)
case("special_xlog1py", torch.special.xlog1py, _p, _p)
case("mvlgamma", lambda x: torch.mvlgamma(x + 2, 2), _p)
# ---- elementwise, binary --------------------------------------------------------------------
for _n in ["add", "sub", "mul", "div", "maximum", "minimum", "fmax", "fmin", "atan2", "hypot",
           "copysign", "heaviside", "logaddexp", "logaddexp2", "xlogy", "eq", "ne", "lt", "le",
           "gt", "ge", "greater", "greater_equal", "less", "less_equal", "float_power", "rsub",
           "isclose", "nextafter"]:  # fmt: skip
    case(_n, getattr(torch, _n), _x, _x)
case("pow", torch.pow, _p, _x)
case("fmod", torch.fmod, _x, _p)
case("remainder", torch.remainder, _x, _p)
case("floor_divide", torch.floor_divide, _x, _p)
case("true_divide", torch.true_divide, _x, _p)
case("div_floor", lambda a, b: torch.div(a, b, rounding_mode="floor"), _x, _p)
case("div_trunc", lambda a, b: torch.div(a, b, rounding_mode="trunc"), _x, _p)
case("lerp", torch.lerp, _x, _x, _u)
case("addcmul", torch.addcmul, _x, _x, _x)
case("addcdiv", torch.addcdiv, _x, _x, _p)
case("ldexp", lambda x: torch.ldexp(x, torch.tensor(2)), _x)
case("clamp", lambda x: torch.clamp(x, -0.5, 0.7), _x)
case("clamp_min", lambda x: torch.clamp_min(x, -0.5), _x)
case("clamp_max", lambda x: torch.clamp_max(x, 0.5), _x)
case("clip", lambda x: torch.clip(x, -0.5, 0.7), _x)
case("where", lambda x, y: torch.where(x > 0, x, y), _x, _x)
case("masked_fill", lambda x: x.masked_fill(x > 0.5, -1.0), _x)
case("logical_and", lambda x, y: torch.logical_and(x > 0, y > 0), _x, _x)
case("logical_or", lambda x, y: torch.logical_or(x > 0, y > 0), _x, _x)
case("logical_xor", lambda x, y: torch.logical_xor(x > 0, y > 0), _x, _x)
case("logical_not", lambda x: torch.logical_not(x > 0), _x)
for _n in ["bitwise_and", "bitwise_or", "bitwise_xor"]:
    case(_n, getattr(torch, _n), lambda: ints(16, *X), lambda: ints(16, *X))
case("bitwise_not", torch.bitwise_not, lambda: ints(16, *X))
case("bitwise_left_shift", torch.bitwise_left_shift, lambda: ints(16, *X), lambda: ints(3, *X))
case("bitwise_right_shift", torch.bitwise_right_shift, lambda: ints(64, *X), lambda: ints(3, *X))
case("frexp", lambda x: torch.frexp(x)[0], _x)
# ---- activations --------------------------------------------------------------------------
for _n in ["relu", "relu6", "elu", "selu", "celu", "gelu", "silu", "mish", "softplus",
           "softsign", "tanhshrink", "hardsigmoid", "hardswish", "hardtanh", "leaky_relu",
           "logsigmoid", "softshrink", "hardshrink", "sigmoid", "tanh", "rrelu"]:  # fmt: skip
    case(f"F.{_n}", getattr(F, _n), _x)
case("F.gelu_tanh", lambda x: F.gelu(x, approximate="tanh"), _x)
case("F.glu", lambda x: F.glu(x, dim=-1), lambda: r(2, 3, 4, 6))
case("F.threshold", lambda x: F.threshold(x, 0.1, -2.0), _x)
case("F.prelu", lambda x: F.prelu(x, torch.tensor([0.1, 0.2, 0.3])), _x)
case("F.softmax", lambda x: F.softmax(x, -1), _x)
case("F.log_softmax", lambda x: F.log_softmax(x, 1), _x)
case("F.softmin", lambda x: F.softmin(x, -1), _x)
case("F.normalize", lambda x: F.normalize(x, dim=1), _x)
case("F.dropout_eval", lambda x: F.dropout(x, 0.5, training=False), _x)
case("F.alpha_dropout_eval", lambda x: F.alpha_dropout(x, 0.5, training=False), _x)
# ---- reductions -----------------------------------------------------------------------------
for _n in ["sum", "mean", "prod", "amax", "amin", "std", "var", "logsumexp", "nansum", "nanmean",
           "count_nonzero", "norm"]:  # fmt: skip
    case(_n, lambda x, _n=_n: getattr(torch, _n)(x, 1), _x)
case("max_dim", lambda x: torch.max(x, 1)[0], _x)
case("min_dim", lambda x: torch.min(x, 1)[0], _x)
case("max_all", torch.max, _x)
case("min_all", torch.min, _x)
case("argmax", lambda x: torch.argmax(x, 1), _x)
case("argmin", lambda x: torch.argmin(x, -1), _x)
case("aminmax", lambda x: torch.aminmax(x, dim=1)[0], _x)
case("all", lambda x: torch.all(x > -1, 1), _x)
case("any", lambda x: torch.any(x > 1, 1), _x)
case("std_mean", lambda x: torch.std_mean(x, 1)[0], _x)
case("var_mean", lambda x: torch.var_mean(x, 1)[1], _x)
case("median_dim", lambda x: torch.median(x, 1)[0], _x)
case("mode", lambda x: torch.mode(ints(3, *X).float() + x * 0, 1)[0], _x)
case("linalg_vector_norm", lambda x: torch.linalg.vector_norm(x, 3, dim=-1), _x)
case("linalg_matrix_norm", lambda x: torch.linalg.matrix_norm(x), _x)
case("linalg_norm", lambda x: torch.linalg.norm(x, dim=-1), _x)
case("frobenius_norm", lambda x: torch.norm(x, "fro", dim=(2, 3)), _x)
case("dist", torch.dist, _x, _x)
case("cumsum", lambda x: torch.cumsum(x, 2), _x)
case("cumprod", lambda x: torch.cumprod(x, 2), _x)
case("cummax", lambda x: torch.cummax(x, 3)[0], _x)
case("cummin", lambda x: torch.cummin(x, 3)[0], _x)
case("logcumsumexp", lambda x: torch.logcumsumexp(x, 2), _x)
case("diff", lambda x: torch.diff(x, dim=-1), _x)
case("trapezoid", lambda x: torch.trapezoid(x, dim=-1), _x)
# ---- shape --------------------------------------------------------------------------------
case("reshape", lambda x: x.reshape(6, 20), _x)
case("view", lambda x: x.view(2, -1), _x)
case("flatten", lambda x: torch.flatten(x, 1), _x)
case("unflatten", lambda x: x.unflatten(-1, (1, 5)), _x)
case("permute", lambda x: x.permute(0, 2, 3, 1), _x)
case("transpose", lambda x: x.transpose(1, 3), _x)
case("movedim", lambda x: torch.movedim(x, 1, -1), _x)
case("mT", lambda x: x.mT, _x)
case("squeeze", lambda x: x[:, :1].squeeze(1), _x)
case("unsqueeze", lambda x: x.unsqueeze(2), _x)
case("expand", lambda x: x[:, :1].expand(2, 4, 4, 5), _x)
case("broadcast_to", lambda x: torch.broadcast_to(x[:1], X), _x)
case("repeat", lambda x: x.repeat(1, 2, 1, 1), _x)
case("tile", lambda x: torch.tile(x, (2, 1)), _x)
case("repeat_interleave", lambda x: torch.repeat_interleave(x, 2, dim=1), _x)
case("cat", lambda x, y: torch.cat([x, y], 1), _x, _x)
case("stack", lambda x, y: torch.stack([x, y], 2), _x, _x)
case("hstack", lambda x, y: torch.hstack([x, y]), _x, _x)
case("vstack", lambda x, y: torch.vstack([x, y]), _x, _x)
case("dstack", lambda x, y: torch.dstack([x, y]), _x, _x)
case("column_stack", lambda x, y: torch.column_stack([x[0, 0], y[0, 0]]), _x, _x)
case("split", lambda x: torch.split(x, 2, 3)[1], _x)
case("chunk", lambda x: torch.chunk(x, 2, 3)[1], _x)
case("tensor_split", lambda x: torch.tensor_split(x, 3, 3)[2], _x)
case("unbind", lambda x: torch.unbind(x, 1)[2], _x)
case("narrow", lambda x: torch.narrow(x, 3, 1, 3), _x)
case("select", lambda x: x[:, 1], _x)
case("slice_step", lambda x: x[..., ::2], _x)
case("flip", lambda x: torch.flip(x, [1, 3]), _x)
case("roll", lambda x: torch.roll(x, 2, 3), _x)
case("rot90", lambda x: torch.rot90(x, 1, (2, 3)), _x)
case("tril", lambda x: torch.tril(x), _x)
case("triu", lambda x: torch.triu(x, 1), _x)
case("diagonal", lambda x: torch.diagonal(x, 0, 2, 3), _x)
case("diag_embed", lambda x: torch.diag_embed(x), _x)
case("diag", lambda x: torch.diag(x[0, 0]), _x)
case("atleast_3d", lambda x: torch.atleast_3d(x[0, 0]), _x)
case("pixel_shuffle", lambda x: F.pixel_shuffle(x, 2), lambda: r(1, 8, 3, 3))
case("pixel_unshuffle", lambda x: F.pixel_unshuffle(x, 2), lambda: r(1, 2, 4, 6))
case("channel_shuffle", lambda x: F.channel_shuffle(x, 2), lambda: r(1, 4, 3, 3))
case("F.pad_constant", lambda x: F.pad(x, (1, 2, 0, 1), value=0.5), _x)
case("F.pad_reflect", lambda x: F.pad(x, (1, 2, 2, 1), mode="reflect"), _x)
case("F.pad_replicate", lambda x: F.pad(x, (1, 2, 2, 1), mode="replicate"), _x)
case("F.pad_circular", lambda x: F.pad(x, (1, 2, 2, 1), mode="circular"), _x)
case("F.unfold", lambda x: F.unfold(x, 2), _x)
case("F.fold", lambda x: F.fold(x, (4, 5), 2), lambda: r(1, 12, 12))
case("Tensor.unfold", lambda x: x.unfold(3, 2, 1), _x)
case("meshgrid", lambda x, y: torch.meshgrid(x[0, 0, 0], y[0, 0, :, 0], indexing="ij")[0], _x, _x)
case("cartesian_prod", lambda x, y: torch.cartesian_prod(x[0, 0, 0], y[0, 0, 0]), _x, _x)
case("block_diag", lambda x, y: torch.block_diag(x[0, 0], y[0, 0]), _x, _x)
case("kron", lambda x, y: torch.kron(x[0, 0, :2, :2], y[0, 0]), _x, _x)
case("vander", lambda x: torch.vander(x[0, 0, 0], 3), _x)
case("cross", lambda x, y: torch.linalg.cross(x[..., :3], y[..., :3]), _x, _x)
# ---- creation -----------------------------------------------------------------------------
case("zeros_like", lambda x: torch.zeros_like(x) + x, _x)
case("ones_like", lambda x: torch.ones_like(x) + x, _x)
case("full_like", lambda x: torch.full_like(x, 2.0) * x, _x)
case("new_ones", lambda x: x.new_ones(3, 4) + x[0, :, :, 0], _x)
case("arange", lambda x: x + torch.arange(5), _x)
case("linspace", lambda x: x + torch.linspace(0, 1, 5), _x)
case("logspace", lambda x: x + torch.logspace(0, 1, 5), _x)
case("eye", lambda x: x[0, 0, :4, :4] + torch.eye(4), _x)
case("tril_indices", lambda x: x[0, 0].flatten()[torch.tril_indices(4, 4)[1]], _x)
case("hann_window", lambda x: x * torch.hann_window(5), _x)
case("hamming_window", lambda x: x * torch.hamming_window(5), _x)
case("blackman_window", lambda x: x * torch.blackman_window(5), _x)
case("bartlett_window", lambda x: x * torch.bartlett_window(5), _x)
case("kaiser_window", lambda x: x * torch.kaiser_window(5), _x)
case("one_hot", lambda i: F.one_hot(i, 6), lambda: ints(6, 2, 5))
case("to_dtype", lambda x: x.to(torch.float16).to(torch.float32), _x)
case("type_as", lambda x, i: i.type_as(x) + x, _x, lambda: ints(5, *X))
# ---- indexing -----------------------------------------------------------------------------
_IDX = (lambda: torch.tensor([2, 0, 3]))
case("index_select", lambda x, i: torch.index_select(x, 3, i), _x, _IDX)
case("gather", lambda x, i: torch.gather(x, 3, i), _x, lambda: ints(5, 2, 3, 4, 3))
case("take_along_dim", lambda x, i: torch.take_along_dim(x, i, 3), _x, lambda: ints(5, 2, 3, 4, 3))
case("take", lambda x, i: torch.take(x, i), _x, lambda: ints(120, 7))
case("index_tensor", lambda x, i: x[..., i], _x, _IDX)
case("index_2d", lambda x, i, j: x[i, :, j], _x, lambda: ints(2, 4), lambda: ints(4, 4))
case("index_bool_mask_where", lambda x: torch.where(x > 0, x, 0.0), _x)
case("masked_select_sum", lambda x: torch.where(x > 0, x, 0.0).sum(), _x)
case("scatter", lambda x, i, s: torch.scatter(x, 3, i, s), _x,
     lambda: torch.stack([torch.randperm(5, generator=G)[:3] for _ in range(24)]).reshape(2, 3, 4, 3),
     lambda: r(2, 3, 4, 3))  # fmt: skip
case("scatter_add", lambda x, i, s: torch.scatter_add(x, 3, i, s), _x,
     lambda: ints(5, 2, 3, 4, 3), lambda: r(2, 3, 4, 3))  # fmt: skip
case("scatter_reduce_sum", lambda x, i, s: torch.scatter_reduce(x, 3, i, s, "sum"), _x,
     lambda: ints(5, 2, 3, 4, 3), lambda: r(2, 3, 4, 3))  # fmt: skip
case("scatter_reduce_amax", lambda x, i, s: torch.scatter_reduce(x, 3, i, s, "amax"), _x,
     lambda: ints(5, 2, 3, 4, 3), lambda: r(2, 3, 4, 3))  # fmt: skip
case("index_add", lambda x, i, s: torch.index_add(x, 3, i, s), _x,
     lambda: torch.tensor([1, 4, 1]), lambda: r(2, 3, 4, 3))  # fmt: skip
case("index_copy", lambda x, i, s: torch.index_copy(x, 3, i, s), _x,
     lambda: torch.tensor([1, 4, 0]), lambda: r(2, 3, 4, 3))  # fmt: skip
case("index_fill", lambda x, i: torch.index_fill(x, 3, i, -1.0), _x, _IDX)
case("index_put", lambda x, i, v: torch.index_put(x, (i,), v), lambda: r(6, 4),
     lambda: torch.tensor([4, 1, 2]), lambda: r(3, 4))  # fmt: skip
case("index_put_accumulate", lambda x, i, v: torch.index_put(x, (i,), v, accumulate=True),
     lambda: r(6, 4), lambda: torch.tensor([4, 1, 4]), lambda: r(3, 4))  # fmt: skip
case("setitem_slice", lambda x, v: torch.slice_scatter(x, v, 3, 1, 3), _x, lambda: r(2, 3, 4, 2))
case("setitem_strided", lambda x, v: torch.slice_scatter(x, v, 3, 0, 5, 2), _x, lambda: r(2, 3, 4, 3))
case("setitem_2d", lambda x, v: _setitem(x, v), lambda: r(5, 5), lambda: r(4, 4))
case("select_scatter", lambda x, v: torch.select_scatter(x, v, 1, 0), _x, lambda: r(2, 4, 5))
case("masked_scatter_where", lambda x, y: x.masked_fill(y > 0, 0.0), _x, _x)
case("sort", lambda x: torch.sort(x, 3)[0], _x)
case("sort_indices", lambda x: torch.sort(x, 3, descending=True)[1], _x)
case("argsort", lambda x: torch.argsort(x, 3), _x)
case("msort", lambda x: torch.msort(x), _x)
case("topk", lambda x: torch.topk(x, 2, 3)[0], _x)
case("kthvalue", lambda x: torch.kthvalue(x, 2, 3)[0], _x)
case("searchsorted", lambda s, v: torch.searchsorted(s, v),
     lambda: torch.sort(r(3, 6), -1)[0], lambda: r(3, 4))  # fmt: skip
case("bucketize", lambda v: torch.bucketize(v, torch.tensor([-1.0, 0.0, 0.5, 1.0])), _x)
case("embedding", lambda i, w: F.embedding(i, w), lambda: ints(10, 2, 5), lambda: r(10, 4))
case("embedding_bag", lambda i, w: F.embedding_bag(i, w, mode="mean"), lambda: ints(10, 3, 4),
     lambda: r(10, 4))  # fmt: skip
case("embedding_bag_sum", lambda i, w: F.embedding_bag(i, w, mode="sum"), lambda: ints(10, 3, 4),
     lambda: r(10, 4))  # fmt: skip
# ---- linear algebra -----------------------------------------------------------------------
case("matmul", torch.matmul, lambda: r(2, 3, 4), lambda: r(4, 5))
case("mm", torch.mm, lambda: r(3, 4), lambda: r(4, 5))
case("bmm", torch.bmm, lambda: r(2, 3, 4), lambda: r(2, 4, 5))
case("mv", torch.mv, lambda: r(3, 4), lambda: r(4))
case("dot", torch.dot, lambda: r(4), lambda: r(4))
case("vdot", torch.vdot, lambda: r(4), lambda: r(4))
case("inner", torch.inner, lambda: r(3, 4), lambda: r(2, 4))
case("outer", torch.outer, lambda: r(3), lambda: r(4))
case("addmm", torch.addmm, lambda: r(5), lambda: r(3, 4), lambda: r(4, 5))
case("addmv", torch.addmv, lambda: r(3), lambda: r(3, 4), lambda: r(4))
case("addbmm", torch.addbmm, lambda: r(3, 5), lambda: r(2, 3, 4), lambda: r(2, 4, 5))
case("baddbmm", torch.baddbmm, lambda: r(2, 3, 5), lambda: r(2, 3, 4), lambda: r(2, 4, 5))
case("addr", torch.addr, lambda: r(3, 4), lambda: r(3), lambda: r(4))
case("einsum", lambda a, b: torch.einsum("bij,bjk->bik", a, b), lambda: r(2, 3, 4), lambda: r(2, 4, 5))
case("tensordot", lambda a, b: torch.tensordot(a, b, dims=([2], [0])), lambda: r(2, 3, 4), lambda: r(4, 5))
case("chain_matmul", lambda a, b: torch.linalg.multi_dot([a, b, b.T]), lambda: r(3, 4), lambda: r(4, 4))
case("F.linear", F.linear, lambda: r(2, 3, 4), lambda: r(5, 4), lambda: r(5))
case("F.bilinear", F.bilinear, lambda: r(3, 4), lambda: r(3, 2), lambda: r(5, 4, 2))
case("cdist", torch.cdist, lambda: r(2, 3, 4), lambda: r(2, 5, 4))
case("F.pairwise_distance", F.pairwise_distance, lambda: r(3, 4), lambda: r(3, 4))
case("F.cosine_similarity", F.cosine_similarity, lambda: r(3, 4), lambda: r(3, 4))
case("F.pdist", F.pdist, lambda: r(4, 3))
# ---- conv / pool / resample ---------------------------------------------------------------
case("F.conv1d", lambda x, w: F.conv1d(x, w, padding=1), lambda: r(1, 4, 9), lambda: r(6, 4, 3))
case("F.conv2d", lambda x, w: F.conv2d(x, w, stride=2), lambda: r(1, 4, 9, 9), lambda: r(6, 4, 3, 3))
case("F.conv3d", lambda x, w: F.conv3d(x, w, padding=1), lambda: r(1, 2, 5, 6, 6), lambda: r(4, 2, 3, 3, 3))
case("F.conv_transpose1d", lambda x, w: F.conv_transpose1d(x, w, stride=2), lambda: r(1, 4, 6), lambda: r(4, 3, 3))
case("F.conv_transpose2d", lambda x, w: F.conv_transpose2d(x, w, stride=2), lambda: r(1, 4, 5, 5), lambda: r(4, 3, 3, 3))
case("F.conv_transpose3d", lambda x, w: F.conv_transpose3d(x, w, stride=2), lambda: r(1, 2, 3, 4, 4), lambda: r(2, 3, 2, 2, 2))
case("F.avg_pool1d", lambda x: F.avg_pool1d(x, 3, 2), lambda: r(1, 3, 9))
case("F.avg_pool2d", lambda x: F.avg_pool2d(x, 2), _x)
case("F.avg_pool3d", lambda x: F.avg_pool3d(x, 2), lambda: r(1, 2, 4, 6, 6))
case("F.max_pool1d", lambda x: F.max_pool1d(x, 3, 2), lambda: r(1, 3, 9))
case("F.max_pool2d", lambda x: F.max_pool2d(x, 2), _x)
case("F.max_pool3d", lambda x: F.max_pool3d(x, 2), lambda: r(1, 2, 4, 6, 6))
case("F.max_pool1d_with_indices", lambda x: F.max_pool1d(x, 2, return_indices=True)[1], lambda: r(1, 3, 8))
case("F.max_pool2d_with_indices", lambda x: F.max_pool2d(x, 2, return_indices=True)[1], lambda: r(1, 3, 4, 6))
case("F.max_pool3d_with_indices", lambda x: F.max_pool3d(x, 2, return_indices=True)[1], lambda: r(1, 2, 4, 4, 4))
case("F.max_unpool2d", lambda x: F.max_unpool2d(*F.max_pool2d(x, 2, return_indices=True), 2), lambda: r(1, 3, 4, 6))
case("F.max_unpool1d", lambda x: F.max_unpool1d(*F.max_pool1d(x, 2, return_indices=True), 2), lambda: r(1, 3, 8))
case("F.lp_pool2d", lambda x: F.lp_pool2d(x, 2, 2), lambda: pos(1, 3, 4, 6))
case("F.adaptive_avg_pool1d", lambda x: F.adaptive_avg_pool1d(x, 3), lambda: r(1, 3, 9))
case("F.adaptive_avg_pool2d", lambda x: F.adaptive_avg_pool2d(x, (2, 1)), _x)
case("F.adaptive_avg_pool3d", lambda x: F.adaptive_avg_pool3d(x, 2), lambda: r(1, 2, 4, 6, 6))
case("F.adaptive_max_pool1d", lambda x: F.adaptive_max_pool1d(x, 3), lambda: r(1, 3, 9))
case("F.adaptive_max_pool2d", lambda x: F.adaptive_max_pool2d(x, 2), _x)
case("F.adaptive_max_pool3d", lambda x: F.adaptive_max_pool3d(x, 2), lambda: r(1, 2, 4, 6, 6))
case("F.interpolate_nearest", lambda x: F.interpolate(x, scale_factor=2), _x)
case("F.interpolate_nearest_exact", lambda x: F.interpolate(x, size=(6, 7), mode="nearest-exact"), _x)
case("F.interpolate_bilinear", lambda x: F.interpolate(x, size=(6, 7), mode="bilinear"), _x)
case("F.interpolate_bilinear_ac", lambda x: F.interpolate(x, size=(6, 7), mode="bilinear", align_corners=True), _x)
case("F.interpolate_bicubic", lambda x: F.interpolate(x, size=(6, 7), mode="bicubic"), _x)
case("F.interpolate_bicubic_ac", lambda x: F.interpolate(x, scale_factor=2, mode="bicubic", align_corners=True), _x)
case("F.interpolate_linear", lambda x: F.interpolate(x, size=7, mode="linear"), lambda: r(1, 3, 5))
case("F.interpolate_trilinear", lambda x: F.interpolate(x, scale_factor=2, mode="trilinear"), lambda: r(1, 2, 2, 3, 3))
case("F.interpolate_nearest3d", lambda x: F.interpolate(x, scale_factor=2), lambda: r(1, 2, 2, 3, 3))
case("F.grid_sample", lambda x, g: F.grid_sample(x, g, align_corners=False), lambda: r(1, 3, 5, 6), lambda: u(1, 4, 3, 2))
case("F.grid_sample_nearest", lambda x, g: F.grid_sample(x, g, mode="nearest", align_corners=True), lambda: r(1, 3, 5, 6), lambda: u(1, 4, 3, 2))
case("F.affine_grid", lambda t: F.affine_grid(t, [1, 3, 4, 5], align_corners=False), lambda: r(1, 2, 3))
# ---- normalization ------------------------------------------------------------------------
case("F.layer_norm", lambda x: F.layer_norm(x, (5,)), _x)
case("F.group_norm", lambda x: F.group_norm(x, 3), lambda: r(2, 6, 4))
case("F.instance_norm", lambda x: F.instance_norm(x), _x)
case("F.batch_norm", lambda x: F.batch_norm(x, torch.zeros(3), torch.ones(3) * 2), _x)
case("F.rms_norm", lambda x: F.rms_norm(x, (5,)), _x)
case("F.local_response_norm", lambda x: F.local_response_norm(x, 2), _x)
case("renorm", lambda x: torch.renorm(x, 2, 0, 1.0), _x)
case("F.weight_norm_like", lambda x, v: F.linear(x, v / v.norm(dim=1, keepdim=True)), lambda: r(3, 4), lambda: r(5, 4))
# ---- attention / recurrent ----------------------------------------------------------------
case("F.scaled_dot_product_attention", F.scaled_dot_product_attention, lambda: r(1, 2, 4, 8), lambda: r(1, 2, 4, 8), lambda: r(1, 2, 4, 8))
case("F.sdpa_causal", lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True), lambda: r(1, 2, 4, 8), lambda: r(1, 2, 4, 8), lambda: r(1, 2, 4, 8))
case("nn.LSTM", nn.LSTM(4, 6, batch_first=True).eval(), lambda: r(1, 5, 4))
case("nn.GRU", nn.GRU(4, 6, batch_first=True).eval(), lambda: r(1, 5, 4))
case("nn.RNN", nn.RNN(4, 6, batch_first=True).eval(), lambda: r(1, 5, 4))
case("nn.LSTMCell", nn.LSTMCell(4, 6).eval(), lambda: r(2, 4))
case("nn.GRUCell", nn.GRUCell(4, 6).eval(), lambda: r(2, 4))
case("nn.RNNCell", nn.RNNCell(4, 6).eval(), lambda: r(2, 4))
case("nn.MultiheadAttention", lambda x: _MHA(x, x, x)[0], lambda: r(1, 4, 8))
case("nn.TransformerEncoderLayer", nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval(), lambda: r(1, 4, 8))
# ---- losses -------------------------------------------------------------------------------
case("F.mse_loss", F.mse_loss, _x, _x)
case("F.l1_loss", F.l1_loss, _x, _x)
case("F.smooth_l1_loss", F.smooth_l1_loss, _x, _x)
case("F.huber_loss", F.huber_loss, _x, _x)
case("F.kl_div", lambda a, b: F.kl_div(a, b, reduction="batchmean"), _x, _p)
case("F.binary_cross_entropy", F.binary_cross_entropy, lambda: torch.rand(3, 4, generator=G) * 0.8 + 0.1, lambda: torch.rand(3, 4, generator=G))
case("F.binary_cross_entropy_with_logits", F.binary_cross_entropy_with_logits, _x, lambda: torch.rand(*X, generator=G))
case("F.cross_entropy", F.cross_entropy, lambda: r(4, 6), lambda: ints(6, 4))
case("F.nll_loss", F.nll_loss, lambda: r(4, 6), lambda: ints(6, 4))
case("F.soft_margin_loss", F.soft_margin_loss, _x, _x)
case("F.margin_ranking_loss", F.margin_ranking_loss, lambda: r(4), lambda: r(4), lambda: torch.sign(r(4)))
case("F.hinge_embedding_loss", F.hinge_embedding_loss, _x, lambda: torch.sign(r(*X)))
case("F.cosine_embedding_loss", F.cosine_embedding_loss, lambda: r(3, 4), lambda: r(3, 4), lambda: torch.sign(r(3)))
case("F.triplet_margin_loss", F.triplet_margin_loss, lambda: r(3, 4), lambda: r(3, 4), lambda: r(3, 4))
# ---- complex ------------------------------------------------------------------------------
case("view_as_real", lambda x: torch.view_as_real(torch.view_as_complex(x)) * 2, lambda: r(3, 4, 2))
case("complex_mul", lambda x, y: torch.view_as_real(torch.view_as_complex(x) * torch.view_as_complex(y)), lambda: r(3, 4, 2), lambda: r(3, 4, 2))
case("polar", lambda a, b: torch.view_as_real(torch.polar(a, b)), lambda: pos(3, 4), lambda: r(3, 4))



def _setitem(x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    y = x.clone()
    y[1:, 1:] = v  # BEiT's relative position index
    return y


_MHA = nn.MultiheadAttention(8, 2, batch_first=True).eval()


# ---- running --------------------------------------------------------------------------------
def _compare(expected: list[np.ndarray], got: list[np.ndarray]) -> str | None:
    if len(expected) != len(got):
        return f"{len(got)} outputs, expected {len(expected)}"
    for e, g in zip(expected, got):
        if tuple(e.shape) != tuple(g.shape):
            return f"shape {tuple(g.shape)} != {tuple(e.shape)}"
        if e.dtype == np.bool_ or g.dtype == np.bool_:
            if not np.array_equal(e.astype(bool), g.astype(bool)):
                return "boolean values differ"
            continue
        ef, gf = e.astype(np.float64), g.astype(np.float64)
        if not np.allclose(gf, ef, atol=1e-4, rtol=1e-3, equal_nan=True):
            return f"values differ (max abs {np.nanmax(np.abs(gf - ef)):.3g})"
    return None


def _tract_outputs(path: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    import tract

    model = tract.nnef().with_tract_transformers().with_tract_extra().load(str(path))
    outs = model.into_runnable().run([np.ascontiguousarray(i) for i in inputs])
    return [o.to_numpy() for o in outs]


def run_case(tool: str, name: str, workdir: Path) -> tuple[str, str]:
    """``(status, detail)``: status ``pass`` / ``export`` (export failed) / ``tract``."""
    fn, make = CASES[name]
    model = fn if isinstance(fn, nn.Module) else Call(fn)
    model.eval()
    global G
    G = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    inputs = make()
    with torch.no_grad():
        out = model(*inputs)
    leaves = [t for t in torch.utils._pytree.tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
    expected = [t.detach().numpy() for t in leaves]
    names = [f"input_{i}" for i in range(len(inputs))]
    path = workdir / f"{tool}_{len(os.listdir(workdir))}.nnef.tgz"
    try:
        if tool == "t2n":
            import t2n_core

            t2n_core.export(model, inputs, path, input_names=names, progress=False)
        else:
            path = _ref_export(model, inputs, path, names, len(leaves))
    except Exception as exc:
        return "export", f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}"
    try:
        got = _tract_outputs(path, [i.numpy() for i in inputs])
    except Exception as exc:
        return "tract", str(exc).split("Stack backtrace")[0].strip().replace("\n", " ")[:300]
    problem = _compare(expected, got)
    return ("pass", "") if problem is None else ("tract", problem)


def _ref_export(model: nn.Module, inputs, path: Path, names: list[str], n_out: int) -> Path:
    import logging

    from torch_to_nnef import TractNNEF, export_model_to_nnef

    fake = path.parent / "tract"
    if not fake.exists():
        fake.write_text("#!/bin/sh\necho 'tract 0.23.9'\n")
        fake.chmod(0o755)
    target = TractNNEF("0.23.9", check_io=False, specific_tract_binary_path=fake)
    out = path.with_suffix("").with_suffix("")  # ".../x" -> x.nnef.tgz
    export_model_to_nnef(
        model, tuple(inputs), out.with_suffix(".nnef"), target, input_names=names,
        output_names=[f"output_{i}" for i in range(n_out)], log_level=logging.ERROR,
        compression_level=1,
    )  # fmt: skip
    produced = sorted(out.parent.glob(out.name + ".nnef*"))
    if not produced:
        raise RuntimeError("no archive written")
    return produced[-1]


def worker(tool: str, names: list[str], start: int) -> None:
    workdir = Path(tempfile.mkdtemp(prefix=f"opm-{tool}-"))
    for i in range(start, len(names)):
        print(json.dumps({"i": i, "status": "start"}), flush=True)
        status, detail = run_case(tool, names[i], workdir)
        print(json.dumps({"i": i, "status": status, "detail": detail}), flush=True)


def run_tool(tool: str, python: str, names: list[str], only: str) -> dict[str, tuple[str, str]]:
    results: dict[str, tuple[str, str]] = {}
    start = 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1])}
    while start < len(names):
        cmd = [python, "-m", "benchmarks.op_matrix", "--worker", tool, "--start", str(start)]
        if only:
            cmd += ["--only", only]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                env=env, cwd=Path(__file__).parents[1])  # fmt: skip
        current = start
        assert proc.stdout is not None
        for line in proc.stdout:
            try:
                msg = json.loads(line)
            except json.JSONDecodeError:
                continue
            current = msg["i"]
            if msg["status"] != "start":
                results[names[current]] = (msg["status"], msg["detail"])
                current += 1
        proc.wait()
        if current < len(names) and names[current] not in results:
            results[names[current]] = ("crash", f"worker exited {proc.returncode}")
            current += 1
        start = current
    return results


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ref", metavar="PYTHON", help="python of a venv with torch-to-nnef")
    p.add_argument("--skip-t2n", action="store_true", help="run the reference only")
    p.add_argument("--only", default="", help="comma-separated case names")
    p.add_argument("--show-errors", action="store_true", help="print why each case failed")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--start", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    names = [n for n in CASES if not args.only or n in args.only.split(",")]
    if args.worker:
        worker(args.worker, names, args.start)
        return 0
    tools = {} if args.skip_t2n else {"t2n": sys.executable}
    if args.ref:
        tools["torch-to-nnef"] = args.ref
    results = {tool: run_tool(tool, py, names, args.only) for tool, py in tools.items()}
    print("| case | " + " | ".join(tools) + " |")
    print("|---|" + "---|" * len(tools))
    for n in names:
        print(f"| {n} | " + " | ".join(results[t][n][0] for t in tools) + " |")
    print()
    for t in tools:
        passed = sum(s == "pass" for s, _ in results[t].values())
        print(f"{t}: {passed} / {len(names)} pass")
    if args.show_errors:
        for t in tools:
            for n in names:
                status, detail = results[t][n]
                if status != "pass":
                    print(f"{t} {n}: {status}: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
