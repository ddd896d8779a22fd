"""Codecs: pure tensor math on an ``(n_blocks, block_size)`` view, registered by name.

Every module of this package is imported here, so a codec registers itself by existing.

>>> {"minmax", "q4_0", "symmetric"} <= set(Codec.registry)
True
"""

import importlib
import pkgutil

from t2n_quant.codecs.base import SPEC_GRAMMAR, Codec, QParams
from t2n_quant.codecs.bitpack import SUPPORTED_BITS
from t2n_quant.codecs.grouped import GROUP_SIZES, GroupedCodec
from t2n_quant.codecs.minmax import MinMaxCodec
from t2n_quant.codecs.q4_0 import Q4_0Codec
from t2n_quant.codecs.symmetric import SymmetricCodec

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")

__all__ = [
    "GROUP_SIZES",
    "SPEC_GRAMMAR",
    "SUPPORTED_BITS",
    "Codec",
    "GroupedCodec",
    "MinMaxCodec",
    "Q4_0Codec",
    "QParams",
    "SymmetricCodec",
]
