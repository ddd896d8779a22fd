"""F.pad (constant, reflect, replicate, circular), exported and run in tract."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tests.helpers import export_and_check


class Pad(nn.Module):
    def __init__(self, pad, **kwargs):
        super().__init__()
        self.pad, self.kwargs = pad, kwargs

    def forward(self, x):
        return F.pad(x, self.pad, **self.kwargs)


CASES = {
    "constant-last-axis": ((2, 3), {}),
    "constant-value": ((1, 2, 3, 0), {"value": -1.5}),
    "constant-crop": ((-1, 2, 1, -2), {}),
    "reflect-1d": ((2, 3), {"mode": "reflect"}),
    "reflect-2d": ((1, 2, 3, 1), {"mode": "reflect"}),
    "replicate-1d": ((2, 3), {"mode": "replicate"}),
    "replicate-2d": ((1, 2, 3, 1), {"mode": "replicate"}),
    "circular-1d": ((2, 3), {"mode": "circular"}),
    "circular-2d": ((1, 2, 3, 1), {"mode": "circular"}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_pad_dynamic_axes(tmp_path, name):
    pad, kwargs = CASES[name]
    if len(pad) == 2:
        x, other, axes = torch.randn(2, 3, 9), torch.randn(2, 3, 14), {2: "T"}
    else:
        x, other, axes = torch.randn(2, 3, 6, 7), torch.randn(2, 3, 9, 5), {2: "H", 3: "W"}
    export_and_check(
        Pad(pad, **kwargs), (x,), tmp_path,
        dynamic_axes={"x": axes}, check_inputs=[(other,)],
    )  # fmt: skip


@pytest.mark.parametrize(
    "module",
    [nn.ReflectionPad2d((1, 2, 0, 3)), nn.ReplicationPad1d(3), nn.ZeroPad2d(2),
     nn.ConstantPad1d((0, 4), 2.5), nn.CircularPad1d(2)],
    ids=["reflection-pad2d", "replication-pad1d", "zero-pad2d", "constant-pad1d", "circular-1d"],
)  # fmt: skip
def test_pad_modules(tmp_path, module):
    x = torch.randn(2, 3, 6, 7) if "2d" in type(module).__name__.lower() else torch.randn(2, 3, 8)
    export_and_check(module, (x,), tmp_path)


def test_constant_pad_integer_tensor(tmp_path):
    export_and_check(Pad((1, 2)), (torch.arange(12).reshape(3, 4),), tmp_path)


class PadBySize(nn.Module):
    """Constant padding by a size known only at run time (GIT pads its mask by the past
    length): the last axis by the length of axis 1, and axis 1 by 2 before the length."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x, (0, x.shape[1], 2, x.shape[2]), value=-1.5)


def test_constant_pad_by_symbolic_sizes(tmp_path):
    export_and_check(
        PadBySize(), (torch.randn(2, 3, 5),), tmp_path,
        dynamic_axes={"x": {1: "T", 2: "S"}}, check_inputs=[(torch.randn(2, 6, 4),)],
    )  # fmt: skip
