"""Integer and bool model inputs, integer arithmetic, dtype casts and f16 models in tract."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import Fn, Fn2, export_and_check

# f16 results are compared with max|tract - torch| <= F16_TOL * (1 + max|torch|): f16 has a
# 2^-11 relative step, and tract and torch round intermediate f16 results differently.
F16_TOL = 1e-2


def _ints(dtype=torch.int64) -> torch.Tensor:
    x = torch.randint(-20, 20, (3, 6), dtype=dtype)
    return torch.where(x == 0, 7, x).to(dtype)  # no zero divisors


INT_ARITH = [
    ("add", lambda a, b: a + b),
    ("add-scalar", lambda a, b: a + 3),
    ("sub-alpha", lambda a, b: torch.sub(a, b, alpha=2)),
    ("mul", lambda a, b: a * b),
    ("mul-self", lambda a, b: a * a),
    ("square", lambda a, b: a**2),
    ("cube", lambda a, b: a**3),
    ("floor-divide", lambda a, b: a // b),
    ("floor-divide-scalar", lambda a, b: a // 3),
    ("floor-divide-negative-scalar", lambda a, b: torch.div(a, -4, rounding_mode="floor")),
    ("trunc-divide", lambda a, b: torch.div(a, b, rounding_mode="trunc")),
    ("true-divide-to-float", lambda a, b: a / b),
    ("remainder", lambda a, b: a % b),
    ("remainder-scalar", lambda a, b: a % 6),
    ("fmod", lambda a, b: torch.fmod(a, b)),
    ("abs-neg-sign", lambda a, b: a.abs() - b.neg() * a.sign()),
    ("clamp", lambda a, b: a.clamp(-5, 5)),
    ("maximum-minimum", lambda a, b: torch.maximum(a, b) - torch.minimum(a, 0 * b)),
    ("compare-float-scalar", lambda a, b: a > 2.5),
    ("bitwise-and-or-xor", lambda a, b: (a & b) | (a ^ 5)),
    ("bitwise-not", lambda a, b: ~a),
    ("sum-max-argmax", lambda a, b: a.sum(1) + a.amax(1) + a.argmax(1)),
    ("cumsum", lambda a, b: a.cumsum(1)),
    ("where", lambda a, b: torch.where(a > 0, a, b)),
]


_TRACT_DTYPE = {torch.int64: "i64", torch.int32: "i32", torch.float32: "f32", torch.bool: "bool"}


@pytest.mark.parametrize("fn", [f for _, f in INT_ARITH], ids=[i for i, _ in INT_ARITH])
def test_integer_arithmetic(fn, tmp_path):
    a, b = _ints(), _ints()
    result = export_and_check(Fn2(fn), (a, b), tmp_path)
    assert result.outputs[0].dtype == _TRACT_DTYPE[fn(a, b).dtype]


def test_integer_arithmetic_i32(tmp_path):
    """Every case above on i32 inputs, as one model with one output per case."""
    a, b = _ints(torch.int32), _ints(torch.int32)
    model = Fn2(lambda a, b: tuple(fn(a, b) for _, fn in INT_ARITH))
    result = export_and_check(model, (a, b), tmp_path)
    assert [o.dtype for o in result.outputs] == [
        _TRACT_DTYPE[fn(a, b).dtype] for _, fn in INT_ARITH
    ]


def test_integer_floor_division_large_values(tmp_path):
    """Exact beyond f32's 24-bit mantissa (no detour through float)."""
    a = torch.tensor([[2**40 + 3, -(2**40) - 3, 123456789012, -7]])
    export_and_check(Fn(lambda a: (a // 5, a % 5)), (a,), tmp_path)


CASTS = [
    ("float-to-long-truncates", lambda x: (x * 3).long()),
    ("float-to-int", lambda x: (x * 3).int()),
    ("float-to-bool", lambda x: torch.round(x).to(torch.bool)),
    ("bool-to-float", lambda x: (x > 0).float()),
    ("bool-to-long", lambda x: (x > 0).long()),
    ("long-to-float", lambda x: (x * 10).long().float() / 10),
    ("float-to-half-and-back", lambda x: x.half().float()),
    ("type_as", lambda x: x.type_as(torch.zeros(1, dtype=torch.int64))),
    ("to-dtype-int-to-bool", lambda x: (x * 2).long().to(torch.bool)),
]


@pytest.mark.parametrize("fn", [f for _, f in CASTS], ids=[i for i, _ in CASTS])
def test_cast(fn, tmp_path):
    export_and_check(Fn(fn), (torch.randn(3, 6),), tmp_path, atol=1e-3)


def test_bool_mask_input_dynamic(tmp_path):
    def fn(x, keep):
        return torch.where(keep, x, 0.0).sum(1) / keep.sum(1, keepdim=True).clamp(min=1)

    def inputs(t):
        return torch.randn(2, t), torch.rand(2, t) > 0.5

    export_and_check(
        Fn2(fn), inputs(4), tmp_path,
        dynamic_axes={"x": {1: "T"}, "y": {1: "T"}}, check_inputs=[inputs(7)],
    )  # fmt: skip


def test_token_ids_and_mask_inputs(tmp_path):
    """A typical LM front: i64 token ids + bool attention mask, positions from arange."""

    class Front(nn.Module):
        def __init__(self):
            super().__init__()
            self.tok = nn.Embedding(30, 8)
            self.pos = nn.Embedding(16, 8)

        def forward(self, ids, mask):
            pos = torch.arange(ids.shape[1])
            h = self.tok(ids) + self.pos(pos)
            return h * mask[..., None].float()

    def inputs(t):
        return torch.randint(0, 30, (2, t)), torch.rand(2, t) > 0.2

    export_and_check(
        Front(), inputs(5), tmp_path,
        dynamic_axes={"ids": {1: "T"}, "mask": {1: "T"}}, check_inputs=[inputs(11)],
    )  # fmt: skip


F16_OPS = [
    ("arith-literals", lambda x: x * 2 + 1 - x / 3),
    ("clamp", lambda x: x.clamp(-0.5, 0.5)),
    ("where-scalar", lambda x: torch.where(x > 0, x, 0.25)),
    ("masked_fill-minus-inf-softmax", lambda x: x.masked_fill(x < -1, float("-inf")).softmax(-1)),
    ("exp-log-sqrt", lambda x: x.exp() + (x.abs() + 0.1).log() + x.abs().sqrt()),
    ("pow", lambda x: x**2 + x.abs() ** 0.5 + x**3 + 2**x),
    ("round", lambda x: torch.round(x * 2)),
    ("sigmoid-tanh-erf", lambda x: torch.sigmoid(x) + torch.tanh(x) + torch.erf(x)),
    ("activations", lambda x: F.silu(x) + F.softplus(x) + F.elu(x) + F.leaky_relu(x)
     + F.mish(x) + F.hardtanh(x) + F.logsigmoid(x)),
    ("reductions", lambda x: x.mean(-1) + x.amax(-1) + x.var(-1) + x.norm(dim=-1)),
    ("logsumexp", lambda x: torch.logsumexp(x, -1)),
    ("log_softmax", lambda x: x.log_softmax(-1)),
    ("cumsum", lambda x: x.cumsum(-1)),
    ("topk", lambda x: x.topk(2, -1).values),
    ("argmax", lambda x: x.argmax(-1)),
    ("compare", lambda x: x > 0.5),
    ("full-arange-like", lambda x: x + torch.ones_like(x) * 0.5 + torch.arange(x.shape[-1])),
]  # fmt: skip


@pytest.mark.parametrize("fn", [f for _, f in F16_OPS], ids=[i for i, _ in F16_OPS])
def test_f16(fn, tmp_path):
    x = torch.randn(3, 8).half()
    result = export_and_check(Fn(fn), (x,), tmp_path, atol=F16_TOL, rtol=F16_TOL)
    assert result.inputs[0].dtype == "f16"


def test_f16_model_half(tmp_path):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 8)

        def forward(self, x):
            h = self.fc(x)
            h = h.masked_fill(h < -2, float("-inf")).softmax(-1) * 3 + F.silu(h)
            return h / h.norm(dim=-1, keepdim=True).clamp(min=1e-3)

    model = Block().half()
    result = export_and_check(
        model, (torch.randn(2, 5, 8).half(),), tmp_path, atol=F16_TOL, rtol=F16_TOL,
        dynamic_axes={"x": {1: "T"}}, check_inputs=[(torch.randn(2, 3, 8).half(),)],
    )  # fmt: skip
    assert result.outputs[0].dtype == "f16"


class BoolBufferSelect(torch.nn.Module):
    """A bool buffer stored as a variable (GPT-Neo's causal-mask ``bias``)."""

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.register_buffer("mask", torch.rand(6, 6, generator=generator) > 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, x, -x)


def test_bool_variable_loads_in_tract(tmp_path):
    """Bool ``.dat`` files are item type 5 with 8 bits (one item per byte): tract refused the
    1-bit item type 4 written before ("Shape and len mismatch")."""
    export_and_check(BoolBufferSelect(), (torch.randn(6, 6),), tmp_path)
