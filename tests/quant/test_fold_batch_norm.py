"""A batch norm after a Q4_0 convolution: the Q4_0 filter is written byte for byte as
quantized and the multiply stays after the conv behind ``max(y, y)`` (tract would otherwise
fold it into the quantized kernel while loading and fail); only a multiply that scales the
f16 block scales exactly (powers of two) is folded into the encoded filter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import t2n_core
from t2n_core.nnef.archive import read_archive_files
from t2n_core.nnef.dat import DatHeader
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


def _stored_payload(archive, label: str) -> tuple[DatHeader, bytes]:
    data = read_archive_files(archive)[f"{label}.dat"]
    return DatHeader.unpack(data[:128]), data[128:]


def _assert_native_and_unchanged(archive, label: str, weight: QTensor) -> None:
    header, payload = _stored_payload(archive, label)
    assert header.type_name() == "q4_0"
    assert payload == bytes(weight.nnef_encoding(label).variables[0].data())


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
    assert result.notes == []  # nothing folded: the BN scales are not powers of two
    _assert_native_and_unchanged(result.path, "conv.weight", model.conv.weight)
    graph = read_archive_files(result.path)["graph.nnef"].decode()
    assert "max(conv_convolution, conv_convolution)" in graph and "folded_weight" not in graph
    with torch.no_grad():
        assert float(abs(model(x)).max()) > 0.5  # the check compared real values


def test_q4_0_cnn_stack_passes_its_own_check(tmp_path) -> None:
    """Conv+BN+ReLU x3 with trained-looking BN statistics: the default export's check (1e-4)
    failed here while the fold rounded the f16 block scales (rel. error over 1e-4)."""
    torch.manual_seed(3)
    layers: list[nn.Module] = []
    for i, (cin, cout) in enumerate([(32, 64), (64, 64), (64, 32)]):
        layers += [nn.Conv2d(cin, cout, 3, padding=1), _bn(cout, 10 + i), nn.ReLU()]
    model = nn.Sequential(*layers).eval()
    quantize_model(model, "q4_0", progress=False)
    x = torch.randn(1, 32, 8, 8)
    result = t2n_core.export(model, (x,), tmp_path / "m.nnef.tgz", check=True, progress=False)
    assert result.check is not None and result.check.passed, str(result.check)
    for i in (0, 3, 6):
        _assert_native_and_unchanged(result.path, f"{i}.weight", model[i].weight)
    with torch.no_grad():
        assert float(model(x).std()) > 0.1


def test_power_of_two_batch_norm_scale_is_folded_exactly(tmp_path) -> None:
    torch.manual_seed(0)
    model = ConvBN(bias=True).eval()
    with torch.no_grad():  # scale = weight / sqrt(var + eps) = +-0.5, +-1
        model.bn.eps = 0.0
        model.bn.running_var.fill_(4.0)
        model.bn.weight.copy_(torch.tensor([1.0, -2.0, 2.0, -1.0]).repeat(4))
    quantize_model(model, "q4_0", progress=False)
    x = torch.randn(1, 32, 6, 6)
    result = t2n_core.export(model, (x,), tmp_path / "m.nnef.tgz", check=True, progress=False)
    assert result.check is not None and result.check.passed, str(result.check)
    assert len(result.notes) == 1 and "conv.folded_weight" in result.notes[0]
    assert "notes:" in str(result)
    assert "batch_norm" not in " ".join(result.op_histogram)
    header, _ = _stored_payload(result.path, "conv.folded_weight")
    assert header.type_name() == "q4_0"


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
