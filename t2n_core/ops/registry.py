"""The op registry: one translation function per ATen overload.

The same registry tells ``capture`` which ops ``torch.export`` must keep whole
(any registered op is removed from the decomposition table).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import torch.fx

    from t2n_core.translate import EmitContext

Handler = Callable[["EmitContext", "torch.fx.Node"], Any]


@dataclass(frozen=True)
class OpEntry:
    target: Any  # an OpOverload, or a python callable such as operator.getitem
    handler: Handler
    family: str


_REGISTRY: dict[Any, OpEntry] = {}


def register(*targets: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` for each ATen overload in ``targets``; duplicates are refused.

    >>> @register(torch.ops.aten.relu.default)          # doctest: +SKIP
    ... def relu(ctx, node):
    ...     return ctx.emit_like("relu", [ctx.arg(0)])
    """

    def deco(handler: Handler) -> Handler:
        family = handler.__module__.rsplit(".", 1)[-1]
        for target in targets:
            if target in _REGISTRY:
                raise ValueError(
                    f"{target} is already registered by {_REGISTRY[target].handler.__qualname__}"
                )
            _REGISTRY[target] = OpEntry(target, handler, family)
        return handler

    return deco


def lookup(target: Any) -> OpEntry | None:
    _ensure_loaded()
    return _REGISTRY.get(target)


def entries() -> list[OpEntry]:
    _ensure_loaded()
    return sorted(_REGISTRY.values(), key=lambda e: (e.family, str(e.target)))


def kept_whole() -> set[torch._ops.OpOverload]:
    """Registered ATen overloads: capture must not decompose them."""
    _ensure_loaded()
    return {t for t in _REGISTRY if isinstance(t, torch._ops.OpOverload)}


def _ensure_loaded() -> None:
    import t2n_core.ops  # noqa: F401  (imports every op family module)
