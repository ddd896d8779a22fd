"""A batch norm after a Q4_0 convolution is folded into the encoded filter (tract would
otherwise rewrite the quantized kernel while loading and fail)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import t2n_core
from t2n_quant import QTensor, quantize_model


def _bn(channels: int, seed: int) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.rand(channels, generator=g) * 2 - 0.5)  # some negative
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_mean.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.2)
    return bn


class ConvBN(nn.Module):
    def __init__(self, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(32, 16, 3, padding=1, bias=bias)  # k = 288: q4_0
        self.bn = _bn(16, 1)
        self.conv2 = nn.Conv2d(16, 32, 1)  # 1x1, k = 16: stays float
        self.bn2 = _bn(32, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn2(self.conv2(torch.relu(self.bn(self.conv(x)))))


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_q4_0_conv_then_batch_norm_checks_in_tract(bias: bool, tmp_path) -> None:
    torch.manual_seed(0)
    model = ConvBN(bias).eval()
    x = torch.randn(1, 32, 6, 6)
    summary = quantize_model(model, "q4_0", progress=False)
    assert isinstance(model.conv.weight, QTensor)
    result = t2n_core.export(model, (x,), tmp_path / "m.nnef.tgz", check=True, progress=False)
    assert result.check is not None and result.check.passed, str(result.check)
    assert summary.quantized[0].name == "conv.weight"
    assert len(result.notes) == 1 and "conv.folded_weight" in result.notes[0]
    assert "notes:" in str(result)
    assert "batch_norm" not in " ".join(result.op_histogram)
    with torch.no_grad():
        assert float(abs(model(x)).max()) > 0.5  # the check compared real values


def test_conv_used_twice_is_not_folded(tmp_path) -> None:
    class Twice(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(32, 16, 3, padding=1)
            self.bn = _bn(16, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return self.bn(y) + y

    torch.manual_seed(0)
    model = Twice().eval()
    quantize_model(model, "q4_0", progress=False)
    result = t2n_core.export(
        model, (torch.randn(1, 32, 5, 5),), tmp_path / "m.nnef.tgz", check=True, progress=False
    )
    assert result.notes == []
    assert result.check is not None and result.check.passed
