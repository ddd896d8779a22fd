"""A small model included with t2n, used by ``t2n demo``, the notebooks and the docs.

Built from code with seeded random weights, so it needs no download.
"""

from __future__ import annotations

import torch
from torch import nn


class KeywordSpotter(nn.Module):
    """Audio features ``[B, 40, T]`` -> per-frame logits ``[B, T, 12]``.

    A Conv1d front end, a two-layer transformer encoder and a linear head: the shape of a
    small on-device speech model, with a time axis that stays dynamic in the export.
    """

    def __init__(self, n_mels: int = 40, dim: int = 128, layers: int = 2, classes: int = 12):
        super().__init__()
        self.frontend = nn.Sequential(
            nn.Conv1d(n_mels, dim, kernel_size=3, padding=1), nn.BatchNorm1d(dim), nn.GELU()
        )
        layer = nn.TransformerEncoderLayer(
            dim, nhead=4, dim_feedforward=4 * dim, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(dim, classes)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        h = self.frontend(audio).transpose(1, 2)
        return self.head(self.encoder(h))


def keyword_spotter(seed: int = 0) -> tuple[KeywordSpotter, torch.Tensor]:
    """The example model (eval mode, seeded weights) and an example input of 50 frames.

    >>> model, audio = keyword_spotter()
    >>> tuple(model(audio).shape)
    (1, 50, 12)
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = KeywordSpotter().eval()
    audio = torch.randn(1, 40, 50, generator=generator)
    return model, audio


def mel_filterbank(
    n_freqs: int, n_mels: int, sample_rate: int, f_min: float = 0.0, f_max: float | None = None
) -> torch.Tensor:
    """Triangular mel filters ``[n_freqs, n_mels]`` (HTK mel scale, no normalisation), the
    matrix ``torchaudio.functional.melscale_fbanks`` builds with its defaults.

    >>> tuple(mel_filterbank(201, 40, 16000).shape)
    (201, 40)
    """
    f_max = sample_rate / 2 if f_max is None else f_max

    def to_mel(f: torch.Tensor) -> torch.Tensor:
        return 2595.0 * torch.log10(1.0 + f / 700.0)

    freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    mels = torch.linspace(float(to_mel(torch.tensor(f_min))), float(to_mel(torch.tensor(f_max))),
                          n_mels + 2, dtype=torch.float64)  # fmt: skip
    points = 700.0 * (10 ** (mels / 2595.0) - 1.0)
    slopes = points.diff()
    ramps = points.unsqueeze(0) - freqs.unsqueeze(1)  # [n_freqs, n_mels + 2]
    down = -ramps[:, :-2] / slopes[:-1]
    up = ramps[:, 2:] / slopes[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


class StreamingKeywordSpotter(nn.Module):
    """Raw audio ``[B, samples]`` (16 kHz) -> per-frame keyword logits ``[B, frames, 12]``.

    Log-mel features (25 ms frames every 10 ms, Hann window, 40 mels), a causal Conv1d, a GRU
    and a linear classifier: every layer looks only at the past, so the model streams in
    chunks of 10 ms (160 samples) in tract with the pulse transform, one frame per chunk.
    Sizes are multiples of 32 along every weight's input axis, so ``q4_0`` takes all of them.
    """

    sample_rate, n_fft, hop = 16000, 400, 160

    def __init__(self, n_mels: int = 40, channels: int = 64, hidden: int = 128,
                 classes: int = 12) -> None:  # fmt: skip
        super().__init__()
        self.register_buffer("window", torch.hann_window(self.n_fft))
        n_freqs = self.n_fft // 2 + 1
        self.register_buffer("mel", mel_filterbank(n_freqs, n_mels, self.sample_rate))
        self.kernel = 4  # 40 mels x 4 taps = 160 values per filter row: 5 blocks of 32
        self.conv = nn.Conv1d(n_mels, channels, self.kernel)
        self.gru = nn.GRU(channels, hidden, batch_first=True)
        self.head = nn.Linear(hidden, classes)

    def features(self, wave: torch.Tensor) -> torch.Tensor:
        """Log-mel features ``[B, n_mels, frames]``."""
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, center=False,
                          return_complex=True)  # fmt: skip
        power = spec.abs().pow(2)  # [B, freqs, frames]
        mels = torch.matmul(power.transpose(1, 2), self.mel).transpose(1, 2)
        return torch.log(torch.clamp(mels, min=1e-6))

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        h = self.features(wave)
        h = torch.relu(self.conv(nn.functional.pad(h, (self.kernel - 1, 0))))  # causal
        out, _ = self.gru(h.transpose(1, 2))
        return self.head(out)


def streaming_keyword_spotter(
    seed: int = 0, seconds: float = 0.5
) -> tuple[StreamingKeywordSpotter, torch.Tensor]:
    """The streaming example model (eval mode, seeded weights) and ``seconds`` of noise-like
    audio as example input.

    >>> model, wave = streaming_keyword_spotter()
    >>> tuple(wave.shape), tuple(model(wave).shape)
    ((1, 8000), (1, 48, 12))
    """
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = StreamingKeywordSpotter().eval()
    samples = int(seconds * StreamingKeywordSpotter.sample_rate)
    t = torch.arange(samples) / StreamingKeywordSpotter.sample_rate
    tone = 0.3 * torch.sin(2 * torch.pi * 440.0 * t) * torch.sin(2 * torch.pi * 3.0 * t)
    wave = tone + 0.05 * torch.randn(samples, generator=generator)
    return model, wave.unsqueeze(0)
