"""The encoder table: codec name -> encoder. Complete once :mod:`t2n_quant.encoders` (which
imports every encoder module) is imported; read it from there."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from t2n_core.storage import Encoding
from t2n_quant.codecs.base import Codec
from t2n_quant.errors import EncodingError

if TYPE_CHECKING:
    from t2n_quant.qtensor import QTensor

Encoder = Callable[["QTensor", str], Encoding]
ENCODERS: dict[str, Encoder] = {}


def register_encoder(*codec_names: str) -> Callable[[Encoder], Encoder]:
    """Register an encoder for the codecs named ``codec_names``."""

    def deco(fn: Encoder) -> Encoder:
        for name in codec_names:
            if name in ENCODERS:
                raise TypeError(f"an encoder for codec {name!r} is already registered")
            ENCODERS[name] = fn
        return fn

    return deco


def encoder_for(codec: Codec) -> Encoder:
    """The encoder registered for ``codec``'s class, or for the nearest base class with one."""
    for cls in type(codec).__mro__:
        fn = ENCODERS.get(getattr(cls, "name", ""))
        if fn is not None and issubclass(cls, Codec) and Codec.registry.get(cls.name) is cls:
            return fn
    raise EncodingError(
        f"codec {codec.spec} has no NNEF encoder; codecs with one: {sorted(ENCODERS)}"
    )
