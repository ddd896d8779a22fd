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
