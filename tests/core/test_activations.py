"""Activation functions, each exported and run in tract over a dynamic length."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import Fn, export_and_check

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu-tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "hardswish": F.hardswish,
    "hardsigmoid": F.hardsigmoid,
    "relu6": F.relu6,
    "hardtanh": lambda x: F.hardtanh(x, -0.5, 2.0),
    "leaky_relu": lambda x: F.leaky_relu(x, 0.2),
    "elu": lambda x: F.elu(x, alpha=0.7),
    "selu": F.selu,
    "celu": lambda x: F.celu(x, alpha=1.5),
    "softplus": F.softplus,
    "softplus-beta": lambda x: F.softplus(x, beta=2.0, threshold=5.0),
    "mish": F.mish,
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation(tmp_path, name):
    x = torch.linspace(-8, 8, 2 * 3 * 16).reshape(2, 3, 16)
    export_and_check(
        Fn(ACTIVATIONS[name]), (x,), tmp_path,
        dynamic_axes={"x": {2: "T"}},
        check_inputs=[(torch.randn(2, 3, 5) * 4,)],
    )  # fmt: skip


@pytest.mark.parametrize("channels", [1, 4], ids=["shared", "per-channel"])
def test_prelu(tmp_path, channels):
    model = nn.PReLU(channels, init=0.1)
    with torch.no_grad():
        model.weight.copy_(torch.linspace(0.05, 0.5, channels))
    export_and_check(
        model, (torch.randn(2, 4, 7, 6),), tmp_path,
        dynamic_axes={"input": {2: "H"}},
        check_inputs=[(torch.randn(2, 4, 3, 6),)],
    )  # fmt: skip


def test_gelu_half_precision_is_computed_in_f32(tmp_path):
    x = torch.randn(3, 8)
    export_and_check(Fn(lambda x: F.gelu(x.half()).float()), (x,), tmp_path, atol=2e-3)
