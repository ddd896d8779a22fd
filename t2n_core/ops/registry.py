"""The op registry: one translation function per ATen overload.

The same registry tells ``capture`` which ops ``torch.export`` must keep whole
(any registered op is removed from the decomposition table). The tables are complete once
every op module has registered: read them through :mod:`t2n_core.ops`, whose import does that.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    import torch.fx

    from t2n_core.emit import EmitContext

Handler = Callable[["EmitContext", "torch.fx.Node"], Any]


@dataclass(frozen=True)
class OpEntry:
    target: Any  # an OpOverload, or a python callable such as operator.getitem
    handler: Handler
    family: str


_REGISTRY: dict[Any, OpEntry] = {}
#: handlers used instead when an input of the node is complex (see t2n_core/ops/spectral.py)
_COMPLEX: dict[Any, OpEntry] = {}


def register(*targets: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` for each ATen overload in ``targets``; duplicates are refused.

    >>> @register(torch.ops.aten.relu.default)          # doctest: +SKIP
    ... def relu(ctx, node):
    ...     return ctx.emit_like("relu", [ctx.arg(0)])
    """

    return _registrar(_REGISTRY, targets)


def register_complex(*targets: Any) -> Callable[[Handler], Handler]:
    """Register ``handler`` for each overload in ``targets`` when an input is complex.

    Complex tensors are stored as real ones with a last axis of 2 (real, imaginary), tract's
    convention; a node with a complex input goes to this table, never to the real handler.
    """
    return _registrar(_COMPLEX, targets)


def _registrar(table: dict[Any, OpEntry], targets: tuple[Any, ...]) -> Callable[[Handler], Handler]:
    def deco(handler: Handler) -> Handler:
        family = handler.__module__.rsplit(".", 1)[-1]
        for target in targets:
            if target in table:
                raise ValueError(
                    f"{target} is already registered by {table[target].handler.__qualname__}"
                )
            table[target] = OpEntry(target, handler, family)
        return handler

    return deco


def lookup(target: Any, complex_inputs: bool = False) -> OpEntry | None:
    """The handler of ``target``; with ``complex_inputs``, the one for complex inputs."""
    return (_COMPLEX if complex_inputs else _REGISTRY).get(target)


def complex_ops() -> list[str]:
    return sorted(str(t) for t in _COMPLEX)


def entries() -> list[OpEntry]:
    """Every handler (those for complex inputs too, in their module's family)."""
    return sorted(
        [*_REGISTRY.values(), *_COMPLEX.values()], key=lambda e: (e.family, str(e.target))
    )


def kept_whole() -> set[torch._ops.OpOverload]:
    """Registered ATen overloads: capture must not decompose them."""
    return {t for t in (*_REGISTRY, *_COMPLEX) if isinstance(t, torch._ops.OpOverload)}
