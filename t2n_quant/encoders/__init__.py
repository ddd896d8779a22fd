"""NNEF encoders, one per codec, looked up by codec class.

An encoder is a function ``(qtensor, label) -> t2n_core.storage.Encoding``; it is the only
place that knows how a codec's bytes become ``.dat`` files and graph.nnef text. Every module
of this package is imported here (registration by existing). A codec without an encoder of
its own uses the one of the nearest registered codec class it derives from.

>>> from t2n_quant.codecs import Q4_0Codec
>>> encoder_for(Q4_0Codec()).__name__
'encode_q4_0'
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "registry":
        importlib.import_module(f"{__name__}.{_module.name}")

from t2n_quant.encoders.registry import (  # noqa: E402
    ENCODERS,
    Encoder,
    encoder_for,
    register_encoder,
)

__all__ = ["ENCODERS", "Encoder", "encoder_for", "register_encoder"]
