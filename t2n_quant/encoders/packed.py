"""Encoder of the bit-packed codecs (``minmax``, ``symmetric``): u8 codes + f16 scales
(+ f16 zero points) and an NNEF fragment that unpacks and dequantizes them.

Variables, for a weight of ``rows`` x ``k`` in ``G`` groups of ``g`` values:

- ``<label>_codes``: u8 ``[rows, G, chunks, chunk_bytes]`` (see
  :mod:`t2n_quant.codecs.bitpack`);
- ``<label>_scale``: ``[rows, G, 1]`` in the codec's storage dtype (f16; f32 for ``int8``);
- ``<label>_zero``: f16 ``[rows, G, 1]`` (codecs with a zero point only).

Call: ``t2n_<codec>_b<bits>(codes, scale[, zero], group_size = g, shape = [...],
dtype = 'f32')``. Fragment text lives in the ``.nnef`` files next to this module; one
definition per (codec, bits) is shared by every tensor, plus ``t2n_unpack_lsb_b<bits>``.
"""

from __future__ import annotations

import functools
from pathlib import Path
from string import Template
from typing import TYPE_CHECKING

import torch

from t2n_core.nnef.dat import tensor_bytes
from t2n_core.storage import EncodedVariable, Encoding
from t2n_quant.codecs import bitpack
from t2n_quant.codecs.base import Codec
from t2n_quant.encoders.registry import register_encoder
from t2n_quant.errors import EncodingError

if TYPE_CHECKING:
    from t2n_quant.qtensor import QTensor

_HERE = Path(__file__).parent
#: the fragments use tract_core ops (cast, bitand, shr, shl)
TRACT_CORE = "tract_registry tract_core"
_OUT_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.float64: "f64"}


@functools.cache
def _template(name: str) -> Template:
    return Template((_HERE / f"{name}.nnef").read_text())


def _nested(values: list[int]) -> str:
    """A rank-4 NNEF array literal ``[[[[a, b, ...]]]]`` that broadcasts on the last axis."""
    return "[[[[" + ", ".join(map(str, values)) + "]]]]"


def unpack_fragment(bits: int) -> tuple[str, str]:
    """``(name, text)`` of the fragment unpacking ``bits``-bit codes.

    >>> unpack_fragment(4)[0]
    't2n_unpack_lsb_b4'
    """
    per, nbytes = bitpack.codes_per_chunk(bits), bitpack.CHUNK_BYTES[bits]
    fields = {
        "bits": bits,
        "mask": (1 << bits) - 1,
        "code_shifts": _nested([i * bits for i in range(per)]),
    }
    if nbytes == 1:
        text = _template("unpack_byte").substitute(fields, per_byte=per)
    else:
        text = _template(f"unpack_{nbytes}bytes").substitute(fields, per_chunk=per)
    return f"t2n_unpack_lsb_b{bits}", text


def dequant_fragment(codec: Codec) -> tuple[str, str]:
    """``(name, text)`` of the fragment dequantizing ``codec``'s codes.

    >>> from t2n_quant.codecs import SymmetricCodec
    >>> dequant_fragment(SymmetricCodec(bits=3))[0]
    't2n_symmetric_b3'
    """
    family = "minmax" if codec.has_zero else "symmetric"
    text = _template(f"dequant_{family}").substitute(bits=codec.bits, offset=codec.offset)
    return f"t2n_{family}_b{codec.bits}", text


def out_dtype(dtype: torch.dtype) -> str:
    """tract name of the dtype the fragment casts the weight to (bf16 is written as f32)."""
    if dtype == torch.bfloat16:
        return "f32"
    try:
        return _OUT_DTYPES[dtype]
    except KeyError:
        raise EncodingError(f"cannot write a quantized weight of dtype {dtype}") from None


@register_encoder("minmax", "symmetric")
def encode_packed(qt: QTensor, label: str) -> Encoding:
    """Variables, fragments and call of a bit-packed QTensor (see the module docstring)."""
    codec = qt.codec
    groups = qt.k // qt.block_size
    nbytes = bitpack.CHUNK_BYTES[codec.bits]
    chunks = qt.packed.shape[1] // nbytes
    variables = [
        EncodedVariable(
            "_codes", (qt.rows, groups, chunks, nbytes),
            data=lambda: tensor_bytes(qt.packed), dtype=torch.uint8,
        ),
        EncodedVariable(
            "_scale", (qt.rows, groups, 1), data=lambda: tensor_bytes(qt.scale),
            dtype=qt.scale.dtype,
        ),
    ]  # fmt: skip
    if qt.zero is not None:
        zero = qt.zero
        variables.append(
            EncodedVariable(
                "_zero", (qt.rows, groups, 1), data=lambda: tensor_bytes(zero), dtype=zero.dtype
            )
        )
    name, text = dequant_fragment(codec)
    unpack_name, unpack_text = unpack_fragment(codec.bits)
    attrs = {"group_size": qt.block_size, "shape": list(qt.shape), "dtype": out_dtype(qt.dtype)}
    return Encoding(
        variables,
        fragments={name: text, unpack_name: unpack_text},
        call=(name, [v.suffix for v in variables], attrs),
        extensions=(TRACT_CORE,),
    )
