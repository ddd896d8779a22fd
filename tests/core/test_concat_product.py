"""A Linear / conv whose input is a concat along its input features is split per piece
(tract's own rewrite of that pattern fails on broadcast pieces and aborts on Q4_0)."""

from __future__ import annotations

import torch
from torch import nn

from tests.helpers import export_and_check


class ClsConcat(nn.Module):
    """DPT's readout projection: ``Linear(cat(h, cls.unsqueeze(1).expand_as(h)))``."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(128, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, cls = x[:, 1:], x[:, 0]
        return self.proj(torch.cat([h, cls.unsqueeze(1).expand_as(h)], -1))


class ConvFuse(nn.Module):
    """SegFormer's ``linear_fuse``: a 1x1 conv over a channel concat of several branches."""

    def __init__(self, kernel: int = 1) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(8, 64, 1), nn.Conv2d(8, 32, 1)
        self.fuse = nn.Conv2d(96, 32, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.a(x), self.b(x)], 1))


def test_linear_of_a_broadcast_concat_loads_in_tract(tmp_path) -> None:
    torch.manual_seed(0)
    result = export_and_check(
        ClsConcat(), torch.randn(2, 9, 64), tmp_path, dynamic_axes={"x": {1: "T"}},
        check_inputs=[(torch.randn(2, 5, 64),)],
    )  # fmt: skip
    assert result.op_histogram["matmul"] == 2


def test_conv_of_a_channel_concat(tmp_path) -> None:
    torch.manual_seed(0)
    result = export_and_check(ConvFuse(1), torch.randn(1, 8, 5, 5), tmp_path)
    assert result.op_histogram["conv"] == 4
    assert export_and_check(ConvFuse(3), torch.randn(1, 8, 5, 5), tmp_path, name="k3.tgz")
