"""Weight parametrizations (``weight_norm``, ``spectral_norm``...) baked into plain weights.

A parametrized module computes its weight from other tensors at every call
(wav2vec2 / HuBERT's positional convolution uses ``weight_norm``), so there is no weight
tensor to quantize. Inference never changes those tensors: ``quantize_model`` replaces the
parametrization by the weight it currently produces (the same values), and says so.
"""

from __future__ import annotations

import logging

from torch import nn
from torch.nn.utils import parametrize

logger = logging.getLogger(__name__)


def bake_weight_parametrizations(model: nn.Module, modules: tuple[type, ...]) -> list[str]:
    """Replace each parametrized ``weight`` of a module of type ``modules`` by its current
    value; returns one note per module changed.

    >>> conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(4, 4, 3))
    >>> notes = bake_weight_parametrizations(conv, (nn.Conv1d,))
    >>> parametrize.is_parametrized(conv), len(notes)
    (False, 1)
    """
    notes: list[str] = []
    for path, module in model.named_modules():
        if isinstance(module, modules) and parametrize.is_parametrized(module, "weight"):
            kinds = [type(p).__name__ for p in module.parametrizations["weight"]]
            parametrize.remove_parametrizations(module, "weight", leave_parametrized=True)
            note = (
                f"{path or 'model'}.weight: parametrization {kinds} replaced by the weight it "
                "computes (same values), so it can be quantized"
            )
            logger.info("%s", note)
            notes.append(note)
    return notes
