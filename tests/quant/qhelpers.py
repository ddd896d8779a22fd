"""Helpers shared by the t2n_quant tests: accuracy metrics, a weight exported alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

import t2n_core
from t2n_quant.compare import sqnr

#: every accuracy assertion uses these thresholds: the least SQNR a codec of that many
#: bits reaches on Gaussian weights with min-max calibration, any group size (measured
#: worst case: symmetric per-channel, minus about 0.4 dB)
MIN_SQNR_DB = {2: 2.5, 3: 10.0, 4: 17.5, 5: 24.0, 6: 30.0, 8: 42.5}


#: signal-to-quantization-noise ratio in dB (higher is better): the library's own
sqnr_db = sqnr


class WeightOnly(nn.Module):
    """A module whose output is its one weight: exporting it writes that (quantized) weight
    through the real path (its encoder, the graph passes, the writer)."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)

    def forward(self) -> torch.Tensor:
        return self.weight


def export_weight(qt: torch.Tensor, directory: Path) -> Path:
    """Export :class:`WeightOnly` of ``qt`` (no inputs) to the folder archive ``directory``."""
    t2n_core.export(WeightOnly(qt), (), directory, progress=False)
    return directory


def run_tract(directory: Path, inputs: list[np.ndarray] | None = None) -> list[np.ndarray]:
    """Load ``directory`` with tract and run it."""
    import tract

    model = tract.nnef().with_tract_transformers().with_tract_extra().load(str(directory))
    outputs = model.into_runnable().run(inputs or [])
    return [o.to_numpy() for o in outputs]
