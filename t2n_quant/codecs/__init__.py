"""Codecs: pure tensor math on an ``(n_blocks, block_size)`` view, registered by name.

>>> sorted(Codec.registry)
['minmax', 'q4_0', 'symmetric']
"""

from t2n_quant.codecs.base import Codec, QParams
from t2n_quant.codecs.bitpack import SUPPORTED_BITS
from t2n_quant.codecs.grouped import GROUP_SIZES, GroupedCodec
from t2n_quant.codecs.minmax import MinMaxCodec
from t2n_quant.codecs.q4_0 import Q4_0Codec
from t2n_quant.codecs.symmetric import SymmetricCodec

__all__ = [
    "GROUP_SIZES",
    "SUPPORTED_BITS",
    "Codec",
    "GroupedCodec",
    "MinMaxCodec",
    "Q4_0Codec",
    "QParams",
    "SymmetricCodec",
]
