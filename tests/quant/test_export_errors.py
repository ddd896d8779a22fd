"""A quantized tensor handed to an op tract cannot run on it: a clear error, nothing written."""

import pytest
import torch
from torch import nn

import t2n_core
from t2n_core.errors import TranslationError
from t2n_quant import quantize_model
from tests.helpers import export_and_check


class WeightAlsoScales(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(32, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x) * self.fc.weight.abs().mean()


def test_q4_0_weight_fed_to_a_non_matmul_op_reads_a_view(tmp_path):
    model = WeightAlsoScales().eval()
    quantize_model(model, "q4_0", progress=False)
    result = export_and_check(model, (torch.randn(2, 32),), tmp_path)
    assert "fc.weight.dat" in result.files and "fc.weight.view_codes.dat" in result.files
    assert any("'abs'" in n and "'fc.weight.view'" in n for n in result.notes), result.notes


def test_native_tensor_without_a_view_is_refused(tmp_path, monkeypatch):
    from t2n_quant.qtensor import QTensor

    model = WeightAlsoScales().eval()
    quantize_model(model, "q4_0", progress=False)
    monkeypatch.setattr(QTensor, "nnef_fragment_view", lambda self: None)
    with pytest.raises(TranslationError, match=r"'fc\.weight'.*tract-native.*'abs'"):
        t2n_core.export(model, (torch.randn(2, 32),), tmp_path / "m.tgz", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_the_same_model_with_a_fragment_codec_exports(tmp_path):
    model = WeightAlsoScales().eval()
    quantize_model(model, "minmax:4:g32", progress=False)
    export_and_check(model, (torch.randn(2, 32),), tmp_path)
