"""A model's modules as they stand, to put back: their classes and attributes, shallow (the
same tensors and submodules), so that what quantizing prepares in place (transformers
``Conv1D`` swapped for ``nn.Linear``, experts transposed, parametrizations baked, LoRA
merged, weights replaced) can be undone."""

from __future__ import annotations

import copy
from collections.abc import Callable

from torch import nn


def snapshot(model: nn.Module) -> Callable[[], None]:
    """What puts every module of ``model`` back as it is now (tensors changed in place
    excepted: they are shared, not copied).

    >>> model = nn.Sequential(nn.Linear(2, 2))
    >>> restore = snapshot(model)
    >>> model[0] = nn.Identity()
    >>> restore(); type(model[0]).__name__
    'Linear'
    """
    saved = [(m, type(m), {k: copy.copy(v) if isinstance(v, dict) else v
                           for k, v in vars(m).items()}) for m in model.modules()]  # fmt: skip

    def restore() -> None:
        for module, cls, attrs in saved:
            module.__class__ = cls
            module.__dict__.clear()
            module.__dict__.update(attrs)

    return restore
