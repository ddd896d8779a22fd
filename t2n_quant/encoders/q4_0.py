"""Q4_0 encoder: one tract-native ``.dat`` (vendor 0x5254, item type 0x3040), no fragment.

The variable has the weight's logical shape; its payload is the 18-byte ggml blocks
(f16 scale, then 16 nibble bytes) in row-major block order. tract reads rows = dim 0,
k = the other dims, and keeps the weight compressed in matmul, conv and gather.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from t2n_core.nnef.dat import TractItemType, tensor_buffer
from t2n_core.storage import EncodedVariable, Encoding
from t2n_quant.codecs.q4_0 import Q4_0Codec
from t2n_quant.encoders.registry import register_encoder

if TYPE_CHECKING:
    from t2n_quant.qtensor import QTensor


@register_encoder("q4_0")
def encode_q4_0(qt: QTensor, label: str) -> Encoding:
    """The single Q4_0 variable of ``qt`` (``call=None``: the variable is the weight)."""

    def data() -> memoryview:
        return tensor_buffer(Q4_0Codec.to_block_bytes(qt.packed, qt.params))

    nbytes = qt.numel() // 32 * 18
    var = EncodedVariable(
        "", tuple(qt.shape), data=data, custom_item_type=int(TractItemType.Q4_0), nbytes=nbytes
    )
    return Encoding([var])
