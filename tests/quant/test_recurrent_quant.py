"""Quantized LSTM / GRU / RNN: every weight matrix of every layer and direction, every codec,
exported and run in tract on a dynamic time axis; Q4_0 ones stay tract-native (compressed)."""

from __future__ import annotations

import tarfile

import pytest
import torch
from torch import nn

from t2n_quant import QTensor, quantize_model
from tests.helpers import export_and_check
from tests.quant.test_export_e2e import ALL_SPECS

IN, HIDDEN = 64, 64  # every matrix's input axis a multiple of every group size


class Stack(nn.Module):
    """A bidirectional projected LSTM, a GRU and an Elman RNN in sequence (batch-first)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(IN, 2 * HIDDEN, num_layers=2, bidirectional=True, proj_size=HIDDEN,
                            batch_first=True)  # fmt: skip
        self.gru = nn.GRU(2 * HIDDEN, HIDDEN, num_layers=2, batch_first=True)
        self.rnn = nn.RNN(HIDDEN, HIDDEN, nonlinearity="relu", batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        y, _ = self.gru(y)
        return self.rnn(y)[0]


def _matrices(model: nn.Module) -> set[str]:
    return {n for n, _ in model.named_parameters() if ".weight_" in n}


@pytest.mark.parametrize("spec", ALL_SPECS)
def test_every_codec_quantizes_every_recurrent_matrix(spec: str, tmp_path) -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    matrices = _matrices(model)
    assert len(matrices) == 2 * 2 * 3 + 2 * 2 + 2  # lstm (ih, hh, hr) x 2 layers x 2 dirs ...
    summary = quantize_model(model, spec, progress=False)
    assert {q.name for q in summary.quantized} == matrices, summary.skipped
    assert all(isinstance(model.get_parameter(n), QTensor) for n in matrices)
    # the module's cached weight list follows (PyTorch's forward reads it)
    assert all(
        isinstance(w, QTensor)
        for w, n in zip(model.gru._flat_weights, model.gru._flat_weights_names)
        if "weight" in n
    )
    result = export_and_check(
        model, (torch.randn(2, 5, IN),), tmp_path, dynamic_axes={"x": {1: "T"}},
        check_inputs=[(torch.randn(2, 9, IN),)],
    )  # fmt: skip
    assert result.inputs[0].shape == (2, "T", IN)
    if spec == "q4_0":
        # all matrices stored as Q4_0 (row ranges of the recurrent ones, one per gate)
        n_values = sum(p.numel() for n, p in model.named_parameters() if n in matrices)
        assert result.tensor_bytes["q4_0"] == n_values // 32 * 18
        # the recurrent ones are declared inside their loop bodies, one copy per layer/direction
        with tarfile.open(tmp_path / "model.nnef.tgz") as tar:
            graph = tar.extractfile("graph.nnef").read().decode()
        assert "wr = variable<scalar>(label = 'gru.weight_hh_l1.rows_0_64'" in graph
        assert "max(" in graph  # the layer above a bidirectional one: see t2n_core.concat_guard
        assert graph.count("fragment t2n_lstm_proj_step_w") == 4


def test_q4_0_skips_a_recurrent_matrix_it_cannot_block_and_says_why(tmp_path) -> None:
    torch.manual_seed(0)
    model = nn.GRU(20, 32).eval()  # weight_ih: 20 inputs, not a multiple of 32
    summary = quantize_model(model, "q4_0", progress=False)
    assert [q.name for q in summary.quantized] == ["weight_hh_l0"]
    assert [s.name for s in summary.skipped] == ["weight_ih_l0"]
    assert "32" in summary.skipped[0].reason
    export_and_check(model, (torch.randn(4, 2, 20),), tmp_path, dynamic_axes={"input": {0: "T"}})


class CatThenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(32, 32), nn.Linear(32, 32), nn.Linear(64, 64)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.a(x), self.b(x)], dim=-1))


def test_q4_0_linear_after_a_concat_runs_in_tract(tmp_path) -> None:
    # tract aborts the process on matmul(concat, Q4_0 W); the translation splits it per piece
    torch.manual_seed(0)
    model = CatThenLinear().eval()
    quantize_model(model, "q4_0", progress=False)
    result = export_and_check(model, (torch.randn(2, 5, 32),), tmp_path,
                              dynamic_axes={"x": {1: "T"}})  # fmt: skip
    assert "head.weight.cols_0_32.dat" in result.files and "head.weight.dat" not in result.files
