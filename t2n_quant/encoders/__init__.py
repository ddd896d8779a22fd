"""NNEF encoders, one per codec, looked up by codec name.

An encoder is a function ``(qtensor, label) -> t2n_core.storage.Encoding``; it is the only
place that knows how a codec's bytes become ``.dat`` files and graph.nnef text.

>>> from t2n_quant.codecs import Q4_0Codec
>>> encoder_for(Q4_0Codec()).__name__
'encode_q4_0'
"""

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
    """The encoder registered for ``codec``'s name."""
    try:
        return ENCODERS[codec.name]
    except KeyError:
        raise EncodingError(
            f"codec {codec.spec} has no NNEF encoder; codecs with one: {sorted(ENCODERS)}"
        ) from None


from t2n_quant.encoders import packed, q4_0  # noqa: E402, F401  (registration)
