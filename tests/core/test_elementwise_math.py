"""Elementwise math, activations, clamp, pow, comparisons and where/masked_fill in tract."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tests.helpers import Fn, Fn2, export_and_check


def _x() -> torch.Tensor:
    return torch.randn(3, 7) * 2


UNARY = [
    ("exp", torch.exp),
    ("log", lambda x: torch.log(x.abs() + 0.1)),
    ("sqrt", lambda x: x.abs().sqrt()),
    ("rsqrt", lambda x: (x.abs() + 0.1).rsqrt()),
    ("abs", torch.abs),
    ("neg", torch.neg),
    ("sign", lambda x: torch.sign(torch.where(x.abs() < 0.5, 0.0, x))),
    ("sin", torch.sin),
    ("cos", torch.cos),
    ("tan", lambda x: torch.tan(x * 0.3)),
    ("atan", torch.atan),
    ("tanh", torch.tanh),
    ("sigmoid", torch.sigmoid),
    ("erf", torch.erf),
    ("reciprocal", lambda x: torch.reciprocal(x.abs() + 0.5)),
    ("floor", torch.floor),
    ("ceil", torch.ceil),
    ("trunc", torch.trunc),
    ("frac", torch.frac),
    ("square", torch.square),
    ("log2", lambda x: torch.log2(x.abs() + 0.1)),
    ("log10", lambda x: torch.log10(x.abs() + 0.1)),
    ("log1p", lambda x: torch.log1p(x.abs())),
    ("expm1", torch.expm1),
    ("relu", torch.relu),
]


@pytest.mark.parametrize("fn", [f for _, f in UNARY], ids=[i for i, _ in UNARY])
def test_unary(fn, tmp_path):
    export_and_check(Fn(fn), (_x(),), tmp_path)


def test_round_half_to_even(tmp_path):
    """torch rounds half to even (tract's ``round`` rounds half away from zero)."""
    x = torch.arange(-12, 13, dtype=torch.float32).reshape(5, 5) / 4  # ..., -2.5, -0.5, 0.5, ...
    export_and_check(Fn(torch.round), (x,), tmp_path)


def test_round_decimals(tmp_path):
    x = torch.tensor([[0.25, -0.35, 1.45, 2.0, -7.123]])
    export_and_check(Fn(lambda x: torch.round(x, decimals=1)), (x,), tmp_path, atol=1e-6)


ACTIVATIONS = [
    ("silu", F.silu),
    ("mish", F.mish),
    ("softplus", F.softplus),
    ("softplus-beta2-threshold5", lambda x: F.softplus(x * 4, beta=2.0, threshold=5.0)),
    ("elu", F.elu),
    ("elu-alpha0.5", lambda x: F.elu(x, alpha=0.5)),
    ("selu", F.selu),
    ("celu", lambda x: F.celu(x, alpha=1.5)),
    ("leaky_relu", F.leaky_relu),
    ("leaky_relu-0.2", lambda x: F.leaky_relu(x, 0.2)),
    ("hardtanh", F.hardtanh),
    ("hardtanh-range", lambda x: F.hardtanh(x, -0.5, 2.0)),
    ("relu6", lambda x: F.relu6(x * 3)),
    ("logsigmoid", F.logsigmoid),
    ("logsigmoid-large", lambda x: F.logsigmoid(x * 30)),
    ("softsign", F.softsign),
    ("tanhshrink", F.tanhshrink),
    ("threshold", lambda x: F.threshold(x, 0.1, 20.0)),
]


@pytest.mark.parametrize("fn", [f for _, f in ACTIVATIONS], ids=[i for i, _ in ACTIVATIONS])
def test_activation(fn, tmp_path):
    export_and_check(Fn(fn), (_x(),), tmp_path)


CLAMP = [
    ("min-only", lambda x: x.clamp(min=-0.5)),
    ("max-only", lambda x: x.clamp(max=0.5)),
    ("both", lambda x: x.clamp(-0.5, 0.5)),
    ("min-above-max", lambda x: x.clamp(1.0, -1.0)),
    ("clamp_min", lambda x: torch.clamp_min(x, 0.1)),
    ("clamp_max", lambda x: torch.clamp_max(x, 0.1)),
    ("tensor-bounds", lambda x: torch.clamp(x, min=x[:1] * 0.5, max=x[:, :1].abs())),
    ("tensor-min-only", lambda x: torch.clamp(x, min=x.mean(0))),
    ("tensor-max-only", lambda x: torch.clamp(x, max=x.mean(1, keepdim=True))),
]


@pytest.mark.parametrize("fn", [f for _, f in CLAMP], ids=[i for i, _ in CLAMP])
def test_clamp(fn, tmp_path):
    export_and_check(Fn(fn), (_x(),), tmp_path)


POW = [
    ("square", lambda x: x**2),
    ("sqrt", lambda x: x.abs() ** 0.5),
    ("inverse", lambda x: (x.abs() + 0.5) ** -1),
    ("cube-negative-base", lambda x: x**3),
    ("rsqrt", lambda x: (x.abs() + 0.5) ** -0.5),
    ("fractional", lambda x: x.abs() ** 1.7),
    ("zero", lambda x: x**0),
    ("one", lambda x: x**1.0 + 1),
    ("scalar-base", lambda x: 2**x),
    ("scalar-base-e", lambda x: math.e**x),
    ("tensor-tensor", lambda x: (x.abs() + 0.1) ** (x * 0.5)),
    ("tensor-tensor-broadcast", lambda x: (x.abs() + 0.1) ** x[0]),
]


@pytest.mark.parametrize("fn", [f for _, f in POW], ids=[i for i, _ in POW])
def test_pow(fn, tmp_path):
    export_and_check(Fn(fn), (_x(),), tmp_path)


COMPARE = [
    ("eq-scalar", lambda x, y: torch.round(x) == 1.0),
    ("ne-scalar", lambda x, y: torch.round(x) != 1.0),
    ("lt-tensor", lambda x, y: x < y),
    ("le-broadcast", lambda x, y: x <= y[0]),
    ("gt-scalar", lambda x, y: x > 0.5),
    ("ge-broadcast-column", lambda x, y: x >= y[:, :1]),
    ("and-or-xor-not", lambda x, y: ((x > 0) & (y > 0)) | (~(x > 1) ^ (y < -1))),
    ("logical_and-float", lambda x, y: torch.logical_and(x > 0, torch.round(y))),
    ("logical_not-float", lambda x, y: torch.logical_not(torch.round(x))),
    ("eq-bool", lambda x, y: (x > 0) == (y > 0)),
    ("ne-bool", lambda x, y: (x > 0) != (y > 0)),
    ("lt-bool", lambda x, y: (x > 0) < (y > 0)),
    ("ge-bool-scalar", lambda x, y: (x > 0) >= True),
]


@pytest.mark.parametrize("fn", [f for _, f in COMPARE], ids=[i for i, _ in COMPARE])
def test_compare_bool_output(fn, tmp_path):
    result = export_and_check(Fn2(fn), (_x(), _x()), tmp_path)
    assert result.outputs[0].dtype == "bool"


WHERE = [
    ("tensor-tensor", lambda x, m: torch.where(x > 0, x, x * 0.1)),
    ("scalar-other", lambda x, m: torch.where(x > 0, x, 0.0)),
    ("scalar-self", lambda x, m: torch.where(x > 0, -1.0, x)),
    ("both-scalars", lambda x, m: torch.where(x > 0, 1.0, -1.0)),
    ("broadcast", lambda x, m: torch.where(m[:, :1], x, x[0])),
    ("masked_fill-not-mask", lambda x, m: x.masked_fill(~m, -1e4)),
    ("masked_fill-tensor-value", lambda x, m: x.masked_fill(m, x[0, 0])),
    ("masked_fill-minus-inf", lambda x, m: x.masked_fill(~m, float("-inf"))),
    ("masked_fill-inf", lambda x, m: x.masked_fill(m, float("inf"))),
    ("masked-softmax", lambda x, m: x.masked_fill(~m, float("-inf")).softmax(-1)),
    ("masked-softmax-fully-masked-row", lambda x, m: x.masked_fill(
        ~(m & (torch.arange(3)[:, None] > 0)), float("-inf")).softmax(-1)),  # row 0: NaN
    ("masked-softmax-finfo-min", lambda x, m: x.masked_fill(~m, torch.finfo(x.dtype).min)
                                               .softmax(-1)),
]  # fmt: skip


@pytest.mark.parametrize("fn", [f for _, f in WHERE], ids=[i for i, _ in WHERE])
def test_where_masked_fill(fn, request, tmp_path):
    mask = torch.rand(3, 7) > 0.4
    mask[:, 0] = True  # no fully masked row, except in the case built for it
    nan_expected = "fully-masked" in request.node.callspec.id  # softmax of all -inf: NaN in both
    export_and_check(Fn2(fn), (_x(), mask), tmp_path, allow_nan=nan_expected)


def test_masked_softmax_dynamic_length(tmp_path):
    """Attention-style key padding mask: bool mask input, -inf fill, softmax on the keys."""

    def attn(scores, keep):
        return scores.masked_fill(~keep[:, None, :], float("-inf")).softmax(-1)

    def inputs(t):
        keep = torch.rand(2, t) > 0.3
        keep[:, 0] = True
        return torch.randn(2, t, t), keep

    export_and_check(
        Fn2(attn), inputs(5), tmp_path,
        dynamic_axes={"x": {1: "T", 2: "T"}, "y": {1: "T"}},
        check_inputs=[inputs(9)],
    )  # fmt: skip


def test_elementwise_dynamic_length(tmp_path):
    def fn(x):
        return torch.where(x > 0, F.silu(x), x.clamp(min=-0.5) ** 2) + torch.round(x * 2)

    export_and_check(
        Fn(fn), (torch.randn(2, 5, 4),), tmp_path,
        input_names=["x"], dynamic_axes={"x": {1: "T"}},
        check_inputs=[(torch.randn(2, 11, 4),)],
    )  # fmt: skip
