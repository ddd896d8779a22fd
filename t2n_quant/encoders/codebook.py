"""Encoder of the code book codecs (``nf4``, ``fp4``): packed 4-bit codes, the 16-entry
code book and f32 block scales, dequantized by a gather on the code book, then a scale.

Variables, for a weight of ``rows`` x ``k`` in ``G`` blocks of ``g`` values:

- ``<label>_codes``: u8 ``[rows, G, ceil(g / 2), 1]``, low nibble first;
- ``<label>_codebook``: f32 ``[16]``;
- ``<label>_scale``: f32 ``[rows, G, 1]``.

Call: ``t2n_codebook_b4(codes, codebook, scale, group_size = g, shape = [...],
dtype = 'f32')``; the fragment (``dequant_codebook.nnef``) reuses ``t2n_unpack_lsb_b4``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from t2n_core.nnef.dat import tensor_bytes
from t2n_core.storage import EncodedVariable, Encoding
from t2n_quant.codecs.codebook import CodebookCodec
from t2n_quant.encoders.packed import TRACT_CORE, _template, out_dtype, unpack_fragment
from t2n_quant.encoders.registry import register_encoder

if TYPE_CHECKING:
    from t2n_quant.qtensor import QTensor


@register_encoder("nf4", "fp4")
def encode_codebook(qt: QTensor, label: str) -> Encoding:
    """Variables, fragments and call of a code book QTensor (see the module docstring)."""
    codec = qt.codec
    assert isinstance(codec, CodebookCodec)
    groups = qt.k // qt.block_size
    table = codec.table()
    variables = [
        EncodedVariable(
            "_codes", (qt.rows, groups, qt.packed.shape[1], 1),
            data=lambda: tensor_bytes(qt.packed), dtype=torch.uint8,
        ),
        EncodedVariable(
            "_codebook", (table.numel(),), data=lambda: tensor_bytes(table), dtype=torch.float32
        ),
        EncodedVariable(
            "_scale", (qt.rows, groups, 1), data=lambda: tensor_bytes(qt.scale),
            dtype=qt.scale.dtype,
        ),
    ]  # fmt: skip
    unpack_name, unpack_text = unpack_fragment(codec.bits)
    text = _template("dequant_codebook").template
    attrs = {"group_size": qt.block_size, "shape": list(qt.shape), "dtype": out_dtype(qt.dtype)}
    return Encoding(
        variables,
        fragments={"t2n_codebook_b4": text, unpack_name: unpack_text},
        call=("t2n_codebook_b4", [v.suffix for v in variables], attrs),
        extensions=(TRACT_CORE,),
    )
