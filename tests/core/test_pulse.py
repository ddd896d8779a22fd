"""Streaming export: tract's pulsed model, fed in chunks, equals the whole run shifted by its
delay (``t2n_core.check_pulsed``), for the layer stacks of streaming audio models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import t2n_core
from t2n_core.errors import PulseError
from t2n_core.pulse import streaming_symbol

C = 8


class ConvStack(nn.Module):
    """Conv1d with dilation, then a strided one, both centred (they look ahead: a delay)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(C, 16, 3, padding=2, dilation=2)
        self.b = nn.Conv1d(16, 16, 5, stride=2, padding=2)
        self.c = nn.Conv1d(16, C, 3, padding=1, dilation=1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.c(F.relu(self.b(F.relu(self.a(audio)))))


class CausalConvs(nn.Module):
    """Left padding only: each output frame sees the past, so no delay."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv1d(C, 16, 3, dilation=2)
        self.b = nn.Conv1d(16, C, 4)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.a(F.pad(audio, (4, 0))))
        return self.b(F.pad(h, (3, 0)))


class ConvGRU(nn.Module):
    def __init__(self, cell: type[nn.RNNBase] = nn.GRU) -> None:
        super().__init__()
        self.conv = nn.Conv1d(C, 16, 3, padding=1)
        self.rnn = cell(16, 16, num_layers=2, batch_first=True)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.rnn(F.relu(self.conv(audio)).transpose(1, 2))[0]


class ConformerLike(nn.Module):
    """Feed-forward, attention over a look-back window of W frames, causal depthwise conv."""

    W = 4

    def __init__(self, d: int = C) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 2 * d), nn.SiLU(), nn.Linear(2 * d, d))
        self.qkv = nn.Linear(d, 3 * d)
        self.depthwise = nn.Conv1d(d, d, 3, groups=d)
        self.pointwise = nn.Conv1d(d, d, 1)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = audio.transpose(1, 2)  # [B, T, D]
        x = x + 0.5 * self.ff(self.norm1(x))
        q, k, v = self.qkv(self.norm2(x)).chunk(3, dim=-1)
        t = x.shape[1]
        k = F.pad(k, (0, 0, self.W - 1, 0))  # the W - 1 frames before the first one are zeros
        v = F.pad(v, (0, 0, self.W - 1, 0))
        keys = torch.stack([k[:, j : j + t] for j in range(self.W)], dim=2)  # [B, T, W, D]
        values = torch.stack([v[:, j : j + t] for j in range(self.W)], dim=2)
        weights = torch.softmax((q.unsqueeze(2) * keys).sum(-1) / q.shape[-1] ** 0.5, dim=-1)
        x = x + (weights.unsqueeze(-1) * values).sum(2)
        y = x.transpose(1, 2)
        y = y + self.pointwise(F.silu(self.depthwise(F.pad(y, (2, 0)))))
        return y


MODELS = {
    "conv-dilated-strided": (ConvStack, 4),
    "conv-causal": (CausalConvs, 3),
    "conv-gru": (ConvGRU, 4),
    "conv-lstm": (lambda: ConvGRU(nn.LSTM), 1),
    "conformer-look-back": (ConformerLike, 2),
}


def export_streaming(model: nn.Module, tmp_path, length: int = 24, name: str = "m.nnef.tgz"):
    torch.manual_seed(1)
    audio = torch.randn(1, C, length)
    path = tmp_path / name
    t2n_core.export(model.eval(), (audio,), path, streaming_axis={"audio": 2}, progress=False)
    return path, audio


@pytest.mark.parametrize("case", list(MODELS))
def test_chunked_output_equals_whole_output_shifted_by_the_delay(case, tmp_path):
    factory, pulse = MODELS[case]
    torch.manual_seed(0)
    model = factory().eval()
    path, audio = export_streaming(model, tmp_path)
    assert streaming_symbol(path) == "S"
    with torch.no_grad():
        expected = model(audio).numpy()
    for length in (audio.shape[2], 37):  # the exported length and another one
        x = torch.randn(1, C, length) if length != audio.shape[2] else audio
        with torch.no_grad():
            expected = model(x).numpy()
        report = t2n_core.check_pulsed(path, [x.numpy()], [expected], pulse=pulse)
        assert report.passed, str(report)
        assert report.chunks >= -(-length // pulse)
    if case == "conv-causal":
        assert report.delay == 0
    if case == "conv-dilated-strided":
        assert report.delay > 0  # the centred convolutions look ahead


class CentredConv(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(C, C, 5, padding=2)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.conv(audio)


def test_a_centred_conv_delay_is_the_frames_it_looks_ahead(tmp_path):
    path, audio = export_streaming(CentredConv(), tmp_path)
    report = t2n_core.check_pulsed(path, [audio.numpy()], pulse=4)  # vs tract's whole run
    assert report.delay == 2 and report.passed


class MeanOverTime(nn.Module):
    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return audio - audio.mean(dim=2, keepdim=True)


class BackwardGRU(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(C, 8, bidirectional=True, batch_first=True)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        return self.gru(audio.transpose(1, 2))[0]


@pytest.mark.parametrize(
    ("model", "message"),
    [(MeanOverTime, r"op Reduce<Sum> at node '\w*mean\w*'"),
     (BackwardGRU, r"op t2n_gru at node 'gru_l0_reverse\w*' runs backwards")],
    ids=["mean-over-time", "backward-recurrence"],
)  # fmt: skip
def test_a_graph_that_cannot_stream_names_the_op(model, message, tmp_path):
    path, audio = export_streaming(model(), tmp_path)
    with pytest.raises(PulseError, match=message):
        t2n_core.check_pulsed(path, [audio.numpy()], pulse=4)


def test_a_mismatch_is_reported(tmp_path):
    path, audio = export_streaming(CausalConvs(), tmp_path)
    wrong = [np.zeros((1, C, 24), np.float32)]
    report = t2n_core.check_pulsed(path, [audio.numpy()], wrong, pulse=4, raise_on_mismatch=False)
    assert not report.passed
    with pytest.raises(t2n_core.CheckMismatchError):
        t2n_core.check_pulsed(path, [audio.numpy()], wrong, pulse=4)


def test_streaming_axis_shares_the_dynamic_axes_symbol_or_refuses(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "named.nnef"
    result = t2n_core.export(CausalConvs().eval(), (torch.randn(2, C, 10),), path,
                             dynamic_axes={"audio": {0: "B", 2: "T"}},
                             streaming_axis={"audio": 2}, progress=False)  # fmt: skip
    assert result.inputs[0].shape == ("B", C, "T")
    assert streaming_symbol(path) == "T"
    with pytest.raises(t2n_core.ExportInputError, match="streaming_axis"):
        t2n_core.export(CausalConvs(), (torch.randn(1, C, 10),), tmp_path / "x",
                        streaming_axis={"wave": 2}, progress=False)  # fmt: skip


def test_an_archive_without_a_streaming_symbol_asks_for_one(tmp_path):
    path = tmp_path / "plain.nnef"
    audio = torch.randn(1, C, 12)
    t2n_core.export(CausalConvs().eval(), (audio,), path, dynamic_axes={"audio": {2: "T"}},
                    progress=False)  # fmt: skip
    with pytest.raises(PulseError, match="streaming_axis"):
        t2n_core.check_pulsed(path, [audio.numpy()], pulse=4)
    assert t2n_core.check_pulsed(path, [audio.numpy()], pulse=4, symbol="T").passed


def test_cli_check_pulse(tmp_path, capsys):
    from t2n_core.cli import main

    path, audio = export_streaming(ConvGRU(), tmp_path)
    np.savez(tmp_path / "in.npz", audio=audio.numpy())
    assert main(["check", str(path), "--inputs", str(tmp_path / "in.npz"), "--pulse", "4"]) == 0
    out = capsys.readouterr().out
    assert "pulsed on S in chunks of 4" in out and "passed" in out
    path, _ = export_streaming(MeanOverTime(), tmp_path, name="mean.nnef.tgz")
    assert main(["check", str(path), "--inputs", str(tmp_path / "in.npz"), "--pulse", "4"]) == 2
    assert "Reduce<Sum>" in capsys.readouterr().err


class LogMel(nn.Module):
    """A not-centred STFT (frames of 32 samples every 8), power, a mel-like matmul, log."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("window", torch.hann_window(32))
        self.register_buffer("mel", torch.rand(17, 6, generator=torch.Generator().manual_seed(0)))
        self.conv = nn.Conv1d(6, 4, 3, padding=1)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(wave, 32, 8, window=self.window, center=False, return_complex=True)
        mels = torch.matmul(spec.abs().pow(2).transpose(1, 2), self.mel)
        return self.conv(torch.log(mels + 1e-6).transpose(1, 2))


def test_spectrogram_front_end_streams(tmp_path):
    torch.manual_seed(0)
    model = LogMel().eval()
    wave = torch.randn(1, 200)
    path = tmp_path / "logmel.nnef.tgz"
    t2n_core.export(model, (wave,), path, streaming_axis={"wave": 1}, progress=False)
    for length in (200, 331):
        x = torch.randn(1, length)
        with torch.no_grad():
            expected = model(x).numpy()
        report = t2n_core.check_pulsed(path, [x.numpy()], [expected], pulse=16, atol=1e-3)
        assert report.passed, str(report)
        assert report.output_axes == [2]
        assert report.compared_frames == [expected.shape[2] - report.delay]


def test_stream_it_yourself_in_this_process(tmp_path):
    from t2n_core.pulse import load_pulsed, run_pulsed

    torch.manual_seed(0)
    model = CausalConvs().eval()
    path, audio = export_streaming(model, tmp_path)
    pulsed = load_pulsed(path, 4)
    assert (pulsed.delay, pulsed.input_axes, pulsed.input_pulses) == (0, [2], [4])
    state = pulsed.state()  # one chunk by hand: the first 4 output frames
    first = state.run([np.ascontiguousarray(audio.numpy()[:, :, :4])])[0].to_numpy()
    (whole,), chunks = run_pulsed(pulsed, [audio.numpy()], [24])
    with torch.no_grad():
        expected = model(audio).numpy()
    assert chunks == 6
    np.testing.assert_allclose(whole, expected, atol=1e-5)
    np.testing.assert_allclose(first, expected[:, :, :4], atol=1e-5)


def test_a_centred_stft_cannot_stream_and_says_why(tmp_path):
    from tests.core.test_spectral import PARTS, WINDOWS, Stft

    wave = torch.randn(1, 64)
    path = tmp_path / "centred.nnef.tgz"
    model = Stft(WINDOWS["hann"], PARTS["abs"], center=True).eval()
    t2n_core.export(model, (wave,), path, streaming_axis={"audio": 1}, progress=False)
    with pytest.raises(PulseError, match=r"(?s)op Pad at node 'pad'.*Reflect padding"):
        t2n_core.check_pulsed(path, [wave.numpy()], pulse=4)
