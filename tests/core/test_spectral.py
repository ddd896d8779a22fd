"""Spectral front-ends: torch.stft, FFTs, unfold and complex values, in tract on a dynamic
time axis (tract's STFT/FFT operators, complex numbers as a last axis of 2)."""

from __future__ import annotations

import pytest
import torch

from tests.helpers import Fn, export_and_check

N_FFT, HOP = 16, 4
WINDOWS = {
    "hann": torch.hann_window(N_FFT),
    "hamming": torch.hamming_window(N_FFT),
    "blackman": torch.blackman_window(N_FFT),
    "tensor": torch.rand(N_FFT, generator=torch.Generator().manual_seed(0)) + 0.5,
    "short-hann": torch.hann_window(10),  # win_length < n_fft: torch centres it in the frame
    "short-odd": torch.hann_window(7),
    "none": None,
}
PARTS = {
    "abs": torch.abs,
    "power": lambda z: z.abs().pow(2),
    # angle and sqrt jump across the negative real axis, where a real signal's DC and
    # Nyquist bins lie, and every bin of a centred STFT's first frame (reflect padding makes
    # that frame symmetric): their imaginary part is +0 or -0 as the FFT's rounding falls
    # (it differs between thread counts), so the result is +-pi; those are left out
    "angle": lambda z: torch.angle(z[:, 1:-1, 1:-1]),
    "real": lambda z: z.real,
    "imag": lambda z: z.imag,
    "view_as_real": torch.view_as_real,
    "complex-square": lambda z: torch.view_as_real(z.pow(2)),
    "complex-sqrt": lambda z: torch.view_as_real(z[:, 1:-1, 1:-1] ** 0.5),
}


class Stft(torch.nn.Module):
    def __init__(self, window, part, center=True, normalized=False):
        super().__init__()
        self.register_buffer("window", window)
        self.part, self.center, self.normalized = part, center, normalized

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        win_length = None if self.window is None else self.window.shape[0]
        z = torch.stft(
            audio, N_FFT, HOP, win_length=win_length, window=self.window, center=self.center,
            normalized=self.normalized, return_complex=True,
        )  # fmt: skip
        return self.part(z)


def _audio(length: int, batch: int = 2) -> torch.Tensor:
    return torch.randn(batch, length, generator=torch.Generator().manual_seed(length))


def _check(model, tmp_path, lengths=(64, 101), name="audio", **kw):
    return export_and_check(
        model, (_audio(lengths[0]),), tmp_path, dynamic_axes={name: {1: "T"}},
        check_inputs=[(_audio(n),) for n in lengths[1:]], **kw,
    )  # fmt: skip


@pytest.mark.parametrize("window", list(WINDOWS))
@pytest.mark.parametrize("center", [True, False], ids=["centered", "not-centered"])
def test_stft_windows(window, center, tmp_path):
    result = _check(Stft(WINDOWS[window], PARTS["abs"], center=center), tmp_path)
    assert result.op_histogram["tract_core_stft"] == 1
    assert "tract_core_gather" not in result.op_histogram  # the frames come from the STFT


@pytest.mark.parametrize("part", list(PARTS))
def test_stft_parts(part, tmp_path):
    _check(Stft(WINDOWS["hann"], PARTS[part], normalized=part == "real"), tmp_path)


def test_log_mel_chain(tmp_path):
    mel = torch.rand(N_FFT // 2 + 1, 6, generator=torch.Generator().manual_seed(1))

    def log_mel(audio):
        power = torch.stft(audio, N_FFT, HOP, window=torch.hann_window(N_FFT),
                           return_complex=True).abs().pow(2)  # fmt: skip
        mels = torch.matmul(power.transpose(1, 2), mel)
        return torch.log(torch.clamp(mels, min=1e-6)), torch.log1p(mels)

    _check(Fn(log_mel), tmp_path, name="x", atol=1e-3)


FFTS = {
    "rfft-abs": lambda x: torch.fft.rfft(x).abs(),
    "rfft-ortho": lambda x: torch.view_as_real(torch.fft.rfft(x, norm="ortho")),
    "irfft-rfft": lambda x: torch.fft.irfft(torch.fft.rfft(x) * 0.5, n=x.shape[-1]),
    "irfft-odd": lambda x: torch.fft.irfft(torch.fft.rfft(x), n=15),
    "fft": lambda x: torch.view_as_real(torch.fft.fft(x)),
    "ifft-fft": lambda x: torch.fft.ifft(torch.fft.fft(x)).real,
    "fft-axis1": lambda x: torch.fft.fft(x, dim=1).abs(),
    "power-product": lambda x: torch.view_as_real(torch.fft.rfft(x) * torch.fft.rfft(x * 2)),
}


@pytest.mark.parametrize("fn", list(FFTS))
def test_ffts(fn, tmp_path):
    x = torch.randn(3, 5, 16)  # [B, T, 16], B and T dynamic; fft-axis1 transforms along T
    export_and_check(Fn(FFTS[fn]), (x,), tmp_path, dynamic_axes={"x": {0: "B", 1: "T"}},
                     check_inputs=[(torch.randn(2, 9, 16),)])  # fmt: skip


@pytest.mark.parametrize("dim", [-1, 1], ids=["last-axis", "middle-axis"])
def test_unfold_dynamic(dim, tmp_path):
    def frames(x):
        return x.unfold(dim, 4, 3) * 2.0

    x = torch.randn(2, 11, 3) if dim == 1 else torch.randn(2, 3, 11)
    other = torch.randn(2, 17, 3) if dim == 1 else torch.randn(2, 3, 17)
    axis = 1 if dim == 1 else 2
    export_and_check(Fn(frames), (x,), tmp_path, dynamic_axes={"x": {axis: "T"}},
                     check_inputs=[(other,)])  # fmt: skip


def test_complex_op_without_translation_is_named(tmp_path):
    import t2n_core

    def conj_product(x):
        z = torch.fft.rfft(x)
        return torch.view_as_real(torch.exp(z))

    with pytest.raises(t2n_core.UnsupportedOpsError, match="on complex tensors"):
        t2n_core.export(Fn(conj_product), (torch.randn(2, 16),), tmp_path / "m", progress=False)


class _PolarRotary(torch.nn.Module):
    def forward(self, x, positions):
        freqs = positions[..., None].float() * torch.arange(1, 5).float()
        cis = torch.polar(torch.ones_like(freqs), freqs) * 0.5
        z = torch.view_as_complex(x.float().reshape(*x.shape[:-1], -1, 2))
        return torch.view_as_real(z * cis[:, :, None, :]).flatten(3)


def test_polar_rotary(tmp_path):
    """Llama 4's rotary embedding: ``polar`` frequencies, unsqueezed, times the complex view
    of the queries; T dynamic."""
    x, positions = torch.randn(2, 5, 3, 8), torch.arange(5).expand(2, 5) + 2
    longer = (torch.randn(2, 7, 3, 8), torch.arange(7).expand(2, 7))
    export_and_check(_PolarRotary(), (x, positions), tmp_path, input_names=["x", "positions"],
                     dynamic_axes={"x": {1: "T"}, "positions": {1: "T"}},
                     check_inputs=[longer])  # fmt: skip
