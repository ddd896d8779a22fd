"""LSTM / GRU / RNN layers: one tract_core_scan per layer and direction, time axis dynamic."""

import pytest
import torch
from torch import nn

from tests.helpers import export_and_check

INPUT, HIDDEN, BATCH = 4, 8, 3
LENGTHS = (5, 7)  # exported length, second length checked on the same archive


class WithStates(nn.Module):
    """Passes the initial states as inputs and returns (output, h_n[, c_n]) flat."""

    def __init__(self, rnn: nn.Module):
        super().__init__()
        self.rnn = rnn

    def forward(self, x, h0, c0=None):
        if c0 is None:
            out, h_n = self.rnn(x, h0)
            return out, h_n
        out, (h_n, c_n) = self.rnn(x, (h0, c0))
        return out, h_n, c_n


def _layer(cell: str, **kw) -> nn.Module:
    return {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell](INPUT, HIDDEN, **kw)


def _sequence(length: int, batch_first: bool) -> torch.Tensor:
    return torch.randn(BATCH, length, INPUT) if batch_first else torch.randn(length, BATCH, INPUT)


def _check(rnn: nn.Module, cell: str, tmp_path, *, initial_states: bool, batch_first: bool):
    """Export on LENGTHS[0] with a dynamic time axis, check LENGTHS[1] too."""
    time_axis = 1 if batch_first else 0
    if initial_states:
        layers = rnn.num_layers * (2 if rnn.bidirectional else 1)
        h_size = rnn.proj_size if getattr(rnn, "proj_size", 0) else HIDDEN
        states = [torch.randn(layers, BATCH, h_size)]
        if cell == "lstm":
            states.append(torch.randn(layers, BATCH, HIDDEN))
        model = WithStates(rnn)
        args = [(_sequence(n, batch_first), *states) for n in LENGTHS]
        axes = {"x": {time_axis: "T"}}
    else:
        model = rnn
        args = [(_sequence(n, batch_first),) for n in LENGTHS]
        axes = {"input": {time_axis: "T"}}
    return export_and_check(model, args[0], tmp_path, dynamic_axes=axes, check_inputs=args[1:])


@pytest.mark.parametrize("initial_states", [False, True], ids=["zero-state", "given-state"])
@pytest.mark.parametrize("batch_first", [False, True], ids=["time-major", "batch-first"])
@pytest.mark.parametrize("layers", [1, 2], ids=["1-layer", "2-layers"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_dynamic_time(cell, layers, batch_first, initial_states, tmp_path):
    # dropout between layers only acts in training: the export (eval mode) ignores it
    rnn = _layer(cell, num_layers=layers, batch_first=batch_first, dropout=0.25 * (layers - 1))
    result = _check(rnn, cell, tmp_path, initial_states=initial_states, batch_first=batch_first)
    assert result.inputs[0].shape[1 if batch_first else 0] == "T"
    # one loop per layer, nothing unrolled
    assert result.op_histogram[f"t2n_{cell}"] == layers
    assert len(result.outputs) == (3 if cell == "lstm" else 2)


@pytest.mark.parametrize("layers", [1, 2], ids=["1-layer", "2-layers"])
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_without_bias(cell, layers, tmp_path):
    rnn = _layer(cell, num_layers=layers, bias=False)
    _check(rnn, cell, tmp_path, initial_states=True, batch_first=False)


@pytest.mark.parametrize(
    "layers,batch_first,initial_states",
    [(1, False, False), (2, True, True)],
    ids=["1-layer-time-major-zero-state", "2-layers-batch-first-given-state"],
)
@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_recurrent_bidirectional(cell, layers, batch_first, initial_states, tmp_path):
    rnn = _layer(cell, num_layers=layers, batch_first=batch_first, bidirectional=True)
    result = _check(rnn, cell, tmp_path, initial_states=initial_states, batch_first=batch_first)
    assert result.op_histogram[f"t2n_{cell}"] == 2 * layers


@pytest.mark.parametrize(
    "layers,bidirectional", [(1, False), (2, True)], ids=["1-layer", "2-layers-bidirectional"]
)
def test_lstm_proj_size(layers, bidirectional, tmp_path):
    rnn = _layer("lstm", num_layers=layers, bidirectional=bidirectional, proj_size=5)
    result = _check(rnn, "lstm", tmp_path, initial_states=True, batch_first=False)
    assert result.op_histogram["t2n_lstm_proj"] == layers * (1 + bidirectional)


@pytest.mark.parametrize("nonlinearity", ["tanh", "relu"])
def test_elman_rnn(nonlinearity, tmp_path):
    rnn = _layer("rnn", num_layers=2, nonlinearity=nonlinearity, bidirectional=True,
                 batch_first=True)  # fmt: skip
    result = _check(rnn, "rnn", tmp_path, initial_states=True, batch_first=True)
    assert result.op_histogram[f"t2n_rnn_{nonlinearity}"] == 4


def test_lstm_dynamic_batch_and_time(tmp_path):
    rnn = _layer("lstm", num_layers=2, batch_first=True)
    result = export_and_check(
        rnn,
        (torch.randn(3, 5, INPUT),),
        tmp_path,
        dynamic_axes={"input": {0: "B", 1: "T"}},
        check_inputs=[(torch.randn(2, 7, INPUT),), (torch.randn(4, 2, INPUT),)],
    )
    assert result.inputs[0].shape == ("B", "T", INPUT)
    assert result.outputs[1].shape == (2, "B", HIDDEN)


def test_gru_unbatched_input(tmp_path):
    rnn = _layer("gru", num_layers=2)
    export_and_check(
        rnn,
        (torch.randn(5, INPUT),),
        tmp_path,
        dynamic_axes={"input": {0: "T"}},
        check_inputs=[(torch.randn(7, INPUT),)],
    )


class Classifier(nn.Module):
    """A typical use: the last time step of a batch-first LSTM into a linear head."""

    def __init__(self):
        super().__init__()
        self.lstm = nn.LSTM(INPUT, HIDDEN, num_layers=2, batch_first=True)
        self.head = nn.Linear(HIDDEN, 2)

    def forward(self, x):
        out, _ = self.lstm(x)
        return self.head(out[:, -1])


def test_lstm_last_step_into_linear(tmp_path):
    export_and_check(
        Classifier(),
        (torch.randn(BATCH, 5, INPUT),),
        tmp_path,
        dynamic_axes={"x": {1: "T"}},
        check_inputs=[(torch.randn(BATCH, 7, INPUT),)],
    )


def test_shape_rules_are_removed_after_capture(tmp_path):
    """The capture-time shape rules must not change torch outside ``export``."""
    from torch._decomp import meta_table

    ops = (torch.ops.aten.lstm.input, torch.ops.aten.gru.input)
    before = [dict(op.py_kernels) for op in ops]
    export_and_check(_layer("gru"), (torch.randn(5, BATCH, INPUT),), tmp_path,
                     dynamic_axes={"input": {0: "T"}})  # fmt: skip
    assert [dict(op.py_kernels) for op in ops] == before
    assert not any(op in meta_table for op in ops)
