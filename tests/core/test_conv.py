"""Convolutions and transposed convolutions, exported and run in tract."""

import pytest
import torch
from torch import nn

from tests.helpers import export_and_check

CONV1D = {
    "plain": dict(kernel_size=3),
    "stride-padding": dict(kernel_size=5, stride=2, padding=2),
    "dilation": dict(kernel_size=3, dilation=3, padding=1),
    "same-odd": dict(kernel_size=5, padding="same"),
    "same-even-dilated": dict(kernel_size=4, dilation=3, padding="same"),
    "no-bias": dict(kernel_size=3, padding=1, bias=False),
    "grouped": dict(kernel_size=3, padding=1, groups=2),
}


@pytest.mark.parametrize("name", list(CONV1D))
def test_conv1d_dynamic_time(tmp_path, name):
    model = nn.Conv1d(4, 6, **CONV1D[name])
    result = export_and_check(
        model, (torch.randn(2, 4, 23),), tmp_path,
        dynamic_axes={"input": {2: "T"}},
        check_inputs=[(torch.randn(2, 4, 40),), (torch.randn(2, 4, 17),)],
    )  # fmt: skip
    assert result.inputs[0].shape == (2, 4, "T")


def test_conv_weight_is_the_direct_filter_input(tmp_path):
    """Q4_0 conv in tract needs the weight variable itself as ``filter`` (no reshape/transpose)."""
    model = nn.Conv2d(4, 8, 3, padding=1)
    result = export_and_check(model, (torch.randn(1, 4, 6, 6),), tmp_path, name="conv")
    text = (result.path / "graph.nnef").read_text()
    conv_line = next(line for line in text.splitlines() if "= conv(" in line)
    weight_line = next(line for line in text.splitlines() if "label = 'weight'" in line)
    weight = weight_line.split("=")[0].strip()
    assert conv_line.split("conv(")[1].split(",")[1].strip() == weight


CONV2D = {
    "plain": dict(in_channels=4, out_channels=8, kernel_size=3, padding=1),
    "rectangular": dict(
        in_channels=4, out_channels=8, kernel_size=(3, 1), stride=(2, 1), padding=(1, 0)
    ),
    "depthwise": dict(in_channels=8, out_channels=8, kernel_size=3, padding=1, groups=8),
    "depthwise-multiplier": dict(in_channels=4, out_channels=8, kernel_size=3, groups=4),
    "grouped-strided": dict(in_channels=8, out_channels=12, kernel_size=3, stride=2, groups=4),
    "pointwise": dict(in_channels=8, out_channels=4, kernel_size=1, bias=False),
}


@pytest.mark.parametrize("name", list(CONV2D))
def test_conv2d(tmp_path, name):
    cfg = CONV2D[name]
    model = nn.Conv2d(**cfg)
    c = cfg["in_channels"]
    export_and_check(
        model, (torch.randn(2, c, 9, 10),), tmp_path,
        dynamic_axes={"input": {0: "N", 2: "H"}},
        check_inputs=[(torch.randn(3, c, 12, 10),)],
    )  # fmt: skip


CONV_T = {
    "1d-plain": (1, dict(kernel_size=3)),
    "1d-stride-padding": (1, dict(kernel_size=4, stride=2, padding=1)),
    "1d-output-padding": (1, dict(kernel_size=3, stride=2, padding=1, output_padding=1)),
    "1d-output-padding-over-padding": (1, dict(kernel_size=3, stride=3, output_padding=2)),
    "1d-dilation": (1, dict(kernel_size=3, stride=2, dilation=2, padding=2)),
    "1d-groups": (1, dict(kernel_size=3, stride=2, groups=2)),
    "2d-plain": (2, dict(kernel_size=3, stride=2, padding=1)),
    "2d-output-padding": (2, dict(kernel_size=3, stride=(2, 3), padding=1, output_padding=(1, 2))),
    "2d-groups": (2, dict(kernel_size=(2, 3), stride=2, groups=2, bias=False)),
}


@pytest.mark.parametrize("name", list(CONV_T))
def test_conv_transpose(tmp_path, name):
    dims, cfg = CONV_T[name]
    cls = nn.ConvTranspose1d if dims == 1 else nn.ConvTranspose2d
    model = cls(4, 6, **cfg)
    shape = (2, 4, 7) if dims == 1 else (2, 4, 5, 6)
    other = (2, 4, 11) if dims == 1 else (2, 4, 8, 6)
    export_and_check(
        model, (torch.randn(*shape),), tmp_path,
        dynamic_axes={"input": {2: "T"}}, check_inputs=[(torch.randn(*other),)],
    )  # fmt: skip


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_conv1d_padding_mode_dynamic_time(tmp_path, mode):
    model = nn.Conv1d(3, 5, 3, padding=2, dilation=2, padding_mode=mode)
    export_and_check(
        model, (torch.randn(1, 3, 12),), tmp_path,
        dynamic_axes={"input": {2: "T"}}, check_inputs=[(torch.randn(1, 3, 20),)],
    )  # fmt: skip


def test_conv3d(tmp_path):
    model = nn.Conv3d(2, 4, (3, 3, 1), stride=(1, 2, 1), padding=(1, 0, 0))
    export_and_check(model, (torch.randn(1, 2, 5, 6, 4),), tmp_path)
