"""A decoder layer's slot of a transformers ``Cache`` as block state (:mod:`t2n_core.blocks`).

Each decoder layer reads and replaces its own layer of the cache (``cache.layers[layer_idx]``,
through ``cache.update(k, v, self.layer_idx)``). As a block, a layer takes that slot's tensors
as inputs and returns their new values; inside, it sees a copy of the cache whose every index
is that one slot, so the captured graph does not depend on the layer's index and one capture
serves every layer.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from t2n_core.blocks import register_state_adapter
from t2n_core.errors import CaptureError


class _EveryIndex(list):
    """A list of ``n`` layers that all are one layer: ``layers[i]`` is it for every ``i``."""

    def __init__(self, layer: Any, n: int):
        super().__init__([layer] * n)
        self.layer = layer

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, slice):
            return [self.layer] * len(range(*index.indices(len(self))))
        return self.layer


def layer_index(module: nn.Module) -> int:
    """The ``layer_idx`` of a decoder layer (its own, or that of its attention submodule)."""
    for sub in module.modules():
        idx = getattr(sub, "layer_idx", None)
        if isinstance(idx, int):
            return idx
    raise CaptureError(
        f"{type(module).__name__} takes a cache but has no layer_idx attribute telling which "
        "cache layer it uses"
    )


def _slots(layer: Any) -> dict[str, tuple[str, Any]]:
    """Where the layer keeps each tensor, by name: an attribute (``keys`` -> ``("keys",
    None)``) or an entry of its dicts of states (a linear-attention layer's ``conv_states_0``
    -> ``("conv_states", 0)``)."""
    found: dict[str, tuple[str, Any]] = {}
    for key, value in vars(layer).items():
        if isinstance(value, torch.Tensor):
            found[key] = (key, None)
        elif isinstance(value, dict) and not key.startswith("_"):
            tensors = [i for i, v in value.items() if isinstance(v, torch.Tensor)]
            found |= {f"{key}_{i}": (key, i) for i in tensors}
    return found


def _tensors(layer: Any) -> dict[str, torch.Tensor]:
    return {name: _get(layer, slot) for name, slot in _slots(layer).items()}


def _get(layer: Any, slot: tuple[str, Any]) -> torch.Tensor:
    attr, index = slot
    return getattr(layer, attr) if index is None else getattr(layer, attr)[index]


def _set(layer: Any, slot: tuple[str, Any], tensor: torch.Tensor) -> None:
    attr, index = slot
    if index is None:
        setattr(layer, attr, tensor)
    else:
        getattr(layer, attr)[index] = tensor


def _layer_copy(layer: Any) -> Any:
    """A copy of ``layer`` whose dicts (states, flags by state index) are its own."""
    copied = copy.copy(layer)
    for key, value in vars(layer).items():
        if isinstance(value, dict):
            setattr(copied, key, dict(value))
    return copied


class CacheSlot:
    """:class:`t2n_core.blocks.StateAdapter` for transformers' ``Cache`` objects."""

    def claims(self, obj: Any) -> bool:
        try:
            from transformers.cache_utils import Cache
        except ImportError:  # pragma: no cover - transformers is a dependency of t2n_core.llm
            return False
        return isinstance(obj, Cache)

    def tensors(self, obj: Any, module: nn.Module) -> dict[str, torch.Tensor]:
        return _tensors(obj.layers[layer_index(module)])

    def view(self, obj: Any, module: nn.Module, tensors: dict[str, torch.Tensor]) -> Any:
        layer = _layer_copy(obj.layers[layer_index(module)])
        slots = _slots(layer)
        for name, tensor in tensors.items():  # states in dicts are updated in place: cloned
            in_dict = slots[name][1] is not None
            _set(layer, slots[name], tensor.clone() if in_dict else tensor)
        view = copy.copy(obj)
        view.layers = _EveryIndex(layer, len(obj.layers))
        return view

    def updated(self, view: Any) -> dict[str, torch.Tensor]:
        return _tensors(view.layers.layer)

    def write_back(self, obj: Any, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        layer = obj.layers[layer_index(module)]
        slots = _slots(layer)
        for name, tensor in tensors.items():
            _set(layer, slots[name], tensor)


register_state_adapter(CacheSlot())
